"""tool-chat-python: the tool-chat agent in Python (componentize-py), using ``toka:agent/llm`` directly.

It holds a multi-turn conversation with a model through the host's gateway, offering the model the host's tools this
run may call (``toka:agent/tools``), running each tool call the model makes through the host and sending back the
result, until the model answers in words. The agent never sees a key: the host checks the run's token (``llm:MODEL``,
``tool:NAME``) and budgets at every call and records each one.

Input: ``{"model": "gpt-4o-mini", "question": "...", "stream": false, "max_turns": 6}``. Output:
``{"answer": "...", "turns": 3, "tool_calls": [{"name": "echo", "ok": true}], "prompt_tokens": N,
"completion_tokens": M, "deltas": D}``, as tool-chat (Rust) returns it.
"""

import json
import re

import wit_world
from componentize_py_types import Err
from wit_world.imports import llm, log, tools
from wit_world.imports.toka_agent_types import AgentError_Denied, AgentError_Failed, AgentError_InvalidInput, Task

SYSTEM = "You are an agent with tools. Call them when they help; answer in words when you are done."
FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _message(role: llm.Role, content: str) -> llm.Message:
    return llm.Message(role=role, content=content, tool_calls=[], tool_call_id=None)


def _model_error(err: object) -> Err:
    if isinstance(err, llm.LlmError_Denied):
        return Err(AgentError_Denied(f"model call denied: {err.value}"))
    kind = type(err).__name__.removeprefix("LlmError_")
    return Err(AgentError_Failed(f"model call failed: {kind}: {getattr(err, 'value', err)}"))


def _ask(request: llm.Request, stream: bool, counts: dict) -> llm.Response:
    """One turn of the model, whole or streamed (counting the pieces)."""
    if not stream:
        return llm.chat(request)
    with llm.chat_stream(request) as events:
        while True:
            event = events.next()
            if event is None:
                raise Err(llm.LlmError_Provider("the stream ended without a response"))
            if isinstance(event, llm.StreamEvent_Delta):
                counts["deltas"] += 1
            else:
                return event.value


class WitWorld(wit_world.WitWorld):
    def run(self, task: Task) -> str:
        try:
            spec = json.loads(task.input)
            model, question = spec["model"], spec["question"]
            if not isinstance(model, str) or not isinstance(question, str):
                raise ValueError("model and question must be strings")
        except (ValueError, KeyError, TypeError) as err:
            raise Err(AgentError_InvalidInput(f"bad input: {err}")) from None
        stream = bool(spec.get("stream", False))
        max_turns = int(spec.get("max_turns", 6))
        functions = [
            llm.Function(name=t.name, description=t.description, parameters=t.input_schema)
            for t in tools.list()
            if FUNCTION_NAME.match(t.name)
        ]
        messages = [_message(llm.Role.SYSTEM, SYSTEM), _message(llm.Role.USER, question)]
        out = {"answer": "", "turns": 0, "tool_calls": [], "prompt_tokens": 0, "completion_tokens": 0, "deltas": 0}
        while out["turns"] < max_turns:
            out["turns"] += 1
            request = llm.Request(
                model=model, messages=messages, tools=functions, temperature=None, max_tokens=None, stop=[]
            )
            try:
                response = _ask(request, stream, out)
            except Err as err:
                raise _model_error(err.value) from None
            out["prompt_tokens"] += response.usage.prompt_tokens
            out["completion_tokens"] += response.usage.completion_tokens
            message = response.message
            messages.append(message)
            if not message.tool_calls:
                out["answer"] = message.content
                log.log(log.Level.INFO, f"answered after {out['turns']} turns and {len(out['tool_calls'])} tool calls")
                return json.dumps(out, separators=(",", ":"), ensure_ascii=False)
            for call in message.tool_calls:
                # A tool's failure goes back to the model as its result: the model decides what to do about it.
                try:
                    result, ok = tools.call(call.name, call.arguments or "{}"), True
                except Err as err:
                    result, ok = json.dumps({"error": f"{type(err.value).__name__}: {err.value.value}"}), False
                log.log(log.Level.INFO, f"tool {call.name} ({'ok' if ok else 'failed'})")
                out["tool_calls"].append({"name": call.name, "ok": ok})
                messages.append(llm.Message(role=llm.Role.TOOL, content=result, tool_calls=[], tool_call_id=call.id))
        raise Err(AgentError_Failed(f"no answer after {max_turns} turns"))
