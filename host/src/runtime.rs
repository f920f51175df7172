//! The host object: the one place that opens a toka home's parts (the database and its event log writer, the
//! engine with its compile cache, the tool registry and the tool host) and authorizes what is asked of them.
//!
//! Every face that runs guests (`run`, `tool call`, `mcp`, and the service to come) builds one [`Host`] and goes
//! through it, so a revocation written to a database is checked against that same database, and a grant is checked
//! against the same home whose state it must never cover. A face never opens the database, the keys or the cache its
//! own way.

use crate::db::Db;
use crate::engine::{EngineOptions, HostEngine};
use crate::error::RunError;
use crate::events::{EventLog, GroupCommit};
use crate::grants::{self, Authorized, GrantRequest, Protected};
use crate::home::Home;
use crate::run::Runner;
use crate::token::{RunAuthorization, RunRequest, TokenLimits};
use crate::tools::call::ToolHost;
use crate::tools::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// How the host's engine is set up.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostOptions {
    /// The pooling instance allocator: worth it for a process that runs many instances (`--repeat`, servers).
    pub pooling: bool,
}

/// A toka home, opened: see the module documentation.
pub struct Host {
    home: Home,
    protected: Vec<Protected>,
    log: Arc<EventLog>,
    engine: Arc<HostEngine>,
    tools: Arc<ToolHost>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("home", &self.home).finish_non_exhaustive()
    }
}

impl Host {
    /// Opens `home`: creates it owner-only if needed, opens (or creates) its database and starts the event log
    /// writer, signing checkpoints with the home's active root key (once it has one), and starts an engine on its
    /// compile cache.
    pub fn open(home: Home, options: HostOptions) -> Result<Host, RunError> {
        home.ensure_dir().map_err(|e| RunError::host(e.to_string()))?;
        let db = home.open_db().map_err(|e| RunError::host(format!("event log: {e}")))?;
        let signer = crate::events::Signer::for_home(&home);
        let log = EventLog::open(db, GroupCommit::default(), Some(signer))
            .map_err(|e| RunError::host(format!("cannot start the event log writer: {e}")))?;
        let log = Arc::new(log);
        if let Some(cache) = &home.cache {
            // The cache holds compiled code the host will execute: owner-only, like the home.
            crate::home::private_dir(cache).map_err(|e| RunError::host(format!("compile cache: {e}")))?;
        }
        let engine_options = EngineOptions { fuel: true, cache_dir: home.cache.clone(), pooling: options.pooling };
        let engine = HostEngine::new(&engine_options)
            .map(Arc::new)
            .map_err(|e| RunError::host(format!("cannot start the engine: {e:#}")))?;
        let tools = Arc::new(ToolHost::new(engine.clone(), Registry::open(&home.dir), Some(log.clone())));
        let protected = Protected::of(&home);
        Ok(Host { home, protected, log, engine, tools })
    }

    pub fn home(&self) -> &Home {
        &self.home
    }

    pub fn db(&self) -> &Db {
        self.log.db()
    }

    pub fn log(&self) -> &Arc<EventLog> {
        &self.log
    }

    pub fn engine(&self) -> &Arc<HostEngine> {
        &self.engine
    }

    pub fn tools(&self) -> &Arc<ToolHost> {
        &self.tools
    }

    /// A runner on this host's engine, recording in its log, with its tools.
    pub fn runner(&self) -> Runner {
        Runner::from_parts(self.engine.clone(), Some(self.log.clone()), Some(self.tools.clone()))
    }

    /// Checks grants against the host filesystem and environment; nothing of the home is ever grantable.
    pub fn authorize_grants(&self, request: &GrantRequest) -> Result<Authorized, RunError> {
        grants::authorize(request, &self.protected)
    }

    /// Verifies `token` (or mints one from the operator's flags, living `local_ttl`) against this home's keys and
    /// revocations, and authorizes `request` with it.
    pub fn authorize_token(
        &self,
        token: Option<&str>,
        request: &RunRequest,
        local_ttl: Duration,
    ) -> Result<RunAuthorization, RunError> {
        crate::token::authorize_caller(&self.home.dir, self.db(), token, request, local_ttl)
    }

    /// The limits a token allows, for a run that did not ask for its own.
    pub fn token_limits(&self, token: &str) -> Result<TokenLimits, RunError> {
        crate::token::limits_of(&self.home.dir, token)
    }
}
