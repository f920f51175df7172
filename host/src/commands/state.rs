//! `toka-host state`: an operator's view of (and hand on) agents' persistent state.

use crate::agent_state::{self as store, StoreError};
use crate::events::{EventLog, GroupCommit, Signer};
use crate::kernel::{Op, StateChange};
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct StateCommand {
    #[command(subcommand)]
    pub action: StateAction,
}

#[derive(Debug, Subcommand)]
pub enum StateAction {
    /// Print the value of KEY (as text if it is UTF-8, else as hex).
    Get {
        /// The agent whose state it is.
        #[arg(long)]
        agent: String,
        /// The key.
        key: String,
    },
    /// Store VALUE under KEY (recorded as a `state.write` event by the operator).
    Set {
        /// The agent whose state it is.
        #[arg(long)]
        agent: String,
        /// The key (at most 256 bytes).
        key: String,
        /// The value, as text (at most 1 MiB).
        value: String,
    },
    /// List keys, optionally only those starting with PREFIX.
    List {
        /// The agent whose state it is.
        #[arg(long)]
        agent: String,
        /// Only keys starting with this [default: every key].
        #[arg(default_value = "")]
        prefix: String,
    },
}

impl StateCommand {
    pub fn execute(self, home: &crate::home::Home) -> i32 {
        // Reading needs an existing database; `set` writes, and creates the home's database if needed.
        let db = match &self.action {
            StateAction::Set { .. } => home.open_db().map_err(|e| {
                eprintln!("toka-host: {e}");
                79
            }),
            _ => super::existing_db(home),
        };
        let db = match db {
            Ok(db) => db,
            Err(code) => return code,
        };
        let result = match &self.action {
            StateAction::Get { agent, key } => store::get(&db, agent, key).map(|v| match v {
                Some(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => println!("{text}"),
                    Err(e) => println!("{}", hex::encode(e.into_bytes())),
                },
                None => {
                    eprintln!("toka-host: agent {agent} has no key {key}");
                    std::process::exit(1);
                }
            }),
            StateAction::Set { agent, key, value } => {
                if key.is_empty() || key.len() > store::MAX_KEY || value.len() > store::MAX_VALUE {
                    eprintln!(
                        "toka-host: keys are 1 to {} bytes, values at most {} bytes",
                        store::MAX_KEY,
                        store::MAX_VALUE
                    );
                    return 2;
                }
                let storage = |e: String| StoreError::Storage(e);
                // Recorded and written in one transaction by the log's writer.
                EventLog::open(db.clone(), GroupCommit::default(), Some(Signer::for_home(home)))
                    .map_err(|e| storage(e.to_string()))
                    .and_then(|log| {
                        let payload =
                            serde_json::json!({ "op": "set", "key": key, "bytes": value.len(), "by": "operator" });
                        let change = Some(StateChange::set(key, value.as_bytes()));
                        let op = Op::OperatorWriteState { agent: agent.clone(), detail: payload, change };
                        match log.submit(crate::run::operation(op)) {
                            Ok(applied) => match applied.rejected {
                                Some(why) if why.starts_with(store::OVER_QUOTA) => Err(StoreError::OverQuota(why)),
                                Some(why) => Err(storage(why)),
                                None => Ok(()),
                            },
                            Err(e) => Err(storage(e.to_string())),
                        }
                    })
            }
            StateAction::List { agent, prefix } => store::list(&db, agent, prefix).map(|keys| {
                for k in keys {
                    println!("{k}");
                }
            }),
        };
        match result {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("toka-host: state: {e}");
                79
            }
        }
    }
}
