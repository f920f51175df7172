// {{name}}: a toka-host tool in JavaScript, made by `toka-host new tool {{name}} --lang js`.
//
// `describe` tells callers the tool's name, schemas and side effects; the host checks every input against the input
// schema before `invoke` runs and every output against the output schema after. Input `{"name": "Ada"}` gives
// `{"greeting":"Hello, Ada!"}`. Build with `toka-host build`; install with `toka-host tool add {{name}}.wasm`.

const SCHEMA = 'https://json-schema.org/draft/2020-12/schema';

export function describe() {
  return {
    name: '{{name}}',
    version: '0.1.0',
    description: 'Greets someone by name.',
    inputSchema: JSON.stringify({
      $schema: SCHEMA,
      type: 'object',
      properties: { name: { type: 'string', minLength: 1 } },
      required: ['name'],
      additionalProperties: false,
    }),
    outputSchema: JSON.stringify({
      $schema: SCHEMA,
      type: 'object',
      properties: { greeting: { type: 'string' } },
      required: ['greeting'],
    }),
    sideEffect: 'none',
    // The rights it needs, as KIND:VALUE ('fs:/:ro'): a call gets these intersected with its caller's.
    grants: [],
  };
}

export function invoke(input) {
  const value = JSON.parse(input);
  if (typeof value.name !== 'string') {
    throw { tag: 'invalid-input', val: '"name" must be a string' };
  }
  return JSON.stringify({ greeting: `Hello, ${value.name}!` });
}
