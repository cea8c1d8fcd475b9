//! `GET /api/events`: lifecycle events as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde::Deserialize;

use super::{Failure, Web};
use crate::api::ApiError;

/// The lifecycle events as server-sent events until the client leaves or
/// the server stops. They are read from the replay stream, which the
/// daemons write anyway, so that an open dashboard costs the workers
/// nothing: each message holds the entries of one read (one event's JSON a
/// line of its data) with the last entry's id as its id, so that a
/// reconnecting browser (`Last-Event-ID`) misses nothing. With the
/// replay stream off (`stream_maxlen = 0`) they come from the pub/sub
/// channel, one event a message, which makes the daemons publish.
///
/// `?latest=N` (the dashboard's) sends at most N events a second, the
/// newest, read from the stream's end twice a second: a person watching
/// sees every event of a quiet queue and a sample of a busy one, and a
/// busy daemon does not pay for copying its whole event stream.
pub(super) async fn events(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, Failure> {
    web.admit(&headers)?;
    if web.streams.fetch_add(1, Ordering::Relaxed) >= web.max_streams {
        web.streams.fetch_sub(1, Ordering::Relaxed);
        return Err(Failure(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} event streams are open already", web.max_streams),
        ));
    }
    let held = StreamSlot(web.streams.clone());
    let stop = web.stop.clone().cancelled_owned();
    let Some(stream) = web.stream.clone() else {
        let subscription = match web.client.broker().subscribe(&web.channel).await {
            Ok(s) => s,
            Err(e) => return Err(ApiError::from(e).into()),
        };
        let messages = futures::stream::unfold(
            (subscription, held),
            |(mut subscription, held)| async move {
                let message = subscription.next().await?;
                let event = Event::default().data(String::from_utf8_lossy(&message));
                Some((Ok::<_, Infallible>(event), (subscription, held)))
            },
        );
        return Ok(sse(messages.take_until(stop)));
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_stream_id(id))
        .map(str::to_owned);
    let after = match resume {
        Some(id) => id,
        None => web
            .client
            .broker()
            .stream_last_id(&stream)
            .await
            .map_err(ApiError::from)?,
    };
    let follow = Follow {
        broker: web.client.broker().clone(),
        stream,
        after,
        reader: None,
        latest: q.latest.map(|n| n.clamp(1, 1000)),
        _held: held,
    };
    let messages = futures::stream::unfold(follow, |mut follow| async move {
        let event = follow.next().await;
        Some((Ok::<_, Infallible>(event), follow))
    });
    Ok(sse(messages.take_until(stop)))
}

fn sse(
    messages: impl futures::Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    Sse::new(messages)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    latest: Option<usize>,
}

/// A stream entry id, `<ms>-<seq>`.
fn is_stream_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Reads the replay stream as it grows (`XREAD BLOCK` on a connection of
/// its own: the stream keeps only the last `stream_maxlen` events, which a
/// busy daemon writes in a fraction of a second).
struct Follow {
    broker: crate::broker::Broker,
    stream: String,
    after: String,
    reader: Option<crate::broker::events::StreamReader>,
    /// At most this many events a second, the newest (`?latest=`).
    latest: Option<usize>,
    _held: StreamSlot,
}

impl Follow {
    /// Entries read per round trip.
    const BATCH: usize = 100;

    /// How often `?latest=` looks at the stream's end.
    const SAMPLE_EVERY: Duration = Duration::from_millis(500);

    async fn next(&mut self) -> Event {
        if let Some(per_second) = self.latest {
            return self.sample(per_second.div_ceil(2)).await;
        }
        loop {
            let reader = match &mut self.reader {
                Some(reader) => reader,
                None => match self.broker.stream_reader(&self.stream, &self.after).await {
                    Ok(reader) => self.reader.insert(reader),
                    Err(_) => {
                        // Redis away: the browser sees only the keep-alive
                        // comments meanwhile.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            match reader.next(Self::BATCH).await {
                Ok(Some((id, events))) => {
                    let event = Event::default().id(id.as_str()).data(events);
                    self.after = id;
                    return event;
                }
                Ok(None) => {}
                Err(_) => {
                    self.reader = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

impl Follow {
    /// The newest `most` events written since the last look, waiting for one.
    async fn sample(&mut self, most: usize) -> Event {
        loop {
            tokio::time::sleep(Self::SAMPLE_EVERY).await;
            // An entry holds at least one event: `most` entries are enough.
            let Ok(entries) = self
                .broker
                .stream_tail(&self.stream, &self.after, most)
                .await
            else {
                continue;
            };
            let Some((newest, _)) = entries.first() else {
                continue;
            };
            let id = newest.clone();
            let mut events: Vec<String> = entries
                .into_iter()
                .flat_map(|(_, events)| events.into_iter().rev())
                .take(most)
                .collect();
            events.reverse();
            self.after.clone_from(&id);
            return Event::default().id(id).data(events.join("\n"));
        }
    }
}

/// One of the open event streams; counted down when it ends.
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
