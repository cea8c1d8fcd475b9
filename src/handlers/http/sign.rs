//! Standard Webhooks signatures: `webhook-signature: v1,<base64 of
//! HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, the key being the base64
//! after `whsec_` in the queue's secret, so that receivers verify with the
//! specification's own libraries.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::config::{ConfigError, Secret};

/// A queue's signing key, decoded.
#[derive(Clone)]
pub(crate) struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    /// Reads a secret `whsec_<base64>`.
    pub(crate) fn parse(secret: &Secret, source: &str) -> Result<Self, ConfigError> {
        let text = secret.expose().trim();
        let encoded = text.strip_prefix("whsec_").ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{source}: a signing secret is whsec_ followed by base64 (the Standard Webhooks format)"
            ))
        })?;
        let key = STANDARD.decode(encoded).map_err(|_| {
            ConfigError::Invalid(format!("{source}: the part after whsec_ is not base64"))
        })?;
        if key.is_empty() {
            return Err(ConfigError::Invalid(format!("{source}: the key is empty")));
        }
        Ok(Self(key))
    }

    /// The `webhook-signature` value of a message.
    pub(crate) fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // Any key length is valid for HMAC.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(itoa::Buffer::new().format(timestamp).as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// `CONVEYOR_HTTP_SECRET_<QUEUE>`: the variable that holds queue `queue`'s
/// signing secret.
pub(crate) fn variable(queue: &str) -> String {
    format!(
        "CONVEYOR_HTTP_SECRET_{}",
        queue.to_uppercase().replace(['-', '.'], "_")
    )
}

/// The signing key of queue `queue`, from (in order)
/// `CONVEYOR_HTTP_SECRET_<QUEUE>` (upper case, `-` as `_`), the file its
/// `_FILE` variant names, or the systemd credential `http_secret_<queue>`;
/// `None` when none is set (the requests go unsigned).
pub(crate) fn key_of(
    queue: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<SigningKey>, ConfigError> {
    let var = variable(queue);
    if let Some(secret) = env(&var).filter(|s| !s.is_empty()) {
        return SigningKey::parse(&Secret::new(secret), &var).map(Some);
    }
    let file = env(&format!("{var}_FILE"))
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            env("CREDENTIALS_DIRECTORY")
                .map(|dir| Path::new(&dir).join(format!("http_secret_{queue}")))
                .filter(|p| p.exists())
        });
    let Some(file) = file else { return Ok(None) };
    let text = std::fs::read_to_string(&file).map_err(|reason| ConfigError::Read {
        path: file.clone(),
        reason,
    })?;
    let source = format!("the signing secret in {}", file.display());
    SigningKey::parse(&Secret::new(text), &source).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's own example (standard-webhooks, spec and tests).
    #[test]
    fn signs_as_the_specification_does() {
        let key = SigningKey::parse(
            &Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "test",
        )
        .expect("a key");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_come_from_the_environment_a_file_or_a_credential() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("http_secret_web-hooks"), "whsec_c2VjcmV0\n")
            .expect("write");
        let creds = dir.path().to_string_lossy().into_owned();
        let from_credential = key_of("web-hooks", &|k| {
            (k == "CREDENTIALS_DIRECTORY").then(|| creds.clone())
        })
        .expect("reads");
        assert_eq!(from_credential.map(|k| k.0), Some(b"secret".to_vec()));
        let from_env = key_of("web-hooks", &|k| {
            (k == "CONVEYOR_HTTP_SECRET_WEB_HOOKS").then(|| "whsec_a2V5".to_owned())
        })
        .expect("reads");
        assert_eq!(from_env.map(|k| k.0), Some(b"key".to_vec()));
        assert!(key_of("web-hooks", &|_| None).expect("reads").is_none());
        let err = key_of("q", &|k| {
            (k == "CONVEYOR_HTTP_SECRET_Q").then(|| "hunter2".to_owned())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("whsec_") && !err.contains("hunter2"), "{err}");
    }
}
