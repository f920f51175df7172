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

/// A directory preopen: `HOST[::GUEST][:ro|:rw]`. Without `::GUEST` the guest sees the host directory at its
/// absolute host path (a relative HOST is resolved when the grant is authorized).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    pub host: PathBuf,
    /// The guest path, absolute; `None`: the host directory's own absolute path.
    pub guest: Option<String>,
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
        let host = self.host.display();
        write!(f, "dir {host}::{}:{mode}", self.guest.clone().unwrap_or_else(|| host.to_string()))
    }
}

impl fmt::Display for EnvGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "env {}", self.name)
    }
}

impl fmt::Display for NetGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net {}", self.canonical())
    }
}

impl DirGrant {
    /// Parses `HOST[::GUEST][:ro|:rw]` (read-write unless `:ro`, as with `wasmtime run --dir`). A trailing `:WORD`
    /// must be `ro` or `rw`: anything else (`:RO`, `:readonly`) is refused rather than read as part of the path,
    /// where it would silently grant read-write. GUEST must be absolute.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid --dir `{text}`: {why}");
        let (spec, read_only) = match text.rsplit_once(':') {
            Some((spec, mode)) if !spec.ends_with(':') && !mode.is_empty() && !mode.contains('/') => match mode {
                "ro" => (spec, true),
                "rw" => (spec, false),
                other => return Err(bad(&format!("unknown mode `:{other}` (use :ro or :rw)"))),
            },
            _ => (text, false),
        };
        let (host, guest) = match spec.split_once("::") {
            Some((h, g)) => (h, Some(g.to_string())),
            None => (spec, None),
        };
        if host.is_empty() || guest.as_deref() == Some("") {
            return Err(bad("expected HOST[::GUEST][:ro]"));
        }
        if text.contains('\0') {
            return Err(bad("NUL byte in path"));
        }
        if let Some(g) = &guest
            && !g.starts_with('/')
        {
            return Err(bad(&format!("guest path `{g}` must be absolute (for example {host}::/{g})")));
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
    /// Parses `HOST:PORT`, or `[ADDR]:PORT` for IPv6, into its canonical form (see [`NetGrant::canonical`]): a name
    /// in lowercase without a trailing dot, an address as Rust prints it. A bare IPv6 address (`::1:8080`) is
    /// refused: where its address ends and its port begins is a guess.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_peer(text).map_err(|why| format!("invalid --allow-net `{text}`: {why}"))
    }

    /// [`NetGrant::parse`] with the bare reason, for callers that name the grant their own way (tokens).
    pub fn parse_peer(text: &str) -> Result<Self, String> {
        const EXPECTED: &str = "expected HOST:PORT (for IPv6, [ADDR]:PORT)";
        let (host, port) = text.rsplit_once(':').ok_or(EXPECTED)?;
        let port = port.parse::<u16>().ok().filter(|p| *p != 0).ok_or(EXPECTED)?;
        let host = if let Some(inner) = host.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(EXPECTED)?;
            let ip: std::net::Ipv6Addr =
                inner.parse().map_err(|_| format!("`{inner}` between brackets is not an IPv6 address"))?;
            ip.to_string()
        } else if host.contains(':') {
            return Err(format!("an IPv6 address needs brackets: [{host}]:{port}"));
        } else if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            ip.to_string()
        } else {
            canonical_name(host).ok_or_else(|| format!("`{host}` is not a host name or an IP address"))?
        };
        Ok(NetGrant { host, port })
    }

    /// The grant as tokens state it and requests ask for it: `host:port`, `[v6]:port`.
    pub fn canonical(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A DNS name as grants compare it: ASCII letters, digits, `-`, `_` and `.`, lowercased, without the trailing dot of
/// a fully qualified name, at most 253 characters, no empty label. `None` if `name` is not one.
pub fn canonical_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| !label.is_empty() && label.len() <= 63)
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    ok.then(|| name.to_ascii_lowercase())
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

/// A directory grant checked against the host filesystem: the directory itself, opened once.
///
/// The grant is the open handle, never the path: every sandbox built from it (the run, each `--repeat` and
/// `--parallel` copy, nested tool sandboxes, MCP calls) preopens this same directory through `/proc/self/fd`, so a
/// guest that renames the directory or swaps a path component for a symlink after authorization cannot redirect any
/// later sandbox. A granted directory nested inside another that the guest may write is safe for the same reason.
#[derive(Debug, Clone)]
pub struct AuthorizedDir {
    /// The directory's absolute path as the kernel names the open handle (what the token authorized).
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
    handle: std::sync::Arc<std::fs::File>,
}

impl AuthorizedDir {
    /// Opens `path` (following symlinks, as the operator meant) and names it by its handle. The handle's path is the
    /// directory's canonical path at the moment it was opened, so what is authorized is what was opened.
    pub fn open(path: &std::path::Path, guest: Option<&str>, read_only: bool) -> Result<AuthorizedDir, String> {
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot open host directory: {}", crate::error::one_line(&e.to_string())))?;
        let meta = file.metadata().map_err(|e| format!("cannot open host directory: {e}"))?;
        if !meta.is_dir() {
            return Err("host path is not a directory".into());
        }
        let handle = std::sync::Arc::new(file);
        let host = std::fs::read_link(fd_path(&handle))
            .map_err(|e| format!("cannot name the opened directory through /proc/self/fd (is /proc mounted?): {e}"))?;
        if !host.is_absolute() {
            return Err(format!("the opened directory has no path ({})", host.display()));
        }
        let guest = guest.map_or_else(|| host.to_string_lossy().into_owned(), str::to_string);
        Ok(AuthorizedDir { host, guest, read_only, handle })
    }

    /// The path a sandbox preopens: this process's descriptor of the directory opened at authorization.
    pub fn preopen_path(&self) -> PathBuf {
        fd_path(&self.handle)
    }

    /// The same directory with another mode (a tool's narrower view of its caller's grant).
    pub fn with_mode(&self, read_only: bool) -> AuthorizedDir {
        AuthorizedDir { read_only, ..self.clone() }
    }
}

fn fd_path(file: &std::fs::File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Something toka-host keeps for itself, which no grant may cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    /// What it is, for the refusal: `home`, `database`, `database archive`, `key file`, `compile cache`.
    pub what: &'static str,
    /// Its absolute path, symlinks resolved.
    pub path: PathBuf,
}

impl Protected {
    /// The protected locations of `home`.
    pub fn of(home: &crate::home::Home) -> Vec<Protected> {
        let what = ["home", "database", "database archive", "key file", "compile cache"];
        home.protected().into_iter().zip(what).map(|(path, what)| Protected { what, path }).collect()
    }
}

/// One network grant, authorized: the canonical `HOST:PORT` and the socket addresses the host resolved it to, in
/// the resolver's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPeer {
    pub grant: NetGrant,
    pub addrs: Vec<SocketAddr>,
}

/// The grants a sandbox is built from. Only [`authorize`] makes one.
#[derive(Debug, Clone, Default)]
pub struct Authorized {
    /// The installed package that runs (`KEY_ID/NAME`), stated to the token at the run's tool calls.
    pub plugin: Option<String>,
    pub dirs: Vec<AuthorizedDir>,
    pub env: Vec<(String, String)>,
    /// Every socket address the granted `HOST:PORT`s resolved to.
    pub net: BTreeSet<SocketAddr>,
    /// Each granted `HOST:PORT` with the addresses it resolved to at authorization: what the guest's name lookups
    /// answer (see [`crate::sandbox::net`]), and what a narrower caller can be checked against grant by grant.
    pub peers: Vec<NetPeer>,
    pub inherit_stdin: bool,
    pub state: StateGrant,
    /// The revocation id of the token that authorized these grants (empty until a token has been checked).
    pub token_id: String,
    /// The token's rate limit for the agent, if it has one.
    pub rate: Option<crate::kernel::Rate>,
    /// The verified token itself (checked again at each tool call).
    pub token: Option<std::sync::Arc<crate::token::Verified>>,
    /// The token was minted on the spot for an operator's run without `--token` (its short lifetime is a formality
    /// of that run, not a limit the operator set).
    pub local_token: bool,
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

/// Checks each requested grant and resolves it to exactly what the sandbox will hold. A directory that contains
/// or lies inside one of `protected` (toka-host's own home, database, keys or cache) is refused.
pub fn authorize(request: &GrantRequest, protected: &[Protected]) -> Result<Authorized, RunError> {
    let mut out = Authorized { inherit_stdin: request.inherit_stdin, state: request.state, ..Default::default() };
    let mut guests = BTreeSet::new();
    for dir in &request.dirs {
        let refuse = |reason: String| RunError::GrantRefused { grant: dir.to_string(), reason };
        let opened = AuthorizedDir::open(&dir.host, dir.guest.as_deref(), dir.read_only).map_err(refuse)?;
        for p in protected {
            if opened.host.starts_with(&p.path) || p.path.starts_with(&opened.host) {
                let relation = if opened.host.starts_with(&p.path) { "lies inside" } else { "contains" };
                return Err(refuse(format!(
                    "{} {relation} toka-host's {} {}; toka-host's own state is never grantable",
                    opened.host.display(),
                    p.what,
                    p.path.display()
                )));
            }
        }
        if !guests.insert(opened.guest.clone()) {
            return Err(refuse(format!("guest path `{}` is granted twice", opened.guest)));
        }
        out.dirs.push(opened);
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
        let mut resolved: Vec<SocketAddr> = Vec::new();
        for addr in addrs {
            // An IPv4-mapped IPv6 answer is the IPv4 peer; the guest's lookups never see the mapped form.
            let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
            if !resolved.contains(&addr) {
                resolved.push(addr);
            }
        }
        out.net.extend(resolved.iter().copied());
        out.peers.push(NetPeer { grant: net.clone(), addrs: resolved });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_forms() {
        let d = DirGrant::parse("/srv/data").unwrap();
        assert_eq!((d.guest.as_deref(), d.read_only), (None, false));
        let d = DirGrant::parse("/srv/data::/data:ro").unwrap();
        assert_eq!((d.host.to_str().unwrap(), d.guest.as_deref(), d.read_only), ("/srv/data", Some("/data"), true));
        let d = DirGrant::parse(".::/").unwrap();
        assert_eq!(d.guest.as_deref(), Some("/"));
        assert!(!DirGrant::parse("/srv/data::/d:rw").unwrap().read_only);
        assert!(DirGrant::parse("::/data").is_err());
        assert!(DirGrant::parse("/x::").is_err());
    }

    #[test]
    fn unknown_modes_and_relative_guests_are_refused() {
        for (text, why) in [
            ("/srv/data::/d:RO", "unknown mode `:RO`"),
            ("/srv/data:readonly", "unknown mode `:readonly`"),
            ("/srv/data::d", "guest path `d` must be absolute"),
            ("./data::data:ro", "guest path `data` must be absolute"),
        ] {
            let err = DirGrant::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn a_grant_is_the_directory_opened_not_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let (granted, other) = (tmp.path().join("granted"), tmp.path().join("other"));
        std::fs::create_dir(&granted).unwrap();
        std::fs::create_dir(&other).unwrap();
        std::fs::write(granted.join("mine"), "").unwrap();
        let req =
            GrantRequest { dirs: vec![DirGrant::parse(granted.to_str().unwrap()).unwrap()], ..Default::default() };
        let a = authorize(&req, &[]).unwrap();
        assert_eq!(a.dirs[0].host, granted.canonicalize().unwrap());
        assert_eq!(a.dirs[0].guest, granted.canonicalize().unwrap().to_str().unwrap());
        // Swap the granted path for a symlink to another directory: the grant still opens the original.
        std::fs::rename(&granted, tmp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&other, &granted).unwrap();
        assert!(a.dirs[0].preopen_path().join("mine").exists());
        assert!(!granted.join("mine").exists(), "the path now leads elsewhere; the handle does not");
    }

    #[test]
    fn own_state_is_never_grantable() {
        let tmp = tempfile::tempdir().unwrap();
        let home = crate::home::Home::resolve(Some(&tmp.path().join("home")), None, None, true);
        home.open_db().unwrap();
        let protected = Protected::of(&home);
        let outside = tmp.path().join("data");
        std::fs::create_dir(&outside).unwrap();
        for (dir, refused) in [(tmp.path().to_path_buf(), true), (home.dir.clone(), true), (outside, false)] {
            let req =
                GrantRequest { dirs: vec![DirGrant::parse(dir.to_str().unwrap()).unwrap()], ..Default::default() };
            match authorize(&req, &protected) {
                Ok(_) => assert!(!refused, "{} was granted", dir.display()),
                Err(e) => {
                    assert!(refused, "{}: {e}", dir.display());
                    assert!(e.to_string().contains("toka-host's home"), "{e}");
                    assert_eq!(e.outcome().exit_code(), 72);
                }
            }
        }
    }

    #[test]
    fn env_and_net_forms() {
        assert_eq!(EnvGrant::parse("A=b=c").unwrap().value.as_deref(), Some("b=c"));
        assert_eq!(EnvGrant::parse("LANG").unwrap().value, None);
        assert!(EnvGrant::parse("=x").is_err());
        assert_eq!(NetGrant::parse("example.com:443").unwrap().port, 443);
        assert_eq!(NetGrant::parse("[::1]:80").unwrap().host, "::1");
        assert_eq!(NetGrant::parse("[::1]:80").unwrap().canonical(), "[::1]:80");
        assert_eq!(NetGrant::parse("LocalHost.:80").unwrap().canonical(), "localhost:80");
        assert_eq!(NetGrant::parse("127.0.0.1:80").unwrap().canonical(), "127.0.0.1:80");
        let bare = NetGrant::parse("::1:80").unwrap_err();
        assert!(bare.contains("needs brackets: [::1]:80"), "{bare}");
        for bad in ["[::1:80", "[x]:80", "a..b:80", "a/b:80", ":80", "[]:80"] {
            assert!(NetGrant::parse(bad).is_err(), "{bad}");
        }
        assert!(NetGrant::parse("example.com").is_err());
        assert!(NetGrant::parse("example.com:0").is_err());
        assert!(NetGrant::parse("example.com:99999").is_err());
    }

    #[test]
    fn refusals_name_the_grant() {
        let req =
            GrantRequest { dirs: vec![DirGrant::parse("/definitely/not/here::/data").unwrap()], ..Default::default() };
        let err = authorize(&req, &[]).unwrap_err().to_string();
        assert!(err.starts_with("grant refused: dir /definitely/not/here::/data:rw: cannot open"), "{err}");
        let req = GrantRequest { env: vec![EnvGrant::parse("TOKA_SURELY_UNSET_VAR").unwrap()], ..Default::default() };
        assert!(authorize(&req, &[]).unwrap_err().to_string().contains("env TOKA_SURELY_UNSET_VAR"));
    }

    #[test]
    fn nothing_by_default() {
        let a = authorize(&GrantRequest::default(), &[]).unwrap();
        assert!(a.dirs.is_empty() && a.env.is_empty() && a.net.is_empty() && !a.inherit_stdin);
    }
}
