// hello-js: the hello agent in JavaScript (componentize-js), behaving exactly like hello-rust.
//
// Input `{"name": "Ada"}` (`name` optional, default "world"): logs `greeting Ada` at info level through the host's
// `toka:agent/log` import and returns `{"greeting":"Hello, Ada!"}`. Invalid JSON, input that is not a JSON object
// and a `name` that is not a string (null included) are `invalid-input` errors: for an export returning
// `result<string, agent-error>`, a returned value is `ok` and a thrown `{ tag, val }` variant is `err`.
//
// JSON.parse is more permissive than serde_json (hello-rust's parser); `check` rejects what serde_json rejects:
// numbers that overflow a double, unpaired surrogate escapes and nesting deeper than 127 arrays/objects.

import { log } from 'toka:agent/log@0.1.0';

const MAX_DEPTH = 127;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function invalidInput(message) {
  return { tag: 'invalid-input', val: message };
}

function typeName(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  switch (typeof value) {
    case 'boolean': return 'a boolean';
    case 'number': return 'a number';
    case 'string': return 'a string';
    default: return 'an object';
  }
}

// Returns why serde_json would refuse the parsed document `value`, or null if it would accept it.
function check(value, depth = 0) {
  if (typeof value === 'string') {
    return LONE_SURROGATE.test(value) ? 'lone surrogate in \\u escape' : null;
  }
  if (typeof value === 'number') {
    return Number.isFinite(value) ? null : 'number out of range';
  }
  if (value === null || typeof value !== 'object') {
    return null;
  }
  if (depth >= MAX_DEPTH) {
    return 'recursion limit exceeded';
  }
  for (const [key, item] of Object.entries(value)) {
    const problem = check(key, depth + 1) ?? check(item, depth + 1);
    if (problem !== null) return problem;
  }
  return null;
}

export function run(task) {
  let value;
  try {
    value = JSON.parse(task.input);
  } catch (err) {
    throw invalidInput(`bad input JSON: ${err.message}`);
  }
  const problem = check(value);
  if (problem !== null) {
    throw invalidInput(`bad input JSON: ${problem}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalidInput(`input must be a JSON object, got ${typeName(value)}`);
  }
  const name = Object.hasOwn(value, 'name') ? value.name : 'world';
  if (typeof name !== 'string') {
    throw invalidInput(`"name" must be a string, got ${typeName(name)}`);
  }
  log('info', `greeting ${name}`);
  return JSON.stringify({ greeting: `Hello, ${name}!` });
}
