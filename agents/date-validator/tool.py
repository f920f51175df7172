"""date-validator: checks a date or an RFC 3339 date-time and returns it normalized. A toka:agent/tool component
written in Python (componentize-py), to show that tools, like agents, come in any language."""

import json
from datetime import date, datetime, timezone

import wit_world
from wit_world.imports.toka_agent_types import SideEffect, ToolSpec

SPEC = ToolSpec(
    name="date-validator",
    version="1.0.0",
    description="Validates a date (YYYY-MM-DD) or an RFC 3339 date-time and returns it normalized (UTC for date-times).",
    input_schema=json.dumps({
        "type": "object",
        "properties": {"date": {"type": "string"}, "format": {"enum": ["date", "rfc3339"]}},
        "required": ["date"],
        "additionalProperties": False,
    }),
    output_schema=json.dumps({
        "type": "object",
        "properties": {"valid": {"type": "boolean"}, "normalized": {"type": "string"}, "reason": {"type": "string"}},
        "required": ["valid"],
        "additionalProperties": False,
    }),
    side_effect=SideEffect.NONE,
    grants=[],
)


def validate(text, fmt):
    if fmt == "date":
        return date.fromisoformat(text).isoformat()
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("an RFC 3339 date-time needs a time zone offset")
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


class WitWorld(wit_world.WitWorld):
    def describe(self) -> ToolSpec:
        return SPEC

    def invoke(self, input: str) -> str:
        request = json.loads(input)
        text = request["date"]
        fmt = request.get("format") or ("rfc3339" if "T" in text else "date")
        try:
            return json.dumps({"valid": True, "normalized": validate(text, fmt)})
        except ValueError as e:
            return json.dumps({"valid": False, "reason": str(e)})
