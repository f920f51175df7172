//! The rights a run asks for (`--dir`, `--env`, `--allow-net`, `--inherit-stdin`) and their authorization.
//!
//! Nothing is granted by default. A request is parsed from its CLI form, then authorized before the guest starts:
//! a request that cannot be honoured exactly (a missing directory, an unset variable, an address that does not
//! resolve) is refused with an error naming the grant, never silently dropped or widened. The sandbox is built from
//! the [`Authorized`] set only. This module must never grant anything that was not asked for.

use crate::error::RunError;
pub use crate::sandbox::state::StateGrant;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// A directory preopen: `HOST[::GUEST][:ro|:rw]`. Without `::GUEST` the guest sees the host path itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// An environment variable: `NAME=VALUE`, or `NAME` to pass the host's value through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvGrant {
    pub name: String,
    pub value: Option<String>,
}

/// A network peer the guest may connect to: `HOST:PORT` (TCP connect and UDP send to exactly that peer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetGrant {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for DirGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.read_only { "ro" } else { "rw" };
        write!(f, "dir {}::{}:{mode}", self.host.display(), self.guest)
    }
}

impl fmt::Display for EnvGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "env {}", self.name)
    }
}

impl fmt::Display for NetGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net {}:{}", self.host, self.port)
    }
}

impl DirGrant {
    /// Parses `HOST[::GUEST][:ro|:rw]` (read-write unless `:ro`, as with `wasmtime run --dir`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (spec, read_only) = if let Some(s) = text.strip_suffix(":ro") {
            (s, true)
        } else if let Some(s) = text.strip_suffix(":rw") {
            (s, false)
        } else {
            (text, false)
        };
        let (host, guest) = match spec.split_once("::") {
            Some((h, g)) => (h, g.to_string()),
            None => (spec, spec.to_string()),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(format!("invalid --dir `{text}`: expected HOST[::GUEST][:ro]"));
        }
        if guest.contains('\0') || host.contains('\0') {
            return Err(format!("invalid --dir `{text}`: NUL byte in path"));
        }
        Ok(DirGrant { host: PathBuf::from(host), guest, read_only })
    }
}

impl EnvGrant {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, value) = match text.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (text, None),
        };
        if name.is_empty() || name.contains('\0') || value.as_deref().is_some_and(|v| v.contains('\0')) {
            return Err(format!("invalid --env `{text}`: expected NAME[=VALUE]"));
        }
        Ok(EnvGrant { name: name.to_string(), value })
    }
}

impl NetGrant {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("invalid --allow-net `{text}`: expected HOST:PORT (for IPv6, [ADDR]:PORT)");
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(NetGrant { host: host.to_string(), port })
    }
}

/// Everything a run asks for, as parsed from the command line.
#[derive(Debug, Clone, Default)]
pub struct GrantRequest {
    pub dirs: Vec<DirGrant>,
    pub env: Vec<EnvGrant>,
    pub net: Vec<NetGrant>,
    pub inherit_stdin: bool,
    /// Access to the agent's persistent state (`--state ro|rw`).
    pub state: StateGrant,
}

/// A directory grant checked against the host filesystem.
#[derive(Debug, Clone)]
pub struct AuthorizedDir {
    /// The canonical host path (symlinks resolved once, here, so the preopen is exactly what was checked).
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// The grants a sandbox is built from. Only [`authorize`] makes one.
#[derive(Debug, Clone, Default)]
pub struct Authorized {
    pub dirs: Vec<AuthorizedDir>,
    pub env: Vec<(String, String)>,
    /// Every socket address the granted `HOST:PORT`s resolved to.
    pub net: BTreeSet<SocketAddr>,
    pub inherit_stdin: bool,
    pub state: StateGrant,
    /// The revocation id of the token that authorized these grants (empty until a token has been checked).
    pub token_id: String,
    /// The token's rate limit for the agent, if it has one.
    pub rate: Option<crate::kernel::Rate>,
    /// The verified token itself (checked again at each tool call).
    pub token: Option<std::sync::Arc<crate::token::Verified>>,
}

impl Authorized {
    /// The grants as the event log records them.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "dirs": self.dirs.iter().map(|d| format!("{}::{}:{}", d.host.display(), d.guest, if d.read_only { "ro" } else { "rw" })).collect::<Vec<_>>(),
            "env": self.env.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            "net": self.net.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "stdin": self.inherit_stdin,
            "state": match self.state { StateGrant::None => "none", StateGrant::ReadOnly => "ro", StateGrant::ReadWrite => "rw" },
        })
    }
}

/// Parses `--state ro|rw`.
pub fn parse_state(text: &str) -> Result<StateGrant, String> {
    match text {
        "ro" => Ok(StateGrant::ReadOnly),
        "rw" => Ok(StateGrant::ReadWrite),
        _ => Err(format!("invalid --state `{text}`: expected ro or rw")),
    }
}

/// Checks each requested grant and resolves it to exactly what the sandbox will hold.
pub fn authorize(request: &GrantRequest) -> Result<Authorized, RunError> {
    let mut out = Authorized { inherit_stdin: request.inherit_stdin, state: request.state, ..Default::default() };
    let mut guests = BTreeSet::new();
    for dir in &request.dirs {
        let refuse = |reason: String| RunError::GrantRefused { grant: dir.to_string(), reason };
        let host = dir
            .host
            .canonicalize()
            .map_err(|e| refuse(format!("cannot open host directory: {}", crate::error::one_line(&e.to_string()))))?;
        if !host.is_dir() {
            return Err(refuse("host path is not a directory".into()));
        }
        if !guests.insert(dir.guest.clone()) {
            return Err(refuse(format!("guest path `{}` is granted twice", dir.guest)));
        }
        out.dirs.push(AuthorizedDir { host, guest: dir.guest.clone(), read_only: dir.read_only });
    }
    for env in &request.env {
        let value = match &env.value {
            Some(v) => v.clone(),
            None => std::env::var(&env.name).map_err(|_| RunError::GrantRefused {
                grant: env.to_string(),
                reason: "not set in the host environment (use NAME=VALUE to set it)".into(),
            })?,
        };
        out.env.retain(|(n, _)| n != &env.name);
        out.env.push((env.name.clone(), value));
    }
    for net in &request.net {
        let addrs = (net.host.as_str(), net.port).to_socket_addrs().map_err(|e| RunError::GrantRefused {
            grant: net.to_string(),
            reason: format!("cannot resolve: {}", crate::error::one_line(&e.to_string())),
        })?;
        out.net.extend(addrs);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_forms() {
        let d = DirGrant::parse("/srv/data").unwrap();
        assert_eq!((d.guest.as_str(), d.read_only), ("/srv/data", false));
        let d = DirGrant::parse("/srv/data::/data:ro").unwrap();
        assert_eq!((d.host.to_str().unwrap(), d.guest.as_str(), d.read_only), ("/srv/data", "/data", true));
        let d = DirGrant::parse(".::/").unwrap();
        assert_eq!(d.guest, "/");
        assert!(DirGrant::parse("::/data").is_err());
        assert!(DirGrant::parse("/x::").is_err());
    }

    #[test]
    fn env_and_net_forms() {
        assert_eq!(EnvGrant::parse("A=b=c").unwrap().value.as_deref(), Some("b=c"));
        assert_eq!(EnvGrant::parse("LANG").unwrap().value, None);
        assert!(EnvGrant::parse("=x").is_err());
        assert_eq!(NetGrant::parse("example.com:443").unwrap().port, 443);
        assert_eq!(NetGrant::parse("[::1]:80").unwrap().host, "::1");
        assert!(NetGrant::parse("example.com").is_err());
        assert!(NetGrant::parse("example.com:0").is_err());
        assert!(NetGrant::parse("example.com:99999").is_err());
    }

    #[test]
    fn refusals_name_the_grant() {
        let req =
            GrantRequest { dirs: vec![DirGrant::parse("/definitely/not/here::/data").unwrap()], ..Default::default() };
        let err = authorize(&req).unwrap_err().to_string();
        assert!(err.starts_with("grant refused: dir /definitely/not/here::/data:rw: cannot open"), "{err}");
        let req = GrantRequest { env: vec![EnvGrant::parse("TOKA_SURELY_UNSET_VAR").unwrap()], ..Default::default() };
        assert!(authorize(&req).unwrap_err().to_string().contains("env TOKA_SURELY_UNSET_VAR"));
    }

    #[test]
    fn nothing_by_default() {
        let a = authorize(&GrantRequest::default()).unwrap();
        assert!(a.dirs.is_empty() && a.env.is_empty() && a.net.is_empty() && !a.inherit_stdin);
    }
}
