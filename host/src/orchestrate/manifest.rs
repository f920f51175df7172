//! The plan manifest (`toka.toml`): what an operator writes, parsed strictly and resolved into a [`Plan`].
//!
//! Parsing is strict: an unknown key anywhere is an error naming its line (serde `deny_unknown_fields`), and so is a
//! value of the wrong type. Resolving checks what the types cannot: names, references between agents (an unknown
//! agent, a cycle, a critical agent waiting on a non-critical one), durations, sizes, and the input of each agent
//! (JSON of bounded size and depth). Every error names the line, the agent and the key. Sizes are bounded so that a
//! manifest always fits in the operation that records the plan.
//!
//! This module never touches the filesystem beyond nothing at all: it parses text and resolves paths relative to a
//! base directory it is given; whether a component exists is the runner's to find out.

/// The plan bounds live with the log's bounds, which check a recorded plan against them.
pub use crate::bounds::{MAX_AGENTS, MAX_MANIFEST};
use crate::grants::{DirGrant, EnvGrant, GrantRequest, NetGrant, StateGrant};
use crate::runtime::LimitRequest;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Longest agent name, in bytes.
pub const MAX_NAME: usize = 64;
/// Most dependencies (`depends_on` plus `after` plus piped sources) of one agent.
pub const MAX_DEPENDENCIES: usize = 64;
/// Most retries of one agent.
pub const MAX_RETRIES: u32 = 10;
/// Longest first backoff between retries (it doubles at each retry, up to [`MAX_BACKOFF`]).
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Longest plan timeout.
pub const MAX_PLAN_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);
/// The plan timeout when the manifest gives none.
pub const DEFAULT_PLAN_TIMEOUT: Duration = Duration::from_secs(3600);
/// The first backoff between retries when the manifest gives none.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);

/// A plan manifest, as written. See `docs/toka.schema.json` for its JSON Schema.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "toka.toml",
    description = "A toka-host plan: agents to run, in dependency order, each with its own grants and limits."
)]
pub struct Manifest {
    /// Settings of the whole plan.
    #[serde(default)]
    pub plan: PlanSection,
    /// The agents of the plan, by name (letters, digits, `-` and `_`; at most 64 bytes).
    #[schemars(with = "BTreeMap<String, AgentSection>")]
    pub agents: BTreeMap<Spanned<String>, Spanned<AgentSection>>,
}

/// `[plan]`: settings of the whole plan.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanSection {
    /// A name for the plan, shown in its events (default: the manifest's directory name).
    pub name: Option<String>,
    /// How long the whole plan may take, e.g. `10m` (default `1h`, at most 7 days); agents still running then are
    /// cancelled and those not started are skipped.
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
}

/// How urgently an agent runs among those that are ready.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    /// Runs before every non-critical agent, one critical agent at a time.
    Critical,
    High,
    #[default]
    Medium,
    Low,
}

/// `[agents.NAME]`: one agent of the plan.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// The component to run: a path, relative to the manifest's directory.
    #[schemars(with = "String")]
    pub component: Spanned<String>,
    /// The task input (any TOML value, handed to the agent as JSON; default `{}`).
    #[schemars(with = "Option<Value>")]
    pub input: Option<Spanned<toml::Value>>,
    /// Where the input (or fields of it) comes from: another agent's JSON output. A string `"AGENT"` or
    /// `"AGENT.FIELD.SUBFIELD"` is the whole input; a table `{ key = "AGENT.FIELD" }` sets each key of the input. Each
    /// agent named is a required dependency.
    #[schemars(with = "Option<InputFromSchema>")]
    pub input_from: Option<Spanned<InputFrom>>,
    /// `critical`, `high`, `medium` (default) or `low`.
    #[serde(default)]
    pub priority: Priority,
    /// Agents that must complete first; if one fails, this agent is skipped.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub depends_on: Vec<Spanned<String>>,
    /// Agents that must end first, whatever their outcome.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub after: Vec<Spanned<String>>,
    /// What the agent may use; nothing by default.
    #[serde(default)]
    pub grants: GrantSection,
    /// The agent's limits (default: the operator token's ceilings, else the host's defaults).
    #[serde(default)]
    pub limits: LimitSection,
    /// How many times a failed run is retried (default 0, at most 10). Refusals (a grant, the input, the component)
    /// are never retried.
    #[serde(default)]
    pub retries: u32,
    /// The wait before the first retry, doubling at each further one (default `500ms`, at most `10m`).
    #[schemars(with = "Option<String>")]
    pub backoff: Option<Spanned<String>>,
    /// On a cluster (a plan sent to `serve --cluster`): labels the node that runs this agent must have, all of them
    /// (`serve --label`); elsewhere they are not used. A run lost with its node counts as a failed attempt.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// The pipe syntax of `input_from`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum InputFrom {
    Whole(String),
    Fields(BTreeMap<String, String>),
}

/// [`InputFrom`] for the schema.
#[derive(JsonSchema)]
#[serde(untagged)]
#[expect(dead_code, reason = "a type for the JSON Schema only")]
enum InputFromSchema {
    Whole(String),
    Fields(BTreeMap<String, String>),
}

/// `[agents.NAME.grants]`: the same grants as `toka-host run`'s flags.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantSection {
    /// Host directories: `HOST[::GUEST][:ro]` as `--dir` (a relative HOST is relative to the manifest).
    #[serde(default)]
    pub dirs: Vec<String>,
    /// Environment variables: `NAME=VALUE`, or `NAME` for the host's value, as `--env`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Network peers: `HOST:PORT`, as `--allow-net`.
    #[serde(default)]
    pub net: Vec<String>,
    /// Installed tools the agent may call, as `--allow-tool`.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Models the agent may call through the host's model gateway, as `--allow-llm` (the API's `grants.models`):
    /// a model name, or a pattern ending in `*` (`gpt-*`).
    #[serde(default)]
    pub models: Vec<String>,
    /// Installed agents this agent may start and wait for (`toka:agent/spawn`), as `--allow-spawn`; each child runs
    /// with this agent's token narrowed further, never wider.
    #[serde(default)]
    pub spawn: Vec<String>,
    /// The agent's persistent state: `ro` or `rw`.
    pub state: Option<String>,
}

/// `[agents.NAME.limits]`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitSection {
    /// Fuel budget (about one unit per instruction).
    pub fuel: Option<u64>,
    /// Wall-clock limit of one run, e.g. `30s`.
    pub timeout: Option<String>,
    /// Cap on linear memory, e.g. `64MiB`.
    pub memory: Option<String>,
    /// Cap on each of stdout and stderr, e.g. `1MiB`.
    pub output: Option<String>,
    /// Cap on the records of each kind (observations, tool calls, state writes) one run may add.
    pub records: Option<u64>,
    /// Model tokens (prompt and completion) one run may use, as `--llm-tokens`.
    pub llm_tokens: Option<u64>,
    /// How deep agents spawned by this agent may nest, as `--max-spawn-depth` (default 3, at most 8).
    pub spawn_depth: Option<u32>,
    /// How many agents this agent (and each of its children) may spawn, as `--max-spawns` (default 16).
    pub spawns: Option<u32>,
}

/// A manifest that does not parse or does not resolve: one line, naming where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

/// Where one piped value comes from: an agent's output, or a field of it (a JSON pointer, empty for the whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pipe {
    pub agent: String,
    pub pointer: String,
}

/// How an agent's input is made from other agents' outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pipes {
    None,
    /// The whole input is this value.
    Whole(Pipe),
    /// Each key of the input object is set to a value.
    Fields(BTreeMap<String, Pipe>),
}

/// One agent of a resolved plan: a step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: String,
    /// The component as written (relative to [`Plan::base`] unless absolute).
    pub component: String,
    /// The input as written, as JSON (before pipes fill it in).
    pub input: Option<Value>,
    pub pipes: Pipes,
    pub priority: Priority,
    /// Dependencies that must complete (`depends_on` and piped sources), sorted.
    pub requires: Vec<String>,
    /// Dependencies that must end, whatever their outcome, sorted.
    pub after: Vec<String>,
    #[serde(serialize_with = "grants_text")]
    pub grants: GrantRequest,
    pub tools: Vec<String>,
    /// The models (or patterns) the agent may call (`llm:MODEL` grants).
    pub models: Vec<String>,
    /// The installed agents it may spawn (`spawn:AGENT` grants).
    pub spawn: Vec<String>,
    #[serde(serialize_with = "limits_text")]
    pub limits: LimitRequest,
    pub retries: u32,
    #[serde(with = "humantime_serde_ms")]
    pub backoff: Duration,
    /// Labels the cluster node that runs it must have.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

/// A manifest, resolved: steps in a dependency order (each after everything it waits for), ties by name.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    #[serde(with = "humantime_serde_ms")]
    pub timeout: Duration,
    /// The directory relative paths are resolved against (the manifest's).
    #[serde(skip)]
    pub base: PathBuf,
    /// sha256 (hex) of the manifest's text.
    pub digest: String,
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The component file of `step`.
    pub fn component_path(&self, step: &Step) -> PathBuf {
        self.base.join(&step.component)
    }
}

mod humantime_serde_ms {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

fn grants_text<S: serde::Serializer>(g: &GrantRequest, s: S) -> Result<S::Ok, S::Error> {
    let mut out: Vec<String> = Vec::new();
    out.extend(g.dirs.iter().map(ToString::to_string));
    out.extend(g.env.iter().map(ToString::to_string));
    out.extend(g.net.iter().map(ToString::to_string));
    match g.state {
        StateGrant::None => {}
        StateGrant::ReadOnly => out.push("state ro".into()),
        StateGrant::ReadWrite => out.push("state rw".into()),
    }
    serde::Serialize::serialize(&out, s)
}

fn limits_text<S: serde::Serializer>(l: &LimitRequest, s: S) -> Result<S::Ok, S::Error> {
    let map = serde_json::json!({
        "fuel": l.fuel,
        "timeout_ms": l.timeout.map(|t| t.as_millis() as u64),
        "memory": l.max_memory,
        "output": l.max_output,
        "records": l.max_records,
        "llm_tokens": l.llm_tokens,
        "spawn_depth": l.max_spawn_depth,
        "spawns": l.max_spawns,
    });
    serde::Serialize::serialize(&map, s)
}

/// Line (1-based) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

/// Parses and resolves `text`, a manifest whose relative paths are relative to `base`; `fallback_name` names the
/// plan if the manifest does not.
pub fn parse(text: &str, base: &Path, fallback_name: &str) -> Result<Plan, ManifestError> {
    if text.len() > MAX_MANIFEST {
        return Err(ManifestError(format!("manifest is {} bytes, over the {MAX_MANIFEST} byte limit", text.len())));
    }
    let manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError(toml_error(&e, text)))?;
    Resolver { text, base }.resolve(manifest, fallback_name)
}

/// One line from a TOML error: `line L, column C: message`.
fn toml_error(e: &toml::de::Error, text: &str) -> String {
    let message = crate::error::one_line(e.message());
    match e.span() {
        Some(span) => {
            let line = line_of(text, span.start);
            let start = text[..span.start.min(text.len())].rfind('\n').map_or(0, |n| n + 1);
            let column = text[start..span.start.min(text.len())].chars().count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

struct Resolver<'a> {
    text: &'a str,
    base: &'a Path,
}

/// Whether `name` is a valid agent name.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("agent name must be 1 to {MAX_NAME} bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        || !name.as_bytes()[0].is_ascii_alphanumeric()
    {
        return Err(format!(
            "agent name `{name}` must be letters, digits, `-` and `_`, starting with a letter or digit"
        ));
    }
    Ok(())
}

impl Resolver<'_> {
    fn at<T>(&self, spanned: &Spanned<T>, what: String) -> ManifestError {
        ManifestError(format!("line {}: {what}", line_of(self.text, spanned.span().start)))
    }

    fn resolve(&self, manifest: Manifest, fallback_name: &str) -> Result<Plan, ManifestError> {
        if manifest.agents.is_empty() {
            return Err(ManifestError("the manifest has no agents: add an [agents.NAME] table".into()));
        }
        if manifest.agents.len() > MAX_AGENTS {
            return Err(ManifestError(format!(
                "the manifest has {} agents, over the limit of {MAX_AGENTS}",
                manifest.agents.len()
            )));
        }
        let name = match &manifest.plan.name {
            Some(n) if n.is_empty() || n.len() > crate::bounds::MAX_ID || n.chars().any(char::is_control) => {
                return Err(ManifestError(format!(
                    "[plan] name must be 1 to {} bytes without control characters",
                    crate::bounds::MAX_ID
                )));
            }
            Some(n) => n.clone(),
            None => fallback_name.chars().filter(|c| !c.is_control()).take(MAX_NAME).collect(),
        };
        let timeout = match &manifest.plan.timeout {
            None => DEFAULT_PLAN_TIMEOUT,
            Some(t) => {
                let d = crate::units::parse_duration(t.get_ref())
                    .map_err(|e| self.at(t, format!("[plan] timeout: {e}")))?;
                if d.is_zero() || d > MAX_PLAN_TIMEOUT {
                    return Err(self.at(t, "[plan] timeout must be more than 0 and at most 7 days".into()));
                }
                d
            }
        };
        let names: BTreeSet<&str> = manifest.agents.keys().map(|k| k.get_ref().as_str()).collect();
        for key in manifest.agents.keys() {
            check_name(key.get_ref()).map_err(|e| self.at(key, e))?;
        }
        let mut steps = Vec::new();
        for (key, section) in &manifest.agents {
            steps.push(self.step(key, section, &names)?);
        }
        let critical: BTreeSet<&str> =
            steps.iter().filter(|s| s.priority == Priority::Critical).map(|s| s.name.as_str()).collect();
        for (step, (key, _)) in steps.iter().zip(&manifest.agents) {
            if step.priority != Priority::Critical {
                continue;
            }
            if let Some(other) = step.requires.iter().chain(&step.after).find(|d| !critical.contains(d.as_str())) {
                return Err(self.at(
                    key,
                    format!(
                        "agent `{}` is critical but waits for `{other}`, which is not: critical agents run first, \
                         so they may wait only for critical agents",
                        step.name
                    ),
                ));
            }
        }
        let steps = order(steps)?;
        use sha2::{Digest, Sha256};
        Ok(Plan {
            name,
            timeout,
            base: self.base.to_path_buf(),
            digest: hex::encode(Sha256::digest(self.text.as_bytes())),
            steps,
        })
    }

    fn step(
        &self,
        key: &Spanned<String>,
        section: &Spanned<AgentSection>,
        names: &BTreeSet<&str>,
    ) -> Result<Step, ManifestError> {
        let name = key.get_ref().clone();
        let a = section.get_ref();
        let err = |spanned_start: usize, what: String| {
            ManifestError(format!("line {}: agent `{name}`: {what}", line_of(self.text, spanned_start)))
        };
        let here = section.span().start;
        let component = a.component.get_ref();
        if component.is_empty() || component.contains('\0') {
            return Err(err(a.component.span().start, "component must be a path".into()));
        }
        let mut requires = BTreeSet::new();
        let mut after = BTreeSet::new();
        for (list, set, key_name) in [(&a.depends_on, &mut requires, "depends_on"), (&a.after, &mut after, "after")] {
            for dep in list {
                let d = dep.get_ref();
                if !names.contains(d.as_str()) {
                    return Err(err(dep.span().start, format!("{key_name}: `{d}` is not an agent of this plan")));
                }
                if *d == name {
                    return Err(err(dep.span().start, format!("{key_name}: an agent cannot wait for itself")));
                }
                if !set.insert(d.clone()) {
                    return Err(err(dep.span().start, format!("{key_name}: `{d}` is named twice")));
                }
            }
        }
        let mut input = match &a.input {
            None => None,
            Some(v) => {
                let json = toml_to_json(v.get_ref());
                check_value(&json).map_err(|e| err(v.span().start, format!("input: {e}")))?;
                Some(json)
            }
        };
        let pipes = match &a.input_from {
            None => Pipes::None,
            Some(spanned) => {
                let at = spanned.span().start;
                let pipe = |source: &str| -> Result<Pipe, ManifestError> {
                    let p = parse_pipe(source).map_err(|e| err(at, format!("input_from: {e}")))?;
                    if !names.contains(p.agent.as_str()) {
                        return Err(err(at, format!("input_from: `{}` is not an agent of this plan", p.agent)));
                    }
                    if p.agent == name {
                        return Err(err(at, "input_from: an agent cannot take its own output".into()));
                    }
                    Ok(p)
                };
                match spanned.get_ref() {
                    InputFrom::Whole(source) => {
                        if input.is_some() {
                            return Err(err(
                                at,
                                "input_from names the whole input, so `input` must not be given too (use a table \
                                 `input_from = { key = \"AGENT\" }` to fill in fields)"
                                    .into(),
                            ));
                        }
                        Pipes::Whole(pipe(source)?)
                    }
                    InputFrom::Fields(fields) => {
                        if fields.is_empty() {
                            return Err(err(at, "input_from: the table is empty".into()));
                        }
                        match &input {
                            None => input = Some(Value::Object(serde_json::Map::new())),
                            Some(Value::Object(map)) => {
                                if let Some(k) = fields.keys().find(|k| map.contains_key(*k)) {
                                    return Err(err(at, format!("input_from: `{k}` is also set in `input`")));
                                }
                            }
                            Some(_) => {
                                return Err(err(at, "input_from fills in fields, so `input` must be a table".into()));
                            }
                        }
                        let mut out = BTreeMap::new();
                        for (k, source) in fields {
                            if k.is_empty() || k.len() > MAX_NAME {
                                return Err(err(at, format!("input_from: key must be 1 to {MAX_NAME} bytes")));
                            }
                            out.insert(k.clone(), pipe(source)?);
                        }
                        Pipes::Fields(out)
                    }
                }
            }
        };
        match &pipes {
            Pipes::None => {}
            Pipes::Whole(p) => {
                requires.insert(p.agent.clone());
            }
            Pipes::Fields(f) => requires.extend(f.values().map(|p| p.agent.clone())),
        }
        if let Some(both) = requires.intersection(&after).next() {
            return Err(err(here, format!("`{both}` is both a required dependency and in `after`")));
        }
        if requires.len() + after.len() > MAX_DEPENDENCIES {
            return Err(err(here, format!("more than {MAX_DEPENDENCIES} dependencies")));
        }
        let grants = self.grants(&a.grants).map_err(|e| err(here, format!("grants: {e}")))?;
        let tools = a.grants.tools.clone();
        for t in &tools {
            crate::tools::check_name(t).map_err(|e| err(here, format!("grants.tools: {e}")))?;
        }
        let models = a.grants.models.clone();
        for m in &models {
            crate::token::Grant::parse(&format!("llm:{m}")).map_err(|e| err(here, format!("grants.models: {e}")))?;
        }
        let spawn = a.grants.spawn.clone();
        for child in &spawn {
            crate::tools::check_name(child)
                .map_err(|e| err(here, format!("grants.spawn: {}", e.replace("tool name", "agent name"))))?;
        }
        let limits = limits(&a.limits).map_err(|e| err(here, format!("limits: {e}")))?;
        if a.retries > MAX_RETRIES {
            return Err(err(here, format!("retries must be at most {MAX_RETRIES}")));
        }
        crate::cluster::placement::check_labels(&a.labels).map_err(|e| err(here, format!("labels: {e}")))?;
        let backoff = match &a.backoff {
            None => DEFAULT_BACKOFF,
            Some(b) => {
                let d = crate::units::parse_duration(b.get_ref())
                    .map_err(|e| err(b.span().start, format!("backoff: {e}")))?;
                if d > MAX_BACKOFF {
                    return Err(err(b.span().start, "backoff must be at most 10m".into()));
                }
                d
            }
        };
        Ok(Step {
            name,
            component: component.clone(),
            input,
            pipes,
            priority: a.priority,
            requires: requires.into_iter().collect(),
            after: after.into_iter().collect(),
            grants,
            tools,
            models,
            spawn,
            limits,
            retries: a.retries,
            backoff,
            labels: a.labels.clone(),
        })
    }

    fn grants(&self, g: &GrantSection) -> Result<GrantRequest, String> {
        let mut dirs = Vec::new();
        for d in &g.dirs {
            let mut dir = DirGrant::parse(d)?;
            if dir.host.is_relative() {
                dir.host = self.base.join(&dir.host);
            }
            dirs.push(dir);
        }
        let env = g.env.iter().map(|e| EnvGrant::parse(e)).collect::<Result<Vec<_>, _>>()?;
        let net = g.net.iter().map(|n| NetGrant::parse(n)).collect::<Result<Vec<_>, _>>()?;
        let state = match g.state.as_deref() {
            None => StateGrant::None,
            Some(s) => crate::grants::parse_state(s)?,
        };
        Ok(GrantRequest { dirs, env, net, inherit_stdin: false, state })
    }
}

fn limits(l: &LimitSection) -> Result<LimitRequest, String> {
    let timeout = l.timeout.as_deref().map(crate::units::parse_duration).transpose()?;
    if timeout.is_some_and(|t| t.is_zero()) {
        return Err("timeout must be more than 0".into());
    }
    Ok(LimitRequest {
        fuel: l.fuel,
        timeout,
        max_memory: l.memory.as_deref().map(crate::units::parse_size).transpose()?,
        max_output: l.output.as_deref().map(crate::units::parse_size).transpose()?,
        max_records: l.records,
        llm_tokens: l.llm_tokens,
        max_spawn_depth: l.spawn_depth,
        max_spawns: l.spawns,
    })
}

/// Parses `AGENT` or `AGENT.FIELD.SUBFIELD` (a number selects an array element) into a pipe.
pub fn parse_pipe(source: &str) -> Result<Pipe, String> {
    let mut parts = source.split('.');
    let agent = parts.next().unwrap_or_default();
    check_name(agent).map_err(|e| format!("`{source}`: {e}"))?;
    let mut pointer = String::new();
    for part in parts {
        if part.is_empty() {
            return Err(format!("`{source}`: empty field name (expected AGENT or AGENT.FIELD.FIELD)"));
        }
        pointer.push('/');
        pointer.push_str(&part.replace('~', "~0").replace('/', "~1"));
    }
    if pointer.len() > 1024 {
        return Err(format!("`{source}`: the field path is over 1024 bytes"));
    }
    Ok(Pipe { agent: agent.to_string(), pointer })
}

/// A TOML value as JSON (datetimes become their RFC 3339 text).
fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(t.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect()),
    }
}

/// An input value's bounds: the run's input size, and a nesting depth the log can store.
pub fn check_value(v: &Value) -> Result<(), String> {
    if crate::bounds::depth(v) > crate::bounds::MAX_DEPTH {
        return Err(format!("nested deeper than {} levels", crate::bounds::MAX_DEPTH));
    }
    let size = v.to_string().len();
    if size > crate::run::MAX_INPUT {
        return Err(format!("{size} bytes of JSON, over the {} byte limit", crate::run::MAX_INPUT));
    }
    Ok(())
}

/// Orders steps so that each comes after everything it waits for (ties by name); refuses a cycle, naming it.
fn order(steps: Vec<Step>) -> Result<Vec<Step>, ManifestError> {
    let index: BTreeMap<&str, usize> = steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let waits = |s: &Step| -> Vec<usize> { s.requires.iter().chain(&s.after).map(|d| index[d.as_str()]).collect() };
    // Depth-first, iteratively (a long chain must not overflow the stack): 0 unseen, 1 on the path, 2 done.
    let mut mark = vec![0u8; steps.len()];
    let mut sorted = Vec::with_capacity(steps.len());
    for start in 0..steps.len() {
        if mark[start] != 0 {
            continue;
        }
        let mut path: Vec<(usize, Vec<usize>)> = vec![(start, waits(&steps[start]))];
        mark[start] = 1;
        while let Some((node, pending)) = path.last_mut() {
            let node = *node;
            match pending.pop() {
                Some(next) if mark[next] == 1 => {
                    let from = path.iter().position(|(n, _)| *n == next).unwrap_or(0);
                    let mut cycle: Vec<&str> = path[from..].iter().map(|(n, _)| steps[*n].name.as_str()).collect();
                    cycle.push(&steps[next].name);
                    // The path runs from a waiter to what it waits for; say it that way.
                    return Err(ManifestError(format!(
                        "dependency cycle: {} (each waits for the next)",
                        cycle.join(" -> ")
                    )));
                }
                Some(next) if mark[next] == 0 => {
                    mark[next] = 1;
                    path.push((next, waits(&steps[next])));
                }
                Some(_) => {}
                None => {
                    mark[node] = 2;
                    sorted.push(node);
                    path.pop();
                }
            }
        }
    }
    let mut slots: Vec<Option<Step>> = steps.into_iter().map(Some).collect();
    Ok(sorted.into_iter().map(|i| slots[i].take().expect("each step once")).collect())
}

/// The manifest's JSON Schema (draft 2020-12), as published in `docs/toka.schema.json`.
pub fn schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Manifest)).expect("a schema serializes")
}

#[cfg(test)]
mod tests {
    //! Golden tests: each `tests/data/manifests/good/NAME.toml` resolves to the plan in `NAME.json`, and each
    //! `bad/NAME.toml` is refused with the one line in `NAME.err`. `TOKA_UPDATE_GOLDEN=1` rewrites the expected
    //! files (review the diff). The published schema is checked against the same manifests.
    use super::*;

    fn dir(kind: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/manifests").join(kind)
    }

    fn cases(kind: &str) -> Vec<(String, String, PathBuf)> {
        let mut out: Vec<_> = std::fs::read_dir(dir(kind))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .map(|p| {
                let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&p).unwrap(), p)
            })
            .collect();
        out.sort();
        assert!(!out.is_empty(), "no {kind} manifests");
        out
    }

    fn golden(path: &Path, actual: &str) {
        if std::env::var_os("TOKA_UPDATE_GOLDEN").is_some() {
            std::fs::write(path, format!("{}\n", actual.trim_end())).unwrap();
        }
        let expected = std::fs::read_to_string(path)
            .unwrap_or_else(|_| panic!("{} is missing: run with TOKA_UPDATE_GOLDEN=1", path.display()));
        assert_eq!(
            expected.trim_end(),
            actual.trim_end(),
            "{} differs (TOKA_UPDATE_GOLDEN=1 rewrites it)",
            path.display()
        );
    }

    #[test]
    fn good_manifests_resolve_to_their_golden_plans() {
        for (name, text, path) in cases("good") {
            let plan = parse(&text, Path::new("/plans"), "golden").unwrap_or_else(|e| panic!("{name}: {e}"));
            let json = serde_json::to_string_pretty(&plan).unwrap();
            golden(&path.with_extension("json"), &json);
        }
    }

    #[test]
    fn bad_manifests_are_refused_naming_where() {
        for (name, text, path) in cases("bad") {
            let err = parse(&text, Path::new("/plans"), "golden").err().unwrap_or_else(|| panic!("{name} resolved"));
            assert!(!err.0.contains('\n'), "{name}: one line: {err}");
            golden(&path.with_extension("err"), &err.0);
        }
    }

    #[test]
    fn the_published_schema_is_current_and_agrees_with_the_golden_manifests() {
        let schema = schema();
        let published = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/toka.schema.json");
        golden(&published, &serde_json::to_string_pretty(&schema).unwrap());
        let validator = jsonschema::validator_for(&schema).unwrap();
        let as_json = |text: &str| toml_to_json(&toml::from_str::<toml::Value>(text).unwrap());
        for (name, text, _) in cases("good") {
            let errors: Vec<String> = validator.iter_errors(&as_json(&text)).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{name} is refused by the schema: {errors:?}");
        }
        // What the types refuse, the schema refuses too (the rest needs the resolver: references, cycles, syntax of
        // durations and grants).
        for name in
            ["unknown-key", "unknown-nested-key", "unknown-section", "wrong-type", "bad-priority", "missing-component"]
        {
            let text = std::fs::read_to_string(dir("bad").join(format!("{name}.toml"))).unwrap();
            assert!(!validator.is_valid(&as_json(&text)), "{name} passes the schema");
        }
    }

    #[test]
    fn a_cycle_is_named_whole_and_a_long_chain_resolves() {
        let mut text = String::new();
        for i in 0..MAX_AGENTS {
            text.push_str(&format!("[agents.a{i}]\ncomponent = \"x.wasm\"\n"));
            if i > 0 {
                text.push_str(&format!("depends_on = [\"a{}\"]\n", i - 1));
            }
        }
        let plan = parse(&text, Path::new("/"), "chain").unwrap();
        let names: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.first(), Some(&"a0"));
        assert_eq!(names.last(), Some(&format!("a{}", MAX_AGENTS - 1).as_str()));
        // Close the chain: the cycle names every agent on it.
        let closed = text.replacen(
            "[agents.a0]\ncomponent = \"x.wasm\"\n",
            &format!("[agents.a0]\ncomponent = \"x.wasm\"\ndepends_on = [\"a{}\"]\n", MAX_AGENTS - 1),
            1,
        );
        let err = parse(&closed, Path::new("/"), "chain").unwrap_err().0;
        assert!(err.starts_with("dependency cycle: "), "{err}");
        assert_eq!(err.matches(" -> ").count(), MAX_AGENTS, "{err}");
        let over = format!("{text}[agents.extra]\ncomponent = \"x.wasm\"\n");
        assert!(parse(&over, Path::new("/"), "x").unwrap_err().0.contains("over the limit"));
        let huge = format!("# {}\n{text}", "x".repeat(MAX_MANIFEST));
        assert!(parse(&huge, Path::new("/"), "x").unwrap_err().0.contains("byte limit"));
    }

    #[test]
    fn pipes_parse_to_json_pointers() {
        assert_eq!(parse_pipe("a").unwrap(), Pipe { agent: "a".into(), pointer: String::new() });
        assert_eq!(parse_pipe("a.b.0").unwrap().pointer, "/b/0");
        assert_eq!(parse_pipe("a.x~y").unwrap().pointer, "/x~0y");
        for bad in ["", ".a", "a.", "a..b", "../x"] {
            assert!(parse_pipe(bad).is_err(), "{bad}");
        }
    }
}
