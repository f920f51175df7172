//! A tool's input and output checks: JSON, and valid against the tool's JSON Schema.
//!
//! Many tools declare a schema that only says which kind of JSON value they take (`{"type": "object"}`, as the SDK's
//! examples do), with annotations around it. For such a schema a valid value needs no tree: [`Schema::check`] reads
//! the text once with a visitor that keeps nothing, through the very same `serde_json` parser calls as building a
//! [`serde_json::Value`] makes (so it accepts exactly the texts a `Value` parse accepts: same syntax, same string
//! escapes, same number range, same depth limit), and looks at the kind of the outermost value. Every other schema,
//! and every text this finds not valid, takes the full path: a `Value`, then the compiled validator, whose errors are
//! what the caller is told. So the shallow path only ever answers "valid", and only where the full path would.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// The kinds of JSON value a type-only schema may admit (`integer` is not one: it needs the number's value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Object,
    Array,
    String,
    Boolean,
    Null,
    Number,
}

impl Kind {
    fn named(name: &str) -> Option<Kind> {
        Some(match name {
            "object" => Kind::Object,
            "array" => Kind::Array,
            "string" => Kind::String,
            "boolean" => Kind::Boolean,
            "null" => Kind::Null,
            "number" => Kind::Number,
            _ => return None,
        })
    }
}

/// Keywords that never change whether a value is valid (annotations), besides `type`. `$schema` picks the draft,
/// which does not change what `type` means for the kinds above (and the full validator is still compiled from the
/// same schema, so an unknown draft is refused as before).
const ANNOTATIONS: &[&str] = &["$schema", "$comment", "title", "description", "examples", "deprecated"];

/// A compiled schema, with its shallow form where it has one.
pub struct Schema {
    full: jsonschema::Validator,
    /// `Some(kinds)`: the schema only asks for one of these kinds at the top (`None` inside: any kind).
    shallow: Option<Option<Vec<Kind>>>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema").field("shallow", &self.shallow).finish_non_exhaustive()
    }
}

/// Why a text was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not JSON (the parser's message).
    NotJson(String),
    /// JSON, against the schema (the first few violations).
    Invalid(String),
}

impl Schema {
    /// Compiles `schema`; an error names what is wrong with it.
    pub fn compile(schema: &serde_json::Value) -> Result<Schema, String> {
        let full = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
        Ok(Schema { full, shallow: shallow_form(schema) })
    }

    /// Whether `text` is JSON valid against the schema.
    pub fn check(&self, text: &str) -> Result<(), Refusal> {
        if let Some(kinds) = &self.shallow
            && let Ok(Outer(kind)) = serde_json::from_str::<Outer>(text)
            && kinds.as_ref().is_none_or(|k| k.contains(&kind))
        {
            return Ok(());
        }
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| Refusal::NotJson(e.to_string()))?;
        match errors(&self.full, &value) {
            None => Ok(()),
            Some(why) => Err(Refusal::Invalid(why)),
        }
    }
}

/// The kinds a type-only schema admits (`Some(None)`: any), or `None` if the schema says more than that.
fn shallow_form(schema: &serde_json::Value) -> Option<Option<Vec<Kind>>> {
    let object = match schema {
        serde_json::Value::Bool(true) => return Some(None),
        serde_json::Value::Object(object) => object,
        _ => return None,
    };
    let mut kinds = None;
    for (key, value) in object {
        if key == "type" {
            let names: Vec<&serde_json::Value> = match value {
                serde_json::Value::Array(names) => names.iter().collect(),
                one => vec![one],
            };
            let parsed: Option<Vec<Kind>> = names.iter().map(|n| n.as_str().and_then(Kind::named)).collect();
            kinds = Some(parsed?);
        } else if !ANNOTATIONS.contains(&key.as_str()) {
            return None;
        }
    }
    Some(kinds)
}

/// The first few schema violations of `value`, or `None` if it is valid.
fn errors(validator: &jsonschema::Validator, value: &serde_json::Value) -> Option<String> {
    // The common case first: a valid value needs no error objects (each carries paths and a message).
    if validator.is_valid(value) {
        return None;
    }
    let errors: Vec<String> = validator
        .iter_errors(value)
        .take(3)
        .map(|e| {
            let at = e.instance_path().to_string();
            let message = crate::error::one_line(&e.to_string());
            if at.is_empty() { message } else { format!("at {at}: {message}") }
        })
        .collect();
    // Not valid, so never accepted, even if no error could be told.
    if errors.is_empty() { Some("does not match the schema".to_string()) } else { Some(errors.join("; ")) }
}

/// The kind of a JSON text's outermost value, read without keeping anything.
struct Outer(Kind);

impl<'de> Deserialize<'de> for Outer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindOf).map(Outer)
    }
}

/// Any JSON value, read as `serde_json::Value`'s own deserializer reads it (`deserialize_any` all the way down,
/// keys as strings), kept nowhere. Not `serde::de::IgnoredAny`: serde_json skips that without checking a number's
/// range as a `Value` parse does, so it would accept texts the full path refuses (`1e400`).
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindOf).map(|_| Skip)
    }
}

/// A map key, read as `Value` reads one: as a string.
struct Key;

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(IgnoredStr).map(|_| Key)
    }
}

struct IgnoredStr;

impl Visitor<'_> for IgnoredStr {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}

struct KindOf;

impl<'de> Visitor<'de> for KindOf {
    type Value = Kind;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Kind, E> {
        Ok(Kind::Boolean)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Kind, E> {
        Ok(Kind::Number)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Kind, E> {
        Ok(Kind::Number)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Kind, E> {
        // `Value` refuses what is not finite; serde_json never hands one here, but the two must agree regardless.
        if v.is_finite() { Ok(Kind::Number) } else { Err(E::custom("number out of range")) }
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Kind, E> {
        Ok(Kind::String)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Kind::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        while map.next_key::<Key>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Kind::Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full_only(schema: &serde_json::Value) -> Schema {
        Schema { full: jsonschema::validator_for(schema).unwrap(), shallow: None }
    }

    /// Texts at the edges of what JSON and `serde_json` accept: the shallow path must agree with a `Value` parse on
    /// every one (the regression: skipping with `IgnoredAny`, which accepts `1e400` and bad escapes).
    const TEXTS: &[&str] = &[
        r#"{"message":"hello","n":42}"#,
        "{}",
        "[]",
        "[1, 2.5, -3, 1e10, \"x\", null, true, {\"a\": []}]",
        "\"just a string\"",
        "42",
        "-0",
        "1.5e308",
        "1e400",
        "-1e400",
        "18446744073709551616",
        "true",
        "null",
        "",
        "   ",
        "{",
        "{\"a\":1,}",
        "[1,]",
        "{\"a\" 1}",
        "{1: 2}",
        "\"\\ud800\"",
        "\"\\uDC00\\uD800\"",
        "\"\\x\"",
        "\"tab\there\"",
        "\"\\u00e9\"",
        "{\"a\":1,\"a\":2}",
        "{\"a\":1} trailing",
        "{\"a\":1}   \n",
        "01",
        "NaN",
        "Infinity",
        "[1e-400]",
        "\u{feff}{}",
    ];

    #[test]
    fn the_shallow_path_accepts_exactly_what_the_full_path_accepts() {
        let schemas = [
            json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}),
            json!({"type": ["array", "number", "null"]}),
            json!({"type": "string", "title": "t", "description": "d"}),
            json!({"type": "boolean"}),
            json!(true),
            json!({}),
        ];
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let nested = [deep(100), deep(127), deep(128), deep(129), deep(1000)];
        for schema in &schemas {
            let shallow = Schema::compile(schema).unwrap();
            assert!(shallow.shallow.is_some(), "{schema} has a shallow form");
            let full = full_only(schema);
            for text in TEXTS.iter().copied().chain(nested.iter().map(String::as_str)) {
                let fast = serde_json::from_str::<Outer>(text).ok().map(|o| o.0);
                let value = serde_json::from_str::<serde_json::Value>(text).ok();
                assert_eq!(fast.is_some(), value.is_some(), "parse of {text:?}");
                assert_eq!(shallow.check(text), full.check(text), "{text:?} against {schema}");
            }
        }
    }

    #[test]
    fn a_schema_that_says_more_than_a_type_takes_the_full_path() {
        for schema in [
            json!({"type": "object", "required": ["a"]}),
            json!({"type": "object", "properties": {"a": {"type": "string"}}}),
            json!({"type": "integer"}),
            json!({"type": ["object", "integer"]}),
            json!({"$id": "https://example.com/s", "type": "object"}),
            json!({"$ref": "#/$defs/a", "$defs": {"a": {"type": "object"}}}),
            json!({"type": "object", "additionalProperties": false}),
            json!({"enum": [1, 2]}),
            json!(false),
        ] {
            assert!(Schema::compile(&schema).unwrap().shallow.is_none(), "{schema}");
        }
        // And the full path still judges those: required is enforced.
        let s = Schema::compile(&json!({"type": "object", "required": ["a"]})).unwrap();
        assert!(s.check(r#"{"a": 1}"#).is_ok());
        assert!(
            matches!(s.check(r#"{"b": 1}"#), Err(Refusal::Invalid(m)) if m.contains("\"a\" is a required property"))
        );
    }

    #[test]
    fn refusals_name_the_problem_as_before() {
        let s = Schema::compile(&json!({"type": "object"})).unwrap();
        assert_eq!(s.check(r#"{"x": [1, 2]}"#), Ok(()));
        match s.check("[1]") {
            Err(Refusal::Invalid(m)) => assert!(m.contains("is not of type \"object\""), "{m}"),
            other => panic!("{other:?}"),
        }
        match s.check("{\"x\": ") {
            Err(Refusal::NotJson(m)) => assert!(m.contains("EOF"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(Schema::compile(&json!({"type": 5})).is_err(), "a bad schema is still refused");
    }
}
