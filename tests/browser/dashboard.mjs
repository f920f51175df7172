// The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core, which downloads
// no browser). Started by tests/all/dashboard.rs against a real `toka-host serve`; it talks with that test over
// stdin/stdout:
//   it prints `ok STEP` for each step that passed; `need-run` when the page is open and waiting for a run, then
//   reads `run ID` (a run the test submitted through the API) from stdin; `need-drop` when the test should restart
//   the server, then reads `dropped ID` (a run made while it was down); on a failure it prints `FAIL STEP: why`,
//   what the page showed, its console and the API answers it saw, and exits non-zero.
// Environment: TOKA_URL (the server), TOKA_OPERATOR (a token for agent '*' with api:read), TOKA_NO_READ (a valid
// token without api:read), TOKA_JS_TOOLS (the npm prefix holding playwright-core), TOKA_GREETING (what the live run's
// result contains, markup included), and optionally TOKA_CHROMIUM and TOKA_SCREENSHOT (a PNG of the final page).
// Every wait is bounded (WAIT ms), and a watchdog ends the whole script.
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import readline from 'node:readline';

const WAIT = 6000;
const WATCHDOG = 90000;

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.log(`FAIL setup: ${name} is not set`);
    process.exit(2);
  }
  return v;
}

const url = need('TOKA_URL');
const operator = need('TOKA_OPERATOR');
const noRead = need('TOKA_NO_READ');
const greeting = need('TOKA_GREETING');
const require = createRequire(join(need('TOKA_JS_TOOLS'), 'resolve-from-here.js'));
const { chromium } = require('playwright-core');

let step = 'launch';
let page = null;
const consoleLines = [];
const pageErrors = [];
const answers = []; // every /v1/ answer the page got: { method, path, status, auth }
const pending = new Set(); // /v1/ requests the page made that have neither an answer nor failed yet

class StepFailure extends Error {}

function check(cond, why) {
  if (!cond) throw new StepFailure(why);
}

function ok(name) {
  console.log(`ok ${name}`);
}

/** Waits (bounded, `WAIT` unless told) until `fn` (run in the page) returns a truthy value, which it returns. */
async function until(what, fn, arg, timeout = WAIT) {
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout, polling: 50 });
    return await handle.jsonValue();
  } catch (e) {
    throw new StepFailure(`timed out after ${timeout} ms waiting for ${what}`);
  }
}

/** How long a plan's answer may take: the server loads its steps' components first, and on a cold compile cache
 * (a fresh clone) the Python and JavaScript ones take several seconds each to compile. */
const PLAN_WAIT = 90000;

const text = (sel) => page.evaluate((s) => document.querySelector(s)?.textContent ?? null, sel);
const visible = (sel) => page.evaluate((s) => { const e = document.querySelector(s); return !!e && !e.hidden; }, sel);
const rowCount = (sel) => page.evaluate((s) => document.querySelectorAll(s).length, sel);

/** Waits (bounded) until every /v1/ request the page has made so far has its answer (or failed). */
async function settle(what) {
  const deadline = Date.now() + WAIT;
  while (pending.size > 0) {
    check(Date.now() < deadline, `timed out after ${WAIT} ms waiting for the answers of ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function settledAnswers() {
  return Promise.all(answers.map(async (a) => ({ ...a, auth: await a.auth })));
}

async function useToken(token) {
  await page.evaluate(() => { if (document.getElementById('token-panel').hidden) document.getElementById('change-token').click(); });
  await page.fill('#token-input', token);
  await page.click('#token-form button[type=submit]');
}

/** Reads one line from the driving test, bounded in time. */
function lineFromTest(lines, ms) {
  return Promise.race([
    lines.next().then((r) => (r.done ? null : r.value)),
    new Promise((resolve) => setTimeout(() => resolve(null), ms).unref()),
  ]);
}

async function run(context, lines) {
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(WAIT);
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  const api = (r) => new URL(r.url()).pathname.startsWith('/v1/');
  page.on('request', (r) => { if (api(r)) pending.add(r); });
  page.on('requestfailed', (r) => pending.delete(r));
  page.on('response', (r) => {
    const u = new URL(r.url());
    if (!u.pathname.startsWith('/v1/')) return;
    const req = r.request();
    pending.delete(req);
    answers.push({ method: req.method(), path: u.pathname + u.search, status: r.status(),
      auth: req.allHeaders().then((h) => h.authorization ?? null, () => null) });
  });

  // 1. No token: the page's API requests go out without one, are refused, and the page says so (and shows no data).
  step = 'refused-without-token';
  await page.goto(url + '/', { waitUntil: 'domcontentloaded' });
  const notice = await until('the refusal notice', () => {
    const n = document.getElementById('notice');
    return !n.hidden && n.textContent.includes('unauthorized') ? n.textContent : null;
  });
  check(notice.includes('missing Authorization'), `the notice does not give the server's message: ${notice}`);
  check(await visible('#token-panel'), 'the token panel is not shown');
  let seen = await settledAnswers();
  check(seen.some((a) => a.status === 401 && a.auth === null), 'no request without a token was answered 401');
  check(seen.every((a) => a.status === 401), `some request was answered without a token: ${JSON.stringify(seen)}`);
  check((await rowCount('#runs tbody tr')) === 0, 'runs are shown without a token');
  ok(step);

  // 2. A token that does not verify: refused with the server's code.
  step = 'refused-bad-token';
  await useToken('not-a-token');
  await until('token-refused', () => document.getElementById('notice').textContent.includes('token-refused'));
  seen = await settledAnswers();
  check(seen.some((a) => a.status === 401 && a.auth === 'Bearer not-a-token'), 'the pasted token was not sent');
  check(await visible('#token-panel'), 'the token panel is not asked again');
  ok(step);

  // 3. A valid token without api:read: 403, and the page says what is missing.
  step = 'refused-without-api-read';
  await useToken(noRead);
  await until('forbidden', () => {
    const t = document.getElementById('notice').textContent;
    return t.includes('forbidden') && t.includes('api:read');
  });
  seen = await settledAnswers();
  check(seen.some((a) => a.status === 403 && a.auth === `Bearer ${noRead}`), 'no 403 for the token without api:read');
  check((await rowCount('#runs tbody tr')) === 0, 'runs are shown to a token without api:read');
  ok(step);

  // 4. Positive control: the operator's token is accepted, data shows, the stream goes live, every request carries it.
  step = 'token-accepted';
  // The answers to the last token's requests may still be coming (the notice shows at the first 403): they are not
  // this step's.
  await settle('the requests made with the token without api:read');
  const before = answers.length;
  await useToken(operator);
  await until('the live stream', () => document.getElementById('stream-state').dataset.state === 'live');
  check(!(await visible('#token-panel')), 'the token panel is still shown');
  check(!(await visible('#notice')), `a notice is still shown: ${await text('#notice')}`);
  await until('a run in the table', () => document.querySelectorAll('#runs tbody tr').length >= 1);
  await until('an agent in the list', () => document.querySelector('#agents tbody tr[data-agent="hello-rust"]'));
  const stored = await page.evaluate(() => sessionStorage.getItem('toka-host.token'));
  check(stored === operator, 'the token is not in session storage');
  check(await page.evaluate(() => localStorage.length === 0 && document.cookie === ''), 'the token leaked out of session storage');
  seen = (await settledAnswers()).slice(before);
  check(seen.length >= 4, `too few requests after the token: ${JSON.stringify(seen)}`);
  check(seen.every((a) => a.auth === `Bearer ${operator}` && a.status === 200), `a request without the token or refused: ${JSON.stringify(seen)}`);
  ok(step);

  // 5. The token lives in this tab: a reload keeps it; a new tab has none and is refused.
  step = 'token-kept-in-the-tab';
  await page.reload({ waitUntil: 'domcontentloaded' });
  await until('the live stream after a reload', () => document.getElementById('stream-state').dataset.state === 'live');
  check(!(await visible('#token-panel')), 'the token was not kept across a reload');
  const other = await context.newPage();
  try {
    await other.goto(url + '/', { waitUntil: 'domcontentloaded' });
    await other.waitForFunction(() => document.getElementById('notice').textContent.includes('unauthorized'), null, { timeout: WAIT });
  } catch (e) {
    throw new StepFailure('a new tab did not start without a token: ' + e.message);
  } finally {
    await other.close();
  }
  ok(step);

  // 6. A run submitted through the API (by the test) appears live in the runs table, the chart and the timeline.
  step = 'run-appears-live';
  await page.evaluate(() => { window.tokaSamePage = 'yes'; });
  const navigations = [];
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations.push(f.url()); });
  const runsBefore = await page.evaluate(() => [...document.querySelectorAll('#runs tbody tr')].map((r) => r.dataset.runId));
  console.log('need-run');
  const line = await lineFromTest(lines, 30000);
  check(line && line.startsWith('run '), `the test sent no run: ${line}`);
  const runId = line.slice(4).trim();
  check(!runsBefore.includes(runId), 'the run was in the table before it was submitted');
  await until('the run in the table, ended', (id) => {
    const row = document.querySelector(`#runs tbody tr[data-run-id="${CSS.escape(id)}"]`);
    return row && row.querySelector('[data-outcome]')?.dataset.outcome === 'success';
  }, runId);
  await until('the run in the timeline', (id) => {
    const kinds = [...document.querySelectorAll(`#timeline li[data-run-id="${CSS.escape(id)}"]`)].map((l) => l.dataset.kind);
    return ['run.started', 'fuel.consumed', 'run.completed'].every((k) => kinds.includes(k));
  }, runId);
  await until('the run in the fuel chart', (id) => document.querySelector(`#fuel-chart rect[data-run-id="${CSS.escape(id)}"]`), runId);
  check(await page.evaluate(() => window.tokaSamePage === 'yes'), 'the page was reloaded');
  check(navigations.length === 0, `the page navigated: ${navigations}`);
  ok(step);

  // 7. The stream drops (the test restarts the server, and runs an agent with the CLI while it is down); the page
  //    reconnects by itself with Last-Event-ID and shows what happened meanwhile, once each, still without a reload.
  step = 'stream-resumes-after-a-drop';
  await page.evaluate(() => {
    window.tokaStates = [];
    const pill = document.getElementById('stream-state');
    new MutationObserver(() => window.tokaStates.push(pill.dataset.state)).observe(pill, { attributes: true });
  });
  console.log('need-drop');
  const dropLine = await lineFromTest(lines, 30000);
  check(dropLine && dropLine.startsWith('dropped '), `the test did not drop the stream: ${dropLine}`);
  const offlineId = dropLine.slice(8).trim();
  await until('the stream live again', () => window.tokaStates.includes('reconnecting')
    && document.getElementById('stream-state').dataset.state === 'live');
  await until('the offline run in the timeline', (id) => {
    const kinds = [...document.querySelectorAll(`#timeline li[data-run-id="${CSS.escape(id)}"]`)].map((l) => l.dataset.kind);
    return kinds.includes('run.started') && kinds.includes('run.completed');
  }, offlineId);
  await until('the offline run in the table', (id) => document.querySelector(`#runs tbody tr[data-run-id="${CSS.escape(id)}"]`), offlineId);
  const seqs = await page.evaluate(() => [...document.querySelectorAll('#timeline li')].map((l) => l.dataset.seq));
  check(new Set(seqs).size === seqs.length, `the timeline shows an event twice: ${seqs}`);
  check(await page.evaluate(() => window.tokaSamePage === 'yes'), 'the page was reloaded');
  ok(step);

  // 8. The run's detail shows its events in order, and the guest's markup only as text.
  step = 'run-detail';
  await page.click(`#runs tbody tr[data-run-id="${runId}"]`);
  const kinds = await until('the detail events', (id) => {
    const s = document.getElementById('detail-section');
    if (s.hidden || s.dataset.runId !== id) return null;
    const k = [...document.querySelectorAll('#detail-events tbody tr')].map((r) => r.dataset.kind);
    return k.length >= 3 ? k : null;
  }, runId);
  check(JSON.stringify(kinds) === JSON.stringify(['run.started', 'fuel.consumed', 'run.completed']), `the detail's events: ${kinds}`);
  check((await text('#detail-facts [data-fact="outcome"]')) === 'success', 'the detail does not say success');
  const result = await text('#detail-result');
  check(result && result.includes(greeting), `the detail's result is not the greeting as text: ${result}`);
  check((await rowCount('.injected')) === 0, 'markup from the guest became elements');
  const liveSeqs = await page.evaluate(() => [...document.querySelectorAll('#detail-events tbody tr td:first-child')].map((t) => t.textContent));
  // Control: another run's detail shows that run's events, not these.
  const otherId = await page.evaluate((id) => [...document.querySelectorAll('#runs tbody tr')].map((r) => r.dataset.runId).find((r) => r !== id), runId);
  check(otherId, 'no other run to compare with');
  await page.click(`#runs tbody tr[data-run-id="${otherId}"]`);
  const otherSeqs = await until('the other run\'s detail', (id) => {
    const s = document.getElementById('detail-section');
    if (s.dataset.runId !== id) return null;
    const seqs = [...document.querySelectorAll('#detail-events tbody tr td:first-child')].map((t) => t.textContent);
    return seqs.length >= 3 ? seqs : null;
  }, otherId);
  check(otherSeqs.every((s) => !liveSeqs.includes(s)), `two runs' details share events: ${liveSeqs} / ${otherSeqs}`);
  ok(step);

  // 9. The submit form: a bad input is not sent; an unknown component gets the server's code; hello runs and answers.
  step = 'submit-form';
  const posts = () => answers.filter((a) => a.method === 'POST' && a.path === '/v1/runs').length;
  await page.fill('#submit-path', 'hello-rust.wasm');
  await page.fill('#submit-input', '{"name": ');
  await page.click('#submit-button');
  await until('the local input error', () => document.getElementById('submit-outcome').textContent === 'invalid');
  check((await text('#submit-output')).includes('not JSON'), 'the input error does not say why');
  check(posts() === 0, 'an invalid input was sent');
  await page.fill('#submit-path', 'no-such-agent.wasm');
  await page.fill('#submit-input', '{"name": "Nobody"}');
  await page.click('#submit-button');
  await until('the not-found answer', () => document.getElementById('submit-outcome').textContent === 'not-found');
  check((await text('#submit-output')).includes('no component'), `the server's message is missing: ${await text('#submit-output')}`);
  await page.fill('#submit-path', 'hello-rust.wasm');
  await page.fill('#submit-input', '{"name": "Browser"}');
  await page.click('#submit-button');
  await until('the run\'s answer', () => document.getElementById('submit-outcome').textContent === 'success');
  const answer = await text('#submit-output');
  check(answer === '{"greeting":"Hello, Browser!"}', `the answer: ${answer}`);
  const submitted = await page.evaluate(() => document.getElementById('submit-result').dataset.runId);
  await until('the submitted run in the table', (id) => document.querySelector(`#runs tbody tr[data-run-id="${CSS.escape(id)}"]`), submitted);
  check(posts() === 2, `expected two submissions, saw ${posts()}`);
  ok(step);

  // 9b. Plans: a plan wider than the token is refused with the server's words; then a plan is submitted from the page
  // and its graph reaches the final states live: a failed step drawn failed, its dependent skipped, a piped one done.
  step = 'plan-graph';
  const planPosts = () => answers.filter((a) => a.method === 'POST' && a.path === '/v1/plans').length;
  const manifest = [
    '[agents.first]', 'component = "hello-js.wasm"', 'input = { name = "Plan" }', '',
    '[agents.piped]', 'component = "hello-python.wasm"', 'input_from = { name = "first.greeting" }', '',
    '[agents.broken]', 'component = "hostile.wasm"', 'input = { attack = "panic" }', 'depends_on = ["first"]', '',
    '[agents.after-broken]', 'component = "hello-python.wasm"', 'depends_on = ["broken"]', '',
  ].join('\n');
  await page.fill('#plan-manifest', manifest.replace('input = { name = "Plan" }', 'grants = { env = ["HOME=/root"] }'));
  await page.click('#plan-button');
  const refusal = await until('the plan\'s refusal', () => {
    const t = document.getElementById('plan-result').textContent;
    return t.startsWith('refused') ? t : null;
  }, undefined, PLAN_WAIT);
  check(refusal.includes('grant-refused') && refusal.includes('agent `first`'), `the refusal: ${refusal}`);
  check(await page.evaluate(() => !document.getElementById('plan-result').dataset.planId), 'a refused plan got an id');
  await page.fill('#plan-manifest', manifest);
  await page.click('#plan-button');
  const planId = await until('the plan started', () => document.getElementById('plan-result').dataset.planId || null,
    undefined, PLAN_WAIT);
  const states = await until('the nodes in their final states', (id) => {
    if (document.getElementById('plan-view').dataset.planId !== id) return null;
    const nodes = Object.fromEntries([...document.querySelectorAll('#plan-graph g.node')]
      .map((g) => [g.dataset.step, g.dataset.status]));
    const done = nodes.first === 'succeeded' && nodes.piped === 'succeeded' && nodes.broken === 'failed'
      && nodes['after-broken'] === 'skipped' && document.getElementById('plan-status').textContent === 'failed';
    return done ? nodes : null;
  }, planId, PLAN_WAIT);
  check(Object.keys(states).length === 4, `nodes: ${JSON.stringify(states)}`);
  const graph = await page.evaluate(() => ({
    levels: Object.fromEntries([...document.querySelectorAll('#plan-graph g.node')].map((g) => [g.dataset.step, g.dataset.level])),
    edges: [...document.querySelectorAll('#plan-graph path.edge')].map((e) => `${e.dataset.from}>${e.dataset.to}:${e.dataset.kind}`).sort(),
    skippedWhy: document.querySelector('#plan-graph g.node[data-step="after-broken"] title').textContent,
  }));
  const sortedLevels = Object.entries(graph.levels).sort().map(([k, v]) => `${k}=${v}`).join(' ');
  check(sortedLevels === 'after-broken=2 broken=1 first=0 piped=1',
    `levels: ${JSON.stringify(graph.levels)}`);
  check(JSON.stringify(graph.edges) === JSON.stringify(['broken>after-broken:depends_on', 'first>broken:depends_on', 'first>piped:input_from']),
    `edges: ${JSON.stringify(graph.edges)}`);
  check(graph.skippedWhy.includes('required dependency `broken` failed'), `the skipped node's reason: ${graph.skippedWhy}`);
  await until('the plan in the listing', (id) => document.querySelector(`#plans tbody tr[data-plan-id="${CSS.escape(id)}"]`), planId);
  check(planPosts() === 2, `expected two plan submissions, saw ${planPosts()}`);
  ok(step);

  // 10. The page ran under its Content-Security-Policy without a violation or an uncaught error.
  step = 'no-policy-violation';
  const violations = consoleLines.filter((l) => /Content Security Policy|Refused to/i.test(l));
  check(violations.length === 0, `policy violations: ${violations.join(' | ')}`);
  check(pageErrors.length === 0, `uncaught errors: ${pageErrors.join(' | ')}`);
  // The only console errors allowed are the browser's notes about the refused (401/403) and not-found answers.
  const errors = consoleLines.filter((l) => l.startsWith('error:') && !/status of (401|403|404)/.test(l));
  check(errors.length === 0, `console errors: ${errors.join(' | ')}`);
  ok(step);

  if (process.env.TOKA_SCREENSHOT) {
    await page.click(`#runs tbody tr[data-run-id="${runId}"]`);
    await page.waitForTimeout(300);
    await page.screenshot({ path: process.env.TOKA_SCREENSHOT, fullPage: true });
  }
}

async function report(e) {
  console.log(`FAIL ${step}: ${e instanceof StepFailure ? e.message : e.stack || e}`);
  if (page) {
    const shown = await page.evaluate(() => document.body.innerText).catch((x) => `(unreadable: ${x})`);
    console.log('--- the page showed:\n' + String(shown).slice(0, 4000));
  }
  console.log('--- console:\n' + consoleLines.slice(-40).join('\n'));
  if (pageErrors.length) console.log('--- uncaught:\n' + pageErrors.join('\n'));
  const seen = await settledAnswers().catch(() => []);
  console.log('--- API answers:\n' + seen.slice(-40).map((a) => `${a.method} ${a.path} ${a.status}${a.auth ? ' (token)' : ''}`).join('\n'));
}

const watchdog = setTimeout(() => {
  console.log(`FAIL ${step}: the whole script took over ${WATCHDOG} ms`);
  process.exit(3);
}, WATCHDOG);

const dir = mkdtempSync(join(tmpdir(), 'toka-dashboard-'));
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
let context = null;
let code = 0;
try {
  context = await chromium.launchPersistentContext(dir, {
    executablePath: process.env.TOKA_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    chromiumSandbox: false,
    timeout: 20000,
    viewport: { width: 1280, height: 900 },
    // As root Chromium needs --no-sandbox; the rest keep it off the network (closed here) and quiet.
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-gpu', '--no-first-run', '--disable-quic'],
  });
  ok('launch');
  await run(context, lines);
  ok('all');
} catch (e) {
  await report(e);
  code = 1;
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(dir, { recursive: true, force: true });
  clearTimeout(watchdog);
}
process.exit(code);
