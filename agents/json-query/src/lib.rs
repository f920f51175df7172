//! `json-query`: a path query over a JSON document: `$`, `.key`, `["key"]`, `[index]` (negative from the end) and
//! `[*]` / `.*` (every element or member).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use toka_tool::{SideEffect, Spec, ToolError};

fn spec() -> Spec {
    Spec {
        name: "json-query",
        version: "1.0.0",
        description: "Selects values from a JSON document with a path such as $.items[*].name or $[\"a b\"][0].",
        input_schema: r#"{"type":"object","properties":{"document":{},"path":{"type":"string","minLength":1}},
            "required":["document","path"],"additionalProperties":false}"#,
        output_schema: r#"{"type":"object","properties":{"matches":{"type":"array"}},"required":["matches"],
            "additionalProperties":false}"#,
        side_effect: SideEffect::None,
        grants: &[],
    }
}

#[derive(Deserialize)]
struct In {
    document: Value,
    path: String,
}

#[derive(Serialize)]
struct Out {
    matches: Vec<Value>,
}

#[derive(Debug, PartialEq)]
enum Step {
    Key(String),
    Index(i64),
    All,
}

fn parse(path: &str) -> Result<Vec<Step>, String> {
    let rest = path.strip_prefix('$').ok_or("a path starts with `$`")?;
    let chars: Vec<char> = rest.chars().collect();
    let (mut i, mut steps) = (0, Vec::new());
    while i < chars.len() {
        match chars[i] {
            '.' => {
                let start = i + 1;
                let mut end = start;
                while end < chars.len() && chars[end] != '.' && chars[end] != '[' {
                    end += 1;
                }
                let key: String = chars[start..end].iter().collect();
                match key.as_str() {
                    "" => return Err(format!("empty key at {start}")),
                    "*" => steps.push(Step::All),
                    _ => steps.push(Step::Key(key)),
                }
                i = end;
            }
            '[' => {
                let close = chars[i..].iter().position(|&c| c == ']').ok_or("unclosed `[`")? + i;
                let inner: String = chars[i + 1..close].iter().collect();
                let inner = inner.trim();
                if inner == "*" {
                    steps.push(Step::All);
                } else if let Some(quoted) = inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    steps.push(Step::Key(quoted.to_string()));
                } else {
                    steps.push(Step::Index(inner.parse().map_err(|_| format!("`[{inner}]` is not an index"))?));
                }
                i = close + 1;
            }
            c => return Err(format!("unexpected `{c}` at {i}")),
        }
    }
    Ok(steps)
}

fn query(input: In) -> Result<Out, ToolError> {
    let steps = parse(&input.path).map_err(|e| ToolError::InvalidInput(format!("bad path: {e}")))?;
    let mut current = vec![input.document];
    for step in steps {
        let mut next = Vec::new();
        for value in current {
            match (&step, value) {
                (Step::Key(k), Value::Object(mut map)) => next.extend(map.remove(k)),
                (Step::Index(i), Value::Array(mut items)) => {
                    let len = items.len() as i64;
                    let at = if *i < 0 { len + i } else { *i };
                    if (0..len).contains(&at) {
                        next.push(items.swap_remove(at as usize));
                    }
                }
                (Step::All, Value::Array(items)) => next.extend(items),
                (Step::All, Value::Object(map)) => next.extend(map.into_iter().map(|(_, v)| v)),
                _ => {}
            }
        }
        current = next;
    }
    Ok(Out { matches: current })
}

toka_tool::tool!(spec, query);
