//! Python and JavaScript agents: their componentizers embed a whole interpreter (CPython, SpiderMonkey), so they
//! produce the component themselves; xtask only runs the tools that `scripts/setup-toolchains` installs in `.tools/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::Layout;

/// Runs `command`, failing with its exit status, and returns the bytes it wrote to `out`.
fn run_tool(mut command: Command, what: &str, out: &Path) -> Result<Vec<u8>> {
    let status = command.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} exited with {status}");
    }
    std::fs::read(out).with_context(|| format!("reading {what}'s output {}", out.display()))
}

fn tool(layout: &Layout, relative: &str) -> Result<PathBuf> {
    let path = layout.tools.join(relative);
    if !path.exists() {
        bail!("{} is missing: run scripts/setup-toolchains", path.display());
    }
    Ok(path)
}

/// `agents/NAME/agent.py` (class `WitWorld`) → componentize-py for world `toka:agent/agent`; for a tool,
/// `agents/NAME/tool.py` → world `toka:agent/tool`.
pub fn componentize_py(layout: &Layout, name: &str, scratch: &Path, world: &str) -> Result<Vec<u8>> {
    let componentize_py = tool(layout, "venv/bin/componentize-py")?;
    let out = scratch.join("component.wasm");
    let mut command = Command::new(componentize_py);
    command
        .arg("--wit-path")
        .arg(&layout.wit)
        .args(["--world", &format!("toka:agent/{world}"), "--quiet", "componentize", "--python-path"])
        .arg(layout.agents.join(name))
        .arg("--output")
        .arg(&out)
        .arg(world)
        // Only the agent's directory is searched for modules: no site-packages of an activated virtualenv.
        .env_remove("VIRTUAL_ENV")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run_tool(command, "componentize-py", &out)
}

/// `agents/NAME/agent.js` (ES module exporting `run`) → componentize-js for world `agent`, without the HTTP and
/// fetch-event features (the agent world imports neither).
pub fn componentize_js(layout: &Layout, name: &str, scratch: &Path) -> Result<Vec<u8>> {
    let componentize_js = tool(layout, "js/node_modules/.bin/componentize-js")?;
    let out = scratch.join("component.wasm");
    let mut command = Command::new(componentize_js);
    command
        .arg(layout.agents.join(name).join("agent.js"))
        .arg("--wit")
        .arg(&layout.wit)
        .args(["--world-name", "agent", "--disable", "http", "fetch-event", "--out"])
        .arg(&out);
    run_tool(command, "componentize-js", &out)
}
