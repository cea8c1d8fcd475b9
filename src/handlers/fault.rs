//! `fault`: a test-only handler that misbehaves on demand, compiled only with
//! the `fault-injection` feature (on for `cargo test`, off in release builds).
//!
//! The payload says what to do, checked in this order:
//! `{"abort": true}` kills the process (a poison job); `{"panic": true}`
//! panics; `{"sleep_ms": N}` sleeps first; `{"fail": "transient"|"permanent",
//! "until_attempt": N}` fails runs before attempt N (every run without it).

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::{Handler, HandlerError};
use crate::job::Job;

/// Misbehaves as its payload asks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fault;

#[derive(Deserialize, Default)]
struct Orders {
    #[serde(default)]
    abort: bool,
    #[serde(default)]
    panic: bool,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    fail: Option<String>,
    #[serde(default)]
    until_attempt: Option<u32>,
}

#[async_trait]
impl Handler for Fault {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        let orders: Orders = serde_json::from_str(job.payload().get()).unwrap_or_default();
        if orders.abort {
            std::process::abort();
        }
        if orders.panic {
            panic!("fault handler asked to panic");
        }
        if orders.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(orders.sleep_ms)).await;
        }
        let failing = orders.until_attempt.is_none_or(|n| job.attempt() < n);
        match orders.fail.as_deref() {
            Some("permanent") if failing => {
                Err(HandlerError::permanent("fault: permanent failure"))
            }
            Some(_) if failing => Err(HandlerError::transient("fault: transient failure")),
            _ => Ok(()),
        }
    }
}
