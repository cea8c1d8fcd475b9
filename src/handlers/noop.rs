//! `noop`: succeeds at once. For benchmarks and smoke tests.

use async_trait::async_trait;

use super::{Handler, HandlerError};
use crate::job::Job;

/// Does nothing, successfully.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Noop;

#[async_trait]
impl Handler for Noop {
    async fn handle(&self, _job: &Job) -> Result<(), HandlerError> {
        Ok(())
    }
}
