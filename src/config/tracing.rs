//! `[tracing]`: where the daemon sends its traces (DESIGN section 15).
//! With no endpoint, tracing is off: no exporter, no span, and the job path
//! pays one branch.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The service name spans carry when neither the file nor
/// `OTEL_SERVICE_NAME` gives one.
const DEFAULT_SERVICE_NAME: &str = "conveyor";

/// `[tracing]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP base URL (`http://127.0.0.1:4318`); spans
    /// go to `<endpoint>/v1/traces` as protobuf. `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// overrides it; unset, tracing is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of every span; `OTEL_SERVICE_NAME` overrides it.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of traces this daemon starts that are kept, 0 to 1. A
    /// job whose producer's span was sampled (or not) follows its decision.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: default_service_name(),
            sample_ratio: default_sample_ratio(),
        }
    }
}

fn default_service_name() -> String {
    DEFAULT_SERVICE_NAME.to_owned()
}

fn default_sample_ratio() -> f64 {
    1.0
}

impl TracingConfig {
    /// Whether spans are made and sent at all.
    pub fn enabled(&self) -> bool {
        self.otlp_endpoint.is_some()
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_SERVICE_NAME` over the file;
    /// an empty variable counts as unset, as the OpenTelemetry SDKs do.
    pub(crate) fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(endpoint) = env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|s| !s.trim().is_empty())
        {
            self.otlp_endpoint = Some(endpoint.trim().to_owned());
        }
        if let Some(name) = env("OTEL_SERVICE_NAME").filter(|s| !s.trim().is_empty()) {
            self.service_name = name.trim().to_owned();
        }
    }

    /// The URL spans are posted to: the endpoint with `/v1/traces`, as
    /// OTLP/HTTP derives it from a base URL.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?;
        Some(format!("{}/v1/traces", base.trim_end_matches('/')))
    }

    /// An endpoint that is an `http` or `https` URL with a host, a ratio
    /// from 0 to 1, and a service name.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return invalid(format!(
                "tracing.sample_ratio {} must be from 0 to 1",
                self.sample_ratio
            ));
        }
        if self.service_name.trim().is_empty() {
            return invalid("tracing.service_name must not be empty".into());
        }
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(());
        };
        let bad = |why: &str| {
            invalid(format!(
                "tracing.otlp_endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) {endpoint:?} {why}: \
                 give the collector's OTLP/HTTP address, such as http://127.0.0.1:4318"
            ))
        };
        let url = match url::Url::parse(endpoint) {
            Ok(url) => url,
            Err(e) => return bad(&format!("is not a URL ({e})")),
        };
        if !matches!(url.scheme(), "http" | "https") {
            return bad("must be an http or https URL");
        }
        if url.host_str().is_none_or(str::is_empty) {
            return bad("names no host");
        }
        // The exporter's own parser (http::Uri) must take what url took.
        match self.traces_url().map(|u| u.parse::<http::Uri>()) {
            Some(Ok(_)) | None => Ok(()),
            Some(Err(e)) => bad(&format!("is not a URI the exporter takes ({e})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(endpoint: Option<&str>, ratio: f64) -> TracingConfig {
        TracingConfig {
            otlp_endpoint: endpoint.map(str::to_owned),
            sample_ratio: ratio,
            ..TracingConfig::default()
        }
    }

    #[test]
    fn unset_is_off_and_valid() {
        let config = TracingConfig::default();
        assert!(!config.enabled());
        assert!(config.validate().is_ok());
        assert_eq!(config.service_name, "conveyor");
    }

    #[test]
    fn the_traces_path_is_added_to_the_base_url() {
        let config = with(Some("http://127.0.0.1:4318/"), 1.0);
        assert_eq!(
            config.traces_url().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
    }

    #[test]
    fn bad_urls_and_ratios_are_refused() {
        for endpoint in ["127.0.0.1:4318", "ftp://x/", "not a url", "http://"] {
            let e = with(Some(endpoint), 1.0).validate().expect_err(endpoint);
            assert!(e.to_string().contains("otlp_endpoint"), "{e}");
        }
        for ratio in [-0.1, 1.5, f64::NAN] {
            let e = with(None, ratio).validate().expect_err("ratio");
            assert!(e.to_string().contains("sample_ratio"), "{e}");
        }
        assert!(with(Some("https://collector:4318"), 0.0).validate().is_ok());
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let mut config = with(Some("http://file:4318"), 1.0);
        config.apply_env(|name| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://env:4318".into()),
            "OTEL_SERVICE_NAME" => Some("billing-worker".into()),
            _ => None,
        });
        assert_eq!(config.otlp_endpoint.as_deref(), Some("http://env:4318"));
        assert_eq!(config.service_name, "billing-worker");
        config.apply_env(|_| Some(String::new()));
        assert_eq!(config.otlp_endpoint.as_deref(), Some("http://env:4318"));
    }
}
