//! `toka-host publisher`: this home's publisher key, which signs the packages it packs.

use crate::home::Home;
use crate::plugin::PluginError;
use crate::plugin::publisher::PublisherKey;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct PublisherCommand {
    #[command(subcommand)]
    pub action: PublisherAction,
}

#[derive(Debug, Subcommand)]
pub enum PublisherAction {
    /// Make this home's publisher key (Ed25519, in HOME/publisher.json, owner-only).
    Init {
        /// The publisher's name, as installers will see it.
        #[arg(long)]
        name: String,
    },
    /// Print the publisher's name, key id and public key (what others pass to `toka-host trust add`).
    Show {
        /// Print it as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

impl PublisherCommand {
    pub fn execute(self, home: &Home) -> i32 {
        crate::plugin::exit_code_of(self.run(home))
    }

    fn run(self, home: &Home) -> Result<(), PluginError> {
        match self.action {
            PublisherAction::Init { name } => {
                let key = PublisherKey::generate(&name)?;
                let path = key.save(&home.dir)?;
                println!("publisher {} key {} in {}", key.name, key.key_id(), path.display());
                println!("others trust it with: toka-host trust add {} {}", key.name, key.public_hex());
                Ok(())
            }
            PublisherAction::Show { json } => {
                let key = PublisherKey::load(&home.dir)?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"name": key.name, "key_id": key.key_id(), "public_key": key.public_hex()})
                    );
                } else {
                    println!("publisher:  {}", key.name);
                    println!("key id:     {}", key.key_id());
                    println!("public key: {}", key.public_hex());
                }
                Ok(())
            }
        }
    }
}
