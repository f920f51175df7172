//! Tools: components of the world `toka:agent/tool`, installed in a registry under `$TOKA_HOME/tools`, called by
//! agents (the `tools` interface), by operators (`toka-host tool call`) and by LLM clients (`toka-host mcp`), each
//! call in a fresh sandbox of its own (or, for a tool without side effects that the operator opted in, in an instance
//! kept for that one caller: see [`reuse`]).
//!
//! A tool describes itself (`describe()`): name, version, JSON Schemas of its input and output, side-effect class,
//! and the grants it needs. The host never gives a tool more than the caller has: a call's sandbox gets the tool's
//! declared needs intersected with the caller's own grants (see [`grants`]), after the caller's token allowed
//! `tool:NAME`. Inputs are validated against the input schema before the tool runs, outputs against the output
//! schema after; the tool's fuel comes out of the caller's budget.

pub mod call;
pub mod grants;
pub mod mcp;
pub mod mcp_auth;
pub mod registry;
pub mod reuse;
pub mod schema;

use serde::{Deserialize, Serialize};

/// A tool's self-description, as the registry stores it and `tool describe` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    pub version: String,
    pub description: String,
    pub input_schema: serde_json::Value,
    pub output_schema: serde_json::Value,
    /// `none`, `read-only`, `idempotent`, `external` or `privileged`.
    pub side_effect: String,
    /// Declared needs in the host's grant syntax, with `*` allowed for a net host or port (`net:*:443`).
    pub grants: Vec<String>,
}

/// Longest tool name; names are lowercase ASCII letters, digits, `-`, `_` and `.`.
pub const MAX_NAME: usize = 64;

/// Checks a tool name (the registry's file names come from it, so this is also a path check).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        return Ok(());
    }
    // The refusal quotes the name, bounded and escaped: a hostile name must not come back whole, nor as controls.
    let mut shown: String = name.chars().take(MAX_NAME).flat_map(char::escape_debug).collect();
    if name.chars().count() > MAX_NAME {
        shown.push_str(&format!("... ({} bytes)", name.len()));
    }
    Err(format!(
        "invalid tool name `{shown}`: 1 to {MAX_NAME} characters, lowercase letters, digits, `-`, `_`, `.`, \
         starting with a letter or digit"
    ))
}

impl Spec {
    /// The spec from a tool's `describe()`, checked: name, schemas that are JSON and valid JSON Schema, known
    /// side-effect class, grants that parse.
    pub fn from_wit(spec: crate::bindings::ToolSpec) -> Result<Spec, String> {
        use crate::bindings::SideEffect;
        check_name(&spec.name)?;
        let schema = |which: &str, text: &str| -> Result<serde_json::Value, String> {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("{which} schema is not JSON: {e}"))?;
            jsonschema::validator_for(&value).map_err(|e| format!("{which} schema is not a valid JSON Schema: {e}"))?;
            Ok(value)
        };
        let side_effect = match spec.side_effect {
            SideEffect::None => "none",
            SideEffect::ReadOnly => "read-only",
            SideEffect::Idempotent => "idempotent",
            SideEffect::External => "external",
            SideEffect::Privileged => "privileged",
        };
        for g in &spec.grants {
            grants::Declared::parse(g)?;
        }
        Ok(Spec {
            input_schema: schema("input", &spec.input_schema)?,
            output_schema: schema("output", &spec.output_schema)?,
            name: spec.name,
            version: spec.version,
            description: spec.description,
            side_effect: side_effect.into(),
            grants: spec.grants,
        })
    }

    /// The spec in the WIT type, for `tools.list`.
    pub fn to_wit(&self) -> crate::bindings::ToolSpec {
        use crate::bindings::SideEffect;
        crate::bindings::ToolSpec {
            name: self.name.clone(),
            version: self.version.clone(),
            description: self.description.clone(),
            input_schema: self.input_schema.to_string(),
            output_schema: self.output_schema.to_string(),
            side_effect: match self.side_effect.as_str() {
                "none" => SideEffect::None,
                "read-only" => SideEffect::ReadOnly,
                "idempotent" => SideEffect::Idempotent,
                "external" => SideEffect::External,
                _ => SideEffect::Privileged,
            },
            grants: self.grants.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["file-reader", "json_query", "v1.2", "a"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "File", "../x", "a/b", "-x", ".hidden", &"x".repeat(65), "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    /// A refused name comes back bounded and escaped: a 100 KB name or one with a terminal escape in it is not
    /// echoed as it is into an error line, an HTTP answer or a log.
    #[test]
    fn a_refused_name_is_quoted_bounded_and_escaped() {
        let huge = "a".repeat(100_000);
        let e = check_name(&huge).unwrap_err();
        assert!(e.len() < 300, "{} bytes", e.len());
        assert!(e.starts_with(&format!("invalid tool name `{}... (100000 bytes)`", "a".repeat(MAX_NAME))), "{e}");
        let e = check_name("x\u{1b}[2Jy").unwrap_err();
        assert!(e.starts_with("invalid tool name `x\\u{1b}[2Jy`"), "{e}");
        assert!(!e.contains('\u{1b}'));
        // Control: a name at the limit is accepted whole.
        assert!(check_name(&"a".repeat(MAX_NAME)).is_ok());
    }
}
