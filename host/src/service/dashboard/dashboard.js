// toka-host's dashboard: agents, recent runs, a fuel chart, a live event timeline, a run's detail, a submit form,
// and plans: a listing, the selected plan's steps drawn as a graph (updated live), a form to submit a manifest.
//
// It talks only to the service's own API, with the bearer token the person pasted (kept in this tab's
// sessionStorage, never in localStorage, a cookie or a URL). Everything the server sends can carry a guest's words
// (event payloads, results, agent names), so nothing from the server is ever parsed as HTML: text goes in through
// textContent and attributes through setAttribute. The page's Content-Security-Policy allows only this script and
// the page's own stylesheet, so this file must never rely on inline scripts, inline styles or eval.
'use strict';

(() => {
  const TOKEN_KEY = 'toka-host.token';
  const MAX_TIMELINE = 200;       // entries kept on the page
  const MAX_CHART = 40;           // runs drawn in the fuel chart
  const MAX_SSE_BUFFER = 4 << 20; // a line longer than this ends the stream (the server's events are far smaller)
  const SVG = 'http://www.w3.org/2000/svg';

  const $ = (id) => document.getElementById(id);
  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    lastSeq: 0,          // the last event seen: where the stream resumes (Last-Event-ID)
    stream: null,        // AbortController of the running stream
    selected: null,      // the run whose detail is open
    refreshTimer: null,
    detailTimer: null,
    generation: 0,       // bumped on every (re)start, so answers to an older start are dropped
    runs: [],            // the runs last listed (the chart is redrawn from them when the window resizes)
    plan: null,          // the plan whose graph is shown
    plansTimer: null,
    planTimer: null,
  };

  // ---- small helpers ------------------------------------------------------------------------------------------

  /** An element with attributes and children (strings become text nodes, never markup). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  const str = (v) => (typeof v === 'string' ? v : v === undefined || v === null ? '' : String(v));
  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);

  function time(ms) {
    const n = num(ms);
    if (n === null || n <= 0) return '';
    const d = new Date(n);
    return d.toLocaleTimeString([], { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
  }

  function dateTime(ms) {
    const n = num(ms);
    return n === null || n <= 0 ? '' : new Date(n).toLocaleString([], { hour12: false });
  }

  function count(v) {
    const n = num(v);
    return n === null ? '' : n.toLocaleString('en-US');
  }

  function bytes(v) {
    const n = num(v);
    if (n === null) return '';
    if (n < 1024) return n + ' B';
    if (n < 1 << 20) return (n / 1024).toFixed(1) + ' KiB';
    if (n < 1 << 30) return (n / (1 << 20)).toFixed(1) + ' MiB';
    return (n / (1 << 30)).toFixed(2) + ' GiB';
  }

  function millis(v) {
    const n = num(v);
    if (n === null) return '';
    return n < 1000 ? n.toFixed(1) + ' ms' : (n / 1000).toFixed(2) + ' s';
  }

  function shortId(id) {
    const s = str(id);
    return s.length > 14 ? s.slice(0, 14) + '…' : s;
  }

  /** One line of JSON, cut to `max` characters. */
  function brief(value, max) {
    let s;
    try { s = JSON.stringify(value); } catch (e) { s = String(value); }
    s = str(s);
    return s.length > max ? s.slice(0, max) + '…' : s;
  }

  function pretty(value) {
    try { return JSON.stringify(value, null, 2); } catch (e) { return String(value); }
  }

  function outcomeOf(kind, payload) {
    return payload && typeof payload === 'object' && typeof payload.outcome === 'string' ? payload.outcome : '';
  }

  // ---- the API ------------------------------------------------------------------------------------------------

  /** A refusal or failure the server answered with (its stable code and one-line message). */
  class ApiFailure extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
    get refused() { return this.status === 401 || this.status === 403; }
    get line() { return `${this.code || 'error'} (${this.status}): ${this.message}`; }
  }

  function headers(extra) {
    const h = Object.assign({ Accept: 'application/json' }, extra || {});
    if (state.token) h.Authorization = 'Bearer ' + state.token;
    return h;
  }

  async function failure(resp) {
    let code = '';
    let message = resp.statusText || 'request failed';
    try {
      const body = await resp.json();
      if (body && body.error) {
        code = str(body.error.code);
        message = str(body.error.message) || message;
      }
    } catch (e) { /* not JSON: keep the status text */ }
    return new ApiFailure(resp.status, code, message);
  }

  async function api(path, options) {
    const opts = options || {};
    const init = { method: opts.method || 'GET', headers: headers(opts.headers), cache: 'no-store' };
    if (opts.body !== undefined) {
      init.body = JSON.stringify(opts.body);
      init.headers['Content-Type'] = 'application/json';
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      throw new ApiFailure(0, 'unreachable', 'the server did not answer: ' + e.message);
    }
    if (!resp.ok) throw await failure(resp);
    return { status: resp.status, body: await resp.json() };
  }

  // ---- the notice and the token -------------------------------------------------------------------------------

  function notice(text, kind) {
    const n = $('notice');
    if (!text) {
      n.hidden = true;
      n.textContent = '';
      return;
    }
    n.textContent = text;
    n.setAttribute('data-kind', kind || 'error');
    n.hidden = false;
  }

  function askToken(why) {
    $('token-panel').hidden = false;
    $('token-cancel').hidden = !state.token;
    $('token-forget').hidden = !state.token;
    $('token-input').focus();
    if (why) notice(why, 'error');
  }

  /** A read of the API was refused: show the server's words, stop the stream, ask for a token. */
  function refused(err) {
    stopStream();
    setStream('off');
    askToken(`The server refused the request: ${err.line}. Paste a token that may read the API.`);
  }

  function setToken(token) {
    state.token = token;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  }

  // ---- agents, runs, chart ------------------------------------------------------------------------------------

  async function loadAgents(gen) {
    const { body } = await api('/v1/agents');
    if (gen !== state.generation) return;
    const agents = Array.isArray(body) ? body : [];
    const tbody = $('agents').tBodies[0];
    tbody.replaceChildren(...agents.map((a) => el('tr', { 'data-agent': str(a.agent) },
      el('td', null, str(a.agent)),
      el('td', { class: 'num' }, count(a.runs)),
      el('td', null, dateTime(a.last_run_ms)),
      el('td', null, el('span', { class: 'pill', 'data-outcome': str(a.last_outcome) }, str(a.last_outcome))))));
    $('agents-empty').hidden = agents.length > 0;
  }

  async function loadRuns(gen) {
    const { body } = await api('/v1/runs?limit=50');
    if (gen !== state.generation) return;
    const runs = body && Array.isArray(body.runs) ? body.runs : [];
    const tbody = $('runs').tBodies[0];
    tbody.replaceChildren(...runs.map((r) => {
      const id = str(r.run_id);
      const row = el('tr', { 'data-run-id': id, tabindex: 0, title: 'Show this run and its events' },
        el('td', null, el('code', { title: id }, shortId(id))),
        el('td', null, str(r.agent)),
        el('td', null, dateTime(r.started_ms)),
        el('td', null, el('span', { class: 'pill', 'data-outcome': str(r.outcome) }, str(r.outcome))),
        el('td', { class: 'num' }, r.exit_code === null || r.exit_code === undefined ? '' : str(r.exit_code)),
        el('td', { class: 'num' }, count(r.fuel)),
        el('td', { class: 'num' }, bytes(r.peak_memory_bytes)),
        el('td', { class: 'num' }, millis(r.wall_time_ms)));
      if (id === state.selected) row.setAttribute('aria-selected', 'true');
      return row;
    }));
    $('runs-empty').hidden = runs.length > 0;
    state.runs = runs;
    drawChart(runs);
  }

  /** Bars of fuel per run, oldest on the left, coloured by outcome (through the stylesheet, not inline style). */
  function drawChart(runs) {
    const chart = $('fuel-chart');
    const title = $('fuel-chart-title');
    // As wide as the card (so bars and labels keep their size), 150 units tall like the element.
    const W = Math.max(320, Math.round(chart.clientWidth || 640)), H = 150, left = 58, bottom = 16, top = 8;
    chart.setAttribute('viewBox', `0 0 ${W} ${H}`);
    const shown = runs.slice(0, MAX_CHART).reverse();
    const max = Math.max(1, ...shown.map((r) => num(r.fuel) || 0));
    const parts = [title];
    parts.push(svg('line', { x1: left, y1: H - bottom, x2: W, y2: H - bottom, class: 'axis' }));
    parts.push(svg('text', { x: left - 6, y: top + 8, class: 'axis-label', 'text-anchor': 'end' }, compact(max)));
    parts.push(svg('text', { x: left - 6, y: H - bottom, class: 'axis-label', 'text-anchor': 'end' }, '0'));
    if (shown.length === 0) {
      parts.push(svg('text', { x: (W + left) / 2, y: H / 2, class: 'axis-label', 'text-anchor': 'middle' }, 'no runs yet'));
    }
    const slot = (W - left - 4) / Math.max(shown.length, 10);
    shown.forEach((r, i) => {
      const fuel = num(r.fuel) || 0;
      const h = fuel > 0 ? Math.max(1, ((H - bottom - top) * fuel) / max) : 0;
      const bar = svg('rect', {
        x: (left + 4 + i * slot).toFixed(1), y: (H - bottom - h).toFixed(1),
        width: Math.max(1, slot * 0.75).toFixed(1), height: h.toFixed(1),
        class: 'bar', 'data-run-id': str(r.run_id), 'data-outcome': str(r.outcome),
      }, svg('title', null, `${str(r.agent)} ${str(r.run_id)}: ${count(fuel)} fuel (${str(r.outcome)})`));
      bar.addEventListener('click', () => showDetail(str(r.run_id), true));
      parts.push(bar);
    });
    chart.replaceChildren(...parts);
  }

  function compact(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(1) + 'G';
    if (n >= 1e6) return (n / 1e6).toFixed(1) + 'M';
    if (n >= 1e3) return (n / 1e3).toFixed(1) + 'k';
    return String(n);
  }

  /** Runs and agents again, soon (events come in bursts: one refresh per burst). */
  function scheduleRefresh() {
    if (state.refreshTimer) return;
    state.refreshTimer = setTimeout(async () => {
      state.refreshTimer = null;
      const gen = state.generation;
      try {
        await Promise.all([loadRuns(gen), loadAgents(gen)]);
      } catch (e) {
        if (e instanceof ApiFailure && e.refused) refused(e);
        else notice('Could not refresh the runs: ' + (e.line || e.message));
      }
    }, 150);
  }

  // ---- the timeline -------------------------------------------------------------------------------------------

  function summary(ev) {
    const p = ev.payload;
    if (ev.kind === 'run.completed' || ev.kind === 'run.failed') {
      const parts = [outcomeOf(ev.kind, p)];
      if (p && num(p.fuel) !== null) parts.push(count(p.fuel) + ' fuel');
      if (p && num(p.wall_time_ms) !== null) parts.push(millis(p.wall_time_ms));
      if (p && typeof p.error === 'string') parts.push(p.error);
      return parts.filter(Boolean).join(' · ');
    }
    return brief(p, 160);
  }

  function timelineEntry(ev) {
    const runId = str(ev.run_id);
    const entry = el('li', { 'data-seq': ev.seq, 'data-kind': str(ev.kind), 'data-run-id': runId },
      el('span', { class: 'seq' }, '#' + ev.seq),
      el('time', null, time(ev.time_ms)),
      el('span', { class: 'pill kind', 'data-kind': str(ev.kind), 'data-outcome': outcomeOf(ev.kind, ev.payload) },
        str(ev.kind)),
      el('span', { class: 'agent' }, str(ev.agent)),
      runId ? el('button', { type: 'button', class: 'link', title: runId }, shortId(runId)) : el('span'),
      el('span', { class: 'payload' }, summary(ev)));
    if (runId) entry.querySelector('button').addEventListener('click', () => showDetail(runId, true));
    return entry;
  }

  /** Adds events to the timeline (newest on top); `live` ones also refresh what they change. */
  function addEvents(events, live) {
    const list = $('timeline');
    for (const ev of events) {
      if (!ev || typeof ev !== 'object' || num(ev.seq) === null || ev.seq <= state.lastSeq) continue;
      state.lastSeq = ev.seq;
      list.prepend(timelineEntry(ev));
      const kind = str(ev.kind);
      if (!live) continue;
      if (kind.startsWith('run.') || kind === 'grant.refused') scheduleRefresh();
      if (state.selected && ev.run_id === state.selected) scheduleDetail();
      if (kind.startsWith('plan.')) schedulePlans();
      const planOf = ev.payload && typeof ev.payload === 'object' ? ev.payload.plan_id : undefined;
      if (state.plan && (kind.startsWith('plan.') || kind.startsWith('step.')) && planOf === state.plan) schedulePlan();
    }
    while (list.childElementCount > MAX_TIMELINE) list.lastElementChild.remove();
    $('timeline-empty').hidden = list.childElementCount > 0;
  }

  async function loadTimeline(gen) {
    const { body } = await api('/v1/events?limit=50');
    if (gen !== state.generation) return;
    $('timeline').replaceChildren();
    state.lastSeq = 0;
    addEvents(Array.isArray(body) ? body : [], false);
  }

  // ---- the live stream: server-sent events read with fetch (EventSource cannot send Authorization) ---------------

  function setStream(s) {
    const pill = $('stream-state');
    pill.setAttribute('data-state', s);
    pill.textContent = 'events: ' + s;
  }

  function stopStream() {
    if (state.stream) state.stream.abort();
    state.stream = null;
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }

  function startStream() {
    stopStream();
    const controller = new AbortController();
    state.stream = controller;
    streamLoop(controller.signal);
  }

  /** Reads the stream, and reconnects after a drop (backing off) from the last event seen. */
  async function streamLoop(signal) {
    let backoff = 500;
    while (!signal.aborted) {
      setStream(backoff === 500 ? 'connecting' : 'reconnecting');
      try {
        const resp = await fetch('/v1/events/stream', {
          headers: headers({ Accept: 'text/event-stream', 'Last-Event-ID': String(state.lastSeq) }),
          cache: 'no-store',
          signal,
        });
        if (!resp.ok) {
          const err = await failure(resp);
          if (err.refused) { refused(err); return; }
          throw err;
        }
        setStream('live');
        backoff = 500;
        await readEvents(resp.body, signal);
      } catch (e) {
        if (signal.aborted) return;
      }
      if (signal.aborted) return;
      setStream('reconnecting');
      await sleep(backoff, signal);
      backoff = Math.min(backoff * 2, 5000);
    }
  }

  /** Parses `text/event-stream` (fields id, event, data; comments and other fields ignored) until the stream ends. */
  async function readEvents(body, signal) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    signal.addEventListener('abort', () => reader.cancel().catch(() => {}), { once: true });
    let buffer = '';
    let data = [];
    let id = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      if (buffer.length > MAX_SSE_BUFFER) throw new Error('an event is too long');
      for (;;) {
        const m = /\r\n|\n|\r/.exec(buffer);
        // A lone CR at the end may be the first half of CRLF: wait for the next chunk.
        if (!m || (m[0] === '\r' && m.index === buffer.length - 1)) break;
        const line = buffer.slice(0, m.index);
        buffer = buffer.slice(m.index + m[0].length);
        if (line === '') {
          if (data.length > 0) dispatch(id, data.join('\n'));
          data = [];
          id = null;
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? '' : line.slice(colon + 1);
        if (val.startsWith(' ')) val = val.slice(1);
        if (field === 'data') data.push(val);
        else if (field === 'id') id = val;
      }
    }
  }

  function dispatch(id, data) {
    let ev;
    try { ev = JSON.parse(data); } catch (e) { return; }
    addEvents([ev], true);
    const seq = Number(id);
    if (id !== null && Number.isSafeInteger(seq) && seq > state.lastSeq) state.lastSeq = seq;
  }

  // ---- a run's detail -----------------------------------------------------------------------------------------

  function scheduleDetail() {
    if (state.detailTimer) return;
    state.detailTimer = setTimeout(() => {
      state.detailTimer = null;
      if (state.selected) showDetail(state.selected);
    }, 200);
  }

  /** Shows a run and its events (`reveal`: scrolled into view, when a person asked for it). */
  async function showDetail(runId, reveal) {
    state.selected = runId;
    for (const row of $('runs').tBodies[0].rows) {
      if (row.getAttribute('data-run-id') === runId) row.setAttribute('aria-selected', 'true');
      else row.removeAttribute('aria-selected');
    }
    const section = $('detail-section');
    if (section.getAttribute('data-run-id') !== runId) {
      // Another run: nothing of the one shown before may stay on screen under this run's id while it loads.
      $('detail-facts').replaceChildren();
      $('detail-events').tBodies[0].replaceChildren();
      $('detail-result').hidden = true;
    }
    section.hidden = false;
    section.setAttribute('data-run-id', runId);
    $('detail-id').textContent = runId;
    if (reveal) section.scrollIntoView({ block: 'nearest' });
    const q = encodeURIComponent(runId);
    let run, events;
    try {
      [run, events] = await Promise.all([api(`/v1/runs/${q}`), api(`/v1/events?run=${q}&limit=1000`)]);
    } catch (e) {
      if (state.selected !== runId) return;
      if (e instanceof ApiFailure && e.refused) return refused(e);
      $('detail-facts').replaceChildren(el('dt', null, 'error'), el('dd', null, e.line || e.message));
      $('detail-events').tBodies[0].replaceChildren();
      $('detail-result').hidden = true;
      return;
    }
    if (state.selected !== runId) return;
    const view = run.body || {};
    const report = view.report && typeof view.report === 'object' ? view.report : {};
    const facts = [
      ['agent', str(view.agent)], ['status', str(view.status)], ['outcome', str(report.outcome)],
      ['exit code', report.exit_code === undefined ? '' : str(report.exit_code)],
      ['fuel', count(report.fuel_consumed ?? report.fuel)], ['peak memory', bytes(report.peak_memory_bytes)],
      ['wall time', millis(report.wall_time_ms)], ['submitted', dateTime(view.submitted_ms)],
      ['error', str(report.error)],
    ].filter(([, v]) => v !== '');
    $('detail-facts').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', null, k),
      el('dd', { 'data-fact': k }, v)]));
    const result = $('detail-result');
    const shown = report.result ?? report.agent_error ?? (report.stdout ? report.stdout : undefined);
    result.hidden = shown === undefined;
    result.textContent = shown === undefined ? '' : typeof shown === 'string' ? shown : pretty(shown);
    const list = Array.isArray(events.body) ? events.body : [];
    $('detail-events').tBodies[0].replaceChildren(...list.map((ev) => el('tr', { 'data-kind': str(ev.kind) },
      el('td', { class: 'num' }, str(ev.seq)),
      el('td', null, time(ev.time_ms)),
      el('td', null, el('span', { class: 'pill kind', 'data-kind': str(ev.kind),
        'data-outcome': outcomeOf(ev.kind, ev.payload) }, str(ev.kind))),
      el('td', null, el('pre', { class: 'payload' }, pretty(ev.payload))))));
  }

  function closeDetail() {
    state.selected = null;
    $('detail-section').hidden = true;
    $('detail-section').removeAttribute('data-run-id');
    for (const row of $('runs').tBodies[0].rows) row.removeAttribute('aria-selected');
  }

  // ---- the submit form ----------------------------------------------------------------------------------------

  function showSubmit(outcome, summaryText, output) {
    $('submit-result').hidden = false;
    const pill = $('submit-outcome');
    pill.textContent = outcome;
    pill.setAttribute('data-outcome', outcome);
    $('submit-summary').textContent = summaryText;
    $('submit-output').textContent = output;
  }

  function wholeNumber(id, name) {
    const raw = $(id).value.trim();
    if (raw === '') return undefined;
    const n = Number(raw);
    if (!Number.isSafeInteger(n) || n < 1) throw new Error(`${name} must be a whole number from 1 to 2^53`);
    return n;
  }

  async function submitRun(event) {
    event.preventDefault();
    const path = $('submit-path').value.trim();
    let input, fuel, timeout;
    try {
      const text = $('submit-input').value.trim();
      try { input = text === '' ? {} : JSON.parse(text); } catch (e) { throw new Error('the input is not JSON: ' + e.message); }
      fuel = wholeNumber('submit-fuel', 'fuel');
      timeout = wholeNumber('submit-timeout', 'the timeout');
      if (!path) throw new Error('name a component');
    } catch (e) {
      showSubmit('invalid', 'not sent', e.message);
      return;
    }
    const button = $('submit-button');
    button.disabled = true;
    showSubmit('running', `submitting ${path} …`, '');
    try {
      const { status, body } = await api('/v1/runs', {
        method: 'POST',
        body: { component: { path }, input, limits: { fuel, timeout_ms: timeout }, wait: true, wait_ms: 60000 },
      });
      const report = body.report || {};
      const runId = str(body.run_id);
      if (status === 202 || !body.report) {
        showSubmit(str(body.status), `run ${runId} was accepted and has not ended yet`, '');
      } else {
        const facts = [`run ${runId}`, `exit ${str(report.exit_code)}`, `${count(report.fuel_consumed)} fuel`,
          millis(report.wall_time_ms)].join(' · ');
        const out = report.result ?? report.agent_error ?? report.error ?? report.stdout ?? '';
        showSubmit(str(report.outcome), facts, typeof out === 'string' ? out : pretty(out));
      }
      $('submit-result').setAttribute('data-run-id', runId);
      scheduleRefresh();
    } catch (e) {
      if (e instanceof ApiFailure) {
        showSubmit(e.code || 'error', `refused with ${e.status}`, e.message);
        if (e.refused) askToken(`The server refused the run: ${e.line}. A token for this agent can run it.`);
      } else {
        showSubmit('error', 'not sent', e.message);
      }
    } finally {
      button.disabled = false;
    }
  }

  // ---- plans: the listing, a plan's steps as a graph, the submit form -------------------------------------------

  const NODE_W = 176, NODE_H = 50, GAP_X = 64, GAP_Y = 16, PAD = 8, MAX_LEVELS = 64;

  function cut(s, max) {
    return s.length > max ? s.slice(0, max - 1) + '…' : s;
  }

  async function loadPlans(gen) {
    const { body } = await api('/v1/plans?limit=20');
    if (gen !== state.generation) return;
    const plans = Array.isArray(body) ? body : [];
    $('plans').tBodies[0].replaceChildren(...plans.map((p) => {
      const id = str(p.plan_id);
      const row = el('tr', { 'data-plan-id': id, tabindex: 0, title: 'Show this plan as a graph' },
        el('td', null, el('code', { title: id }, shortId(id))),
        el('td', null, str(p.name)),
        el('td', null, dateTime(p.started_ms)),
        el('td', null, el('span', { class: 'pill', 'data-outcome': str(p.status) }, str(p.status))),
        el('td', { class: 'num' }, count(p.steps)));
      if (id === state.plan) row.setAttribute('aria-selected', 'true');
      return row;
    }));
    $('plans-empty').hidden = plans.length > 0;
  }

  function schedulePlans() {
    if (state.plansTimer) return;
    state.plansTimer = setTimeout(async () => {
      state.plansTimer = null;
      try {
        await loadPlans(state.generation);
      } catch (e) {
        if (e instanceof ApiFailure && e.refused) refused(e);
      }
    }, 150);
  }

  function schedulePlan() {
    if (state.planTimer) return;
    state.planTimer = setTimeout(() => {
      state.planTimer = null;
      if (state.plan) showPlan(state.plan);
    }, 120);
  }

  /** Shows plan `planId` as a graph (its state read again from the server). */
  async function showPlan(planId) {
    state.plan = planId;
    for (const row of $('plans').tBodies[0].rows) {
      if (row.getAttribute('data-plan-id') === planId) row.setAttribute('aria-selected', 'true');
      else row.removeAttribute('aria-selected');
    }
    let view;
    try {
      ({ body: view } = await api(`/v1/plans/${encodeURIComponent(planId)}`));
    } catch (e) {
      if (state.plan !== planId) return;
      if (e instanceof ApiFailure && e.refused) return refused(e);
      $('plan-result').textContent = 'Could not load the plan: ' + (e.line || e.message);
      return;
    }
    if (state.plan !== planId || !view || typeof view !== 'object') return;
    $('plan-view').hidden = false;
    $('plan-view').setAttribute('data-plan-id', planId);
    $('plan-id').textContent = planId;
    const pill = $('plan-status');
    pill.textContent = str(view.status);
    pill.setAttribute('data-outcome', str(view.status));
    drawPlan(Array.isArray(view.steps) ? view.steps : []);
  }

  /** Nodes in columns by dependency level, edges from each dependency to its dependent. */
  function drawPlan(steps) {
    const graph = $('plan-graph');
    const columns = new Map();
    for (const s of steps) {
      const level = Math.min(MAX_LEVELS, Math.max(0, num(s.level) || 0));
      if (!columns.has(level)) columns.set(level, []);
      columns.get(level).push(s);
    }
    const at = new Map();
    let rows = 1, last = 0;
    for (const [level, column] of columns) {
      column.forEach((s, i) => at.set(str(s.name), { x: PAD + level * (NODE_W + GAP_X), y: PAD + i * (NODE_H + GAP_Y) }));
      rows = Math.max(rows, column.length);
      last = Math.max(last, level);
    }
    const W = 2 * PAD + (last + 1) * NODE_W + last * GAP_X, H = 2 * PAD + rows * NODE_H + (rows - 1) * GAP_Y;
    graph.setAttribute('viewBox', `0 0 ${W} ${H}`);
    graph.setAttribute('height', String(Math.min(H, 600)));
    const parts = [$('plan-graph-title')];
    for (const s of steps) {
      const to = at.get(str(s.name));
      for (const kind of ['depends_on', 'input_from', 'after']) {
        for (const dep of Array.isArray(s[kind]) ? s[kind] : []) {
          const from = at.get(str(dep));
          if (!from || !to) continue;
          const x1 = from.x + NODE_W, y1 = from.y + NODE_H / 2, x2 = to.x, y2 = to.y + NODE_H / 2, mid = (x1 + x2) / 2;
          parts.push(svg('path', { class: 'edge', 'data-kind': kind, 'data-from': str(dep), 'data-to': str(s.name),
            d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}` }));
        }
      }
    }
    for (const s of steps) {
      const p = at.get(str(s.name));
      const status = str(s.status);
      const facts = [status, num(s.fuel) !== null ? compact(s.fuel) + ' fuel' : '',
        num(s.time_ms) !== null ? millis(s.time_ms) : ''].filter(Boolean).join(' · ');
      const tip = [str(s.name), str(s.agent), status, str(s.reason)].filter(Boolean).join(' — ');
      const node = svg('g', { class: 'node', 'data-step': str(s.name), 'data-status': status,
        'data-level': str(s.level), transform: `translate(${p.x},${p.y})` },
        svg('title', null, tip),
        svg('rect', { width: NODE_W, height: NODE_H, rx: 6 }),
        svg('text', { x: 10, y: 20, class: 'name' }, cut(str(s.name), 22)),
        svg('text', { x: 10, y: 38, class: 'state' }, cut(facts, 28)));
      const runId = str(s.run_id);
      if (runId) node.addEventListener('click', () => showDetail(runId, true));
      parts.push(node);
    }
    graph.replaceChildren(...parts);
  }

  async function submitPlan(event) {
    event.preventDefault();
    const manifest = $('plan-manifest').value;
    const result = $('plan-result');
    const button = $('plan-button');
    button.disabled = true;
    result.textContent = 'submitting …';
    result.removeAttribute('data-plan-id');
    try {
      const { body } = await api('/v1/plans', { method: 'POST', body: { manifest } });
      const id = str(body.plan_id);
      result.textContent = `plan ${id} started`;
      result.setAttribute('data-plan-id', id);
      schedulePlans();
      showPlan(id);
    } catch (e) {
      result.textContent = e instanceof ApiFailure ? `refused: ${e.line}` : e.message;
      if (e instanceof ApiFailure && e.status === 401) askToken(`The server refused the plan: ${e.line}.`);
    } finally {
      button.disabled = false;
    }
  }

  // ---- start ----------------------------------------------------------------------------------------------------

  /** Loads everything with the current token (or none: then the server's refusal is what the page shows). */
  async function start() {
    stopStream();
    const gen = ++state.generation;
    try {
      await Promise.all([loadAgents(gen), loadRuns(gen), loadTimeline(gen), loadPlans(gen)]);
    } catch (e) {
      if (gen !== state.generation) return;
      if (e instanceof ApiFailure && e.refused) return refused(e);
      notice('Could not load the dashboard: ' + (e.line || e.message));
      return;
    }
    if (gen !== state.generation) return;
    notice('');
    $('token-panel').hidden = true;
    startStream();
  }

  async function loadHealth() {
    try {
      const resp = await fetch('/health', { cache: 'no-store' });
      const h = await resp.json();
      $('version').textContent = `v${str(h.version)} · log ${h.log_writable ? 'writable' : 'NOT writable'}`;
    } catch (e) { /* the version is a nicety */ }
  }

  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    // A token has no whitespace: a paste wrapped over lines is joined (a header value may not hold a newline).
    const token = $('token-input').value.replace(/\s+/g, '');
    if (!token) return askToken('Paste a token first.');
    setToken(token);
    $('token-input').value = '';
    start();
  });
  $('token-cancel').addEventListener('click', () => { $('token-panel').hidden = true; });
  $('token-forget').addEventListener('click', () => {
    setToken('');
    stopStream();
    setStream('off');
    askToken('The token is forgotten.');
  });
  $('change-token').addEventListener('click', () => askToken(''));
  $('submit-form').addEventListener('submit', submitRun);
  $('plan-form').addEventListener('submit', submitPlan);
  $('plans').tBodies[0].addEventListener('click', (event) => {
    const row = event.target.closest('tr[data-plan-id]');
    if (row) showPlan(row.getAttribute('data-plan-id'));
  });
  $('plans').tBodies[0].addEventListener('keydown', (event) => {
    const row = event.target.closest('tr[data-plan-id]');
    if (row && event.key === 'Enter') showPlan(row.getAttribute('data-plan-id'));
  });
  $('detail-close').addEventListener('click', closeDetail);
  $('runs').tBodies[0].addEventListener('click', (event) => {
    const row = event.target.closest('tr[data-run-id]');
    if (row) showDetail(row.getAttribute('data-run-id'), true);
  });
  $('runs').tBodies[0].addEventListener('keydown', (event) => {
    const row = event.target.closest('tr[data-run-id]');
    if (row && event.key === 'Enter') showDetail(row.getAttribute('data-run-id'), true);
  });

  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => drawChart(state.runs), 100);
  });

  loadHealth();
  start();
})();
