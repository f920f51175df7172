//! Tools: components of the `toka:agent/tool` world, written like agents.
//!
//! A tool describes itself with a [`Spec`] (name, version, description, JSON Schemas of its input and output, the
//! [`SideEffect`] class, and the grants it needs) and does its job in a handler `fn(In) -> Result<Out, ToolError>`;
//! [`crate::tool!`] exports both. The host calls `describe()` when the tool is installed and `invoke(input)` for
//! every call, each in a fresh sandbox of its own whose rights are the tool's declared grants intersected with its
//! caller's. It validates the input against [`Spec::input_schema`] before `invoke` runs and the output against
//! [`Spec::output_schema`] after, so the schemas are the tool's contract: write real JSON Schemas (draft 2020-12,
//! `type`, `properties`, `required`, `additionalProperties: false` where the shape is closed), and keep the serde
//! types of the handler in step with them.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use serde_json::json;
//! use toka_sdk::ToolError;
//! use toka_sdk::tool::{SideEffect, Spec};
//!
//! #[derive(Deserialize)]
//! struct In {
//!     text: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Out {
//!     chars: usize,
//! }
//!
//! fn spec() -> Spec {
//!     Spec {
//!         name: "char-count",
//!         version: "1.0.0",
//!         description: "Counts the Unicode scalar values of a text.",
//!         input_schema: json!({
//!             "$schema": "https://json-schema.org/draft/2020-12/schema",
//!             "type": "object",
//!             "properties": { "text": { "type": "string" } },
//!             "required": ["text"],
//!             "additionalProperties": false,
//!         }),
//!         output_schema: json!({
//!             "$schema": "https://json-schema.org/draft/2020-12/schema",
//!             "type": "object",
//!             "properties": { "chars": { "type": "integer", "minimum": 0 } },
//!             "required": ["chars"],
//!             "additionalProperties": false,
//!         }),
//!         side_effect: SideEffect::None,
//!         grants: &[],
//!     }
//! }
//!
//! fn count(input: In) -> Result<Out, ToolError> {
//!     toka_sdk::debug!("counting {} bytes", input.text.len());
//!     Ok(Out { chars: input.text.chars().count() })
//! }
//!
//! toka_sdk::tool!(spec, count);
//!
//! # fn main() {
//! // `invoke_json` is what the exported `invoke` calls; `Spec::to_wit` what `describe` returns.
//! assert_eq!(toka_sdk::tool::invoke_json(r#"{"text":"héllo"}"#, count).unwrap(), r#"{"chars":5}"#);
//! assert!(matches!(toka_sdk::tool::invoke_json("[1]", count), Err(ToolError::InvalidInput(_))));
//! let described = spec().to_wit();
//! assert_eq!(described.name, "char-count");
//! assert!(described.input_schema.starts_with('{'));
//! # }
//! ```
//!
//! ## What a tool can reach
//!
//! The tool world imports WASI (files, clocks, random, sockets: each empty unless the call's grants fill it),
//! [`crate::log`] and [`crate::tools`] (a tool may call other tools; the host limits the depth). It does not import
//! [`crate::events`] or [`crate::state`]: those belong to agents, and a tool that calls them does not link
//! (`xtask build-agents` refuses it).
//!
//! Files: the host mounts each directory the call may use at the same absolute path as in the caller's sandbox, so
//! a path the caller hands the tool names the same file on both sides; tools take absolute paths.

pub use crate::bindings::toka::agent::types::{SideEffect, ToolError, ToolSpec};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A tool's self-description, what [`crate::tool!`]'s `describe` returns (through [`Spec::to_wit`]).
#[derive(Debug, Clone)]
pub struct Spec {
    /// The name the tool is installed and called under: lowercase ASCII letters, digits, `-`, `_` and `.`.
    pub name: &'static str,
    /// The tool's version; `env!("CARGO_PKG_VERSION")` keeps it in step with the crate.
    pub version: &'static str,
    /// What the tool does, for people and for the language models that pick tools by their description.
    pub description: &'static str,
    /// JSON Schema of `invoke`'s input (the host validates every input against it before the tool runs).
    pub input_schema: serde_json::Value,
    /// JSON Schema of `invoke`'s output (the host refuses an output that does not match it).
    pub output_schema: serde_json::Value,
    /// What the tool may do beyond computing its output.
    pub side_effect: SideEffect,
    /// The grants the tool needs, in the host's `KIND:VALUE` form with wildcards: `fs:/:ro` (any directory its
    /// caller can read), `fs:/:rw`, `env:NAME`, `net:*:*`, `net:*:443`. The host gives a call at most these,
    /// intersected with what the caller has.
    pub grants: &'static [&'static str],
}

impl Spec {
    /// The spec in the WIT type, with the schemas serialized as JSON text.
    pub fn to_wit(&self) -> ToolSpec {
        ToolSpec {
            name: self.name.into(),
            version: self.version.into(),
            description: self.description.into(),
            input_schema: self.input_schema.to_string(),
            output_schema: self.output_schema.to_string(),
            side_effect: self.side_effect,
            grants: self.grants.iter().map(|grant| (*grant).to_owned()).collect(),
        }
    }
}

/// Runs `handler` on a JSON input the way [`crate::tool!`]'s `invoke` does: deserializes `input` into `In`, calls
/// the handler and serializes its output as compact JSON.
///
/// Input that does not deserialize into `In` becomes [`ToolError::InvalidInput`] with serde_json's message,
/// prefixed `bad input JSON: ` for syntax errors and `unexpected input: ` for a well-formed document of the wrong
/// shape (the host validates inputs against the input schema first, so the second means the schema and `In`
/// disagree, or the tool was called without the host); an output that cannot be serialized becomes
/// [`ToolError::Failed`].
pub fn invoke_json<In, Out, F>(input: &str, handler: F) -> Result<String, ToolError>
where
    In: DeserializeOwned,
    Out: Serialize,
    F: FnOnce(In) -> Result<Out, ToolError>,
{
    let input: In = serde_json::from_str(input).map_err(|err| {
        ToolError::InvalidInput(match err.classify() {
            serde_json::error::Category::Data => format!("unexpected input: {err}"),
            _ => format!("bad input JSON: {err}"),
        })
    })?;
    let output = handler(input)?;
    serde_json::to_string(&output)
        .map_err(|err| ToolError::Failed(format!("cannot serialize the output as JSON: {err}")))
}

/// A [`ToolError`] for a failed file operation on `path`, classified for the caller: a right the call does not
/// have (a path outside every granted directory; `PermissionDenied` or `ReadOnlyFilesystem`, such as writing where
/// the caller's grant is read-only) is [`ToolError::Denied`]; a path that does not exist, or is not a file or
/// directory as the operation needs, is [`ToolError::InvalidInput`]; anything else is [`ToolError::Failed`].
pub fn fs_error(path: &str, err: &std::io::Error) -> ToolError {
    use std::io::ErrorKind;
    // wasi-libc's ENOTCAPABLE: the path lies outside every directory the sandbox has.
    const ENOTCAPABLE: i32 = 76;
    if cfg!(target_os = "wasi") && err.raw_os_error() == Some(ENOTCAPABLE) {
        return ToolError::Denied(format!(
            "{path}: not in a directory this call was granted (a tool sees its caller's granted directories, at the \
             same paths)"
        ));
    }
    match err.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            ToolError::Denied(format!("{path}: not allowed by this call's grants ({err})"))
        }
        ErrorKind::NotFound => ToolError::InvalidInput(format!("{path}: no such file or directory")),
        ErrorKind::NotADirectory | ErrorKind::IsADirectory | ErrorKind::InvalidFilename | ErrorKind::InvalidInput => {
            ToolError::InvalidInput(format!("{path}: {err}"))
        }
        _ => ToolError::Failed(format!("{path}: {err}")),
    }
}

/// Exports a tool's `describe` and `invoke` from a spec function `fn() -> Spec` and a handler
/// `fn(In) -> Result<Out, ToolError>`.
///
/// `In` must implement [`serde::de::DeserializeOwned`] and `Out` [`serde::Serialize`] (use [`serde_json::Value`]
/// for either to handle JSON by hand); see [`tool::invoke_json`](crate::tool::invoke_json) for the conversions and
/// the errors they produce, and [`tool::Spec`](crate::tool::Spec) for the description. Invoke it once per tool
/// crate, at module level, instead of [`agent!`](crate::agent!):
///
/// ```
/// mod echo {
///     use toka_sdk::tool::{SideEffect, Spec};
///
///     pub fn spec() -> Spec {
///         Spec {
///             name: "echo",
///             version: "1.0.0",
///             description: "Returns its input unchanged.",
///             input_schema: serde_json::json!({ "type": "object" }),
///             output_schema: serde_json::json!({ "type": "object" }),
///             side_effect: SideEffect::None,
///             grants: &[],
///         }
///     }
///
///     pub fn echo(input: serde_json::Value) -> Result<serde_json::Value, toka_sdk::ToolError> {
///         Ok(input)
///     }
/// }
///
/// toka_sdk::tool!(echo::spec, echo::echo); // any paths to the two functions
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! tool {
    ($spec:path, $handler:path $(,)?) => {
        #[doc(hidden)]
        struct __TokaTool;

        impl $crate::tool_bindings::Guest for __TokaTool {
            fn describe() -> $crate::tool::ToolSpec {
                $spec().to_wit()
            }

            fn invoke(
                input: ::std::string::String,
            ) -> ::core::result::Result<::std::string::String, $crate::ToolError> {
                $crate::tool::invoke_json(&input, $handler)
            }
        }

        $crate::tool_bindings::export!(__TokaTool with_types_in $crate::tool_bindings);
    };
}
