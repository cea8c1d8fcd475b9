//! The email payload, read field by field, and the message built from it.
//!
//! The payload is read by hand rather than by a derived `Deserialize`, for
//! two reasons. A wrong type must name its field (serde_json's messages name
//! a line and column), and it must not quote the value: the message ends up
//! in the dead letter list and in public events, and the value may be an
//! address. Unknown fields are refused, so a typo such as `"txt"` dead-letters
//! the job instead of silently sending an empty mail.

use lettre::Message;
use lettre::address::Envelope;
use lettre::message::header::{self, ContentType, MailboxesHeader};
use lettre::message::{Mailbox, Mailboxes, MessageBuilder, MultiPart, SinglePart};
use serde_json::{Map, Value};

/// The fields a payload may have.
const FIELDS: &[&str] = &[
    "to", "subject", "text", "html", "from", "cc", "bcc", "reply_to", "template", "vars",
];

/// What a job asks to send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Request {
    pub(crate) to: Vec<Mailbox>,
    pub(crate) cc: Vec<Mailbox>,
    pub(crate) bcc: Vec<Mailbox>,
    pub(crate) reply_to: Vec<Mailbox>,
    pub(crate) from: Option<Mailbox>,
    pub(crate) subject: String,
    pub(crate) body: Body,
}

/// Where the body comes from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Body {
    /// Given in the payload (both may be absent: an empty text mail).
    Given {
        text: Option<String>,
        html: Option<String>,
    },
    /// Rendered from `<name>.txt` and/or `<name>.html` in the templates directory.
    Template {
        name: String,
        vars: Map<String, Value>,
    },
}

/// The rendered body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Content {
    pub(crate) text: Option<String>,
    pub(crate) html: Option<String>,
}

/// Why a payload cannot be sent. Never quotes a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PayloadError {
    /// Not a JSON object.
    #[error("the payload must be a JSON object with `to` and `subject`, got {0}")]
    NotAnObject(&'static str),
    /// A required field is absent or null.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field has the wrong JSON type.
    #[error("`{field}` must be {expected}, got {got}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    /// A field this handler does not know.
    #[error("unknown field {0} (known: {known})", known = FIELDS.join(", "))]
    Unknown(String),
    /// An address that does not parse.
    #[error("`{field}` holds an invalid address{at}: {reason}")]
    InvalidAddress {
        field: &'static str,
        at: String,
        reason: String,
    },
    /// A recipient list with nobody in it.
    #[error("`to` needs at least one address")]
    NoRecipient,
    /// Fields that exclude each other.
    #[error("{0}")]
    Conflict(&'static str),
}

impl Request {
    /// Reads a payload's JSON text.
    pub(crate) fn parse(json: &str) -> Result<Self, PayloadError> {
        let value: Value =
            serde_json::from_str(json).map_err(|_| PayloadError::NotAnObject("invalid JSON"))?;
        let Value::Object(mut fields) = value else {
            return Err(PayloadError::NotAnObject(type_name(&value)));
        };
        if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(PayloadError::Unknown(shorten_key(unknown)));
        }
        // `null` is the same as absent, as for envelope fields.
        fields.retain(|_, v| !v.is_null());
        let to = addresses(&fields, "to")?;
        if to.is_empty() {
            return match fields.contains_key("to") {
                true => Err(PayloadError::NoRecipient),
                false => Err(PayloadError::Missing("to")),
            };
        }
        let subject = string(&fields, "subject")?.ok_or(PayloadError::Missing("subject"))?;
        let text = string(&fields, "text")?;
        let html = string(&fields, "html")?;
        let template = string(&fields, "template")?;
        let vars = match fields.get("vars") {
            None => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(other) => return Err(wrong("vars", "an object", other)),
        };
        let body = match (template, vars) {
            (Some(_), _) if text.is_some() || html.is_some() => {
                return Err(PayloadError::Conflict(
                    "`template` cannot be combined with `text` or `html`",
                ));
            }
            (Some(name), vars) => Body::Template {
                name,
                vars: vars.unwrap_or_default(),
            },
            (None, Some(_)) => return Err(PayloadError::Conflict("`vars` needs a `template`")),
            (None, None) => Body::Given { text, html },
        };
        let mut from = addresses(&fields, "from")?;
        if from.len() > 1 {
            return Err(wrong("from", "one address", &Value::Array(Vec::new())));
        }
        Ok(Self {
            to,
            cc: addresses(&fields, "cc")?,
            bcc: addresses(&fields, "bcc")?,
            reply_to: addresses(&fields, "reply_to")?,
            from: from.pop(),
            subject,
            body,
        })
    }

    /// Every recipient of the envelope: `to`, `cc` and `bcc`.
    pub(crate) fn recipients(&self) -> impl Iterator<Item = &Mailbox> {
        self.to.iter().chain(&self.cc).chain(&self.bcc)
    }

    /// Builds the message. `message_id` is stable across retries of one job,
    /// so a receiving system that sees two copies can tell they are one.
    /// `keep_bcc` keeps the `Bcc` header (for the file transport, whose
    /// files are the only record of the envelope).
    pub(crate) fn build(
        &self,
        from: &Mailbox,
        content: Content,
        message_id: String,
        keep_bcc: bool,
    ) -> Result<Message, lettre::error::Error> {
        let from = self.from.as_ref().unwrap_or(from);
        // Given rather than derived: lettre would read every address back
        // from the headers it has just written.
        let envelope = Envelope::new(
            Some(from.email.clone()),
            self.recipients().map(|m| m.email.clone()).collect(),
        )?;
        let mut builder = Message::builder()
            .from(from.clone())
            .subject(self.subject.clone())
            .message_id(Some(message_id))
            .envelope(envelope);
        builder = with_list(builder, &self.to, header::To::from);
        builder = with_list(builder, &self.cc, header::Cc::from);
        builder = with_list(builder, &self.bcc, header::Bcc::from);
        builder = with_list(builder, &self.reply_to, header::ReplyTo::from);
        if keep_bcc {
            builder = builder.keep_bcc();
        }
        match (content.text, content.html) {
            (Some(text), Some(html)) => {
                builder.multipart(MultiPart::alternative_plain_html(text, html))
            }
            (None, Some(html)) => builder.singlepart(SinglePart::html(html)),
            (text, None) => builder.singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(text.unwrap_or_default()),
            ),
        }
    }
}

/// Sets a recipient header from the whole list at once. Adding mailboxes
/// one by one (`builder.to(m)` per recipient) makes lettre parse the header
/// built so far back from text each time: quadratic, and a payload with
/// 10,000 recipients kept a worker thread busy for minutes, out of reach of
/// the job's timeout (which cannot interrupt code that never yields).
fn with_list<H: lettre::message::header::Header + MailboxesHeader>(
    builder: MessageBuilder,
    list: &[Mailbox],
    header: fn(Mailboxes) -> H,
) -> MessageBuilder {
    if list.is_empty() {
        return builder;
    }
    builder.mailbox(header(list.iter().cloned().collect()))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn wrong(field: &'static str, expected: &'static str, got: &Value) -> PayloadError {
    PayloadError::WrongType {
        field,
        expected,
        got: type_name(got),
    }
}

/// An unknown key as it may be shown: quoted, and short.
fn shorten_key(key: &str) -> String {
    let short: String = key.chars().take(40).collect();
    if short.len() < key.len() {
        format!("{short:?}...")
    } else {
        format!("{short:?}")
    }
}

fn string(
    fields: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, PayloadError> {
    match fields.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(wrong(field, "a string", other)),
    }
}

/// A field that holds one address or a list of them.
fn addresses(
    fields: &Map<String, Value>,
    field: &'static str,
) -> Result<Vec<Mailbox>, PayloadError> {
    let expected = "an address or a list of addresses";
    let items: Vec<(Option<usize>, &str)> = match fields.get(field) {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![(None, s.as_str())],
        Some(Value::Array(list)) => {
            let mut items = Vec::with_capacity(list.len());
            for (i, v) in list.iter().enumerate() {
                match v {
                    Value::String(s) => items.push((Some(i), s.as_str())),
                    other => return Err(wrong(field, expected, other)),
                }
            }
            items
        }
        Some(other) => return Err(wrong(field, expected, other)),
    };
    items
        .into_iter()
        .map(|(i, s)| {
            parse_mailbox(s).map_err(|reason| PayloadError::InvalidAddress {
                field,
                at: i.map(|i| format!(" at index {i}")).unwrap_or_default(),
                reason,
            })
        })
        .collect()
}

/// One mailbox, `user@host` or `Name <user@host>`. lettre's parser insists
/// on the whole string, so `"a@x.org, b@y.org"` is refused, not cut short.
fn parse_mailbox(s: &str) -> Result<Mailbox, String> {
    s.trim()
        .parse()
        .map_err(|e: lettre::address::AddressError| e.to_string())
}

#[cfg(test)]
mod tests;
