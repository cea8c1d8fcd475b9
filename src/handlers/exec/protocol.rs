//! The line protocol between the daemon and a worker program: one request
//! line in (`{"id", "queue", "attempt", "traceparent"?, "tracestate"?,
//! "flow"?, "parents"?, "payload"}`, the trace fields when the daemon
//! traces, the flow's for a flow's node), and, in persistent
//! mode, one reply line out (`{"id", "status": "ok" | "retry" | "fail",
//! "result"?, "error"?, "retry_in_ms"?}`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

use crate::job::{HandlerError, Job};

/// Longest reply line read; a longer one fails the job and the process.
pub(super) const MAX_REPLY: usize = 1024 * 1024;

/// The request line of `job`, newline included.
///
/// The payload is copied as the producer wrote it, less any whitespace
/// outside strings: JSON allows line breaks between tokens, and one would
/// end the line early.
pub(super) fn request(job: &Job) -> Vec<u8> {
    let payload = job.payload().get().as_bytes();
    let mut line = Vec::with_capacity(payload.len() + job.id().len() + 64);
    line.extend_from_slice(b"{\"id\":");
    // Strings always serialize.
    line.extend_from_slice(
        serde_json::to_string(job.id())
            .unwrap_or_default()
            .as_bytes(),
    );
    line.extend_from_slice(b",\"queue\":");
    line.extend_from_slice(
        serde_json::to_string(job.queue())
            .unwrap_or_default()
            .as_bytes(),
    );
    line.extend_from_slice(b",\"attempt\":");
    line.extend_from_slice(itoa::Buffer::new().format(job.attempt()).as_bytes());
    for (name, value) in [
        (&b",\"traceparent\":"[..], job.traceparent()),
        (&b",\"tracestate\":"[..], job.tracestate()),
    ] {
        if let Some(value) = value {
            line.extend_from_slice(name);
            line.extend_from_slice(serde_json::to_string(&value).unwrap_or_default().as_bytes());
        }
    }
    if let Some(flow) = job.flow() {
        line.extend_from_slice(b",\"flow\":");
        line.extend_from_slice(serde_json::to_string(flow).unwrap_or_default().as_bytes());
        if let Some(parents) = job.parents() {
            line.extend_from_slice(b",\"parents\":");
            minify_into(parents.get().as_bytes(), &mut line);
        }
    }
    line.extend_from_slice(b",\"payload\":");
    if memchr::memchr2(b'\n', b'\r', payload).is_some() {
        minify_into(payload, &mut line);
    } else {
        line.extend_from_slice(payload);
    }
    line.extend_from_slice(b"}\n");
    line
}

/// Appends `json` without the whitespace outside its strings. Inside a
/// string a raw line break cannot occur (JSON escapes it), so the result
/// is one line.
fn minify_into(json: &[u8], out: &mut Vec<u8>) {
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
}

/// What a worker said of one job.
#[derive(Debug)]
pub(super) enum Reply {
    /// Done, with an optional result.
    Ok(Option<Box<RawValue>>),
    /// Failed: retry (transient) or dead (permanent).
    Failed(HandlerError),
}

/// Why a reply line cannot be taken: the job fails (transient) and the
/// process is replaced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum BadReply {
    #[error("the worker's reply is not JSON: {0}")]
    NotJson(String),
    #[error("the worker replied for job {got:?} while job {expected:?} was running")]
    WrongId { expected: String, got: String },
    #[error("the worker's reply has an unknown status {0:?} (give ok, retry or fail)")]
    UnknownStatus(String),
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    status: Option<std::borrow::Cow<'a, str>>,
    result: Option<Box<RawValue>>,
    error: Option<String>,
    retry_in_ms: Option<u64>,
}

/// Reads a reply line (without its newline) to the job `id`.
pub(super) fn parse_reply(line: &[u8], id: &str) -> Result<Reply, BadReply> {
    let wire: Wire<'_> = serde_json::from_slice(line).map_err(|e| {
        let shown = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
        BadReply::NotJson(format!("{e} (the line began {shown:?})"))
    })?;
    let got = wire.id.as_deref().unwrap_or_default();
    if got != id {
        return Err(BadReply::WrongId {
            expected: id.to_owned(),
            got: got.to_owned(),
        });
    }
    let error = || {
        wire.error
            .clone()
            .unwrap_or_else(|| "the worker gave no error".into())
    };
    match wire.status.as_deref().unwrap_or_default() {
        // `"result": null` is no result.
        "ok" => Ok(Reply::Ok(wire.result.filter(|r| r.get() != "null"))),
        "retry" => {
            let mut e = HandlerError::transient(error());
            if let Some(ms) = wire.retry_in_ms {
                e = e.retry_in(Duration::from_millis(ms));
            }
            Ok(Reply::Failed(e))
        }
        "fail" => Ok(Reply::Failed(HandlerError::permanent(error()))),
        other => Err(BadReply::UnknownStatus(other.to_owned())),
    }
}

/// How a bounded line read ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line {
    /// A whole line is in the buffer, without its newline.
    Complete,
    /// The stream ended; the buffer holds what came after the last newline.
    Eof,
    /// The line is longer than the limit; the buffer holds its first
    /// `limit` bytes and the rest of it was consumed. Only for readers
    /// that [`skip_rest`](read_line) (stderr); stdout stops here.
    TooLong,
}

/// Reads up to the next newline into `buf` (cleared first), keeping at most
/// `limit` bytes. With `skip_rest`, the rest of a longer line is read and
/// dropped, so the next call starts at the next line; without, the read
/// stops as soon as the limit is passed.
pub(super) async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
    skip_rest: bool,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if too_long { Line::TooLong } else { Line::Eof });
        }
        let (chunk, used, done) = match memchr::memchr(b'\n', available) {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        let room = limit.saturating_sub(buf.len());
        if chunk.len() > room {
            too_long = true;
        }
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(used);
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
        if too_long && !skip_rest {
            return Ok(Line::TooLong);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::parse_item;

    fn job(item: &str) -> Job {
        let parsed = parse_item(item.as_bytes(), 1 << 20).expect("parses");
        Job::new("thumbs".into(), item.as_bytes().to_vec(), parsed)
    }

    #[test]
    fn a_request_is_one_line_with_the_payload_as_written() {
        let j = job(r#"{"id":"a\"b","payload":{"x": [1, 2],"s":"é"},"attempt":2}"#);
        let line = request(&j);
        assert_eq!(
            std::str::from_utf8(&line).expect("utf8"),
            "{\"id\":\"a\\\"b\",\"queue\":\"thumbs\",\"attempt\":3,\"payload\":{\"x\": [1, 2],\"s\":\"é\"}}\n"
        );
    }

    #[test]
    fn a_traced_jobs_request_carries_its_span() {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
        };
        let mut j = job(r#"{"id":"t1","payload":{},"attempt":0}"#);
        let state: TraceState = "vendor=a1".parse().expect("a trace state");
        let ids = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("hex"),
            SpanId::from_hex("b7ad6b7169203331").expect("hex"),
            TraceFlags::SAMPLED,
            false,
            state,
        );
        j.set_trace(opentelemetry::Context::new().with_remote_span_context(ids));
        let line = request(&j);
        let v: serde_json::Value = serde_json::from_slice(&line).expect("JSON");
        assert_eq!(
            v["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(v["tracestate"], "vendor=a1");
        // Untraced: no such fields at all.
        let plain: serde_json::Value =
            serde_json::from_slice(&request(&job(r#"{"id":"t2","payload":{},"attempt":0}"#)))
                .expect("JSON");
        assert!(plain.get("traceparent").is_none());
    }

    #[test]
    fn line_breaks_between_tokens_are_taken_out() {
        let j = job("{\n  \"cmd\": \"rm -rf / ; echo \\\"\\n\\\"\",\r\n  \"n\": [1,\n 2]\n}");
        let line = request(&j);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let text = std::str::from_utf8(&line).expect("utf8");
        let v: serde_json::Value = serde_json::from_str(text).expect("JSON");
        assert_eq!(v["payload"]["cmd"], "rm -rf / ; echo \"\n\"");
        assert_eq!(v["payload"]["n"], serde_json::json!([1, 2]));
    }

    #[test]
    fn replies_are_read_strictly() {
        let ok = parse_reply(br#"{"id":"j","status":"ok","result":{"w":1}}"#, "j");
        assert!(matches!(ok, Ok(Reply::Ok(Some(r))) if r.get() == r#"{"w":1}"#));
        assert!(matches!(
            parse_reply(br#"{"id":"j","status":"ok","result":null}"#, "j"),
            Ok(Reply::Ok(None))
        ));
        match parse_reply(
            br#"{"id":"j","status":"retry","error":"busy","retry_in_ms":5000}"#,
            "j",
        ) {
            Ok(Reply::Failed(e)) => {
                assert!(!e.is_permanent());
                assert_eq!(e.requested_delay(), Some(Duration::from_secs(5)));
                assert_eq!(e.message(), "busy");
            }
            other => panic!("{other:?}"),
        }
        match parse_reply(br#"{"id":"j","status":"fail","error":"no such user"}"#, "j") {
            Ok(Reply::Failed(e)) => assert!(e.is_permanent() && e.message() == "no such user"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_reply(br#"{"id":"k","status":"ok"}"#, "j"),
            Err(BadReply::WrongId { .. })
        ));
        assert!(matches!(
            parse_reply(br#"{"id":"j","status":"done"}"#, "j"),
            Err(BadReply::UnknownStatus(s)) if s == "done"
        ));
        assert!(matches!(
            parse_reply(b"Traceback (most recent call last):", "j"),
            Err(BadReply::NotJson(m)) if m.contains("Traceback")
        ));
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let mut input: &[u8] = b"short\nxxxxxxxxxxxx\nnext\nend";
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut input, &mut buf, 8, true).await.ok(),
            Some(Line::Complete)
        );
        assert_eq!(buf, b"short");
        assert_eq!(
            read_line(&mut input, &mut buf, 8, true).await.ok(),
            Some(Line::TooLong)
        );
        assert_eq!(buf, b"xxxxxxxx");
        assert_eq!(
            read_line(&mut input, &mut buf, 8, true).await.ok(),
            Some(Line::Complete)
        );
        assert_eq!(buf, b"next");
        assert_eq!(
            read_line(&mut input, &mut buf, 8, true).await.ok(),
            Some(Line::Eof)
        );
        assert_eq!(buf, b"end");
        let mut endless: &[u8] = &[b'x'; 100];
        assert_eq!(
            read_line(&mut endless, &mut buf, 8, false).await.ok(),
            Some(Line::TooLong)
        );
    }
}
