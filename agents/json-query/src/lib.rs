//! `json-query`: selects values from a JSON document with a path.
//!
//! The path syntax is the common core of JSONPath:
//!
//! | step              | selects                                                                             |
//! |-------------------|-------------------------------------------------------------------------------------|
//! | `$`               | the document (every path starts with it)                                            |
//! | `.key`            | the member `key` of an object (`key`: any characters but `.`, `[`, `]`, whitespace)  |
//! | `["key"]`, `['k']`| the member with that name, quoted: any name, JSON string escapes                    |
//! | `[n]`             | element `n` of an array, from 0; negative from the end (`[-1]` is the last)         |
//! | `[*]`, `.*`       | every element of an array, or every member of an object (in key order)              |
//!
//! Steps apply to every value selected so far; a step that does not apply to a value (a key of an array, an index
//! out of range) selects nothing from it, so the result is a possibly empty list, never an error. A path that does
//! not parse is `invalid-input`, saying where.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use toka_sdk::ToolError;
use toka_sdk::tool::{SideEffect, Spec};

fn spec() -> Spec {
    Spec {
        name: "json-query",
        version: env!("CARGO_PKG_VERSION"),
        description: "Selects values from a JSON document with a JSONPath-style path: $ (the document), .key, \
                      [\"key\"], [index] (negative from the end) and [*] or .* (every element or member). Returns \
                      the list of matches, empty if nothing matches.",
        input_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "document": { "description": "any JSON value" },
                "path": { "type": "string", "pattern": "^\\$", "description": "for example $.items[*].name" },
            },
            "required": ["document", "path"],
            "additionalProperties": false,
        }),
        output_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "matches": { "type": "array", "description": "the selected values, in order (object members by key)" },
            },
            "required": ["matches"],
            "additionalProperties": false,
        }),
        side_effect: SideEffect::None,
        grants: &[],
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct In {
    document: Value,
    path: String,
}

#[derive(Serialize)]
struct Out {
    matches: Vec<Value>,
}

/// One step of a parsed path.
#[derive(Debug, PartialEq)]
enum Step {
    Key(String),
    Index(i64),
    All,
}

/// Parses `path` into steps; the error names the character offset where parsing stopped.
fn parse(path: &str) -> Result<Vec<Step>, String> {
    let Some(rest) = path.strip_prefix('$') else {
        return Err("a path starts with `$` (the document)".into());
    };
    let mut steps = Vec::new();
    let mut chars = rest.char_indices().peekable();
    let at = |i: usize| i + 1; // offsets in `path`, which has the `$` before `rest`
    while let Some((i, c)) = chars.next() {
        match c {
            '.' => {
                let mut key = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c == '.' || c == '[' || c == ']' || c.is_whitespace() {
                        break;
                    }
                    key.push(c);
                    chars.next();
                }
                match key.as_str() {
                    "" if matches!(chars.peek(), Some((_, '.'))) => {
                        return Err(format!("recursive descent `..` (at {}) is not supported", at(i)));
                    }
                    "" => return Err(format!("a name must follow `.` at {}", at(i))),
                    "*" => steps.push(Step::All),
                    _ => steps.push(Step::Key(key)),
                }
            }
            '[' => {
                skip_spaces(&mut chars);
                let step = match chars.peek().copied() {
                    Some((_, '*')) => {
                        chars.next();
                        Step::All
                    }
                    Some((q, quote @ ('"' | '\''))) => {
                        chars.next();
                        Step::Key(
                            quoted(&mut chars, quote)
                                .ok_or_else(|| format!("unterminated or malformed quoted name at {}", at(q)))?,
                        )
                    }
                    Some((start, c)) if c == '-' || c.is_ascii_digit() => {
                        let mut number = String::new();
                        while let Some(&(_, c)) = chars.peek() {
                            if !(c == '-' || c.is_ascii_digit()) {
                                break;
                            }
                            number.push(c);
                            chars.next();
                        }
                        let index =
                            number.parse().map_err(|_| format!("`{number}` at {} is not an index", at(start)))?;
                        Step::Index(index)
                    }
                    Some((j, c)) => {
                        return Err(format!("expected `*`, an index or a quoted name at {}, found `{c}`", at(j)));
                    }
                    None => return Err(format!("unclosed `[` at {}", at(i))),
                };
                skip_spaces(&mut chars);
                match chars.next() {
                    Some((_, ']')) => steps.push(step),
                    Some((j, c)) => return Err(format!("expected `]` at {}, found `{c}`", at(j))),
                    None => return Err(format!("unclosed `[` at {}", at(i))),
                }
            }
            c => return Err(format!("expected `.` or `[` at {}, found `{c}`", at(i))),
        }
    }
    Ok(steps)
}

type Chars<'a> = std::iter::Peekable<std::str::CharIndices<'a>>;

fn skip_spaces(chars: &mut Chars<'_>) {
    while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
}

/// The rest of a name quoted with `quote` (the opening quote already consumed), with JSON string escapes; `None` if
/// it is not closed or an escape is malformed.
fn quoted(chars: &mut Chars<'_>, quote: char) -> Option<String> {
    // Re-quote as a JSON string (a single-quoted name may contain `"`, and `\'` is not a JSON escape) and let
    // serde_json decode the escapes.
    let mut json = String::from('"');
    loop {
        let (_, c) = chars.next()?;
        match c {
            '\\' => {
                let (_, escaped) = chars.next()?;
                if escaped == '\'' {
                    json.push('\'');
                } else {
                    json.push('\\');
                    json.push(escaped);
                }
            }
            '"' if quote == '\'' => json.push_str("\\\""),
            c if c == quote => break,
            c => json.push(c),
        }
    }
    json.push('"');
    serde_json::from_str(&json).ok()
}

/// Applies `steps` to `document`; values are moved out of the document, not copied.
fn select(document: Value, steps: &[Step]) -> Vec<Value> {
    let mut current = vec![document];
    for step in steps {
        let mut next = Vec::new();
        for value in current {
            match (step, value) {
                (Step::Key(key), Value::Object(mut map)) => next.extend(map.remove(key)),
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
    current
}

fn query(input: In) -> Result<Out, ToolError> {
    let steps = parse(&input.path).map_err(|e| ToolError::InvalidInput(format!("bad path {:?}: {e}", input.path)))?;
    Ok(Out { matches: select(input.document, &steps) })
}

toka_sdk::tool!(spec, query);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(document: Value, path: &str) -> Value {
        json!(query(In { document, path: path.into() }).map(|o| o.matches).unwrap())
    }

    #[test]
    fn paths() {
        let doc = json!({
            "a": { "b": [10, 20, 30] },
            "items": [{ "name": "x", "n": 1 }, { "name": "y" }, 5],
            "odd key.[]": { "'q\"": true },
        });
        assert_eq!(run(doc.clone(), "$"), json!([doc.clone()]));
        assert_eq!(run(doc.clone(), "$.a.b[0]"), json!([10]));
        assert_eq!(run(doc.clone(), "$.a.b[-1]"), json!([30]));
        assert_eq!(run(doc.clone(), "$.a.b[3]"), json!([]));
        assert_eq!(run(doc.clone(), "$.a.b[-4]"), json!([]));
        assert_eq!(run(doc.clone(), "$.a.b[*]"), json!([10, 20, 30]));
        assert_eq!(run(doc.clone(), "$['a'][\"b\"][ 1 ]"), json!([20]));
        assert_eq!(run(doc.clone(), "$.items[*].name"), json!(["x", "y"]));
        assert_eq!(run(doc.clone(), "$.items.*.n"), json!([1]));
        assert_eq!(run(doc.clone(), "$[\"odd key.[]\"]['\\'q\"']"), json!([true]));
        assert_eq!(run(doc.clone(), "$[\"odd key.[]\"][\"'q\\\"\"]"), json!([true]));
        assert_eq!(run(doc.clone(), "$[\"\\u0061\"].b[0]"), json!([10]));
        assert_eq!(run(doc.clone(), "$.missing.b"), json!([]));
        assert_eq!(run(doc.clone(), "$.a.b.c"), json!([]));
        assert_eq!(run(json!([[1, 2], [3]]), "$[*][*]"), json!([1, 2, 3]));
        assert_eq!(run(json!({"b": 2, "a": 1}), "$.*"), json!([1, 2]), "members in key order");
    }

    #[test]
    fn bad_paths_say_where() {
        for (path, expected) in [
            ("a.b", "starts with `$`"),
            ("$.", "a name must follow `.` at 1"),
            ("$..a", "recursive descent"),
            ("$[", "unclosed `[` at 1"),
            ("$[1", "unclosed `[` at 1"),
            ("$[x]", "expected `*`, an index or a quoted name at 2"),
            ("$['a]", "unterminated or malformed quoted name at 2"),
            ("$[1-]", "is not an index"),
            ("$[1 2]", "expected `]` at 4"),
            ("$a", "expected `.` or `[` at 1"),
            ("$.a]", "expected `.` or `[` at 3"),
        ] {
            let err = parse(path).unwrap_err();
            assert!(err.contains(expected), "{path}: {err}");
        }
    }
}
