//! `toka-host registry`: serve a package registry, or name the registries this home installs from (each with the
//! key its index must be signed with).

use crate::home::Home;
use crate::plugin::PluginError;
use crate::plugin::index::{Registries, Trusted};
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct RegistryCommand {
    #[command(subcommand)]
    pub action: RegistryAction,
}

#[derive(Debug, Subcommand)]
pub enum RegistryAction {
    /// Serve a registry from DIR: signed index, search, downloads, publish and yank (tokens from this home's keys
    /// granting publish:NAME or publish:*).
    Serve {
        /// Where the registry keeps its packages, index and signing key.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The registry's name (in its index).
        #[arg(long, default_value = "local")]
        name: String,
        /// The address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7879")]
        addr: SocketAddr,
        /// Largest package accepted.
        #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::units::parse_size)]
        max_body: u64,
        #[command(flatten)]
        connections: crate::commands::serve::ConnectionArgs,
    },
    /// Print the public key of the registry in DIR (what clients pass to `registry add --key`).
    Key {
        /// The registry's directory (as given to `registry serve --dir`).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Install from the registry at URL, whose index must be signed by KEY (64 hex digits).
    Add {
        /// A name for it in this home.
        name: String,
        /// Its address, http(s)://HOST:PORT.
        url: String,
        /// The registry's public key (`toka-host registry key`): its index must be signed by it.
        #[arg(long)]
        key: String,
    },
    /// The registries this home uses.
    List,
    /// Forget a registry.
    Remove {
        /// The registry's name in this home.
        name: String,
    },
}

impl RegistryCommand {
    pub fn execute(self, home: &Home) -> i32 {
        crate::plugin::exit_code_of(self.run(home))
    }

    fn run(self, home: &Home) -> Result<(), PluginError> {
        match self.action {
            RegistryAction::Serve { dir, name, addr, max_body, connections } => {
                crate::commands::init_logging("text");
                let registry = crate::plugin::server::Registry::open(dir, &name, home.clone())?;
                let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(PluginError::host)?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| PluginError::host(format!("cannot listen on {addr}: {e}")))?;
                    let local = listener.local_addr().map_err(PluginError::host)?;
                    println!("toka-host: registry {name} serving on http://{local} (key {})", registry.public_hex());
                    let app = crate::plugin::server::router(
                        Arc::new(registry),
                        usize::try_from(max_body).unwrap_or(usize::MAX),
                    );
                    let limits = connections.limits();
                    let stop = crate::commands::serve::shutdown_signal();
                    crate::http::serve(listener, app, limits, stop, std::time::Duration::from_secs(5))
                        .await
                        .map_err(PluginError::host)
                })
            }
            RegistryAction::Key { dir } => {
                let key = crate::plugin::publisher::PublisherKey::load_at(&dir.join("registry-key.json"))?;
                println!("{}", key.public_hex());
                Ok(())
            }
            RegistryAction::Add { name, url, key } => {
                crate::plugin::manifest::check_name("registry name", &name)?;
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(PluginError::Invalid(format!("`{url}` is not an http(s) URL")));
                }
                let public = crate::plugin::publisher::parse_public(&key).map_err(PluginError::Invalid)?;
                Registries::update(&home.dir, |r| {
                    if r.registries.iter().any(|t| t.name == name) {
                        return Err(PluginError::Invalid(format!("registry {name} exists (registry remove first)")));
                    }
                    r.registries.push(Trusted {
                        name: name.clone(),
                        url: url.trim_end_matches('/').to_string(),
                        public_key: hex::encode(public.to_bytes()),
                        seen_version: 0,
                        seen_time_ms: 0,
                    });
                    Ok(())
                })?;
                println!("added registry {name} at {url}");
                Ok(())
            }
            RegistryAction::List => {
                for r in Registries::load(&home.dir)?.registries {
                    println!("{:<16} {} key {} (index version {} seen)", r.name, r.url, r.public_key, r.seen_version);
                }
                Ok(())
            }
            RegistryAction::Remove { name } => {
                Registries::update(&home.dir, |r| {
                    let before = r.registries.len();
                    r.registries.retain(|t| t.name != name);
                    if r.registries.len() == before {
                        return Err(PluginError::NotFound(format!("no registry {name}")));
                    }
                    Ok(())
                })?;
                println!("removed registry {name}");
                Ok(())
            }
        }
    }
}
