//! HTTP for plugins: bounded GETs, and package downloads that show progress, resume an interrupted transfer with a
//! `Range` request (or start again cleanly when the server cannot resume), and end in a digest check.
//!
//! Nothing downloaded is trusted: every body is bounded by the size the signed index (or OCI manifest) gives, and
//! the caller checks the digest and then the package's own signature. This module never follows a redirect to a
//! scheme other than http(s), and never retries forever.

use super::PluginError;
use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

/// Attempts per download (the first and two retries).
pub const ATTEMPTS: u32 = 3;

/// A blocking HTTP client (the plugin commands are short-lived and sequential).
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::blocking::Client,
}

fn net(url: &str, e: impl std::fmt::Display) -> PluginError {
    PluginError::Remote(crate::error::one_line(&format!("{url}: {e}")))
}

impl Http {
    pub fn new() -> Result<Http, PluginError> {
        // rustls without a bundled provider: the tree's one crypto stack is ring. A second install is not an error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("toka-host/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(PluginError::host)?;
        Ok(Http { client })
    }

    pub fn inner(&self) -> &reqwest::blocking::Client {
        &self.client
    }

    /// GETs `url` and reads at most `max` bytes of a successful answer.
    pub fn get(&self, url: &str, max: usize) -> Result<Vec<u8>, PluginError> {
        let response = self.client.get(url).send().map_err(|e| net(url, e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(PluginError::NotFound(format!("{url}: not found")));
        }
        if !status.is_success() {
            return Err(PluginError::Remote(format!("{url}: {}", error_text(status, response))));
        }
        let mut bytes = Vec::new();
        response.take(max as u64 + 1).read_to_end(&mut bytes).map_err(|e| net(url, e))?;
        if bytes.len() > max {
            return Err(PluginError::Remote(format!("{url}: answer over {max} bytes")));
        }
        Ok(bytes)
    }

    /// Downloads exactly `size` bytes whose sha256 is `sha256` (hex). An interrupted transfer is resumed (or
    /// restarted) up to [`ATTEMPTS`] times; a body that is still short after that is a truncated download, one
    /// that is longer or has another digest is a digest mismatch.
    pub fn download(&self, url: &str, size: u64, sha256: &str, label: &str) -> Result<Vec<u8>, PluginError> {
        if size > super::package::MAX_PACKAGE {
            return Err(PluginError::Malformed(format!("{label}: {size} bytes, over the package limit")));
        }
        let mut bytes: Vec<u8> = Vec::new();
        let mut progress = Progress::new(label, size);
        let mut last_error = String::new();
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                progress.note(&format!("retrying ({last_error}), attempt {attempt} of {ATTEMPTS}"));
                std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
            }
            let mut request = self.client.get(url);
            if !bytes.is_empty() {
                request = request.header(reqwest::header::RANGE, format!("bytes={}-", bytes.len()));
            }
            let response = match request.send() {
                Ok(r) => r,
                Err(e) => {
                    last_error = crate::error::one_line(&e.to_string());
                    continue;
                }
            };
            match response.status() {
                reqwest::StatusCode::PARTIAL_CONTENT if !bytes.is_empty() => {}
                s if s.is_success() => bytes.clear(),
                reqwest::StatusCode::NOT_FOUND => return Err(PluginError::NotFound(format!("{url}: not found"))),
                s => return Err(PluginError::Remote(format!("{url}: {}", error_text(s, response)))),
            }
            let mut body = response.take(size + 1 - bytes.len() as u64);
            let mut chunk = vec![0u8; 64 << 10];
            let read = loop {
                match body.read(&mut chunk) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        bytes.extend_from_slice(&chunk[..n]);
                        progress.update(bytes.len() as u64);
                    }
                    Err(e) => break Err(e),
                }
            };
            if bytes.len() as u64 > size {
                progress.finish();
                return Err(PluginError::PackageDigest(format!(
                    "{label}: the server sent more than the {size} bytes the signed index gives"
                )));
            }
            if bytes.len() as u64 == size {
                break;
            }
            last_error = match read {
                Err(e) => format!(
                    "interrupted after {} of {size} bytes: {}",
                    bytes.len(),
                    crate::error::one_line(&e.to_string())
                ),
                Ok(()) => format!("ended after {} of {size} bytes", bytes.len()),
            };
        }
        progress.finish();
        if (bytes.len() as u64) < size {
            return Err(PluginError::Truncated(format!(
                "{label}: got {} of {size} bytes after {ATTEMPTS} attempts ({last_error})",
                bytes.len()
            )));
        }
        let actual = super::sha256_hex(&bytes);
        if actual != sha256 {
            return Err(PluginError::PackageDigest(format!(
                "{label}: the download's sha256 is {actual}, the signed index gives {sha256}"
            )));
        }
        Ok(bytes)
    }
}

/// A server's error answer, in one line (its JSON `error.message` when it has one).
pub fn error_text(status: reqwest::StatusCode, response: reqwest::blocking::Response) -> String {
    let mut body = Vec::new();
    drop(response.take(4096).read_to_end(&mut body));
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().filter(|c| !c.is_control()).take(300).collect());
    crate::error::one_line(&format!("{status}: {message}"))
}

/// A progress line on stderr, redrawn in place when stderr is a terminal, else one line at the end.
struct Progress {
    label: String,
    total: u64,
    tty: bool,
    last_drawn: std::time::Instant,
    done: u64,
}

impl Progress {
    fn new(label: &str, total: u64) -> Progress {
        Progress {
            label: label.to_string(),
            total,
            tty: std::io::stderr().is_terminal(),
            last_drawn: std::time::Instant::now(),
            done: 0,
        }
    }

    fn update(&mut self, done: u64) {
        self.done = done;
        if self.tty && (self.last_drawn.elapsed() > Duration::from_millis(100) || done == self.total) {
            self.last_drawn = std::time::Instant::now();
            let percent = (done * 100).checked_div(self.total).unwrap_or(100);
            let mut e = std::io::stderr().lock();
            drop(write!(e, "\r{} {:>3}% {} / {} bytes", self.label, percent, done, self.total));
        }
    }

    fn note(&mut self, text: &str) {
        let mut e = std::io::stderr().lock();
        drop(writeln!(e, "{}toka-host: {}: {text}", if self.tty { "\n" } else { "" }, self.label));
    }

    fn finish(&mut self) {
        let mut e = std::io::stderr().lock();
        if self.tty {
            drop(writeln!(e));
        } else {
            drop(writeln!(e, "toka-host: downloaded {} ({} of {} bytes)", self.label, self.done, self.total));
        }
    }
}
