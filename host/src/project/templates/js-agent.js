// {{name}}: a toka-host agent in JavaScript, made by `toka-host new agent {{name}} --lang js`.
//
// The host calls `run` once per task; the returned string is what `toka-host run` prints. Input `{"name": "Ada"}`
// gives `{"greeting":"Hello, Ada!"}`. Throw `{ tag: 'invalid-input' | 'failed' | 'denied', val: MESSAGE }` to fail
// the task.
//
// Imports (each call checked against the run's grants): `toka:agent/log@0.1.0` (logs), and when needed
// `toka:agent/events@0.1.0` (`emit`), `toka:agent/state@0.1.0` (`--state ro|rw`), `toka:agent/tools@0.1.0`
// (`--allow-tool NAME`). Build with `toka-host build`.

import { log } from 'toka:agent/log@0.1.0';

export function run(task) {
  let value;
  try {
    value = JSON.parse(task.input);
  } catch (err) {
    throw { tag: 'invalid-input', val: `bad input JSON: ${err.message}` };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw { tag: 'invalid-input', val: 'input must be a JSON object' };
  }
  const name = Object.hasOwn(value, 'name') ? value.name : 'world';
  if (typeof name !== 'string' || name === '') {
    throw { tag: 'invalid-input', val: '"name" must be a non-empty string' };
  }
  log('info', `greeting ${name}`);
  return JSON.stringify({ greeting: `Hello, ${name}!` });
}
