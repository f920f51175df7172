"""hello-python: the hello agent in Python (componentize-py), behaving exactly like hello-rust.

Input ``{"name": "Ada"}`` (``name`` optional, default ``"world"``): logs ``greeting Ada`` at info level through the
host's ``toka:agent/log`` import and returns ``{"greeting":"Hello, Ada!"}``. Invalid JSON, input that is not a JSON
object and a ``name`` that is not a string (``null`` included) raise ``Err(AgentError_InvalidInput(...))``.

Python's ``json`` module is more permissive than serde_json (hello-rust's parser); the checks below reject what
serde_json rejects: ``NaN``/``Infinity``, numbers that overflow a double, unpaired surrogate escapes and nesting
deeper than 127 arrays/objects.
"""

import json
import math

import wit_world
from componentize_py_types import Err
from wit_world.imports import log
from wit_world.imports.toka_agent_types import AgentError_InvalidInput, Task

MAX_DEPTH = 127


class BadJson(ValueError):
    """A document that serde_json would refuse."""


def _reject_constant(name: str) -> float:
    raise BadJson(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BadJson(f"number out of range: {text}")
    return value


def _check(value: object, depth: int = 0) -> None:
    """Rejects unpaired surrogates (not representable in UTF-8) and over-deep nesting, anywhere in `value`."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadJson("lone surrogate in \\u escape") from None
    elif isinstance(value, (list, dict)):
        if depth >= MAX_DEPTH:
            raise BadJson("recursion limit exceeded")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            _check(key, depth + 1)
            _check(item, depth + 1)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is a subclass of int
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _invalid(message: str) -> Err:
    return Err(AgentError_InvalidInput(message))


class WitWorld(wit_world.WitWorld):
    def run(self, task: Task) -> str:
        try:
            value = json.loads(task.input, parse_constant=_reject_constant, parse_float=_finite_float)
            _check(value)
        except (ValueError, RecursionError) as err:
            raise _invalid(f"bad input JSON: {err}") from None
        if not isinstance(value, dict):
            raise _invalid(f"input must be a JSON object, got {_type_name(value)}")
        name = value.get("name", "world")
        if not isinstance(name, str):
            raise _invalid(f'"name" must be a string, got {_type_name(name)}')
        log.log(log.Level.INFO, f"greeting {name}")
        return json.dumps({"greeting": f"Hello, {name}!"}, separators=(",", ":"), ensure_ascii=False)
