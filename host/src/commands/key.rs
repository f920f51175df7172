//! `toka-host key`: the root keys that sign capability tokens.

use crate::token::keys::{KeyStatus, KeyStore};
use clap::{Args, Subcommand};
use std::time::UNIX_EPOCH;

#[derive(Debug, Args)]
pub struct KeyCommand {
    #[command(subcommand)]
    pub action: KeyAction,
}

#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Create the first root key ($TOKA_HOME/keys.json, mode 0600).
    Init,
    /// Make a new active key; the previous one keeps verifying for the overlap window.
    Rotate {
        /// How long the previous key keeps verifying the tokens it signed, e.g. 24h.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = crate::units::parse_duration)]
        overlap: std::time::Duration,
    },
    /// List root keys with their status.
    List,
    /// Stop accepting tokens signed by key ID.
    Retire {
        /// The key's id (`toka-host key list`); the active key cannot be retired.
        id: u32,
    },
}

impl KeyCommand {
    pub fn execute(self, home: &crate::home::Home) -> i32 {
        let home = home.dir.clone();
        let now = crate::events::now_ms();
        let result = match self.action {
            KeyAction::Init => KeyStore::update(&home, |s| s.init(now).map(|k| format!("root key {} created", k.id))),
            KeyAction::Rotate { overlap } => {
                let overlap_ms = u64::try_from(overlap.as_millis()).unwrap_or(u64::MAX);
                KeyStore::update(&home, |s| {
                    s.rotate(now, overlap_ms).map(|k| format!("root key {} is now active", k.id))
                })
            }
            KeyAction::Retire { id } => {
                KeyStore::update(&home, |s| s.retire(id).map(|()| format!("root key {id} retired")))
            }
            KeyAction::List => {
                let store = match KeyStore::load(&home) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("toka-host: {e}");
                        return 79;
                    }
                };
                for k in &store.keys {
                    let created =
                        humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_millis(k.created_ms));
                    let status = match (k.status, k.verify_until_ms) {
                        (KeyStatus::Previous, Some(until)) => format!(
                            "previous (verifies until {})",
                            humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_millis(until))
                        ),
                        (s, _) => format!("{s:?}").to_lowercase(),
                    };
                    println!("{:>4}  {created}  {status}  {}", k.id, k.public_hex);
                }
                return 0;
            }
        };
        match result {
            Ok((_, message)) => {
                println!("{message}");
                0
            }
            Err(e) => {
                eprintln!("toka-host: {e}");
                1
            }
        }
    }
}
