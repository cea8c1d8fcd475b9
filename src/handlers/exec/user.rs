//! The user an exec queue's workers run as: `[queues.<q>.exec] user` and
//! `group`, else `[exec] user` and `group` (every exec queue's default),
//! else the daemon's own. Names are looked up once, when the handler is
//! built, through the system's user database (NSS: /etc/passwd, LDAP, ...);
//! the supervisor then takes the ids before the program starts.
//!
//! Another user keeps a worker out of what only the daemon's user may read:
//! the systemd credentials directory, the state directory, and the daemon's
//! own `/proc` entries (which are also not dumpable).

use serde::Deserialize;

use uzers::os::unix::UserExt as _;

use super::supervisor::Ids;
use crate::config::ConfigError;

/// `[exec]`: defaults for every exec queue.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Defaults {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    group: Option<String>,
}

/// A worker user, resolved.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) ids: Ids,
    /// Its home directory, the worker's `HOME`.
    pub(super) home: Option<String>,
    /// "user:group", for `check`.
    pub(super) name: String,
}

/// The user and group the queue's workers run as; `None` when they run as
/// the daemon's own user and group. `at` names the queue's options table.
pub(super) fn resolve(
    user: Option<&str>,
    group: Option<&str>,
    defaults: &Defaults,
    at: &str,
) -> Result<Option<Worker>, ConfigError> {
    // A queue's own user comes with its own group (or the user's); the
    // default group only goes with the default user.
    let (user, group, at) = match (user, group) {
        (None, None) => (
            defaults.user.as_deref(),
            defaults.group.as_deref(),
            "exec".to_owned(),
        ),
        _ => (user, group, at.to_owned()),
    };
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let invalid = |field: &str, msg: String| ConfigError::Invalid(format!("{at}.{field}: {msg}"));
    let me = rustix::process::getuid().as_raw();
    let (uid, user_name, primary, home) = match user {
        None => (me, uzers::get_current_username(), None, None),
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(uid) => uzers::get_user_by_uid(uid),
                Err(_) => uzers::get_user_by_name(name),
            };
            match (found, name.parse::<u32>()) {
                (Some(u), _) => (
                    u.uid(),
                    Some(u.name().to_owned()),
                    Some(u.primary_group_id()),
                    Some(u.home_dir().to_string_lossy().into_owned()),
                ),
                // A uid with no entry in the user database runs as it is.
                (None, Ok(uid)) => (uid, None, None, None),
                (None, Err(_)) => {
                    return Err(invalid(
                        "user",
                        format!("no user {name:?} on this machine (create it, or name a uid)"),
                    ));
                }
            }
        }
    };
    let gid = match group {
        Some(name) => match name.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => uzers::get_group_by_name(name)
                .map(|g| g.gid())
                .ok_or_else(|| invalid("group", format!("no group {name:?} on this machine")))?,
        },
        None => match primary {
            Some(gid) => gid,
            None if user.is_none() => rustix::process::getgid().as_raw(),
            None => {
                return Err(invalid(
                    "group",
                    format!(
                        "uid {uid} has no entry in the user database, so it has no group of its own: name one"
                    ),
                ));
            }
        },
    };
    if uid == me && gid == rustix::process::getgid().as_raw() {
        return Ok(None);
    }
    if uid == 0 && me != 0 {
        return Err(invalid(
            "user",
            "workers never run as root unless the daemon does".into(),
        ));
    }
    if !can_switch() {
        return Err(invalid(
            "user",
            format!(
                "the daemon (uid {me}) cannot start workers as another user or group: run it as \
                 root, or give it the capabilities CAP_SETUID and CAP_SETGID (the packaged \
                 service has them)"
            ),
        ));
    }
    // The user's supplementary groups, as a login would have them; the
    // worker's group among them.
    let mut groups: Vec<u32> = match (&user_name, user) {
        (Some(name), Some(_)) => uzers::get_user_groups(name, gid)
            .unwrap_or_default()
            .iter()
            .map(uzers::Group::gid)
            .collect(),
        _ => Vec::new(),
    };
    if !groups.contains(&gid) {
        groups.push(gid);
    }
    let group_name = uzers::get_group_by_gid(gid)
        .map(|g| g.name().to_string_lossy().into_owned())
        .unwrap_or_else(|| gid.to_string());
    let user_label = user_name
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| uid.to_string());
    Ok(Some(Worker {
        ids: Ids { uid, gid, groups },
        home,
        name: format!("{user_label}:{group_name}"),
    }))
}

/// Whether this process may take another user's ids: it is root, or holds
/// CAP_SETUID and CAP_SETGID.
fn can_switch() -> bool {
    use rustix::thread::CapabilitySet;
    if rustix::process::geteuid().is_root() {
        return true;
    }
    rustix::thread::capabilities(None).is_ok_and(|caps| {
        caps.effective
            .contains(CapabilitySet::SETUID | CapabilitySet::SETGID)
    })
}
