//! Bounds on everything that reaches the log: every operation is bounded here before it is encoded, whoever built
//! it, so that no value a guest, a token or a client hands the host can make a stored record unreadable.
//!
//! Identifiers (run, task, call ids, agent and tool names, token ids) are short by construction; one that is not is
//! refused, never cut, since two cut ids could become one. Free texts (error messages, reasons) are truncated with a
//! marker. JSON values are limited in nesting depth (deeper parts are replaced by a marker) and, outside
//! observations, in the length of each string. Observation payloads are the guest's own data: the events interface
//! refuses an oversized or too deeply nested one before it gets here, so here it is only cut to depth as a last line.
//! This module must never drop a run's ending: a bounded ending always fits.

use crate::kernel::{Op, Operation};
use serde_json::Value;

/// Deepest nesting of any JSON value stored in an operation (serde_json refuses to read past 128, and a stored
/// record wraps the value in a few levels of its own).
pub const MAX_DEPTH: usize = 32;
/// Longest free text kept in a stored value, in bytes; longer texts are cut with a marker.
pub const MAX_TEXT: usize = 4096;
/// Longest identifier accepted, in bytes.
pub const MAX_ID: usize = 256;

/// Longest key of an agent's state, in bytes.
pub const MAX_STATE_KEY: usize = 256;
/// Largest value of an agent's state, in bytes (it travels in its operation, in base64, beside the other bounds).
pub const MAX_STATE_VALUE: usize = 1 << 20;

/// Largest step output recorded with its ending (what a resumed plan pipes into later steps), in bytes.
pub const MAX_STEP_OUTPUT: usize = 48 * 1024;

/// What replaces a part of a value nested deeper than [`MAX_DEPTH`].
pub const DEPTH_MARKER: &str = "[removed: nested deeper than 32 levels]";

/// Cuts `text` to at most `max` bytes (at a character boundary) and says how much was cut.
pub fn truncate(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let total = text.len();
    let mut cut = max.saturating_sub(48);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!(" [truncated: {total} bytes in all]"));
}

/// The nesting depth of a value (a scalar is 0, `[1]` is 1), without recursion.
pub fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, d + 1))),
            Value::Object(map) => stack.extend(map.values().map(|i| (i, d + 1))),
            _ => {}
        }
    }
    deepest
}

/// Bounds `value` in place: parts deeper than `max_depth` become [`DEPTH_MARKER`], and with `max_text`, strings
/// (and object keys) longer than it are truncated.
pub fn bound_value(value: &mut Value, max_depth: usize, max_text: Option<usize>) {
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(_) | Value::Object(_) if d >= max_depth => *v = Value::String(DEPTH_MARKER.into()),
            Value::Array(items) => stack.extend(items.iter_mut().map(|i| (i, d + 1))),
            Value::Object(map) => {
                if let Some(max) = max_text
                    && map.keys().any(|k| k.len() > max)
                {
                    let entries = std::mem::take(map);
                    for (mut k, v) in entries {
                        truncate(&mut k, max);
                        map.insert(k, v);
                    }
                }
                stack.extend(map.values_mut().map(|i| (i, d + 1)));
            }
            Value::String(s) => {
                if let Some(max) = max_text {
                    truncate(s, max);
                }
            }
            _ => {}
        }
    }
}

/// Largest plan manifest accepted, in bytes: a plan is recorded with its manifest in one operation of the log.
pub const MAX_MANIFEST: usize = 48 * 1024;
/// Most agents in one plan.
pub const MAX_AGENTS: usize = 128;

/// Checks an id handed in from outside to name something new (a run id another node chose): 1 to [`MAX_ID`] bytes
/// of letters, digits and `. _ -`.
pub fn check_id(field: &str, value: &str) -> Result<(), String> {
    id(field, value)?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(format!("{field} must be letters, digits and . _ - only"));
    }
    Ok(())
}

fn id(field: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_ID {
        return Err(format!("{field} is {} bytes, over the {MAX_ID} byte limit", value.len()));
    }
    Ok(())
}

/// A state write's key and value are the agent's data: refused, never cut, when over their bounds.
fn state_change(change: Option<&crate::kernel::StateChange>) -> Result<(), String> {
    let Some(change) = change else { return Ok(()) };
    check_state_key(&change.key)?;
    if change.value.as_deref().is_some_and(state_value_over) {
        return Err(format!("state value is over the {MAX_STATE_VALUE} byte limit"));
    }
    if change.sha256.as_ref().is_some_and(|d| d.len() != 64) {
        return Err("state value digest is not a SHA-256".into());
    }
    Ok(())
}

/// Whether a state value in base64 decodes to more than [`MAX_STATE_VALUE`] bytes, told from its length (padded, as
/// the host encodes it; anything else fails to decode later).
pub fn state_value_over(base64: &str) -> bool {
    let padding = base64.bytes().rev().take(2).filter(|b| *b == b'=').count();
    base64.len() > MAX_STATE_VALUE.div_ceil(3) * 4 || (base64.len() / 4 * 3).saturating_sub(padding) > MAX_STATE_VALUE
}

/// A key of an agent's state: 1 to [`MAX_STATE_KEY`] bytes without control characters.
pub fn check_state_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_STATE_KEY || key.chars().any(char::is_control) {
        return Err(format!("state keys are 1 to {MAX_STATE_KEY} bytes without control characters"));
    }
    Ok(())
}

fn detail(value: &mut Value) {
    bound_value(value, MAX_DEPTH, Some(MAX_TEXT));
}

/// Bounds every field of `operation` (see the module documentation); refuses only an oversized identifier, and
/// never for an operation that ends a run or a call (those were accepted with the same identifiers at their start).
pub fn bound_operation(operation: &mut Operation) -> Result<(), String> {
    id("token id", &operation.token)?;
    for t in &operation.chain {
        id("token id", t)?;
    }
    match &mut operation.op {
        Op::ScheduleTask { task_id, agent, input, parent_run, detail: d, .. } => {
            id("task id", task_id)?;
            id("agent name", agent)?;
            id("run id", parent_run.as_deref().unwrap_or_default())?;
            // Cut like any text (a scheduler refuses a longer input before it gets here: a cut one is not JSON).
            truncate(input, MAX_TEXT);
            detail(d);
        }
        Op::DropTask { task_id, reason } => {
            id("task id", task_id)?;
            truncate(reason, MAX_TEXT);
        }
        Op::StartRun { run_id, agent, task_id, detail: d, .. } => {
            id("run id", run_id)?;
            id("agent name", agent)?;
            id("task id", task_id.as_deref().unwrap_or_default())?;
            detail(d);
        }
        Op::SpawnAgent { parent_run, run_id, agent, detail: d } => {
            id("run id", parent_run)?;
            id("run id", run_id)?;
            id("agent name", agent)?;
            detail(d);
        }
        Op::EmitObservation { run_id, kind, payload } => {
            id("run id", run_id)?;
            id("observation kind", kind)?;
            bound_value(payload, MAX_DEPTH, None);
        }
        Op::WriteState { run_id, detail: d, change } => {
            id("run id", run_id)?;
            state_change(change.as_ref())?;
            detail(d);
        }
        Op::OperatorWriteState { agent, detail: d, change } => {
            id("agent name", agent)?;
            state_change(change.as_ref())?;
            detail(d);
        }
        Op::CompleteRun { detail: d, .. } => detail(d),
        Op::LoseRun { run_id, reason, .. } => {
            id("run id", run_id)?;
            truncate(reason, MAX_TEXT);
        }
        Op::FailRun { reason, detail: d, .. } => {
            truncate(reason, MAX_TEXT);
            detail(d);
        }
        Op::RefuseRun { agent, detail: d, .. } => {
            // A refused run's name comes from a file name or a request; a long one is shown cut, not refused,
            // so that the refusal itself is still recorded.
            truncate(agent, MAX_ID);
            detail(d);
        }
        Op::RevokeToken { token_id } => id("token id", token_id)?,
        Op::ReachLimit { run_id, limit, .. } => {
            id("run id", run_id)?;
            truncate(limit, MAX_ID);
        }
        Op::StartToolCall { call_id, run_id, agent, tool, detail: d, .. } => {
            id("call id", call_id)?;
            id("run id", run_id.as_deref().unwrap_or_default())?;
            id("agent name", agent)?;
            // The tool name is what the guest asked for, before it is checked: cut, so the call is recorded.
            truncate(tool, MAX_ID);
            detail(d);
        }
        Op::EndToolCall { tool, detail: d, .. } => {
            truncate(tool, MAX_ID);
            detail(d);
        }
        Op::StartPlan { plan_id, name, digest, manifest, base, steps } => {
            id("plan id", plan_id)?;
            id("plan name", name)?;
            id("manifest digest", digest)?;
            // The manifest is what a resume runs: never cut, refused whole if too large.
            if manifest.len() > MAX_MANIFEST {
                return Err(format!("manifest is {} bytes, over the {} byte limit", manifest.len(), MAX_MANIFEST));
            }
            if base.len() > MAX_TEXT {
                return Err(format!("manifest directory is {} bytes, over the {MAX_TEXT} byte limit", base.len()));
            }
            if steps.len() > MAX_AGENTS {
                return Err(format!("a plan has at most {} steps", MAX_AGENTS));
            }
            for s in steps {
                id("step name", s)?;
            }
        }
        Op::StartStep { plan_id, step, run_id, agent, .. } => {
            id("plan id", plan_id)?;
            id("step name", step)?;
            id("run id", run_id)?;
            id("agent name", agent)?;
        }
        Op::EndStep { outcome, output, detail: d, .. } => {
            truncate(outcome, MAX_ID);
            // An output too large to keep is dropped (the step still ends); a resume then cannot pipe it.
            if output.as_ref().is_some_and(|o| o.len() > MAX_STEP_OUTPUT) {
                *output = None;
            }
            detail(d);
        }
        Op::SkipStep { reason, .. } => truncate(reason, MAX_TEXT),
        Op::ChangeHome { change, subject, detail: d } => {
            id("change", change)?;
            truncate(subject, MAX_ID);
            detail(d);
        }
        Op::EndPlan { outcome, detail: d, .. } => {
            truncate(outcome, MAX_ID);
            detail(d);
        }
        Op::StartLlmCall { call_id, run_id, agent, model, provider, detail: d, .. } => {
            id("call id", call_id)?;
            id("run id", run_id.as_deref().unwrap_or_default())?;
            id("agent name", agent)?;
            // The model is what the guest asked for, before it is checked: cut, so the call is recorded.
            truncate(model, MAX_ID);
            truncate(provider, MAX_ID);
            detail(d);
        }
        Op::EndLlmCall { model, detail: d, .. } => {
            truncate(model, MAX_ID);
            detail(d);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        let mut v = json!(1);
        for _ in 0..levels {
            v = json!([v]);
        }
        v
    }

    #[test]
    fn depth_is_bounded_with_a_marker() {
        let mut v = nested(120);
        assert_eq!(depth(&v), 120);
        bound_value(&mut v, MAX_DEPTH, None);
        assert_eq!(depth(&v), MAX_DEPTH);
        assert!(v.to_string().contains(DEPTH_MARKER));
        let mut shallow = json!({"a": [1, {"b": "c"}]});
        let before = shallow.clone();
        bound_value(&mut shallow, MAX_DEPTH, Some(MAX_TEXT));
        assert_eq!(shallow, before, "a value within bounds is unchanged");
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary_with_a_marker() {
        let mut s = "é".repeat(10_000);
        truncate(&mut s, MAX_TEXT);
        assert!(s.len() <= MAX_TEXT, "{}", s.len());
        assert!(s.ends_with("[truncated: 20000 bytes in all]"));
        let mut v = json!({ "error": "x".repeat(100_000), "k".repeat(5000): 1 });
        bound_value(&mut v, MAX_DEPTH, Some(MAX_TEXT));
        assert!(v.to_string().len() < 3 * MAX_TEXT);
    }

    #[test]
    fn an_ending_is_never_refused_and_always_fits() {
        let mut op = Operation {
            time_ms: 1,
            token: "t".into(),
            chain: vec![],
            op: Op::FailRun {
                run_id: "r".into(),
                reason: "agent-error".into(),
                fuel: 1,
                detail: json!({ "error": "e".repeat(50 << 20), "deep": nested(200) }),
            },
        };
        bound_operation(&mut op).unwrap();
        let bytes = serde_json::to_vec(&op).unwrap();
        assert!(bytes.len() < 2 * MAX_TEXT, "{}", bytes.len());
        let back: Operation = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, op);
    }

    #[test]
    fn oversized_ids_are_refused() {
        let mut op = Operation {
            time_ms: 1,
            token: "t".into(),
            chain: vec![],
            op: Op::StartRun {
                run_id: "r".repeat(MAX_ID + 1),
                agent: "a".into(),
                task_id: None,
                detail: json!({}),
                rate: None,
                node: None,
            },
        };
        assert!(bound_operation(&mut op).unwrap_err().contains("run id is 257 bytes"));
    }
}
