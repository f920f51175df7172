//! `$TOKA_HOME/llm.toml`: the models a host offers and the provider that serves each.
//!
//! ```toml
//! [providers.openai]
//! kind = "openai"                       # any OpenAI-compatible /chat/completions (OpenAI, vLLM, llama.cpp, Ollama)
//! base_url = "https://api.openai.com/v1" # the default for kind "openai"; /chat/completions is appended
//! key_env = "OPENAI_API_KEY"            # or key_file = "/etc/toka/openai.key" (owner-only); or neither
//! timeout = "60s"                       # per attempt (streams: until the first byte, then between chunks)
//! max_retries = 2                       # on 429 and 5xx, with exponential backoff and jitter, honouring Retry-After
//! backoff = "500ms"                     # the first retry's delay, doubled at each retry up to max_backoff
//! max_backoff = "10s"
//!
//! [providers.anthropic]
//! kind = "anthropic"                    # the Messages API; base_url defaults to https://api.anthropic.com
//! key_env = "ANTHROPIC_API_KEY"
//!
//! [models."gpt-4o-mini"]                # the name tokens grant (`llm:gpt-4o-mini`) and guests ask for
//! provider = "openai"
//! model = "gpt-4o-mini"                 # the provider's name for it (default: the same)
//! max_tokens = 1024                     # when a request gives none (Anthropic requires one)
//! ```
//!
//! The file is strict (unknown fields are refused, with the line). A key is read once, when the host opens, from the
//! environment variable or the file the provider names, and is held as a [`SecretString`]: it never leaves this
//! module except into the request header of a call to its own provider, and never appears in a `Debug` output, an
//! error, an event or a log line. This module must never read a key from anything a token or a guest supplies.

use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file's name in a toka home.
pub const FILE_NAME: &str = "llm.toml";
/// Largest `llm.toml` read, in bytes.
const MAX_FILE: u64 = 1 << 20;
/// Largest key file read, in bytes.
const MAX_KEY_FILE: u64 = 64 << 10;
/// Longest model or provider name.
pub const MAX_NAME: usize = 128;
/// Most retries a provider may ask for.
const MAX_RETRIES: u32 = 10;

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `POST {base_url}/chat/completions`, OpenAI's Chat Completions format.
    Openai,
    /// `POST {base_url}/v1/messages`, Anthropic's Messages API.
    Anthropic,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileText {
    #[serde(default)]
    providers: BTreeMap<String, ProviderText>,
    #[serde(default)]
    models: BTreeMap<String, ModelText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderText {
    kind: Kind,
    base_url: Option<String>,
    key_env: Option<String>,
    key_file: Option<PathBuf>,
    timeout: Option<String>,
    max_retries: Option<u32>,
    backoff: Option<String>,
    max_backoff: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelText {
    provider: String,
    model: Option<String>,
    max_tokens: Option<u32>,
}

/// Where a provider's key comes from (what `llm models` may show: a variable's or a file's name, never the key).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeySource {
    None,
    Env(String),
    File(PathBuf),
}

/// One provider, resolved.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub kind: Kind,
    /// The base URL, without a trailing `/`.
    pub base_url: String,
    pub key_source: KeySource,
    /// The key; `Err` says why there is none although one was named (unset variable, unreadable file).
    pub key: Result<Option<SecretString>, String>,
    pub timeout: Duration,
    pub max_retries: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

/// One model, resolved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Model {
    /// The name tokens grant and guests ask for.
    pub name: String,
    pub provider: String,
    /// The provider's name for it.
    pub upstream: String,
    /// What a request without `max-tokens` gets.
    pub max_tokens: u32,
}

/// The whole configuration.
#[derive(Debug, Default)]
pub struct Config {
    pub providers: BTreeMap<String, Provider>,
    pub models: BTreeMap<String, Model>,
    /// Where it was read from (`None`: there was no file, so no model).
    pub path: Option<PathBuf>,
}

/// Why `llm.toml` cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// Checks a model name as tokens, guests and the configuration write it: 1 to [`MAX_NAME`] bytes of ASCII letters,
/// digits and `.`, `_`, `-`, `:`, `/` (`llama3.1:8b`, `meta-llama/Llama-3-8B`). A `*` is never part of a name (it
/// ends a pattern in a grant, see [`crate::llm::pattern_prefix`]).
pub fn check_model_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid model name `{}`: 1 to {MAX_NAME} characters, ASCII letters, digits, `.`, `_`, `-`, `:`, `/`",
            crate::llm::shown(name)
        ))
    }
}

fn duration(text: Option<&str>, default: Duration, field: &str) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t).map_err(|e| format!("{field} `{t}`: {e}")),
    }
}

/// Whether `host` (of a URL) is a loopback address or `localhost`.
fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// Checks a base URL: http or https, a host, no user name or password, no query or fragment (a key must never hide
/// in a URL, which errors may quote), and plain http only to a loopback address when a key is sent.
fn check_base_url(text: &str, keyed: bool) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("base_url `{text}`: {e}"))?;
    let host = url.host().ok_or_else(|| format!("base_url `{text}` has no host"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("base_url must not contain a user name or password (give the key with key_env or key_file)".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("base_url `{text}` must not have a query or a fragment"));
    }
    match url.scheme() {
        "https" => {}
        "http" if !keyed || is_loopback(&host) => {}
        "http" => {
            return Err(format!(
                "base_url `{text}` is plain http to a host that is not loopback: a key is never sent in clear (use \
                 https)"
            ));
        }
        other => return Err(format!("base_url `{text}`: scheme {other} is not http or https")),
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// Reads a key file: owner-only (no group or other permission bits), at most 64 KiB, whitespace trimmed.
fn read_key_file(path: &Path) -> Result<SecretString, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let file = std::fs::File::open(path)
        .map_err(|e| format!("key file {shown}: {}", crate::error::one_line(&e.to_string())))?;
    let meta = file.metadata().map_err(|e| format!("key file {shown}: {e}"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!("key file {shown} is readable by others: make it owner-only (chmod 600)"));
    }
    let mut text = String::new();
    file.take(MAX_KEY_FILE + 1).read_to_string(&mut text).map_err(|e| format!("key file {shown}: {e}"))?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(format!("key file {shown} is over {MAX_KEY_FILE} bytes"));
    }
    key_text(text.trim(), &format!("key file {shown}"))
}

/// A key as a header can carry it: non-empty visible ASCII.
fn key_text(text: &str, what: &str) -> Result<SecretString, String> {
    if text.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{what} holds characters a key cannot have (spaces, controls or non-ASCII)"));
    }
    Ok(SecretString::from(text.to_string()))
}

impl Config {
    /// Reads `home/llm.toml`; a home without one offers no model. `env` looks up environment variables (the
    /// process's own, in the host).
    pub fn load(home: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        use std::io::Read;
        let path = home.join(FILE_NAME);
        let shown = path.display().to_string();
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(ConfigError::Unreadable { path: shown, reason: e.to_string() }),
        };
        let mut text = String::new();
        file.take(MAX_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|e| ConfigError::Unreadable { path: shown.clone(), reason: e.to_string() })?;
        if text.len() as u64 > MAX_FILE {
            return Err(ConfigError::Invalid { path: shown, reason: format!("over {MAX_FILE} bytes") });
        }
        let mut config =
            Config::parse(&text, env).map_err(|reason| ConfigError::Invalid { path: shown.clone(), reason })?;
        config.path = Some(path);
        Ok(config)
    }

    /// Parses the text of an `llm.toml`.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
        let file: FileText = toml::from_str(text).map_err(|e| crate::error::one_line(&e.to_string()))?;
        let mut config = Config::default();
        for (name, p) in file.providers {
            let bad = |why: String| format!("provider `{}`: {why}", crate::llm::shown(&name));
            if name.is_empty()
                || name.len() > MAX_NAME
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
            {
                return Err(bad(format!("a provider name is 1 to {MAX_NAME} ASCII letters, digits, `_` or `-`")));
            }
            let key_source = match (p.key_env, p.key_file) {
                (Some(_), Some(_)) => return Err(bad("give key_env or key_file, not both".into())),
                (Some(var), None) if var.is_empty() || var.contains(['=', '\0']) => {
                    return Err(bad(format!("key_env `{var}` is not an environment variable name")));
                }
                (Some(var), None) => KeySource::Env(var),
                (None, Some(path)) if !path.is_absolute() => {
                    return Err(bad(format!("key_file {} must be an absolute path", path.display())));
                }
                (None, Some(path)) => KeySource::File(path),
                (None, None) => KeySource::None,
            };
            let key = match &key_source {
                KeySource::None => Ok(None),
                KeySource::Env(var) => match env(var) {
                    Some(v) => key_text(v.trim(), &format!("environment variable {var}")).map(Some),
                    None => Err(format!("environment variable {var} is not set")),
                },
                KeySource::File(path) => read_key_file(path).map(Some),
            };
            let default_url = match p.kind {
                Kind::Openai => "https://api.openai.com/v1",
                Kind::Anthropic => "https://api.anthropic.com",
            };
            let base_url = check_base_url(p.base_url.as_deref().unwrap_or(default_url), key_source != KeySource::None)
                .map_err(bad)?;
            let timeout = duration(p.timeout.as_deref(), Duration::from_secs(60), "timeout").map_err(bad)?;
            let backoff = duration(p.backoff.as_deref(), Duration::from_millis(500), "backoff").map_err(bad)?;
            let max_backoff =
                duration(p.max_backoff.as_deref(), Duration::from_secs(10), "max_backoff").map_err(bad)?;
            if timeout.is_zero() || timeout > Duration::from_secs(3600) {
                return Err(bad("timeout must be from 1 ms to 1 h".into()));
            }
            if backoff > Duration::from_secs(60) || max_backoff > Duration::from_secs(600) || backoff > max_backoff {
                return Err(bad("backoff must be at most 60s and max_backoff (at most 10min)".into()));
            }
            let max_retries = p.max_retries.unwrap_or(2);
            if max_retries > MAX_RETRIES {
                return Err(bad(format!("max_retries must be at most {MAX_RETRIES}")));
            }
            let provider = Provider {
                name: name.clone(),
                kind: p.kind,
                base_url,
                key_source,
                key,
                timeout,
                max_retries,
                backoff,
                max_backoff,
            };
            config.providers.insert(name, provider);
        }
        for (name, m) in file.models {
            check_model_name(&name)?;
            let bad = |why: String| format!("model `{name}`: {why}");
            if !config.providers.contains_key(&m.provider) {
                return Err(bad(format!("provider `{}` is not configured", crate::llm::shown(&m.provider))));
            }
            let upstream = m.model.unwrap_or_else(|| name.clone());
            if upstream.is_empty() || upstream.len() > 256 || upstream.chars().any(char::is_control) {
                return Err(bad("model must be 1 to 256 characters without controls".into()));
            }
            let max_tokens = m.max_tokens.unwrap_or(1024);
            if max_tokens == 0 {
                return Err(bad("max_tokens must be at least 1".into()));
            }
            config.models.insert(name.clone(), Model { name, provider: m.provider, upstream, max_tokens });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(name: &str) -> Option<String> {
        (name == "K").then(|| "sk-test-123".to_string())
    }

    #[test]
    fn a_full_file_resolves() {
        let c = Config::parse(
            r#"
            [providers.local]
            kind = "openai"
            base_url = "http://127.0.0.1:9/v1/"
            key_env = "K"
            timeout = "2s"
            max_retries = 3
            [providers.claude]
            kind = "anthropic"
            [models."gpt-4o"]
            provider = "local"
            [models."llama3.1:8b"]
            provider = "local"
            model = "llama3.1:8b-instruct"
            max_tokens = 64
            "#,
            &env,
        )
        .unwrap();
        let local = &c.providers["local"];
        assert_eq!(local.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(local.key.as_ref().unwrap().as_ref().unwrap().expose_secret(), "sk-test-123");
        assert_eq!((local.timeout, local.max_retries), (Duration::from_secs(2), 3));
        assert_eq!(c.providers["claude"].base_url, "https://api.anthropic.com");
        assert_eq!(c.models["gpt-4o"].upstream, "gpt-4o");
        assert_eq!(c.models["gpt-4o"].max_tokens, 1024);
        assert_eq!(c.models["llama3.1:8b"].upstream, "llama3.1:8b-instruct");
        // The key never shows in Debug.
        assert!(!format!("{c:?}").contains("sk-test-123"));
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let cases = [
            ("[providers.p]\nkind = \"openai\"\nkeyenv = \"K\"", "unknown field"),
            ("[providers.p]\nkind = \"gemini\"", "unknown variant"),
            ("[models.m]\nprovider = \"nope\"", "is not configured"),
            ("[providers.p]\nkind = \"openai\"\nbase_url = \"http://api.example.com/v1\"\nkey_env = \"K\"", "in clear"),
            ("[providers.p]\nkind = \"openai\"\nbase_url = \"https://u:p@api.example.com\"", "user name"),
            ("[providers.p]\nkind = \"openai\"\nbase_url = \"https://api.example.com/v1?key=x\"", "query"),
            ("[providers.p]\nkind = \"openai\"\nbase_url = \"ftp://x\"", "scheme"),
            ("[providers.p]\nkind = \"openai\"\nkey_file = \"relative\"", "absolute"),
            ("[providers.p]\nkind = \"openai\"\nmax_retries = 11", "max_retries"),
            ("[providers.p]\nkind = \"openai\"\n[models.\"a*\"]\nprovider = \"p\"", "invalid model name"),
        ];
        for (text, why) in cases {
            let err = Config::parse(text, &env).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
        // Plain http to loopback is fine with a key; without a key, anywhere.
        let ok = "[providers.p]\nkind = \"openai\"\nbase_url = \"http://localhost:8080/v1\"\nkey_env = \"K\"";
        assert!(Config::parse(ok, &env).is_ok());
        assert!(Config::parse("[providers.p]\nkind = \"openai\"\nbase_url = \"http://10.0.0.2/v1\"", &env).is_ok());
    }

    #[test]
    fn a_missing_key_is_a_reason_not_an_error_of_the_file() {
        let c = Config::parse("[providers.p]\nkind = \"openai\"\nkey_env = \"UNSET\"", &env).unwrap();
        assert_eq!(c.providers["p"].key.as_ref().unwrap_err(), "environment variable UNSET is not set");
    }

    #[test]
    fn key_files_must_be_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k");
        std::fs::write(&path, "sk-file\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = format!("[providers.p]\nkind = \"anthropic\"\nkey_file = \"{}\"", path.display());
        let err = Config::parse(&text, &env).unwrap().providers["p"].key.as_ref().unwrap_err().clone();
        assert!(err.contains("readable by others"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::parse(&text, &env).unwrap();
        assert_eq!(c.providers["p"].key.as_ref().unwrap().as_ref().unwrap().expose_secret(), "sk-file");
    }
}
