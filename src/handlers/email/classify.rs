//! SMTP failures sorted into transient and permanent, with a reason that is
//! safe to publish.

use lettre::transport::smtp::Error;

use super::privacy::scrub;
use super::smtp::{Failure, OpenError, SendError};
use crate::config::Secret;
use crate::handlers::HandlerError;

/// 5xx replies that refuse *our credentials or our connection's security*,
/// not the message (RFC 4954): authentication required (530), mechanism too
/// weak (534), credentials invalid (535), encryption required (538). The
/// operator fixes these in the configuration; the job should still be there
/// when they do.
const CREDENTIAL_CODES: &[u16] = &[530, 534, 535, 538];

/// The retry decision for a failed SMTP send.
pub(crate) fn smtp_error(e: &Error, password: Option<&Secret>) -> HandlerError {
    let reason = scrub(&e.to_string(), password);
    let code = e.status().map(|c| c.to_string());
    let code_number = code.as_deref().and_then(|c| c.parse::<u16>().ok());
    match code_number {
        Some(n) if CREDENTIAL_CODES.contains(&n) => HandlerError::transient(format!(
            "SMTP server refused our credentials or connection security ({reason}); \
             check the smtp_url user, CONVEYOR_SMTP_PASSWORD and tls settings"
        )),
        _ if e.is_permanent() => {
            HandlerError::permanent(format!("SMTP server refused the message: {reason}"))
        }
        _ if e.is_transient() => {
            HandlerError::transient(format!("SMTP server deferred the message: {reason}"))
        }
        // lettre reports a refused certificate as a connection error; the
        // hint only adds to the text, the class is the same either way.
        _ if e.is_tls() || reason.contains("certificate") => {
            HandlerError::transient(format!("SMTP TLS failed: {}", with_tls_hint(reason)))
        }
        _ if e.is_timeout() => HandlerError::transient(format!("SMTP timed out: {reason}")),
        // Refused connections, resets, unparsable replies, a server that does
        // not offer what the configuration requires: nothing about the
        // message itself, so it may succeed later.
        _ => HandlerError::transient(format!("SMTP failed: {reason}")),
    }
}

/// The retry decision for a message that was not sent: every failure to
/// open a connection is transient (the server may come back, the operator
/// may fix the settings), and the server's own replies are classified as
/// [`smtp_error`] does.
pub(crate) fn send_error(e: &SendError, password: Option<&Secret>) -> HandlerError {
    match e {
        SendError::Smtp(e) => smtp_error(e, password),
        SendError::Open(OpenError {
            failure: Failure::Smtp(e),
            ..
        }) => smtp_error(e, password),
        SendError::Open(open) => HandlerError::transient(open_reason(open, password)),
    }
}

/// What failed while opening a connection, in words that name no secret.
pub(crate) fn open_reason(e: &OpenError, password: Option<&Secret>) -> String {
    match &e.failure {
        Failure::Io(io) => format!("SMTP connection failed at {}: {io}", e.step),
        Failure::Smtp(smtp) => {
            format!(
                "SMTP failed at {}: {}",
                e.step,
                with_tls_hint(scrub(&smtp.to_string(), password))
            )
        }
        Failure::Timeout(limit) => format!(
            "SMTP {} got no answer within {}",
            e.step,
            crate::duration::human(*limit)
        ),
        Failure::NoStartTls => {
            "the SMTP server does not offer STARTTLS, and tls=starttls requires it".into()
        }
    }
}

/// Adds how to trust a private CA to a reason that is about a certificate.
pub(crate) fn with_tls_hint(reason: String) -> String {
    if reason.contains("certificate") {
        format!("{reason} (a relay with a private CA needs email.ca_file)")
    } else {
        reason
    }
}
