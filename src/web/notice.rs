//! What an action did, carried to the dashboard through its redirect
//! (`/?done=<text>&sig=<mac>`) and shown only if this server wrote it: the
//! text is signed with a key made at start, so a link cannot put text of
//! its own on the page, even escaped.

use std::io::Read as _;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

/// Signs and checks the dashboard's notices.
#[derive(Clone)]
pub(super) struct Notices {
    /// None when no random key could be made: then no notice is shown.
    key: Option<[u8; 32]>,
}

impl Notices {
    /// A key from the kernel's random source, new each start (a notice is
    /// read right after the redirect that carries it).
    pub(super) fn new() -> Self {
        let mut key = [0u8; 32];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key));
        match read {
            Ok(()) => Self { key: Some(key) },
            Err(e) => {
                tracing::warn!(error = %e, "web: no random key: actions' notices are not shown");
                Self { key: None }
            }
        }
    }

    fn mac(&self, text: &str) -> Option<String> {
        let key = self.key.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
        mac.update(b"conveyor dashboard notice\0");
        mac.update(text.as_bytes());
        Some(hex(&mac.finalize().into_bytes()))
    }

    /// The query string that carries `text` (empty without a key).
    pub(super) fn query(&self, text: &str) -> String {
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        match self.mac(text) {
            Some(sig) => format!(
                "?done={}&sig={sig}",
                utf8_percent_encode(text, NON_ALPHANUMERIC)
            ),
            None => String::new(),
        }
    }

    /// `text` if `sig` is this server's signature of it.
    pub(super) fn verified(&self, text: Option<&str>, sig: Option<&str>) -> Option<String> {
        let (text, sig) = (text?, sig?);
        let expected = self.mac(text)?;
        bool::from(expected.as_bytes().ct_eq(sig.as_bytes())).then(|| text.to_owned())
    }
}

/// Lower-case hexadecimal.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_this_server_signed_is_shown() {
        let notices = Notices::new();
        let query = notices.query("work: paused");
        let (done, sig) = query
            .strip_prefix("?done=")
            .and_then(|q| q.split_once("&sig="))
            .expect("done and sig");
        assert_eq!(done, "work%3A%20paused");
        assert_eq!(
            notices.verified(Some("work: paused"), Some(sig)).as_deref(),
            Some("work: paused")
        );
        assert_eq!(notices.verified(Some("work: resumed"), Some(sig)), None);
        assert_eq!(notices.verified(Some("work: paused"), None), None);
        assert_eq!(notices.verified(Some("work: paused"), Some("00")), None);
        // Another start, another key.
        assert_eq!(
            Notices::new().verified(Some("work: paused"), Some(sig)),
            None
        );
    }
}
