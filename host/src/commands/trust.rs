//! `toka-host trust`: the publisher keys whose packages this home installs and runs, and its install policy.

use crate::home::Home;
use crate::kernel::kind;
use crate::plugin::PluginError;
use crate::plugin::trust::TrustStore;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct TrustCommand {
    #[command(subcommand)]
    pub action: TrustAction,
}

#[derive(Debug, Subcommand)]
pub enum TrustAction {
    /// Trust a publisher's key (64 hex digits, from `toka-host publisher show`) under its name.
    Add {
        /// The publisher's name, as its packages name it.
        name: String,
        /// Its public key: 64 hex digits.
        public_key: String,
    },
    /// The trusted (and revoked) publisher keys, and the install policy.
    List {
        /// Print it as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Stop trusting a key (by key id) or every key of a publisher (by name). The key stays listed as revoked:
    /// its packages are refused from now on, installed ones included, and it cannot be trusted again.
    Remove {
        /// A key id, or a publisher's name (every key of it).
        key_or_name: String,
    },
    /// Grants no package installed here may ask for: KIND (fs, env, net ...) or a prefix (fs:/home, net:*:22).
    Policy {
        /// Add a rule (repeatable).
        #[arg(long = "deny", value_name = "GRANT")]
        deny: Vec<String>,
        /// Remove a rule (repeatable).
        #[arg(long = "allow", value_name = "GRANT")]
        allow: Vec<String>,
    },
}

impl TrustCommand {
    pub fn execute(self, home: &Home) -> i32 {
        crate::plugin::exit_code_of(self.run(home))
    }

    fn run(self, home: &Home) -> Result<(), PluginError> {
        let now = crate::events::now_ms();
        match self.action {
            TrustAction::Add { name, public_key } => {
                let key = TrustStore::update(&home.dir, |t| t.add(&name, &public_key, now))?;
                println!("trusted publisher {} key {}", key.name, key.key_id);
                let detail = serde_json::json!({ "key_id": key.key_id, "public_key": key.public_key });
                crate::plugin::record_change_in(home, kind::TRUST_ADDED, &key.name, detail)
            }
            TrustAction::List { json } => {
                let t = TrustStore::load(&home.dir)?;
                if json {
                    println!("{}", serde_json::json!({"publishers": t.publishers, "policy": t.policy}));
                    return Ok(());
                }
                if t.publishers.is_empty() {
                    println!("no trusted publishers (toka-host trust add NAME PUBLIC_KEY)");
                }
                for k in &t.publishers {
                    let status = if k.revoked_ms.is_some() { "revoked" } else { "trusted" };
                    println!("{:<16} {} {:<8} {}", k.name, k.key_id, status, k.public_key);
                }
                println!(
                    "policy: {}",
                    if t.policy.deny.is_empty() {
                        "no grant denied".into()
                    } else {
                        format!("deny {}", t.policy.deny.join(", "))
                    }
                );
                Ok(())
            }
            TrustAction::Remove { key_or_name } => {
                let revoked = TrustStore::update(&home.dir, |t| t.revoke(&key_or_name, now))?;
                for k in revoked {
                    println!("revoked publisher {} key {}", k.name, k.key_id);
                    let detail = serde_json::json!({ "key_id": k.key_id });
                    crate::plugin::record_change_in(home, kind::TRUST_REMOVED, &k.name, detail)?;
                }
                Ok(())
            }
            TrustAction::Policy { deny, allow } => {
                for rule in &deny {
                    let kind = rule.split(':').next().unwrap_or_default();
                    if !["fs", "env", "net", "llm", "tool"].contains(&kind) || rule.len() > 256 {
                        return Err(PluginError::Invalid(format!(
                            "`{rule}`: a rule is fs, env, net, llm or tool, or a prefix of one"
                        )));
                    }
                }
                let policy = TrustStore::update(&home.dir, |t| {
                    t.policy.deny.retain(|r| !allow.contains(r));
                    for rule in deny {
                        if !t.policy.deny.contains(&rule) {
                            t.policy.deny.push(rule);
                        }
                    }
                    Ok(t.policy.clone())
                })?;
                println!(
                    "policy: {}",
                    if policy.deny.is_empty() {
                        "no grant denied".into()
                    } else {
                        format!("deny {}", policy.deny.join(", "))
                    }
                );
                crate::plugin::record_change_in(
                    home,
                    kind::TRUST_POLICY,
                    "policy",
                    serde_json::json!({ "deny": policy.deny }),
                )
            }
        }
    }
}
