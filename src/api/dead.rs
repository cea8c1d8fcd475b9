//! The dead letter list: list, retry and purge, on bounded reads. A dead
//! list may hold entries of any size (earlier versions kept items of 100
//! MB whole): entries are looked through by their first 4 KiB, read whole
//! only when the queue could run them, and purged by their place. An entry
//! that keeps only the first bytes of an item too large to read (or is
//! itself too large) is never retried: a truncated payload must not run.

use serde::Serialize;

use super::{ApiError, Client, DeadJob};
use crate::broker::QueueKeys;
use crate::broker::view::{Bounds, Store, Then, VIEW_HEAD, Viewed};
use crate::envelope::{Envelope, glimpse, item_limit, parse_item};

/// Dead entries looked through per round trip when searching or moving
/// (their first 4 KiB each).
const PAGE: u64 = 500;

/// Bytes of whole entries sent back per call of `dead retry --all`.
const RETRY_BYTES: usize = 8 << 20;

/// What `dead retry --all` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetriedAll {
    /// Entries moved back to the queue.
    pub moved: u64,
    /// Entries left where they are: items too large to run again (or that
    /// moved while being read).
    pub kept: u64,
}

impl Client {
    /// Dead jobs of `queue`, newest first, from `start`: each read whole
    /// when the queue could run it, else by its first bytes.
    pub async fn dead_jobs(
        &self,
        queue: &str,
        start: u64,
        limit: u64,
    ) -> Result<Vec<DeadJob>, ApiError> {
        let entries = self.dead_entries(queue, start, limit).await?;
        Ok(entries.iter().map(job_of).collect())
    }

    /// Dead entries of `queue` as stored, newest first, from `start`: whole
    /// when the queue could run them, else their first 4 KiB.
    pub(crate) async fn dead_entries(
        &self,
        queue: &str,
        start: u64,
        limit: u64,
    ) -> Result<Vec<Viewed>, ApiError> {
        let keys = self.keys(queue);
        let bounds = self.bounds(queue);
        Ok(self
            .broker
            .view(&keys.dead, Store::List, start, limit, bounds)
            .await?)
    }

    /// Moves the dead job `id` back to its queue for a new round of
    /// attempts. Refused for an entry that kept only the first bytes of its
    /// item, or is larger than the queue runs.
    pub async fn retry_dead(&self, queue: &str, id: &str) -> Result<(), ApiError> {
        let keys = self.keys(queue);
        // The list may move between the look and the move: look again.
        for _ in 0..3 {
            let seen = self.find_dead(&keys, id).await?;
            let max = self.max_payload_bytes(queue);
            if seen.size > item_limit(max) as u64 {
                return Err(ApiError::Refused(format!(
                    "dead job {id} cannot be retried: its entry is {} bytes, more than a job \
                     of the queue may be (max_payload_bytes {max} and its envelope): purge it",
                    seen.size
                )));
            }
            let Some(entry) = self.whole_entry(&keys, queue, &seen).await? else {
                continue;
            };
            let item = retried_item(&entry).map_err(|why| {
                ApiError::Refused(format!("dead job {id} cannot be retried: {why}"))
            })?;
            let then = Then::PushTail {
                key: &keys.list,
                item: &item,
            };
            if self
                .broker
                .remove_at(&keys.dead, Store::List, &seen, then, None)
                .await?
            {
                return Ok(());
            }
        }
        Err(ApiError::Unfinished(format!(
            "dead job {id} kept moving; try again"
        )))
    }

    /// Moves every dead job present when it starts back to its queue,
    /// oldest first; jobs that die again meanwhile are not moved twice.
    /// How many it moved (entries that cannot run again stay).
    pub async fn retry_all_dead(&self, queue: &str) -> Result<u64, ApiError> {
        Ok(self.retry_all_dead_counted(queue).await?.moved)
    }

    /// [`Client::retry_all_dead`], saying also how many entries it left.
    pub async fn retry_all_dead_counted(&self, queue: &str) -> Result<RetriedAll, ApiError> {
        let keys = self.keys(queue);
        let total = self.broker.dead_len(&keys).await?;
        let (mut seen, mut done) = (0, RetriedAll::default());
        while seen < total {
            // The oldest entries are at the tail, below the ones kept; new
            // deaths arrive at the head. Moving an entry shifts none below it.
            let len = self.broker.dead_len(&keys).await?;
            if len <= done.kept {
                break;
            }
            let want = PAGE.min(total - seen).min(len - done.kept);
            let page = self
                .broker
                .view(
                    &keys.dead,
                    Store::List,
                    len - done.kept - want,
                    want,
                    Bounds::heads(),
                )
                .await?;
            let (mut moves, mut bytes) = (Vec::new(), 0);
            for entry in page.iter().rev() {
                let whole = self.whole_entry(&keys, queue, entry).await?;
                match whole.map(|e| retried_item(&e).map(|item| (e, item))) {
                    Some(Ok(pair)) => {
                        bytes += pair.0.len() + pair.1.len();
                        moves.push(pair);
                    }
                    _ => done.kept += 1,
                }
                if bytes >= RETRY_BYTES {
                    done.moved += self.broker.dead_retry(&keys, &moves).await?;
                    (moves, bytes) = (Vec::new(), 0);
                }
            }
            done.moved += self.broker.dead_retry(&keys, &moves).await?;
            seen += want;
        }
        Ok(done)
    }

    /// Deletes the dead job `id` for good, whatever its size.
    pub async fn purge_dead(&self, queue: &str, id: &str) -> Result<(), ApiError> {
        let keys = self.keys(queue);
        for _ in 0..3 {
            let seen = self.find_dead(&keys, id).await?;
            if self
                .broker
                .remove_at(&keys.dead, Store::List, &seen, Then::Nothing, None)
                .await?
            {
                return Ok(());
            }
        }
        Err(ApiError::Unfinished(format!(
            "dead job {id} kept moving; try again"
        )))
    }

    /// Deletes every dead job of `queue`; how many there were.
    pub async fn purge_all_dead(&self, queue: &str) -> Result<u64, ApiError> {
        Ok(self.broker.dead_clear(&self.keys(queue)).await?)
    }

    /// The dead entry of job `id`, as far as its first 4 KiB.
    pub(super) async fn find_dead(&self, keys: &QueueKeys, id: &str) -> Result<Viewed, ApiError> {
        self.broker
            .search(&keys.dead, Store::List, id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no dead job with id {id} in {}", keys.dead)))
    }

    /// All of an entry `seen` in part, if the queue could run it and it is
    /// still where it was seen.
    async fn whole_entry(
        &self,
        keys: &QueueKeys,
        queue: &str,
        seen: &Viewed,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let bounds = self.bounds(queue);
        if seen.size > bounds.whole as u64 {
            return Ok(None);
        }
        let again = self
            .broker
            .reread(&keys.dead, Store::List, seen, bounds)
            .await?;
        Ok(again.filter(Viewed::is_whole).map(|v| v.bytes))
    }
}

impl DeadJob {
    /// A stored entry (whole, or its first bytes) as a job to show.
    pub(crate) fn of(entry: &Viewed) -> Self {
        job_of(entry)
    }
}

/// A stored item (whole, or its first bytes) as a job to show; an
/// unreadable one as its text.
pub(super) fn job_of(item: &Viewed) -> DeadJob {
    let shown = |env: Envelope, payload: String, size: u64, truncated: bool| DeadJob {
        id: env.id,
        attempt: env.attempt,
        died_at: env.died_at,
        last_error: env.last_error,
        payload,
        size,
        truncated,
    };
    if !item.is_whole() {
        let text = String::from_utf8_lossy(&item.bytes[..item.bytes.len().min(VIEW_HEAD)]);
        let env = glimpse(&item.bytes).unwrap_or_else(|| {
            let mut env = Envelope::new(crate::envelope::null_payload());
            env.id = "-".into();
            env
        });
        return shown(env, text.into_owned(), item.size, true);
    }
    match parse_item(&item.bytes, usize::MAX) {
        Ok(p) => {
            let env = p.envelope;
            let (payload, size, truncated) = match (&env.raw, &env.head) {
                (_, Some(head)) => {
                    let first = String::from_utf8_lossy(&head.first.to_bytes()).into_owned();
                    (first, head.size, true)
                }
                (Some(raw), None) => {
                    let bytes = raw.to_bytes();
                    let size = bytes.len() as u64;
                    (String::from_utf8_lossy(&bytes).into_owned(), size, false)
                }
                (None, None) => {
                    let payload = env.payload.get().to_owned();
                    let size = payload.len() as u64;
                    (payload, size, false)
                }
            };
            shown(env, payload, size, truncated)
        }
        Err(e) => DeadJob {
            id: "-".into(),
            attempt: 0,
            died_at: None,
            last_error: Some(format!("unreadable entry: {e}")),
            payload: String::from_utf8_lossy(&item.bytes).into_owned(),
            size: item.size,
            truncated: false,
        },
    }
}

/// What to enqueue for a dead entry: the original bytes of an item that was
/// never a valid job, else the envelope with a fresh set of attempts; never
/// the first bytes of an item too large to read.
fn retried_item(entry: &[u8]) -> Result<Vec<u8>, String> {
    match parse_item(entry, usize::MAX) {
        Ok(p) => match (&p.envelope.raw, &p.envelope.head) {
            (_, Some(head)) => Err(format!(
                "its item was {} bytes, larger than max_payload_bytes, and only its first \
                 bytes were kept",
                head.size
            )),
            (Some(raw), None) => Ok(raw.to_bytes()),
            (None, None) => {
                let mut env: Envelope = p.envelope;
                env.attempt = 0;
                env.deliveries = 0;
                env.died_at = None;
                Ok(env.to_json().into_bytes())
            }
        },
        Err(_) => Ok(entry.to_vec()),
    }
}
