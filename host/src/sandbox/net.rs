//! The network a sandbox sees: the peers it may reach (the socket address check) and the names it may look up (its
//! own `wasi:sockets/ip-name-lookup`).
//!
//! A network grant means that peer only. Connections, datagrams and binds are checked against the addresses the
//! grants resolved to when they were authorized ([`crate::grants::Authorized::net`]). Name lookups are answered
//! from the same authorization ([`crate::grants::Authorized::peers`]): a name that a grant covers resolves to exactly
//! the addresses the host resolved for that grant, an IP literal answers itself if it is one of them, and anything
//! else fails as `name-unresolvable` and is noted as a denial. This module must never resolve a name on a guest's
//! behalf: that would let a guest with any network grant probe the host's resolver and network, and leak data through
//! the names it asks for.
//!
//! wasmtime-wasi's own resolver cannot be told which names to answer (its resolve stream is private), so
//! [`add_to_linker`] redefines the whole `wasi:sockets/ip-name-lookup` instance over the one that
//! `wasmtime_wasi::p2::add_to_linker_async` defined, with a resource of its own for `resolve-address-stream`, and
//! [`add_p3_to_linker`] does the same for WASI 0.3's `ip-name-lookup@0.3.0` over `wasmtime_wasi::p3::add_to_linker`
//! (one async `resolve-addresses` function there): a guest gets no more through 0.3 than through 0.2.

use super::SandboxState;
use crate::grants::{NetPeer, canonical_name};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress};
use wasmtime_wasi::p2::{DynPollable, Network, Pollable};
use wasmtime_wasi::sockets::SocketAddrUse;

/// The interface redefined here, under the exact name (and version) wasmtime-wasi's bindings link it as. Guests
/// importing any compatible 0.2.x version reach it through the linker's semver matching.
pub const IP_NAME_LOOKUP: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// The WASI 0.3 twin of [`IP_NAME_LOOKUP`], as `wasmtime_wasi::p3` links it.
pub const IP_NAME_LOOKUP_P3: &str = "wasi:sockets/ip-name-lookup@0.3.0";

/// Longest name a denial quotes (a guest chooses the name; the list of denials is stored in the run's events).
const MAX_QUOTED: usize = 80;

/// What a sandbox's name lookups may answer: each granted name with its authorized addresses.
#[derive(Debug, Default)]
pub struct Names {
    /// Canonical name -> its addresses, in the order the host's resolver gave them, without repeats.
    by_name: BTreeMap<String, Vec<IpAddr>>,
    /// Every authorized address (an IP literal among them answers itself).
    addrs: BTreeSet<IpAddr>,
    /// Whether the sandbox has any network grant at all.
    network: bool,
}

impl Names {
    /// The names of `peers`; `network` says whether the sandbox has any network grant (without one, every lookup
    /// is refused outright, as wasmtime-wasi refuses it when lookups are off).
    pub fn new(peers: &[NetPeer], network: bool) -> Names {
        let mut names = Names { network, ..Names::default() };
        for peer in peers {
            let entry = names.by_name.entry(peer.grant.host.clone()).or_default();
            for addr in &peer.addrs {
                if !entry.contains(&addr.ip()) {
                    entry.push(addr.ip());
                }
                names.addrs.insert(addr.ip());
            }
        }
        names
    }

    /// The answer to a guest's `resolve-addresses(name)`: the authorized addresses, or the error code and the denial
    /// to note.
    pub fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, (ErrorCode, String)> {
        let quoted = quote(name);
        if !self.network {
            let denial = format!("resolve {quoted}: not granted (no --allow-net: name lookups are off)");
            return Err((ErrorCode::PermanentResolverFailure, denial));
        }
        let literal = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
        let found = match literal.parse::<IpAddr>() {
            Ok(ip) => self.addrs.contains(&ip.to_canonical()).then(|| vec![ip.to_canonical()]),
            Err(_) => canonical_name(name).and_then(|n| self.by_name.get(&n).cloned()),
        };
        found.filter(|addrs| !addrs.is_empty()).ok_or_else(|| {
            (ErrorCode::NameUnresolvable, format!("resolve {quoted}: not granted (--allow-net {quoted}:PORT)"))
        })
    }
}

/// A guest-chosen name as a denial shows it: as is if it is a plausible host name, else escaped and shortened.
fn quote(name: &str) -> String {
    match canonical_name(name) {
        Some(n) if n.len() <= MAX_QUOTED => name.to_string(),
        _ => {
            let cut: String = name.chars().take(MAX_QUOTED).collect();
            let more = if cut.len() < name.len() { "..." } else { "" };
            format!("{cut:?}{more}")
        }
    }
}

/// The addresses of one lookup, handed out one by one. They are known before the lookup starts, so the stream is
/// always ready.
pub struct NameStream(std::vec::IntoIter<IpAddr>);

#[async_trait::async_trait]
impl Pollable for NameStream {
    async fn ready(&mut self) {}
}

/// Redefines `wasi:sockets/ip-name-lookup` (see the module documentation). Call it after wasmtime-wasi's own
/// `add_to_linker_async`: it fails if that did not define the instance under [`IP_NAME_LOOKUP`], since a second,
/// unshadowed definition would leave the guest on wasmtime-wasi's resolver.
pub fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    replace(linker, IP_NAME_LOOKUP, define)
}

/// Defines `instance` anew with `define`, over the definition wasmtime-wasi made; fails if there was none.
fn replace(
    linker: &mut Linker<SandboxState>,
    instance: &str,
    define: fn(&mut Linker<SandboxState>) -> wasmtime::Result<()>,
) -> wasmtime::Result<()> {
    // Without shadowing, defining a name that is already there fails: that is the proof that the instance being
    // replaced is the one guests are linked to.
    let probe = linker
        .instance(instance)?
        .func_wrap("resolve-addresses", |_: StoreContextMut<'_, SandboxState>, (): ()| -> wasmtime::Result<()> {
            Ok(())
        });
    if probe.is_ok() {
        wasmtime::bail!("wasmtime-wasi did not define {instance}: cannot replace its name resolver");
    }
    linker.allow_shadowing(true);
    let defined = define(linker);
    linker.allow_shadowing(false);
    defined
}

fn define(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    let mut lookup = linker.instance(IP_NAME_LOOKUP)?;
    lookup.resource("resolve-address-stream", ResourceType::host::<NameStream>(), |mut store, rep| {
        store.data_mut().ctx().table.delete(Resource::<NameStream>::new_own(rep))?;
        Ok(())
    })?;
    lookup.func_wrap(
        "resolve-addresses",
        |mut store: StoreContextMut<'_, SandboxState>, (network, name): (Resource<Network>, String)| {
            let state = store.data_mut();
            // The network handle is the capability to look names up; it must be a live one.
            state.ctx().table.get(&network)?;
            let answer = match state.names.resolve(&name) {
                Ok(addrs) => Ok(state.ctx().table.push(NameStream(addrs.into_iter()))?),
                Err((code, denial)) => {
                    state.denied.note(denial);
                    Err(code)
                }
            };
            Ok((answer,))
        },
    )?;
    lookup.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store: StoreContextMut<'_, SandboxState>, (stream,): (Resource<NameStream>,)| {
            let next = store.data_mut().ctx().table.get_mut(&stream)?.0.next().map(IpAddress::from);
            Ok((Ok::<_, ErrorCode>(next),))
        },
    )?;
    lookup.func_wrap(
        "[method]resolve-address-stream.subscribe",
        |mut store: StoreContextMut<'_, SandboxState>, (stream,): (Resource<NameStream>,)| {
            let pollable: Resource<DynPollable> = wasmtime_wasi::p2::subscribe(store.data_mut().ctx().table, stream)?;
            Ok((pollable,))
        },
    )?;
    Ok(())
}

/// Redefines WASI 0.3's `wasi:sockets/ip-name-lookup@0.3.0` (see the module documentation), after
/// `wasmtime_wasi::p3::add_to_linker`; fails, as [`add_to_linker`] does, if that did not define it.
pub fn add_p3_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    replace(linker, IP_NAME_LOOKUP_P3, define_p3)
}

fn define_p3(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p3::bindings::sockets::ip_name_lookup::ErrorCode as P3ErrorCode;
    use wasmtime_wasi::p3::bindings::sockets::types::IpAddress as P3IpAddress;
    let mut lookup = linker.instance(IP_NAME_LOOKUP_P3)?;
    lookup.func_wrap_concurrent("resolve-addresses", |accessor, (name,): (String,)| {
        Box::pin(async move {
            // Answered at once from the grants: nothing to wait for, so the store is held only for this closure.
            let answer = accessor.with(|mut access| {
                let state: &mut SandboxState = access.data_mut();
                match state.names.resolve(&name) {
                    Ok(addrs) => Ok(addrs.into_iter().map(P3IpAddress::from).collect::<Vec<_>>()),
                    Err((code, denial)) => {
                        state.denied.note(denial);
                        Err(match code {
                            ErrorCode::NameUnresolvable => P3ErrorCode::NameUnresolvable,
                            _ => P3ErrorCode::PermanentResolverFailure,
                        })
                    }
                }
            });
            Ok((answer,))
        })
    })
}

/// The socket policy: connect or send only to a granted peer; bind only the implicit wildcard bind that a
/// connect or a UDP send performs; receive datagrams only from a granted peer; never listen or accept.
pub fn socket_allowed(allowed: &BTreeSet<SocketAddr>, addr: SocketAddr, usage: SocketAddrUse) -> bool {
    match usage {
        SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => allowed.contains(&addr),
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
            !allowed.is_empty() && addr.ip().is_unspecified() && addr.port() == 0
        }
        SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
    }
}

/// What a refused socket address use is noted as (see [`super::denied`]).
pub fn socket_denial(addr: SocketAddr, usage: SocketAddrUse) -> String {
    let missing = format!("not granted (--allow-net {addr})");
    match usage {
        SocketAddrUse::TcpConnect => format!("connect to {addr}: {missing}"),
        SocketAddrUse::UdpSend => format!("send to {addr}: {missing}"),
        SocketAddrUse::UdpReceive => format!("receive from {addr}: {missing}"),
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
            format!("bind {addr}: only the wildcard bind of a granted connection is allowed")
        }
        SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => format!("listen on {addr}: never granted"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::NetGrant;

    #[test]
    fn socket_policy() {
        let granted: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let allowed = BTreeSet::from([granted]);
        assert!(socket_allowed(&allowed, granted, SocketAddrUse::TcpConnect));
        assert!(!socket_allowed(&allowed, "127.0.0.1:8081".parse().unwrap(), SocketAddrUse::TcpConnect));
        assert!(!socket_allowed(&allowed, granted, SocketAddrUse::TcpListen));
        assert!(socket_allowed(&allowed, "0.0.0.0:0".parse().unwrap(), SocketAddrUse::TcpBind));
        assert!(!socket_allowed(&allowed, "0.0.0.0:8080".parse().unwrap(), SocketAddrUse::TcpBind));
        assert!(!socket_allowed(&BTreeSet::new(), "0.0.0.0:0".parse().unwrap(), SocketAddrUse::TcpBind));
    }

    fn peer(grant: &str, addrs: &[&str]) -> NetPeer {
        NetPeer { grant: NetGrant::parse(grant).unwrap(), addrs: addrs.iter().map(|a| a.parse().unwrap()).collect() }
    }

    #[test]
    fn lookups_answer_granted_names_only() {
        let names = Names::new(
            &[
                peer("api.example.com:443", &["192.0.2.7:443", "[2001:db8::7]:443"]),
                peer("api.example.com:80", &["192.0.2.7:80"]),
                peer("[::1]:8080", &["[::1]:8080"]),
            ],
            true,
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Granted: the authorized addresses, whatever the case or a trailing dot; one copy of each.
        for name in ["api.example.com", "API.Example.com.", "api.example.com."] {
            assert_eq!(names.resolve(name).unwrap(), [ip("192.0.2.7"), ip("2001:db8::7")], "{name}");
        }
        // Literals answer themselves if granted.
        assert_eq!(names.resolve("::1").unwrap(), [ip("::1")]);
        assert_eq!(names.resolve("[::1]").unwrap(), [ip("::1")]);
        assert_eq!(names.resolve("192.0.2.7").unwrap(), [ip("192.0.2.7")]);
        // Anything else: unresolvable, and a denial that names the grant to ask for.
        for name in ["example.com", "x.api.example.com", "api.example.co", "127.0.0.1", "localhost", ""] {
            let (code, denial) = names.resolve(name).unwrap_err();
            assert!(matches!(code, ErrorCode::NameUnresolvable), "{name}");
            assert!(denial.starts_with("resolve ") && denial.contains("not granted (--allow-net "), "{denial}");
        }
        assert_eq!(
            names.resolve("evil.example").unwrap_err().1,
            "resolve evil.example: not granted (--allow-net evil.example:PORT)"
        );
        // A hostile name is quoted escaped and shortened.
        let (_, denial) = names.resolve(&format!("a\nb{}", "x".repeat(500))).unwrap_err();
        assert!(!denial.contains('\n') && denial.len() < 250, "{denial}");
    }

    #[test]
    fn without_a_network_grant_every_lookup_is_refused() {
        let names = Names::new(&[], false);
        let (code, denial) = names.resolve("localhost").unwrap_err();
        assert!(matches!(code, ErrorCode::PermanentResolverFailure));
        assert!(denial.contains("no --allow-net"), "{denial}");
    }
}
