// tool-chat-js: the tool-chat agent in JavaScript (componentize-js), using `toka:agent/llm` directly.
//
// It holds a multi-turn conversation with a model through the host's gateway, offering the model the host's tools
// this run may call (`toka:agent/tools`), running each tool call the model makes through the host and sending back
// the result, until the model answers in words. The agent never sees a key: the host checks the run's token
// (`llm:MODEL`, `tool:NAME`) and budgets at every call and records each one.
//
// Input: `{"model": "gpt-4o-mini", "question": "...", "stream": false, "max_turns": 6}`. Output:
// `{"answer": "...", "turns": 3, "tool_calls": [{"name": "echo", "ok": true}], "prompt_tokens": N,
// "completion_tokens": M, "deltas": D}`, as tool-chat (Rust) and tool-chat-python return it.
//
// How the interface looks from JavaScript (componentize-js): records are objects with camelCase fields, enums are
// their kebab-case names, `option` is the value or `undefined`, an imported function returning `result` returns the
// `ok` value and throws the `err` variant (`{ tag, val }`, as the thrown error's `payload`), and `run` returns its
// `ok` value and throws `{ tag, val }` for its `err`.

import { log } from 'toka:agent/log@0.1.0';
import { chat, chatStream } from 'toka:agent/llm@0.1.0';
import { call, list } from 'toka:agent/tools@0.1.0';

const SYSTEM = 'You are an agent with tools. Call them when they help; answer in words when you are done.';
const FUNCTION_NAME = /^[A-Za-z0-9_-]{1,64}$/;

function agentError(tag, message) {
  return { tag, val: message };
}

// The `err` variant an imported function threw (`{ tag, val }`), whatever wrapper carries it.
function variantOf(thrown) {
  const v = thrown && typeof thrown === 'object' && 'payload' in thrown ? thrown.payload : thrown;
  if (v && typeof v === 'object' && typeof v.tag === 'string') return v;
  return { tag: 'provider', val: String(thrown) };
}

function message(role, content, toolCalls = [], toolCallId = undefined) {
  return { role, content, toolCalls, toolCallId };
}

// One turn of the model, whole or streamed (counting the pieces).
function ask(request, stream, out) {
  if (!stream) return chat(request);
  const events = chatStream(request);
  for (;;) {
    const event = events.next();
    if (event === undefined || event === null) {
      throw { payload: { tag: 'provider', val: 'the stream ended without a response' } };
    }
    if (event.tag === 'delta') {
      out.deltas += 1;
    } else {
      return event.val;
    }
  }
}

function parseInput(text) {
  let spec;
  try {
    spec = JSON.parse(text);
  } catch (err) {
    throw agentError('invalid-input', `bad input: ${err.message}`);
  }
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) {
    throw agentError('invalid-input', 'bad input: expected a JSON object');
  }
  if (typeof spec.model !== 'string' || typeof spec.question !== 'string') {
    throw agentError('invalid-input', 'bad input: model and question must be strings');
  }
  const maxTurns = spec.max_turns === undefined ? 6 : spec.max_turns;
  if (!Number.isInteger(maxTurns) || maxTurns < 1) {
    throw agentError('invalid-input', 'bad input: max_turns must be a positive integer');
  }
  return { model: spec.model, question: spec.question, stream: Boolean(spec.stream), maxTurns };
}

export function run(task) {
  const { model, question, stream, maxTurns } = parseInput(task.input);
  const functions = list()
    .filter((t) => FUNCTION_NAME.test(t.name))
    .map((t) => ({ name: t.name, description: t.description, parameters: t.inputSchema }));
  const messages = [message('system', SYSTEM), message('user', question)];
  const out = { answer: '', turns: 0, tool_calls: [], prompt_tokens: 0, completion_tokens: 0, deltas: 0 };
  while (out.turns < maxTurns) {
    out.turns += 1;
    const request = { model, messages, tools: functions, temperature: undefined, maxTokens: undefined, stop: [] };
    let response;
    try {
      response = ask(request, stream, out);
    } catch (thrown) {
      const err = variantOf(thrown);
      if (err.tag === 'denied') throw agentError('denied', `model call denied: ${err.val}`);
      throw agentError('failed', `model call failed: ${err.tag}: ${err.val}`);
    }
    out.prompt_tokens += response.usage.promptTokens;
    out.completion_tokens += response.usage.completionTokens;
    const reply = response.message;
    messages.push(message(reply.role, reply.content, reply.toolCalls, reply.toolCallId));
    if (reply.toolCalls.length === 0) {
      out.answer = reply.content;
      log('info', `answered after ${out.turns} turns and ${out.tool_calls.length} tool calls`);
      return JSON.stringify(out);
    }
    for (const toolCall of reply.toolCalls) {
      // A tool's failure goes back to the model as its result: the model decides what to do about it.
      let result;
      let ok;
      try {
        result = call(toolCall.name, toolCall.arguments || '{}');
        ok = true;
      } catch (thrown) {
        const err = variantOf(thrown);
        result = JSON.stringify({ error: `${err.tag}: ${err.val}` });
        ok = false;
      }
      log('info', `tool ${toolCall.name} (${ok ? 'ok' : 'failed'})`);
      out.tool_calls.push({ name: toolCall.name, ok });
      messages.push(message('tool', result, [], toolCall.id));
    }
  }
  throw agentError('failed', `no answer after ${maxTurns} turns`);
}
