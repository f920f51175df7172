//! A tool call's rights: the tool's declared needs intersected with what the caller has.
//!
//! Declared needs use the host's grant syntax with wildcards where a tool cannot know its caller's resources:
//! `fs:/:ro` (read any directory the caller can read), `fs:/srv/data:rw`, `env:LANG`, `net:*:*`, `net:*:443`,
//! `net:10.0.0.5:8080`. A caller's directory is passed on if a declared `fs` path covers its guest path; read-write
//! only if both sides are read-write. A caller's network address is passed on if a declared `net` pattern matches
//! it. An environment variable is passed on if it is declared by name. State and stdin are never passed on. A
//! declared `llm:MODEL` (or pattern, `llm:gpt-*`) lets the tool call those models through its caller's access,
//! within the caller's token (see [`crate::llm::Caller::confined_to`]).

use crate::grants::Authorized;
use std::net::SocketAddr;

/// One declared need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declared {
    Fs {
        path: String,
        read_write: bool,
    },
    Env(String),
    Net {
        host: Option<String>,
        port: Option<u16>,
    },
    /// A model, or a pattern ending in `*`.
    Llm(String),
}

impl Declared {
    pub fn parse(text: &str) -> Result<Declared, String> {
        let bad = |why: &str| format!("invalid declared grant `{text}`: {why}");
        let (kind, rest) = text.split_once(':').ok_or_else(|| bad("expected KIND:VALUE"))?;
        match kind {
            "fs" => {
                let (path, mode) = rest.rsplit_once(':').ok_or_else(|| bad("expected fs:PATH:ro|rw"))?;
                let read_write = match mode {
                    "ro" => false,
                    "rw" => true,
                    _ => return Err(bad("mode must be ro or rw")),
                };
                Ok(Declared::Fs { path: crate::token::normalize_dir(path).map_err(|e| bad(&e))?, read_write })
            }
            "env" if !rest.is_empty() && !rest.contains(['=', '\0']) => Ok(Declared::Env(rest.to_string())),
            "net" => {
                let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("expected net:HOST:PORT"))?;
                let host = match host {
                    "" => return Err(bad("empty host")),
                    "*" => None,
                    h => Some(h.trim_matches(['[', ']']).to_string()),
                };
                let port = match port {
                    "*" => None,
                    p => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("bad port"))?),
                };
                Ok(Declared::Net { host, port })
            }
            "llm" => {
                let g = crate::token::Grant::parse(text).map_err(|e| bad(&e))?;
                Ok(Declared::Llm(g.value))
            }
            _ => Err(bad("tools may declare fs, env, net and llm needs")),
        }
    }
}

/// Whether `dir` (a guest path) lies at or under the normalized `declared` path.
fn covers(declared: &str, guest: &str) -> bool {
    match crate::token::normalize_dir(guest) {
        Ok(g) => g.starts_with(declared),
        Err(_) => false,
    }
}

/// The grants of a tool call: `declared` ∩ `caller`. Directories keep the caller's guest paths, so a path the
/// caller hands the tool means the same file in both sandboxes.
pub fn intersect(declared: &[Declared], caller: &Authorized) -> Authorized {
    let mut out = Authorized::default();
    for dir in &caller.dirs {
        let mut best: Option<bool> = None;
        for d in declared {
            if let Declared::Fs { path, read_write } = d
                && covers(path, &dir.guest)
            {
                let rw = *read_write && !dir.read_only;
                best = Some(best.unwrap_or(false) || rw);
            }
        }
        if let Some(rw) = best {
            out.dirs.push(dir.with_mode(!rw));
        }
    }
    for (name, value) in &caller.env {
        if declared.iter().any(|d| matches!(d, Declared::Env(n) if n == name)) {
            out.env.push((name.clone(), value.clone()));
        }
    }
    for addr in &caller.net {
        if declared.iter().any(|d| net_matches(d, addr)) {
            out.net.insert(*addr);
        }
    }
    // A granted name resolves in the tool's sandbox to those of its addresses the tool may reach, if any.
    for peer in &caller.peers {
        let addrs: Vec<_> = peer.addrs.iter().filter(|a| out.net.contains(a)).copied().collect();
        if !addrs.is_empty() {
            out.peers.push(crate::grants::NetPeer { grant: peer.grant.clone(), addrs });
        }
    }
    out
}

fn net_matches(d: &Declared, addr: &SocketAddr) -> bool {
    let Declared::Net { host, port } = d else { return false };
    let port_ok = port.is_none_or(|p| p == addr.port());
    // A named host cannot be matched against an address without resolving it again; only `*` and literal
    // addresses match, which is what the built-in tools declare.
    let host_ok = match host {
        None => true,
        Some(h) => h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip == addr.ip()),
    };
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::AuthorizedDir;

    fn caller() -> Authorized {
        let tmp = std::env::temp_dir();
        Authorized {
            dirs: vec![
                AuthorizedDir::open(&tmp, Some("/data"), false).unwrap(),
                AuthorizedDir::open(&tmp, Some("/logs"), true).unwrap(),
            ],
            env: vec![("LANG".into(), "C".into()), ("SECRET".into(), "x".into())],
            net: ["127.0.0.1:8080".parse().unwrap(), "10.0.0.1:443".parse().unwrap()].into(),
            inherit_stdin: true,
            state: crate::sandbox::state::StateGrant::ReadWrite,
            ..Authorized::default()
        }
    }

    fn d(list: &[&str]) -> Vec<Declared> {
        list.iter().map(|g| Declared::parse(g).unwrap()).collect()
    }

    #[test]
    fn a_tool_gets_at_most_what_it_declares_and_the_caller_has() {
        let none = intersect(&[], &caller());
        assert!(none.dirs.is_empty() && none.env.is_empty() && none.net.is_empty());
        assert!(!none.inherit_stdin && none.state == crate::sandbox::state::StateGrant::None);

        let reader = intersect(&d(&["fs:/:ro"]), &caller());
        assert_eq!(reader.dirs.len(), 2);
        assert!(reader.dirs.iter().all(|d| d.read_only), "ro declared: ro everywhere");

        let writer = intersect(&d(&["fs:/:rw"]), &caller());
        assert!(!writer.dirs[0].read_only, "rw declared and rw granted");
        assert!(writer.dirs[1].read_only, "rw declared but the caller has ro");

        let narrow = intersect(&d(&["fs:/logs:rw"]), &caller());
        assert_eq!(narrow.dirs.len(), 1);
        assert_eq!(narrow.dirs[0].guest, "/logs");

        let env = intersect(&d(&["env:LANG", "env:HOME"]), &caller());
        assert_eq!(env.env, vec![("LANG".to_string(), "C".to_string())]);

        assert_eq!(intersect(&d(&["net:*:*"]), &caller()).net.len(), 2);
        assert_eq!(intersect(&d(&["net:*:443"]), &caller()).net.len(), 1);
        assert_eq!(intersect(&d(&["net:127.0.0.1:8080"]), &caller()).net.len(), 1);
        assert!(intersect(&d(&["net:example.com:8080"]), &caller()).net.is_empty());
    }

    #[test]
    fn a_tool_resolves_only_the_names_of_the_peers_it_may_reach() {
        let peer = |g: &str, addrs: &[&str]| crate::grants::NetPeer {
            grant: crate::grants::NetGrant::parse(g).unwrap(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        };
        let mut with_names = caller();
        with_names.peers = vec![peer("localhost:8080", &["127.0.0.1:8080"]), peer("api.test:443", &["10.0.0.1:443"])];
        let all = intersect(&d(&["net:*:*"]), &with_names);
        assert_eq!(all.peers, with_names.peers);
        let https = intersect(&d(&["net:*:443"]), &with_names);
        assert_eq!(https.peers, vec![peer("api.test:443", &["10.0.0.1:443"])]);
        assert!(intersect(&d(&["fs:/:ro"]), &with_names).peers.is_empty());
    }

    #[test]
    fn declared_syntax() {
        for bad in ["fs:relative:ro", "fs:/x:rx", "env:", "net:host", "net::80", "net:*:0", "state:rw", "stdin", "x"] {
            assert!(Declared::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Declared::parse("llm:gpt-*").unwrap(), Declared::Llm("gpt-*".into()));
        for bad in ["llm:", "llm:a*b", "llm:a b"] {
            assert!(Declared::parse(bad).is_err(), "{bad}");
        }
    }
}
