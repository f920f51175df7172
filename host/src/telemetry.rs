//! Logs and traces of the faces: `tracing` records on stderr, as text or JSON lines, and, when asked
//! (`serve --otlp-endpoint`), the same spans exported over OTLP/HTTP (JSON) to a collector.
//!
//! The spans of a run: `request` (a service request: method, route, status, run id) -> `authenticate` (the bearer
//! token) -> `load` (the component: compiled or from the cache) -> `authorize` (grants and token) -> `run` (its
//! outcome, exit code, fuel) -> `record` (its start and its ending made durable), each with the run's id. `RUST_LOG`
//! chooses what is logged (default: info for toka-host) and, when set, also logs each span as it closes, with its
//! timing. This module never writes to stdout (it carries `mcp`'s protocol and `serve`'s address line), and a
//! collector that is down or slow never fails or slows a run: spans are exported in batches from a thread of their own.

use opentelemetry::trace::TracerProvider as _;
use std::time::Duration;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How long one export to the collector may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The process's logging and tracing; [`Telemetry::shutdown`] flushes the spans not yet exported.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

/// Where spans go over OTLP/HTTP: `http://HOST:4318` means its `/v1/traces`; a URL with a path is used as it is.
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(endpoint).map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("--otlp-endpoint {endpoint}: expected http://HOST:PORT[/PATH]"));
    }
    Ok(if url.path() == "/" { format!("{}/v1/traces", endpoint.trim_end_matches('/')) } else { endpoint.into() })
}

impl Telemetry {
    /// Logs to stderr (`json`: one JSON object per line), and exports spans to `otlp` if given. A second call in a
    /// process (tests, library users) keeps the first subscriber.
    pub fn init(json: bool, otlp: Option<&str>) -> Result<Telemetry, String> {
        use tracing_subscriber::fmt::format::FmtSpan;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("toka_host=info"));
        // Spans are logged as they close only when someone asked for detail.
        let spans = if std::env::var_os("RUST_LOG").is_some() { FmtSpan::CLOSE } else { FmtSpan::NONE };
        // Colours only on a terminal: a log redirected to a file or a collector stays plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_span_events(spans).with_ansi(ansi);
        let mut layers: Vec<Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>> =
            vec![if json { fmt.json().boxed() } else { fmt.boxed() }];
        let mut telemetry = Telemetry::default();
        if let Some(endpoint) = otlp {
            let provider = provider(&traces_url(endpoint)?)?;
            let tracer = provider.tracer("toka-host");
            layers.push(tracing_opentelemetry::layer().with_tracer(tracer).boxed());
            telemetry.provider = Some(provider);
        }
        // Already initialized (a second face in one process): the first one's logging stands.
        drop(tracing_subscriber::registry().with(layers).with(filter).try_init());
        Ok(telemetry)
    }

    /// Exports what is left and stops the exporter (bounded by the export timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("toka-host: warning: could not export the last spans: {e}");
        }
    }
}

fn provider(url: &str) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    // The exporter builds a reqwest client, which needs the crypto provider (even for plain http).
    crate::client::install_ring();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("--otlp-endpoint {url}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("toka-host").build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_without_a_path_means_its_traces_path() {
        assert_eq!(traces_url("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://127.0.0.1:4318/").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("https://c.example/otlp/v1/traces").unwrap(), "https://c.example/otlp/v1/traces");
        assert!(traces_url("127.0.0.1:4318").is_err());
        assert!(traces_url("ftp://h/").is_err());
    }
}
