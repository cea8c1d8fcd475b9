//! The `exec` handler: the user's own program, in Python here, run as
//! persistent workers or a process per job, against a private redis-server.
//! Everything is real: the processes, their pipes and exit statuses.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

#[path = "exec/binary.rs"]
mod binary;
#[path = "exec/isolation.rs"]
mod isolation;
#[path = "exec/oneshot.rs"]
mod oneshot;
#[path = "exec/orphans.rs"]
mod orphans;
#[path = "exec/persistent.rs"]
mod persistent;
#[path = "exec/workers.rs"]
mod workers;
