// Drives baton's dashboard in a real headless Chromium (Debian's `chromium`, through
// playwright-core) against a running `baton server`, asserting on the page as a user sees it.
// Run by crates/baton-cli/tests/dashboard.rs, which starts the server, makes the state the
// scenarios read (keys, locks, finished jobs) and passes it in the environment:
//
//   BATON_URL                 the server, e.g. http://127.0.0.1:PORT
//   BATON_BIN                 the `baton` binary (for the scenario that runs a job live)
//   BATON_ADMIN_KEY           an `admin:` key; empty for a server without keys
//   BATON_READER_KEY          a `read:team-a/` key (the read-only-key scenario)
//   BATON_CHROMIUM            the browser (default /usr/bin/chromium)
//   BATON_DASHBOARD_SCENARIOS the scenarios to run, comma-separated, in order
//   BATON_DASHBOARD_SCREENSHOTS  a folder: also save screenshots of the main pages there
//
// Prints one line per scenario (`ok NAME (N ms)` or `FAILED NAME: why`) and a last line
// `N passed, N failed`; exits 1 when one failed. Scenarios act through the HTTP API with the
// admin key (as another machine would) while the page watches, so "live" means the event
// stream, not a reload.

import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const base = required('BATON_URL');
const adminKey = process.env.BATON_ADMIN_KEY || '';
const readerKey = process.env.BATON_READER_KEY || '';
const screenshots = process.env.BATON_DASHBOARD_SCREENSHOTS || '';
const executablePath = process.env.BATON_CHROMIUM || '/usr/bin/chromium';

/** How long a user may wait for what an event shows: a generous bound for a shared, busy
 *  machine. The page normally shows it within a few tens of milliseconds. */
const LIVE_BOUND_MS = 3000;
/** Anything else the page must show (a first load, a navigation). */
const SHOW_BOUND_MS = 15000;
/** One scenario at most. */
const SCENARIO_BOUND_MS = 45000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`dashboard.mjs: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** One API call with the admin key (another machine acting while the page watches). */
async function api(method, path, body, key = adminKey) {
  const headers = { 'content-type': 'application/json' };
  if (key) headers.authorization = `Bearer ${key}`;
  const response = await fetch(`${base}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = null;
  }
  return { status: response.status, json, text, headers: response.headers };
}

const lockPath = (name) => `/v1/locks/${encodeURIComponent(name)}`;

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // Root in a container: no user namespaces for the sandbox, and a small /dev/shm. The network
  // is closed but for the server under test: no background connections, updates or sync.
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

/** A fresh tab with its own storage (a new browser profile), watching for script errors and
 *  for anything the Content-Security-Policy refused. */
async function openTab(viewport = { width: 1280, height: 860 }) {
  const context = await browser.newContext({ viewport, colorScheme: 'light' });
  const page = await context.newPage();
  page.problems = [];
  page.on('pageerror', (error) => page.problems.push(`script error: ${error.message}`));
  page.on('console', (message) => {
    if (/Content Security Policy/i.test(message.text())) page.problems.push(`CSP: ${message.text()}`);
  });
  page.close = async () => context.close();
  return page;
}

/** Opens the dashboard at `route`, giving the key when the page asks for one. */
async function signedIn(route, key = adminKey, viewport) {
  const page = await openTab(viewport);
  await page.goto(`${base}/${route}`);
  if (key) {
    const input = page.getByLabel('API key', { exact: true });
    await input.waitFor({ timeout: SHOW_BOUND_MS });
    await input.fill(key);
    await page.getByRole('button', { name: 'Use this key' }).click();
  }
  await page.locator('#live', { hasText: 'Live' }).waitFor({ timeout: SHOW_BOUND_MS });
  return page;
}

function noProblems(page) {
  check(page.problems.length === 0, `the page had problems:\n${page.problems.join('\n')}`);
}

const scenarios = {
  /** The page and its files need no key and come with a policy that refuses inline code and
   *  anything from elsewhere. */
  async the_page_is_open_and_strict() {
    for (const path of ['/', '/dashboard/app.js', '/dashboard/style.css']) {
      const answer = await api('GET', path, undefined, '');
      check(answer.status === 200, `GET ${path} without a key: ${answer.status}`);
      const policy = answer.headers.get('content-security-policy') || '';
      check(policy.includes("script-src 'self'") && policy.includes("default-src 'none'"),
        `GET ${path}: policy ${policy}`);
      check(!policy.includes('unsafe'), `GET ${path}: policy allows unsafe code: ${policy}`);
    }
  },

  /** A server with keys: the page asks for one once, keeps it for the tab only (never in the
   *  URL or localStorage), and forgets it on request. */
  async the_key_is_asked_for_once_and_kept_for_the_tab() {
    const page = await openTab();
    try {
      await page.goto(`${base}/#/locks`);
      await page.getByLabel('API key', { exact: true }).waitFor({ timeout: SHOW_BOUND_MS });
      await page.getByLabel('API key', { exact: true }).fill('baton_not-a-key');
      await page.getByRole('button', { name: 'Use this key' }).click();
      await page.getByText('The server refused that key').waitFor({ timeout: SHOW_BOUND_MS });
      await page.getByLabel('API key', { exact: true }).fill(adminKey);
      await page.getByRole('button', { name: 'Use this key' }).click();
      await page.getByRole('heading', { name: 'Locks' }).waitFor({ timeout: SHOW_BOUND_MS });
      await page.locator('#live', { hasText: 'Live' }).waitFor({ timeout: SHOW_BOUND_MS });
      check(!page.url().includes(adminKey), `the key is in the URL: ${page.url()}`);
      const stored = await page.evaluate(() => ({
        session: Object.values({ ...sessionStorage }),
        local: Object.values({ ...localStorage }),
      }));
      check(stored.session.includes(adminKey), 'the key is not in sessionStorage');
      check(!stored.local.some((value) => value.includes('baton_')), 'a key is in localStorage');
      // Asked once: moving around and reloading the tab do not ask again.
      await page.reload();
      await page.getByRole('heading', { name: 'Locks' }).waitFor({ timeout: SHOW_BOUND_MS });
      await page.getByRole('link', { name: 'Jobs', exact: true }).click();
      await page.getByRole('heading', { name: 'Jobs' }).waitFor({ timeout: SHOW_BOUND_MS });
      check(await page.getByLabel('API key', { exact: true }).isHidden(), 'the key was asked for again');
      await page.getByRole('button', { name: 'Forget key' }).click();
      await page.getByLabel('API key', { exact: true }).waitFor({ timeout: SHOW_BOUND_MS });
      const left = await page.evaluate(() => sessionStorage.length);
      check(left === 0, 'the key was not forgotten');
      noProblems(page);
    } finally {
      await page.close();
    }
  },

  /** Another machine acquires a lock while the page is open: the holder shows, from the event
   *  stream, within a second (asserted with a generous bound; the time is printed). */
  async an_acquire_shows_a_holder_at_once() {
    const page = await signedIn('#/locks');
    try {
      await page.getByRole('heading', { name: 'Locks' }).waitFor({ timeout: SHOW_BOUND_MS });
      const started = Date.now();
      const answer = await api('POST', `${lockPath('dash/live')}/acquire`, { owner: 'dash-holder', ttl_ms: 600000 });
      check(answer.status === 200, `acquire: ${answer.status} ${answer.text}`);
      await page.locator('tr[data-lock="dash/live"] .holders', { hasText: 'dash-holder' })
        .waitFor({ timeout: LIVE_BOUND_MS });
      console.log(`  the holder showed ${Date.now() - started} ms after the acquire was sent`);
      const row = page.locator('tr[data-lock="dash/live"]');
      const text = await row.innerText();
      check(text.includes(`token ${answer.json.lease.token}`), `no token in: ${text}`);
      check(/expires in \d/.test(text), `no countdown in: ${text}`);
      noProblems(page);
    } finally {
      await page.close();
    }
  },

  /** A second acquire queues behind the holder: the page shows it waiting, first in line. */
  async a_queued_waiter_shows_its_position() {
    const page = await signedIn('#/locks');
    try {
      await page.getByRole('heading', { name: 'Locks' }).waitFor({ timeout: SHOW_BOUND_MS });
      const holder = await api('POST', `${lockPath('dash/queue')}/acquire`, { owner: 'dash-first', ttl_ms: 600000 });
      check(holder.status === 200, `acquire: ${holder.status} ${holder.text}`);
      const waiter = await api('POST', `${lockPath('dash/queue')}/acquire`,
        { owner: 'dash-waiter', ttl_ms: 600000, queue: true, wait_ms: 0 });
      check(waiter.status === 202, `queue: ${waiter.status} ${waiter.text}`);
      await page.locator('tr[data-lock="dash/queue"] .queue li[data-position="1"]', { hasText: 'dash-waiter' })
        .waitFor({ timeout: LIVE_BOUND_MS });
      const queue = await page.locator('tr[data-lock="dash/queue"] .queue').innerText();
      check(queue.includes('#1') && /waiting \d/.test(queue), `queue cell: ${queue}`);
      // The lock's own page: the queue with positions, the holder, the history.
      await page.getByRole('link', { name: 'dash/queue', exact: true }).click();
      const row = page.locator('#queue tr[data-position="1"]', { hasText: 'dash-waiter' });
      await row.waitFor({ timeout: SHOW_BOUND_MS });
      await page.locator('#holders tr', { hasText: 'dash-first' }).waitFor({ timeout: SHOW_BOUND_MS });
      noProblems(page);
    } finally {
      await page.close();
    }
  },

  /** Two runs of one job with the skip policy, one after the other: the timeline draws two
   *  bars on one row that do not overlap. */
  async the_timeline_draws_two_skip_runs_apart() {
    const page = await signedIn(`#/jobs?name=${encodeURIComponent('dash/nightly')}`);
    try {
      const selector = 'figure[data-name="dash/nightly"] rect.run';
      await page.waitForFunction((bars) => document.querySelectorAll(bars).length >= 2, selector,
        { timeout: SHOW_BOUND_MS });
      // Read in one go in the page: a live update may draw the chart again in between reads.
      const boxes = await page.$$eval(selector, (bars) => bars.map((bar) => {
        const box = bar.getBoundingClientRect();
        return { x: box.x, y: box.y, width: box.width, height: box.height };
      }));
      check(boxes.length === 2, `${boxes.length} bars`);
      check(boxes.every((box) => box.width > 0 && box.height > 0), `a bar is not drawn: ${JSON.stringify(boxes)}`);
      boxes.sort((a, b) => a.x - b.x);
      check(Math.abs(boxes[0].y - boxes[1].y) < 0.5, `not on one row: ${JSON.stringify(boxes)}`);
      check(boxes[0].x + boxes[0].width <= boxes[1].x + 0.5,
        `the bars overlap: ${JSON.stringify(boxes)}`);
      // A run that lasted a second is a visible bar, not a sliver.
      check(boxes.every((box) => box.width >= 4), `a bar is too thin: ${JSON.stringify(boxes)}`);
      noProblems(page);
    } finally {
      await page.close();
    }
  },

  /** A finished job's page shows its states, exit code and output. */
  async a_finished_jobs_page_shows_its_output() {
    const jobs = await api('GET', `/v1/jobs?name=${encodeURIComponent('dash/report')}`);
    check(jobs.status === 200 && jobs.json.jobs.length === 1, `jobs: ${jobs.text}`);
    const job = jobs.json.jobs[0];
    const page = await signedIn(`#/jobs/${job.id}`);
    try {
      await page.locator('#job-output', { hasText: 'report line 2' }).waitFor({ timeout: SHOW_BOUND_MS });
      const output = await page.locator('#job-output').innerText();
      check(output.includes('report line 1'), `output: ${output}`);
      check((await page.locator('#job-state').innerText()) === 'succeeded', 'state');
      check((await page.locator('#job-exit-code').innerText()) === '0', 'exit code');
      const stages = await page.locator('#job-stages').innerText();
      check(stages.includes('running') && stages.includes('succeeded'), `stages: ${stages}`);
      noProblems(page);
    } finally {
      await page.close();
    }
  },

  /** The page reads the event stream itself (fetch and a stream reader): a job's page appends
   *  the `text` of `output` events for its job, and only for its job. The stream is the
   *  server's contract for live output (docs/events.md); here the browser is handed one, so
   *  the page's side is tested apart from the runner's (see the live scenario below). The
   *  first subscription only gives an id; the page resumes from it, and that resumed stream
   *  carries the output, split oddly (CRLF, a comment, a multi-line `data`). */
  async a_jobs_page_appends_output_events_for_its_job() {
    const created = await api('POST', '/v1/jobs',
      { name: 'dash/streaming', owner: 'dash-runner', command: ['sh', '-c', 'sleep 600'], ttl_ms: 3600000 });
    check(created.status === 200, `create a job: ${created.status} ${created.text}`);
    const { job } = created.json;
    const page = await openTab();
    let subscriptions = 0;
    await page.route('**/v1/events', async (route) => {
      // Without a key the real server refuses (the page then asks for one).
      if (adminKey && !route.request().headers().authorization) return route.continue();
      subscriptions += 1;
      const stream = 'ffffffffffffffff';
      if (subscriptions === 1) {
        return route.fulfill({ status: 200, contentType: 'text/event-stream', body: `id: ${stream}-1\n\n` });
      }
      if (subscriptions === 2) {
        check(route.request().headers()['last-event-id'] === `${stream}-1`, 'the page did not resume');
        // Let the page read the job first, as it would have long before a real chunk came.
        await new Promise((resolve) => { setTimeout(resolve, 1000); });
        const event = (seq, id, text) => ({
          id: `${stream}-${seq}`, seq, type: 'output', at: new Date().toISOString(), lock: job.lock,
          job: { id, name: job.name, state: 'running', created_at: job.created_at }, text,
        });
        const mine = JSON.stringify(event(2, job.id, 'first chunk\n'));
        const other = JSON.stringify(event(3, `job_${'0'.repeat(32)}`, 'not this job\n'));
        const again = JSON.stringify(event(4, job.id, 'second chunk\n'));
        const body = `: keep-alive\r\nid: ${stream}-2\r\nevent: output\r\ndata: ${mine}\r\n\r\n`
          + `id: ${stream}-3\nevent: output\ndata: ${other}\n\n`
          + `id: ${stream}-4\nevent: output\ndata:${again}\n\n`;
        return route.fulfill({ status: 200, contentType: 'text/event-stream', body });
      }
      // Later subscriptions wait: the scenario is over by then.
      return new Promise(() => {});
    });
    try {
      await page.goto(`${base}/#/jobs/${job.id}`);
      if (adminKey) {
        await page.getByLabel('API key', { exact: true }).fill(adminKey);
        await page.getByRole('button', { name: 'Use this key' }).click();
      }
      await page.locator('#job-state', { hasText: 'running' }).waitFor({ timeout: SHOW_BOUND_MS });
      await page.locator('#job-output', { hasText: 'second chunk' }).waitFor({ timeout: SHOW_BOUND_MS });
      const output = await page.locator('#job-output').innerText();
      check(output === 'first chunk\nsecond chunk\n' || output === 'first chunk\nsecond chunk',
        `output: ${JSON.stringify(output)}`);
      noProblems(page);
    } finally {
      await page.close();
    }
  },

  /** A key that may read team-a/ only: its page lists team-a's locks and jobs and nothing of
   *  team-b's, and a link to team-b's lock shows nothing of it. */
  async a_read_only_key_sees_no_other_teams_lock() {
    const page = await signedIn('#/locks', readerKey);
    try {
      await page.locator('tr[data-lock="team-a/lock"]').waitFor({ timeout: SHOW_BOUND_MS });
      const locks = await page.locator('#locks').innerText();
      check(!locks.includes('team-b'), `team-b shows: ${locks}`);
      check(!locks.includes('dash/'), `other locks show: ${locks}`);
      await page.getByRole('link', { name: 'Jobs', exact: true }).click();
      await page.locator('#job-list tr[data-job]').first().waitFor({ timeout: SHOW_BOUND_MS });
      const jobs = await page.locator('main').innerText();
      check(jobs.includes('team-a/build'), `team-a's job is missing: ${jobs}`);
      check(!jobs.includes('team-b'), `team-b's job shows: ${jobs}`);
      await page.goto(`${base}/#/locks/${encodeURIComponent('team-b/lock')}`);
      await page.locator('.errors .notice').waitFor({ timeout: SHOW_BOUND_MS });
      const lockPage = await page.locator('main').innerText();
      check(!lockPage.includes('team-b-owner'), `team-b's holder shows: ${lockPage}`);
      noProblems(page);
    } finally {
      await page.close();
    }
  },

  /** The server page shows the store and role /readyz reports, and counts from /metrics. */
  async the_server_page_shows_the_store() {
    const ready = await api('GET', '/readyz', undefined, '');
    const page = await signedIn('#/server');
    try {
      const store = page.locator('[data-metric="store"] .value');
      await store.waitFor({ timeout: SHOW_BOUND_MS });
      check((await store.innerText()) === ready.json.store, `store ${await store.innerText()} vs ${ready.text}`);
      const leases = await page.locator('[data-metric="leases"] .value').innerText();
      check(/^\d+$/.test(leases), `leases: ${leases}`);
      noProblems(page);
    } finally {
      await page.close();
    }
  },

  /** A running job's output appears on its page while it runs (needs live output: the
   *  `output` events of the event stream). */
  async a_running_jobs_output_appears_while_it_runs() {
    const page = await signedIn('#/jobs');
    const env = { ...process.env, BATON_URL: base };
    if (adminKey) env.BATON_API_KEY = adminKey;
    const child = spawn(process.env.BATON_BIN || 'baton',
      ['run', 'dash/live-output', '--', 'sh', '-c', 'echo first-chunk; sleep 2; echo second-chunk; sleep 30'],
      { env, stdio: 'ignore' });
    try {
      const link = page.locator('#job-list tr[data-job]', { hasText: 'dash/live-output' }).getByRole('link');
      await link.waitFor({ timeout: SHOW_BOUND_MS });
      await link.click();
      await page.locator('#job-output', { hasText: 'first-chunk' }).waitFor({ timeout: SHOW_BOUND_MS });
      await page.locator('#job-output', { hasText: 'second-chunk' }).waitFor({ timeout: 2000 + LIVE_BOUND_MS });
      const state = await page.locator('#job-state').innerText();
      check(state === 'running', `the job is ${state}, not running`);
      noProblems(page);
    } finally {
      child.kill('SIGTERM');
      await page.close();
    }
  },

  /** Screenshots of the main pages for docs/ (only when asked). */
  async screenshots() {
    if (!screenshots) return;
    mkdirSync(screenshots, { recursive: true });
    // A lock with a bit of everything: a holder, two waiters, an ended hold.
    const prod = `${lockPath('deploy/prod')}/acquire`;
    const first = await api('POST', prod, { owner: 'ci/build-41', ttl_ms: 600000 });
    await api('POST', `/v1/leases/${first.json.lease.id}/release`);
    await api('POST', prod, { owner: 'ci/build-42', ttl_ms: 600000 });
    await api('POST', prod, { owner: 'ci/build-43', ttl_ms: 600000, queue: true, wait_ms: 0 });
    await api('POST', prod, { owner: 'ops/alice', ttl_ms: 600000, queue: true, wait_ms: 0 });
    const shots = [
      ['locks', '#/locks', '#locks tr[data-lock]'],
      ['lock', `#/locks/${encodeURIComponent('deploy/prod')}`, '#history tr'],
      ['jobs', '#/jobs', 'figure[data-name] rect.run'],
      ['server', '#/server', '[data-metric="store"]'],
    ];
    const page = await signedIn('#/locks');
    try {
      for (const [name, route, ready] of shots) {
        await page.goto(`${base}/${route}`);
        await page.locator(ready).first().waitFor({ timeout: SHOW_BOUND_MS });
        await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
      }
      const jobs = await api('GET', `/v1/jobs?name=${encodeURIComponent('dash/report')}`);
      await page.goto(`${base}/#/jobs/${jobs.json.jobs[0].id}`);
      await page.locator('#job-output', { hasText: 'report line 1' }).waitFor({ timeout: SHOW_BOUND_MS });
      await page.screenshot({ path: join(screenshots, 'job.png'), fullPage: true });
      await page.setViewportSize({ width: 390, height: 844 });
      await page.goto(`${base}/#/locks`);
      await page.locator('#locks tr[data-lock]').first().waitFor({ timeout: SHOW_BOUND_MS });
      await page.screenshot({ path: join(screenshots, 'phone.png') });
    } finally {
      await page.close();
    }
  },
};

const wanted = (process.env.BATON_DASHBOARD_SCENARIOS || Object.keys(scenarios).join(','))
  .split(',').map((name) => name.trim()).filter(Boolean);
let passed = 0;
let failed = 0;
for (const name of wanted) {
  const scenario = scenarios[name];
  const started = Date.now();
  try {
    check(scenario, `no scenario named ${name}`);
    let timer;
    await Promise.race([
      scenario(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`took over ${SCENARIO_BOUND_MS} ms`)), SCENARIO_BOUND_MS);
      }),
    ]).finally(() => clearTimeout(timer));
    passed += 1;
    console.log(`ok ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    failed += 1;
    console.log(`FAILED ${name}: ${error && error.stack ? error.stack : error}`);
  }
}
await browser.close();
console.log(`dashboard: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
