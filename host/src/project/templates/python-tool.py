"""{{name}}: a toka-host tool in Python, made by `toka-host new tool {{name}} --lang python`.

``describe`` tells callers the tool's name, schemas and side effects; the host checks every input against the input
schema before ``invoke`` runs and every output against the output schema after. Input ``{"name": "Ada"}`` gives
``{"greeting":"Hello, Ada!"}``. Build with ``toka-host build``; install with ``toka-host tool add {{name}}.wasm``.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports.toka_agent_types import SideEffect, ToolError_InvalidInput, ToolSpec

SCHEMA = "https://json-schema.org/draft/2020-12/schema"


class WitWorld(wit_world.WitWorld):
    def describe(self) -> ToolSpec:
        return ToolSpec(
            name="{{name}}",
            version="0.1.0",
            description="Greets someone by name.",
            input_schema=json.dumps({
                "$schema": SCHEMA,
                "type": "object",
                "properties": {"name": {"type": "string", "minLength": 1}},
                "required": ["name"],
                "additionalProperties": False,
            }),
            output_schema=json.dumps({
                "$schema": SCHEMA,
                "type": "object",
                "properties": {"greeting": {"type": "string"}},
                "required": ["greeting"],
            }),
            side_effect=SideEffect.NONE,
            # The rights it needs, as KIND:VALUE ("fs:/:ro"): a call gets these intersected with its caller's.
            grants=[],
        )

    def invoke(self, input: str) -> str:
        value = json.loads(input)
        name = value.get("name")
        if not isinstance(name, str):
            raise Err(ToolError_InvalidInput('"name" must be a string'))
        return json.dumps({"greeting": f"Hello, {name}!"}, separators=(",", ":"), ensure_ascii=False)
