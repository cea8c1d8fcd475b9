//! `lua/ratelimit.lua`: may one more job start within the sliding window?
//! Logs the start in the same step if so. Returns 0 when allowed, else the
//! ms until a slot frees (at least 1).

use std::time::Duration;

use redis::ScriptInvocation;

script!("ratelimit.lua");

/// One call of `ratelimit.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1] the window's log.
    pub(crate) log: &'a str,
    /// ARGV[1] now, in ms since the epoch.
    pub(crate) now_ms: i64,
    /// ARGV[2] the window, in ms.
    pub(crate) window: Duration,
    /// ARGV[3] the starts allowed per window.
    pub(crate) limit: u32,
    /// ARGV[4] a member unique to this start.
    pub(crate) member: &'a str,
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.key(self.log);
        inv.arg(self.now_ms)
            .arg(self.window.as_millis() as u64)
            .arg(self.limit)
            .arg(self.member);
        inv
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;

    #[tokio::test]
    async fn allows_the_limit_per_window_and_says_when_a_slot_frees() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let call = |now_ms, member| Call {
            log: "{q}:ratelimit",
            now_ms,
            window: Duration::from_millis(1000),
            limit: 2,
            member,
        };
        let mut wait = Vec::new();
        for (now, member) in [(10_000, "a"), (10_100, "b"), (10_200, "c")] {
            let ms: i64 = call(now, member)
                .invocation()
                .invoke_async(&mut conn)
                .await
                .unwrap();
            wait.push(ms);
        }
        // The third waits until the first leaves the window.
        assert_eq!(wait, [0, 0, 800]);
        let log: Vec<String> = conn.zrange("{q}:ratelimit", 0, -1).await.unwrap();
        assert_eq!(log, ["a", "b"]);
        let ttl: i64 = conn.pttl("{q}:ratelimit").await.unwrap();
        assert!((1..=1000).contains(&ttl), "{ttl}");
        // Once it has, a start is allowed, and the old one forgotten.
        let ms: i64 = call(11_000, "d")
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(ms, 0);
        let log: Vec<String> = conn.zrange("{q}:ratelimit", 0, -1).await.unwrap();
        assert_eq!(log, ["b", "d"]);
    }
}
