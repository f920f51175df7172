"""date-validator: a toka:agent/tool component in Python (componentize-py), to show that tools, like agents, come
in any language.

Input ``{"date": TEXT, "format": "date" | "rfc3339"}`` (``format`` optional: a text with a time part after the date
is read as an RFC 3339 date-time, anything else as a date). Output ``{"valid": true, "format": ..., "normalized":
...}`` or ``{"valid": false, "format": ..., "reason": ...}``; an input that is not such an object is
``invalid-input``.

- ``date``: exactly ``YYYY-MM-DD`` (RFC 3339 ``full-date``), a real calendar day (``2024-02-29`` yes, ``2023-02-29``
  no). Normalized: the same text.
- ``rfc3339``: ``YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`` (RFC 3339 ``date-time``; ``T`` and ``Z`` in
  either case), with a real day, hours to 23, minutes to 59, seconds to 59, or 60 for a leap second at 23:59:60 UTC.
  Normalized: the same instant in UTC, ``YYYY-MM-DDTHH:MM:SS[.fraction]Z``, the fraction's digits kept as given.

Python's ``date.fromisoformat`` and ``datetime.fromisoformat`` are not used to decide validity: since Python 3.11
they accept much more than RFC 3339 (``20240101``, week dates, missing offsets).
"""

import json
import re
from datetime import date, datetime, timedelta, timezone

import wit_world
from componentize_py_types import Err
from wit_world.imports.toka_agent_types import SideEffect, ToolError_InvalidInput, ToolSpec

SCHEMA = "https://json-schema.org/draft/2020-12/schema"

SPEC = ToolSpec(
    name="date-validator",
    version="1.0.0",
    description=(
        "Checks a date (YYYY-MM-DD) or an RFC 3339 date-time (2024-05-01T12:30:00+02:00) and returns it normalized "
        "(date-times in UTC with a Z), or why it is not valid. format: date or rfc3339; without it, a text with a "
        "time part is read as rfc3339."
    ),
    input_schema=json.dumps({
        "$schema": SCHEMA,
        "type": "object",
        "properties": {
            "date": {"type": "string"},
            "format": {"enum": ["date", "rfc3339"]},
        },
        "required": ["date"],
        "additionalProperties": False,
    }),
    output_schema=json.dumps({
        "$schema": SCHEMA,
        "type": "object",
        "properties": {
            "valid": {"type": "boolean"},
            "format": {"enum": ["date", "rfc3339"]},
            "normalized": {"type": "string"},
            "reason": {"type": "string"},
        },
        "required": ["valid", "format"],
        "additionalProperties": False,
        "if": {"properties": {"valid": {"const": True}}},
        "then": {"required": ["normalized"]},
        "else": {"required": ["reason"]},
    }),
    side_effect=SideEffect.NONE,
    grants=[],
)

FULL_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)
DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))", re.ASCII
)


class Invalid(ValueError):
    """Why a text is not a valid date or date-time."""


def calendar_day(year: str, month: str, day: str) -> date:
    try:
        return date(int(year), int(month), int(day))
    except ValueError as err:  # "month must be in 1..12", "day is out of range for month"
        raise Invalid(f"{year}-{month}-{day} is not a calendar day: {err}") from None


def check_date(text: str) -> str:
    match = FULL_DATE.fullmatch(text)
    if not match:
        raise Invalid("expected a date as YYYY-MM-DD")
    return calendar_day(*match.groups()).isoformat()


def check_rfc3339(text: str) -> str:
    match = DATE_TIME.fullmatch(text)
    if not match:
        raise Invalid("expected an RFC 3339 date-time: YYYY-MM-DDTHH:MM:SS[.fraction] and Z or an offset +HH:MM")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_hour, off_minute = match.groups()
    day_ = calendar_day(year, month, day)
    if int(hour) > 23 or int(minute) > 59 or int(second) > 60:
        raise Invalid(f"{hour}:{minute}:{second} is not a time of day")
    offset = timedelta()
    if not zulu:
        if int(off_hour) > 23 or int(off_minute) > 59:
            raise Invalid(f"{sign}{off_hour}:{off_minute} is not a UTC offset")
        offset = timedelta(hours=int(off_hour), minutes=int(off_minute)) * (1 if sign == "+" else -1)
    leap = second == "60"
    local = datetime.combine(day_, datetime.min.time()) + timedelta(
        hours=int(hour), minutes=int(minute), seconds=59 if leap else int(second)
    )
    try:
        utc = (local - offset).replace(tzinfo=timezone.utc)
    except OverflowError:
        raise Invalid("out of range once converted to UTC") from None
    if leap and (utc.hour, utc.minute) != (23, 59):
        raise Invalid("a leap second (:60) can only be the last second of a UTC day, 23:59:60Z")
    if utc.year < 1 or utc.year > 9999:
        raise Invalid("out of range once converted to UTC")
    return utc.strftime("%Y-%m-%dT%H:%M:") + ("60" if leap else utc.strftime("%S")) + (fraction or "") + "Z"


def invalid_input(message: str) -> Err:
    return Err(ToolError_InvalidInput(message))


class WitWorld(wit_world.WitWorld):
    def describe(self) -> ToolSpec:
        return SPEC

    def invoke(self, input: str) -> str:
        try:
            request = json.loads(input)
        except ValueError as err:
            raise invalid_input(f"bad input JSON: {err}") from None
        if not isinstance(request, dict) or not isinstance(request.get("date"), str):
            raise invalid_input('expected an object with a string "date"')
        text = request["date"]
        fmt = request.get("format")
        if fmt is None:
            fmt = "rfc3339" if len(text) > 10 and text[10] in "Tt" else "date"
        if fmt not in ("date", "rfc3339"):
            raise invalid_input('"format" must be "date" or "rfc3339"')
        try:
            normalized = check_date(text) if fmt == "date" else check_rfc3339(text)
        except Invalid as why:
            return json.dumps({"valid": False, "format": fmt, "reason": str(why)})
        return json.dumps({"valid": True, "format": fmt, "normalized": normalized})
