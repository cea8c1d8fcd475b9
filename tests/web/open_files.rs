//! The open files limit: raised from soft to hard at start, and shared so
//! that the web server takes only what the queues leave (DESIGN section
//! 16).

use std::time::Duration;

use crate::common::*;

/// The soft and hard limits of a running process, from /proc.
fn open_files_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut figures = line["Max open files".len()..].split_whitespace();
    let mut next = || figures.next().unwrap().parse().unwrap();
    (next(), next())
}

/// `conveyor run` and `conveyor web`, started with a soft limit of 512 and
/// a hard limit of 4096, run with 4096 and say so, and log the web
/// server's share: its own ceilings, since 4096 leaves plenty after two
/// queues of 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_open_files_limit_is_raised_and_the_web_share_logged() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &redis,
        "[web]\nlisten = \"127.0.0.1:0\"\n\
         [queues.a]\nhandler = \"noop\"\nconcurrency = 4\n\
         [queues.b]\nhandler = \"noop\"\nconcurrency = 4\n",
    );
    for command in ["run", "web"] {
        let mut cmd = conveyor_with_open_files(512, 4096);
        cmd.args(["--config", cfg.to_str().unwrap(), command]);
        let (mut child, logs) = spawn_logged(cmd);
        web_address(&logs).await;
        wait_until(
            "the web share is logged",
            Duration::from_secs(10),
            || async { logs.contains("connections=256") },
        )
        .await;
        assert_eq!(open_files_limits(child.id()), (4096, 4096), "{command}");
        assert!(
            logs.contains("open files: soft limit raised from=512 to=4096"),
            "{command}: {:?}",
            logs.lines()
        );
        let share = logs
            .lines()
            .into_iter()
            .find(|l| l.contains("connections=256"))
            .unwrap();
        assert!(
            share.contains("event_streams=64 open_files=4096 kept_for_jobs=216"),
            "{command}: {share}"
        );
        signal(&child, 15);
        assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
    }
}
