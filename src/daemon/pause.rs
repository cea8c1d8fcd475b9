//! Paused queues (`conveyor pause`) and cancelled jobs (`conveyor cancel`):
//! each daemon looks at every queue's `{K}:paused` key and `{K}:cancel` set
//! several times a second. A paused queue's fetcher stops taking jobs
//! (cutting a blocking pop short) until the key is gone; jobs already taken
//! run to their end. A running job whose id is in the set is stopped.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::queues::Processors;
use crate::broker::{Broker, BrokerError};

/// How often the keys are read: a pause takes hold within this and a round
/// trip, well within the second the contract allows.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Reads every queue's pause key once and tells its processor.
pub(crate) async fn look(broker: &Broker, processors: &Processors) -> Result<(), BrokerError> {
    let processors = processors.snapshot();
    let keys: Vec<_> = processors.iter().map(|p| p.store().keys()).collect();
    let steering = broker.steering(&keys).await?;
    for (p, (paused, cancel)) in processors.iter().zip(steering) {
        p.set_paused(paused);
        if !cancel.is_empty() {
            p.cancel_running(&cancel);
        }
    }
    Ok(())
}

/// Looks at the pause keys and cancel sets every [`LOOK_EVERY`].
pub(crate) struct Watch {
    pub(crate) broker: Broker,
    /// The queues of this node (a reload changes them).
    pub(crate) processors: Processors,
}

impl Watch {
    /// Looks until `stop`. A failed look keeps what the last one saw.
    pub(crate) async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
            if let Err(e) = look(&self.broker, &self.processors).await {
                tracing::debug!(error = %e, "could not read which queues are paused; will look again");
            }
        }
    }
}
