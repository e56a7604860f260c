// baton's dashboard: one page, no framework, no build step. It reads the public JSON API with
// the user's key and stays live from the event stream (docs/dashboard.md).
//
// - Routes live in the URL's fragment (#/locks, #/locks/NAME, #/jobs?name=…, #/jobs/ID,
//   #/server), so the server serves one page and a link can be shared (never with a key in it).
// - Every request goes through `request`, which adds `Authorization: Bearer KEY` when the user
//   gave a key. The key is kept in sessionStorage only (this tab), never in a URL or in
//   localStorage. A 401 shows the key form.
// - The event stream is read with fetch() and a stream reader, because EventSource cannot send
//   an Authorization header. It resumes with Last-Event-ID after a cut, and reads the state
//   afresh after `missed` or `dropped` (docs/events.md).
// - An event makes the current view read its data again (debounced), except job output, which
//   the job's page appends as it comes. So what is shown is always what the API answers, and
//   the event stream only says when to look.
// - The page is built with DOM calls and textContent, never from HTML strings: lock names,
//   owners and job output are other people's text. The server's Content-Security-Policy allows
//   no inline script or style anyway.
'use strict';

(() => {
  /** Where the key is kept (sessionStorage: this tab only). */
  const KEY_STORAGE = 'baton.apiKey';
  /** Most characters of job output kept on a job's page (the newest). */
  const OUTPUT_CHARS_MAX = 512 * 1024;
  /** Longest line the event-stream parser buffers; a longer one means a broken stream. */
  const EVENT_LINE_CHARS_MAX = 4 * 1024 * 1024;
  /** Reconnection pauses of the event stream: doubled after each failure, up to the max. */
  const RECONNECT_MS_MIN = 500;
  const RECONNECT_MS_MAX = 10000;
  /** Events within this window cause one reading of the state, not one each. */
  const REFRESH_DEBOUNCE_MS = 120;
  /** Without a live stream (a standby, an error), the state is read this often. */
  const POLL_MS = 10000;
  /** The server page reads /metrics this often (its counters change without events). */
  const SERVER_POLL_MS = 5000;
  /** Most jobs one jobs page reads (the API's own cap is higher). */
  const JOB_LIST_LIMIT = 500;
  /** Most active jobs read to learn holders' hosts. */
  const ACTIVE_JOBS_LIMIT = 2000;
  /** Most history records a lock's page shows. */
  const HISTORY_LIMIT = 200;
  /** A local clock further off the server's than this is corrected for in countdowns. */
  const CLOCK_SKEW_IGNORED_MS = 2000;
  /** Lanes a timeline draws before it folds further overlapping runs into the last one. */
  const TIMELINE_LANES_MAX = 8;
  const JOB_STATES = ['queued', 'waiting', 'running', 'succeeded', 'failed', 'cancelled', 'lost',
    'timed_out', 'skipped', 'coalesced'];
  const FINAL_STATES = new Set(['succeeded', 'failed', 'cancelled', 'lost', 'timed_out', 'skipped',
    'coalesced']);
  /** The choices of the jobs page's "since" filter, in milliseconds. */
  const SINCE_CHOICES = [['', 'any time'], ['15m', 'last 15 minutes', 15 * 60e3],
    ['1h', 'last hour', 3600e3], ['6h', 'last 6 hours', 6 * 3600e3],
    ['24h', 'last 24 hours', 24 * 3600e3], ['7d', 'last 7 days', 7 * 24 * 3600e3]];

  const app = {
    view: null,
    /** Server time minus local time, when they differ by more than CLOCK_SKEW_IGNORED_MS. */
    clockOffsetMs: 0,
    /** The id of the last event read, for Last-Event-ID. */
    lastEventId: null,
    /** Bumped to stop the event stream's loop (a new key, forgetting the key). */
    streamGeneration: 0,
    streamAbort: null,
    /** Whether the stream is live (no polling needed). */
    live: false,
    /** Counts the times the page lost track of the stream (a fresh subscription, `missed`,
     *  `dropped`): a job's page then reads the output tail again before it appends events. */
    streamEpoch: 0,
    refreshTimer: null,
    refreshing: false,
    refreshAgain: false,
  };

  // ----- DOM helpers --------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function append(element, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return element;
  }

  /** An HTML element: `h('td', {class: 'num'}, text, …)`. Attributes are set, never parsed. */
  function h(tag, attributes, ...children) {
    const element = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'class') element.className = value;
      else if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
      else element.setAttribute(name, value === true ? '' : String(value));
    }
    return append(element, children);
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';

  /** An SVG element, as `h` makes HTML ones. */
  function s(tag, attributes, ...children) {
    const element = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === null || value === undefined || value === false) continue;
      element.setAttribute(name, String(value));
    }
    return append(element, children);
  }

  /** Replaces an element's children, keeping keyboard focus on the "same" link if it had it. */
  function replaceChildren(element, ...children) {
    const focused = document.activeElement;
    const focusKey = focused && element.contains(focused) ? focused.getAttribute('data-focus') : null;
    element.replaceChildren();
    append(element, children);
    if (focusKey) {
      const again = [...element.querySelectorAll('[data-focus]')]
        .find((candidate) => candidate.getAttribute('data-focus') === focusKey);
      if (again) again.focus();
    }
  }

  /** A link to a route of the page; `data-focus` lets a re-render keep focus on it. */
  function link(route, ...children) {
    return h('a', { href: route, 'data-focus': route }, ...children);
  }

  const lockRoute = (name) => `#/locks/${encodeURIComponent(name)}`;
  const jobRoute = (id) => `#/jobs/${encodeURIComponent(id)}`;

  function table(caption, headings, rows, emptyText) {
    if (rows.length === 0) return h('p', { class: 'empty' }, emptyText);
    return h('div', { class: 'table-wrap' },
      h('table', { class: 'stack' },
        caption ? h('caption', {}, caption) : null,
        h('thead', {}, h('tr', {}, headings.map(([text, numeric]) =>
          h('th', { scope: 'col', class: numeric ? 'num' : null }, text)))),
        h('tbody', {}, rows)));
  }

  /** A table cell labelled by its column (shown above the value on a phone). */
  function cell(label, attributes, ...children) {
    return h('td', { 'data-label': label, ...attributes }, ...children);
  }

  // ----- time ---------------------------------------------------------------------------------

  const serverNow = () => Date.now() + app.clockOffsetMs;
  const millisOf = (iso) => (iso ? Date.parse(iso) : NaN);
  const pad = (number) => String(number).padStart(2, '0');

  function clockText(ms, withDate) {
    const date = new Date(ms);
    const time = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
    if (!withDate) return time;
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${time}`;
  }

  /** `<time>` showing a moment in local time, with the exact ISO time as its machine value. */
  function timeElement(iso) {
    if (!iso) return h('span', { class: 'empty' }, '—');
    const ms = millisOf(iso);
    const sameDay = new Date(ms).toDateString() === new Date().toDateString();
    return h('time', { datetime: iso, title: iso }, clockText(ms, !sameDay));
  }

  function durationText(ms) {
    if (!Number.isFinite(ms)) return '—';
    const negative = ms < 0;
    let rest = Math.abs(ms);
    let text;
    if (rest < 1000) text = `${Math.round(rest)} ms`;
    else if (rest < 10e3) text = `${(rest / 1000).toFixed(1)} s`;
    else if (rest < 60e3) text = `${Math.round(rest / 1000)} s`;
    else {
      rest = Math.round(rest / 1000);
      const days = Math.floor(rest / 86400);
      const hours = Math.floor((rest % 86400) / 3600);
      const minutes = Math.floor((rest % 3600) / 60);
      const seconds = rest % 60;
      if (days > 0) text = `${days} d ${hours} h`;
      else if (hours > 0) text = `${hours} h ${minutes} min`;
      else text = `${minutes} min ${seconds} s`;
    }
    return negative ? `-${text}` : text;
  }

  /** Text that counts down to `iso` ("in 12 s"), kept current by `tick`. */
  function countdown(iso, endedText) {
    const element = h('span', { class: 'countdown', 'data-until': iso, 'data-ended': endedText });
    updateClock(element);
    return element;
  }

  /** Text that counts up from `iso` ("3 s"), kept current by `tick`. */
  function elapsed(iso) {
    const element = h('span', { class: 'elapsed', 'data-since': iso });
    updateClock(element);
    return element;
  }

  function updateClock(element) {
    const until = element.getAttribute('data-until');
    if (until) {
      const left = millisOf(until) - serverNow();
      element.textContent = left > 0 ? `in ${durationText(left)}`
        : element.getAttribute('data-ended') || 'now';
      return;
    }
    const since = element.getAttribute('data-since');
    if (since) element.textContent = durationText(Math.max(0, serverNow() - millisOf(since)));
  }

  /** Once a second: countdowns and waiting times move without asking the server. */
  function tick() {
    for (const element of document.querySelectorAll('[data-until], [data-since]')) {
      updateClock(element);
    }
  }

  function noteServerClock(response) {
    const date = Date.parse(response.headers.get('date') || '');
    if (!Number.isFinite(date)) return;
    // The header has whole seconds: half a second is its expected truncation.
    const offset = date + 500 - Date.now();
    app.clockOffsetMs = Math.abs(offset) > CLOCK_SKEW_IGNORED_MS ? offset : 0;
  }

  // ----- the API ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE);
    } catch {
      return null;
    }
  }

  function authHeaders(headers) {
    const key = storedKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    return headers;
  }

  /** One GET; the answer's status and body (JSON, or text with `text`). 401 asks for a key. */
  async function request(path, { text = false } = {}) {
    let response;
    try {
      response = await fetch(path, {
        headers: authHeaders({ Accept: text ? 'text/plain, */*' : 'application/json' }),
        cache: 'no-store',
      });
    } catch {
      throw new ApiError(0, 'unreachable', 'The server does not answer.');
    }
    noteServerClock(response);
    if (response.status === 401) {
      askForKey(Boolean(storedKey()));
      throw new ApiError(401, 'unauthorized', 'This server needs an API key.');
    }
    const body = text ? await response.text() : await response.json().catch(() => null);
    return { status: response.status, body };
  }

  /** `request`, failing with the API's error unless the answer is a success. */
  async function api(path, options) {
    const { status, body } = await request(path, options);
    if (status >= 200 && status < 300) return body;
    const error = body && body.error ? body.error : {};
    throw new ApiError(status, error.code || 'error', error.message || `The server answered ${status}.`);
  }

  // ----- the key ------------------------------------------------------------------------------

  function showForgetButton() {
    $('forget-key').hidden = !storedKey();
  }

  /** Shows the key form instead of the page (`refused`: the key sent was not accepted). */
  function askForKey(refused) {
    if (refused) {
      try {
        sessionStorage.removeItem(KEY_STORAGE);
      } catch {
        // Nothing kept, nothing to remove.
      }
    }
    stopStream();
    const panel = $('key-panel');
    const wasHidden = panel.hidden;
    panel.hidden = false;
    $('main').hidden = true;
    // Only ever set here: the page's reads and its event stream may both be refused the same
    // key, and the second must not wipe what the first said.
    if (refused) $('key-error').textContent = 'The server refused that key (unknown or revoked).';
    setLive('bad', 'Needs an API key');
    showForgetButton();
    if (wasHidden) $('key-input').focus();
  }

  function useKey(event) {
    event.preventDefault();
    const input = $('key-input');
    const key = input.value.trim();
    if (!key) return;
    try {
      sessionStorage.setItem(KEY_STORAGE, key);
    } catch {
      $('key-error').textContent = 'This browser keeps no session storage, so the key cannot be kept.';
      return;
    }
    input.value = '';
    $('key-error').textContent = '';
    $('key-panel').hidden = true;
    $('main').hidden = false;
    showForgetButton();
    start();
  }

  function forgetKey() {
    try {
      sessionStorage.removeItem(KEY_STORAGE);
    } catch {
      // Nothing kept.
    }
    stopStream();
    app.lastEventId = null;
    showForgetButton();
    // Reading the state again asks for a key if the server needs one.
    start();
  }

  // ----- the event stream ---------------------------------------------------------------------

  function setLive(kind, text) {
    const element = $('live');
    element.className = `live ${kind}`;
    element.textContent = text;
  }

  function stopStream() {
    app.streamGeneration += 1;
    app.live = false;
    if (app.streamAbort) app.streamAbort.abort();
    app.streamAbort = null;
  }

  const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

  /** Follows /v1/events until `stopStream`, reconnecting with Last-Event-ID. */
  async function followEvents() {
    stopStream();
    const generation = app.streamGeneration;
    const current = () => generation === app.streamGeneration;
    let pause = RECONNECT_MS_MIN;
    while (current()) {
      const controller = new AbortController();
      app.streamAbort = controller;
      const headers = authHeaders({ Accept: 'text/event-stream' });
      const resuming = app.lastEventId !== null;
      if (resuming) headers['Last-Event-ID'] = app.lastEventId;
      let response = null;
      try {
        response = await fetch('/v1/events', { headers, signal: controller.signal, cache: 'no-store' });
      } catch {
        response = null;
      }
      if (!current()) return;
      if (response && response.status === 401) {
        askForKey(Boolean(storedKey()));
        return;
      }
      if (response && response.ok && response.body) {
        app.live = true;
        pause = RECONNECT_MS_MIN;
        setLive('ok', 'Live');
        // Whatever changed while nobody listened is read afresh (a resume misses nothing).
        if (!resuming) resync();
        try {
          await readEvents(response.body, dispatch);
        } catch {
          // A cut connection: reconnect below.
        }
        if (!current()) return;
        app.live = false;
        setLive('bad', 'Reconnecting…');
      } else if (response && response.status === 400) {
        // The server refuses the Last-Event-ID (another format, a stale id): start afresh.
        app.lastEventId = null;
      } else if (response && response.status === 503) {
        app.live = false;
        const body = await response.json().catch(() => null);
        const active = body && body.error && body.error.code === 'not_active';
        setLive('bad', active
          ? 'A standby server: read every 10 s (live updates come from the active server)'
          : 'The server cannot stream events now; read every 10 s');
        await sleep(POLL_MS);
        if (!current()) return;
        scheduleRefresh();
        continue;
      } else {
        app.live = false;
        setLive('bad', response ? `Event stream refused (${response.status}); retrying…`
          : 'Disconnected; retrying…');
      }
      await sleep(pause);
      pause = Math.min(pause * 2, RECONNECT_MS_MAX);
    }
  }

  /**
   * Reads a Server-Sent Events stream (the format of the HTML standard: `field: value` lines,
   * a blank line ends a message, `:` starts a comment) and calls `onMessage(type, data)`.
   */
  async function readEvents(body, onMessage) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let type = '';
    let data = [];
    const line = (text) => {
      if (text === '') {
        if (data.length > 0) onMessage(type || 'message', data.join('\n'));
        type = '';
        data = [];
        return;
      }
      if (text.startsWith(':')) return;
      const colon = text.indexOf(':');
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? '' : text.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
      else if (field === 'id' && !value.includes('\0')) app.lastEventId = value;
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      for (;;) {
        const end = buffer.search(/\r\n|\r|\n/);
        // A lone \r at the end may be the first half of \r\n.
        if (end < 0 || (end === buffer.length - 1 && buffer[end] === '\r')) break;
        const width = buffer.startsWith('\r\n', end) ? 2 : 1;
        line(buffer.slice(0, end));
        buffer = buffer.slice(end + width);
      }
      if (buffer.length > EVENT_LINE_CHARS_MAX) throw new Error('an event line is too long');
    }
  }

  function dispatch(type, data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    if (type === 'missed') {
      resync();
      return;
    }
    if (type === 'dropped') {
      // The server ends the stream after this; subscribe again from now, reading afresh.
      app.lastEventId = null;
      resync();
      return;
    }
    const view = app.view;
    if (view && view.onEvent && view.onEvent(event) === false) return;
    scheduleRefresh();
  }

  /** The stream may have missed events: read everything afresh, job output included. */
  function resync() {
    app.streamEpoch += 1;
    scheduleRefresh();
  }

  // ----- refreshing ---------------------------------------------------------------------------

  /** Reads the current view's data again soon; bursts of events cost one reading. */
  function scheduleRefresh() {
    if (app.refreshTimer !== null) return;
    app.refreshTimer = setTimeout(() => {
      app.refreshTimer = null;
      refresh();
    }, REFRESH_DEBOUNCE_MS);
  }

  async function refresh() {
    const view = app.view;
    if (!view) return;
    if (app.refreshing) {
      app.refreshAgain = true;
      return;
    }
    app.refreshing = true;
    try {
      await view.refresh();
      if (view.error) replaceChildren(view.error);
    } catch (error) {
      if (app.view === view && view.error && error.status !== 401) {
        replaceChildren(view.error, h('p', { class: 'notice', role: 'alert' },
          `Could not read the state: ${error.message}`));
      }
    } finally {
      app.refreshing = false;
      if (app.refreshAgain) {
        app.refreshAgain = false;
        scheduleRefresh();
      }
    }
  }

  // ----- views --------------------------------------------------------------------------------

  /** The skeleton every view shares: a heading, an error slot, and its own parts. */
  function frame(title, ...parts) {
    const error = h('div', { class: 'errors' });
    const heading = h('h1', {}, title);
    replaceChildren($('main'), heading, error, ...parts);
    document.title = `${title} · baton`;
    return { heading, error };
  }

  function holderJobs(jobs) {
    const byId = new Map();
    for (const job of jobs) byId.set(job.id, job);
    return byId;
  }

  function holderItem(holder, jobsById) {
    const job = holder.job ? jobsById.get(holder.job) : null;
    return h('li', { 'data-owner': holder.owner },
      h('span', { class: 'owner' }, holder.owner),
      h('span', { class: 'detail' }, h('br'),
        `token ${holder.token}`,
        job && job.host ? ` · host ${job.host}` : null,
        job ? [' · job ', link(jobRoute(job.id), job.name)] : null,
        ' · held ', elapsed(holder.since),
        ' · expires ', countdown(holder.expires_at, 'expired')));
  }

  function waiterItem(waiter, jobsById) {
    const job = waiter.job ? jobsById.get(waiter.job) : null;
    return h('li', { 'data-owner': waiter.owner, 'data-position': waiter.position },
      h('span', { class: 'position' }, `#${waiter.position} `),
      h('span', { class: 'owner' }, waiter.owner),
      h('span', { class: 'detail' }, h('br'),
        job && job.host ? `host ${job.host} · ` : null,
        'waiting ', elapsed(waiter.since)));
  }

  function lockDelay(lock) {
    if (!lock.delayed_until || millisOf(lock.delayed_until) <= serverNow()) {
      return h('span', { class: 'empty' }, 'none');
    }
    return h('span', { class: 'delay' }, 'until ', timeElement(lock.delayed_until), ' (',
      countdown(lock.delayed_until, 'over'), ')');
  }

  async function activeJobs() {
    const answer = await api(`/v1/jobs?state=queued,waiting,running&limit=${ACTIVE_JOBS_LIMIT}`);
    return answer.jobs;
  }

  function locksView() {
    const filter = h('input', { id: 'lock-filter', type: 'search', placeholder: 'e.g. team-a/' });
    // Not a live region: it changes with every lock event, too often to be read out.
    const summary = h('p', { class: 'muted' });
    const list = h('div', { id: 'locks' });
    const view = { locks: [], jobsById: new Map() };
    const { error } = frame('Locks',
      h('div', { class: 'toolbar' }, h('label', { for: 'lock-filter' }, 'Filter by name', filter)),
      summary, list);
    view.error = error;
    const render = () => {
      const needle = filter.value.trim().toLowerCase();
      const shown = view.locks.filter((lock) => lock.name.toLowerCase().includes(needle));
      const holders = shown.reduce((sum, lock) => sum + lock.holders.length, 0);
      const waiters = shown.reduce((sum, lock) => sum + lock.waiters.length, 0);
      summary.textContent = `${shown.length} lock${shown.length === 1 ? '' : 's'}, ${holders} held, ${waiters} waiting.`;
      replaceChildren(list, table(null,
        [['Lock'], ['Capacity', true], ['Holders'], ['Queue'], ['Lock-delay']],
        shown.map((lock) => h('tr', { 'data-lock': lock.name },
          cell('Lock', {}, link(lockRoute(lock.name), lock.name)),
          cell('Capacity', { class: 'num' }, `${lock.holders.length} / ${lock.capacity}`),
          cell('Holders', { class: 'holders' }, lock.holders.length
            ? h('ul', { class: 'people' }, lock.holders.map((holder) => holderItem(holder, view.jobsById)))
            : h('span', { class: 'empty' }, 'free')),
          cell('Queue', { class: 'queue' }, lock.waiters.length
            ? h('ol', { class: 'people' }, lock.waiters.map((waiter) => waiterItem(waiter, view.jobsById)))
            : h('span', { class: 'empty' }, 'empty')),
          cell('Lock-delay', {}, lockDelay(lock)))),
        needle ? 'No lock matches this filter.' : 'No locks yet: they appear when someone acquires one.'));
    };
    filter.addEventListener('input', render);
    view.refresh = async () => {
      const [locks, jobs] = await Promise.all([api('/v1/locks?limit=10000'), activeJobs()]);
      if (app.view !== view) return;
      view.locks = locks.locks;
      view.jobsById = holderJobs(jobs);
      render();
    };
    // Every lock and job change can change this page; output cannot.
    view.onEvent = (event) => event.type !== 'output';
    return view;
  }

  function lockView(name) {
    const view = {};
    const facts = h('div', { id: 'lock-facts' });
    const holders = h('div', { id: 'holders' });
    const queue = h('div', { id: 'queue' });
    const history = h('div', { id: 'history' });
    const { error } = frame(`Lock ${name}`,
      h('p', {}, link('#/locks', '← All locks')),
      facts,
      h('h2', {}, 'Holders'), holders,
      h('h2', {}, 'Queue'), queue,
      h('h2', {}, 'History'), history);
    view.error = error;
    const path = `/v1/locks/${encodeURIComponent(name)}`;
    view.refresh = async () => {
      const [lockAnswer, historyAnswer, jobs] = await Promise.all([
        request(path),
        api(`${path}/history?limit=${HISTORY_LIMIT}`),
        activeJobs(),
      ]);
      if (app.view !== view) return;
      if (lockAnswer.status === 404) {
        replaceChildren(facts, h('p', { class: 'notice' },
          'Nobody holds or waits for this lock now (idle locks are forgotten after a while); its history follows.'));
        replaceChildren(holders, h('p', { class: 'empty' }, 'None.'));
        replaceChildren(queue, h('p', { class: 'empty' }, 'Empty.'));
      } else if (lockAnswer.status !== 200) {
        const message = lockAnswer.body && lockAnswer.body.error ? lockAnswer.body.error.message : '';
        throw new ApiError(lockAnswer.status, 'error', message || `The server answered ${lockAnswer.status}.`);
      } else {
        const lock = lockAnswer.body;
        const jobsById = holderJobs(jobs);
        replaceChildren(facts, h('dl', { class: 'facts' },
          h('dt', {}, 'Capacity'), h('dd', {}, `${lock.holders.length} of ${lock.capacity} held`),
          h('dt', {}, 'Waiting'), h('dd', {}, String(lock.waiters.length)),
          h('dt', {}, 'Newest token'), h('dd', {}, lock.newest_token === undefined ? '—' : String(lock.newest_token)),
          h('dt', {}, 'Lock-delay'), h('dd', {}, lockDelay(lock))));
        replaceChildren(holders, table(null,
          [['Owner'], ['Host'], ['Token', true], ['Since'], ['Held'], ['Expires']],
          lock.holders.map((holder) => {
            const job = holder.job ? jobsById.get(holder.job) : null;
            return h('tr', { 'data-owner': holder.owner },
              cell('Owner', {}, h('span', { class: 'owner' }, holder.owner),
                job ? [h('br'), h('span', { class: 'detail' }, 'job ', link(jobRoute(job.id), job.name))] : null),
              cell('Host', {}, job && job.host ? job.host : h('span', { class: 'empty' }, 'unknown')),
              cell('Token', { class: 'num' }, String(holder.token)),
              cell('Since', {}, timeElement(holder.since)),
              cell('Held', {}, elapsed(holder.since)),
              cell('Expires', {}, countdown(holder.expires_at, 'expired')));
          }), 'Nobody holds it.'));
        replaceChildren(queue, table(null,
          [['Position', true], ['Owner'], ['Host'], ['Since'], ['Waiting']],
          lock.waiters.map((waiter) => {
            const job = waiter.job ? jobsById.get(waiter.job) : null;
            return h('tr', { 'data-owner': waiter.owner, 'data-position': waiter.position },
              cell('Position', { class: 'num' }, String(waiter.position)),
              cell('Owner', {}, h('span', { class: 'owner' }, waiter.owner),
                job ? [h('br'), h('span', { class: 'detail' }, 'job ', link(jobRoute(job.id), job.name))] : null),
              cell('Host', {}, job && job.host ? job.host : h('span', { class: 'empty' }, 'unknown')),
              cell('Since', {}, timeElement(waiter.since)),
              cell('Waiting', {}, elapsed(waiter.since)));
          }), 'Nobody waits.'));
      }
      replaceChildren(history, table(`The newest ${HISTORY_LIMIT} ended holds at most.`,
        [['Owner'], ['Token', true], ['Granted'], ['Ended'], ['Held', true], ['How it ended']],
        historyAnswer.entries.map((entry) => h('tr', {},
          cell('Owner', { class: 'owner' }, entry.owner),
          cell('Token', { class: 'num' }, String(entry.token)),
          cell('Granted', {}, timeElement(entry.granted_at)),
          cell('Ended', {}, timeElement(entry.ended_at)),
          cell('Held', { class: 'num' }, durationText(entry.held_ms)),
          cell('How it ended', { class: `end end-${entry.end}` }, entry.end))),
        'No ended holds kept.'));
    };
    view.onEvent = (event) => event.type !== 'output' && event.lock === name;
    return view;
  }

  // ----- jobs and their timeline ------------------------------------------------------------

  function jobsQuery(query) {
    const parameters = new URLSearchParams();
    if (query.get('name')) parameters.set('name', query.get('name'));
    if (query.get('state')) parameters.set('state', query.get('state'));
    const since = SINCE_CHOICES.find(([value]) => value && value === query.get('since'));
    if (since) parameters.set('since', new Date(serverNow() - since[2]).toISOString());
    parameters.set('limit', String(JOB_LIST_LIMIT));
    return parameters.toString();
  }

  function jobsView(query) {
    const view = {};
    const name = h('input', { id: 'job-name', name: 'name', type: 'search', value: query.get('name') || '', list: 'job-names' });
    const names = h('datalist', { id: 'job-names' });
    const state = h('select', { id: 'job-state', name: 'state' },
      h('option', { value: '' }, 'any state'),
      JOB_STATES.map((value) => h('option', { value, selected: query.get('state') === value }, value)));
    const since = h('select', { id: 'job-since', name: 'since' },
      SINCE_CHOICES.map(([value, text]) => h('option', { value, selected: (query.get('since') || '') === value }, text)));
    const form = h('form', { class: 'toolbar', role: 'search', 'aria-label': 'Filter jobs' },
      h('label', { for: 'job-name' }, 'Name', name), names,
      h('label', { for: 'job-state' }, 'State', state),
      h('label', { for: 'job-since' }, 'Created', since),
      h('button', { type: 'submit' }, 'Show'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const parameters = new URLSearchParams();
      if (name.value.trim()) parameters.set('name', name.value.trim());
      if (state.value) parameters.set('state', state.value);
      if (since.value) parameters.set('since', since.value);
      const text = parameters.toString();
      location.hash = text ? `#/jobs?${text}` : '#/jobs';
    });
    const timelines = h('div', { id: 'timelines' });
    const list = h('div', { id: 'job-list' });
    const { error } = frame('Jobs', form,
      h('h2', {}, 'Timeline'),
      h('ul', { class: 'legend', 'aria-label': 'Legend' },
        h('li', {}, h('span', { class: 'swatch ok' }), 'succeeded'),
        h('li', {}, h('span', { class: 'swatch bad' }), 'failed, lost or timed out'),
        h('li', {}, h('span', { class: 'swatch run' }), 'running'),
        h('li', {}, h('span', { class: 'swatch other' }), 'cancelled'),
        h('li', {}, h('span', { class: 'swatch mark' }), 'skipped or coalesced (did not run)'),
        h('li', {}, '- - - waiting for the lock')),
      timelines,
      h('h2', {}, 'Runs'), list);
    view.error = error;
    view.refresh = async () => {
      const answer = await api(`/v1/jobs?${jobsQuery(query)}`);
      if (app.view !== view) return;
      // Unchanged finished jobs draw the same picture: keep it (and the pointer's place in it).
      const drawn = JSON.stringify(answer.jobs);
      if (drawn === view.drawn && answer.jobs.every((job) => FINAL_STATES.has(job.state))) return;
      view.drawn = drawn;
      view.jobs = answer.jobs;
      const known = [...new Set(answer.jobs.map((job) => job.name))].sort();
      replaceChildren(names, known.map((value) => h('option', { value })));
      replaceChildren(timelines, timelineFigures(answer.jobs, timelines.clientWidth));
      replaceChildren(list, jobTable(answer.jobs));
    };
    view.onEvent = (event) => event.type === 'job';
    view.onResize = () => {
      if (view.jobs) replaceChildren(timelines, timelineFigures(view.jobs, timelines.clientWidth));
    };
    return view;
  }

  function jobTable(jobs) {
    return table(`${jobs.length} job${jobs.length === 1 ? '' : 's'}, newest first.`,
      [['Name'], ['State'], ['Owner'], ['Host'], ['Created'], ['Started'], ['Duration', true], ['Exit code', true]],
      jobs.map((job) => h('tr', { 'data-job': job.id },
        cell('Name', {}, link(jobRoute(job.id), job.name)),
        cell('State', {}, h('span', { class: `state state-${job.state}` }, job.state)),
        cell('Owner', { class: 'owner' }, job.owner),
        cell('Host', {}, job.host || '—'),
        cell('Created', {}, timeElement(job.created_at)),
        cell('Started', {}, timeElement(job.started_at)),
        cell('Duration', { class: 'num' }, job.duration_ms !== undefined ? durationText(job.duration_ms)
          : job.state === 'running' ? elapsed(job.started_at) : '—'),
        cell('Exit code', { class: 'num' }, job.exit_code === undefined ? '—' : String(job.exit_code)))),
      'No job matches.');
  }

  /** Tick spacings a time axis may use, in milliseconds. */
  const TICK_STEPS = [1e3, 2e3, 5e3, 10e3, 15e3, 30e3, 60e3, 120e3, 300e3, 600e3, 900e3, 1800e3,
    3600e3, 7200e3, 10800e3, 21600e3, 43200e3, 86400e3, 172800e3, 604800e3];

  /** The geometry of a timeline, in pixels. */
  const TIMELINE = { margin: 10, laneHeight: 22, barHeight: 14, markRow: 18, axisHeight: 22 };

  /** The one time axis every chart of a jobs page shares: from the first job's creation to
   *  the last end (or now), padded, mapped onto `width` pixels. */
  function timeScale(jobs, containerWidth, now) {
    let from = Infinity;
    let to = -Infinity;
    for (const job of jobs) {
      from = Math.min(from, millisOf(job.created_at));
      to = Math.max(to, job.finished_at ? millisOf(job.finished_at) : now, millisOf(job.created_at));
    }
    const span = Math.max(to - from, 10e3);
    from -= span * 0.02;
    to = from + span * 1.04;
    const width = Math.max(320, Math.floor(containerWidth || 800));
    const { margin } = TIMELINE;
    return {
      from,
      to,
      width,
      now,
      x: (ms) => margin + ((ms - from) / (to - from)) * (width - 2 * margin),
      // About one tick per 110 px.
      step: TICK_STEPS.find((candidate) => (to - from) / candidate <= Math.max(2, width / 110))
        || TICK_STEPS[TICK_STEPS.length - 1],
      withDate: to - from > 86400e3 || new Date(from).toDateString() !== new Date(to).toDateString(),
    };
  }

  /** Puts each run (sorted by start) on the first lane whose last run ended before it began:
   *  runs that overlap land on different lanes. */
  function placeRuns(runs, endOf) {
    const laneEnds = [];
    const placed = runs.map((job) => {
      const start = millisOf(job.started_at);
      let lane = laneEnds.findIndex((end) => end <= start);
      if (lane < 0) lane = Math.min(laneEnds.length, TIMELINE_LANES_MAX - 1);
      laneEnds[lane] = Math.max(laneEnds[lane] === undefined ? -Infinity : laneEnds[lane], endOf(job));
      return { job, lane };
    });
    return { placed, lanes: Math.max(1, laneEnds.length) };
  }

  /** A run: a bar from start to end (a link to the job), after a dashed line while it waited. */
  function runBar(job, lane, scale, endOf) {
    const { laneHeight, barHeight } = TIMELINE;
    const top = lane * laneHeight + (laneHeight - barHeight) / 2;
    const start = millisOf(job.started_at);
    const end = endOf(job);
    const left = scale.x(start);
    const label = `${job.name}: ${job.state}, ${clockText(start, scale.withDate)} to `
      + `${job.finished_at ? clockText(end, scale.withDate) : 'now'} (${durationText(end - start)})`;
    const middle = top + barHeight / 2;
    const waited = job.waiting_at && millisOf(job.waiting_at) < start
      ? s('line', { class: 'wait', x1: scale.x(millisOf(job.waiting_at)), x2: left, y1: middle, y2: middle })
      : null;
    return [waited, s('a', { href: jobRoute(job.id), 'aria-label': label, 'data-focus': jobRoute(job.id) },
      s('rect', {
        class: `run state-${job.state}`, x: left, y: top, width: Math.max(2, scale.x(end) - left),
        height: barHeight, rx: 2, 'data-job': job.id, 'data-start': start, 'data-end': end, 'data-lane': lane,
      }, s('title', {}, label)))];
  }

  /** A request that never ran: a diamond at its time (a link to the job); one still waiting
   *  gets a dashed line up to now. */
  function requestMark(job, top, scale) {
    const at = millisOf(job.finished_at || job.created_at);
    const cx = scale.x(at);
    const cy = top + TIMELINE.markRow / 2;
    const label = `${job.name}: ${job.state}${job.reason ? ` (${job.reason})` : ''} at ${clockText(at, scale.withDate)}`;
    const waiting = !FINAL_STATES.has(job.state)
      ? s('line', { class: 'wait', x1: scale.x(millisOf(job.waiting_at || job.created_at)), x2: scale.x(scale.now), y1: cy, y2: cy })
      : null;
    return [waiting, s('a', { href: jobRoute(job.id), 'aria-label': label, 'data-focus': jobRoute(job.id) },
      s('path', {
        class: `mark state-${job.state}`, d: `M${cx},${cy - 6}L${cx + 6},${cy}L${cx},${cy + 6}L${cx - 6},${cy}Z`,
        'data-job': job.id,
      }, s('title', {}, label)))];
  }

  /** Grid lines down to `axisTop` and a time under each. */
  function axisTicks(scale, axisTop) {
    const ticks = [];
    for (let at = Math.ceil(scale.from / scale.step) * scale.step; at <= scale.to; at += scale.step) {
      const text = clockText(at, scale.withDate);
      ticks.push(s('g', {},
        s('line', { x1: scale.x(at), x2: scale.x(at), y1: 0, y2: axisTop }),
        s('text', { x: scale.x(at), y: axisTop + 15, 'text-anchor': 'middle' },
          // Whole minutes need no seconds.
          scale.step >= 60e3 ? text.slice(0, text.length - 3) : text)));
    }
    return s('g', { class: 'axis' }, ticks);
  }

  /** The chart of one job name. */
  function nameFigure(name, jobs, scale) {
    const endOf = (job) => (job.finished_at ? millisOf(job.finished_at) : scale.now);
    const runs = jobs.filter((job) => job.started_at)
      .sort((a, b) => millisOf(a.started_at) - millisOf(b.started_at));
    const others = jobs.filter((job) => !job.started_at);
    const { placed, lanes } = placeRuns(runs, endOf);
    const marksTop = lanes * TIMELINE.laneHeight + 4;
    const axisTop = marksTop + (others.length ? TIMELINE.markRow : 0) + 4;
    const height = axisTop + TIMELINE.axisHeight;
    const summary = ` · ${runs.length} run${runs.length === 1 ? '' : 's'}`
      + `${others.length ? `, ${others.length} not run` : ''}`
      + `${lanes > 1 ? `, up to ${lanes} at once` : ''}`;
    return h('figure', { class: 'timeline', 'data-name': name },
      h('h3', {}, link(`#/jobs?${new URLSearchParams({ name })}`, name), h('span', { class: 'muted' }, summary)),
      s('svg', {
        width: scale.width, height, viewBox: `0 0 ${scale.width} ${height}`, role: 'group',
        'aria-label': `Runs of ${name} over time`,
      },
      axisTicks(scale, axisTop),
      placed.map(({ job, lane }) => runBar(job, lane, scale, endOf)),
      others.map((job) => requestMark(job, marksTop, scale))));
  }

  /**
   * One SVG per job name, all on one time axis: each run is a bar from its start to its end
   * (or now), in the first lane where it overlaps no earlier run, so overlapping runs stack
   * and show at a glance. Waiting before a run is a dashed line; a request that never ran
   * (skipped, coalesced, cancelled while queued) is a diamond at its time.
   */
  function timelineFigures(jobs, containerWidth) {
    if (jobs.length === 0) return h('p', { class: 'empty' }, 'No jobs to draw.');
    const scale = timeScale(jobs, containerWidth, serverNow());
    const byName = new Map();
    for (const job of jobs) {
      if (!byName.has(job.name)) byName.set(job.name, []);
      byName.get(job.name).push(job);
    }
    return [...byName.keys()].sort().map((name) => nameFigure(name, byName.get(name), scale));
  }

  function jobView(id) {
    const view = { output: '', final: false, outputEpoch: null };
    const facts = h('div', { id: 'job-facts' });
    const stages = h('div', { id: 'job-stages' });
    const output = h('pre', { class: 'output', id: 'job-output', tabindex: '0', 'aria-label': 'Output' });
    const outputNote = h('p', { class: 'muted', id: 'job-output-note' });
    const { heading, error } = frame('Job',
      h('p', {}, link('#/jobs', '← All jobs')),
      facts,
      h('h2', {}, 'States'), stages,
      h('h2', {}, 'Output'), outputNote, output);
    view.error = error;
    const showOutput = () => {
      const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
      output.textContent = view.output;
      if (atBottom) output.scrollTop = output.scrollHeight;
    };
    view.refresh = async () => {
      const epoch = app.streamEpoch;
      const { status, body } = await request(`/v1/jobs/${encodeURIComponent(id)}`);
      if (app.view !== view) return;
      if (status === 404) {
        heading.textContent = 'No such job';
        replaceChildren(facts, h('p', { class: 'notice' },
          'No job has this id, or this key may not read it (finished jobs are kept for the retention).'));
        return;
      }
      if (status !== 200) {
        throw new ApiError(status, 'error', body && body.error ? body.error.message : `The server answered ${status}.`);
      }
      const { job } = body;
      heading.textContent = `Job ${job.name}`;
      document.title = `Job ${job.name} · baton`;
      view.job = job;
      // The tail the server keeps is the truth at load, after the stream lost track, and once
      // the job ended; in between, the page appends output events as they come.
      if (view.outputEpoch !== epoch || FINAL_STATES.has(job.state)) {
        view.output = body.output_tail || '';
        view.outputEpoch = epoch;
        showOutput();
      }
      view.final = FINAL_STATES.has(job.state);
      outputNote.textContent = view.final
        ? `The last part the server keeps (${job.output_bytes} bytes).`
        : 'Live: new output appears as the job writes it.';
      replaceChildren(facts, h('dl', { class: 'facts' },
        h('dt', {}, 'State'), h('dd', {}, h('span', { class: `state state-${job.state}`, id: 'job-state' }, job.state),
          job.reason ? ` (${job.reason})` : null),
        h('dt', {}, 'Exit code'), h('dd', { id: 'job-exit-code' }, job.exit_code === undefined ? '—' : String(job.exit_code)),
        h('dt', {}, 'Lock'), h('dd', {}, link(lockRoute(job.lock), job.lock)),
        h('dt', {}, 'Policy'), h('dd', {}, job.policy),
        h('dt', {}, 'Owner'), h('dd', {}, job.owner),
        h('dt', {}, 'Host'), h('dd', {}, job.host || '—'),
        h('dt', {}, 'Command'), h('dd', {}, h('code', {}, commandText(job.command))),
        job.token !== undefined ? [h('dt', {}, 'Token'), h('dd', {}, String(job.token))] : null,
        job.batch ? [h('dt', {}, 'Batch'), h('dd', {}, job.batch)] : null,
        job.coalesced_into ? [h('dt', {}, 'Folded into'), h('dd', {}, link(jobRoute(job.coalesced_into), job.coalesced_into))] : null,
        job.stop_requested ? [h('dt', {}, 'Asked to stop'), h('dd', {}, job.stop_requested)] : null,
        h('dt', {}, 'Id'), h('dd', { class: 'mono' }, job.id)));
      const started = millisOf(job.started_at);
      const finished = millisOf(job.finished_at);
      replaceChildren(stages, table(null, [['State'], ['At'], ['For', true]], [
        h('tr', {}, cell('State', {}, 'queued'), cell('At', {}, timeElement(job.created_at)),
          cell('For', { class: 'num' }, durationText(millisOf(job.waiting_at || job.started_at || job.finished_at) - millisOf(job.created_at)))),
        job.waiting_at ? h('tr', {}, cell('State', {}, 'waiting'), cell('At', {}, timeElement(job.waiting_at)),
          cell('For', { class: 'num' }, job.started_at || job.finished_at
            ? durationText(millisOf(job.started_at || job.finished_at) - millisOf(job.waiting_at)) : elapsed(job.waiting_at))) : null,
        job.started_at ? h('tr', {}, cell('State', {}, 'running'), cell('At', {}, timeElement(job.started_at)),
          cell('For', { class: 'num' }, job.finished_at ? durationText(finished - started) : elapsed(job.started_at))) : null,
        job.finished_at ? h('tr', {}, cell('State', {}, h('span', { class: `state state-${job.state}` }, job.state)),
          cell('At', {}, timeElement(job.finished_at)), cell('For', { class: 'num' }, '—')) : null,
      ].filter(Boolean), ''));
    };
    view.onEvent = (event) => {
      if (!event.job || event.job.id !== id) return false;
      if (event.type === 'output') {
        // Before the tail was read under the current subscription, a chunk may or may not be
        // in it: the read that resync() asked for brings it.
        if (view.final || view.outputEpoch !== app.streamEpoch || typeof event.text !== 'string') {
          return false;
        }
        view.output = (view.output + event.text).slice(-OUTPUT_CHARS_MAX);
        showOutput();
        return false;
      }
      return true;
    };
    return view;
  }

  /** A command line as a shell would take it back: arguments with blanks or quotes quoted. */
  function commandText(argv) {
    return argv.map((argument) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(argument) ? argument
      : `'${argument.replace(/'/g, "'\\''")}'`)).join(' ');
  }

  // ----- the server ---------------------------------------------------------------------------

  /** Parses Prometheus/OpenMetrics text into name → [{labels, value}]. */
  function parseMetrics(text) {
    const series = new Map();
    for (const line of text.split('\n')) {
      if (line === '' || line.startsWith('#')) continue;
      const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
      if (!match) continue;
      const labels = {};
      for (const label of (match[3] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        labels[label[1]] = label[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
      }
      if (!series.has(match[1])) series.set(match[1], []);
      series.get(match[1]).push({ labels, value: Number(match[4]) });
    }
    return series;
  }

  function metricSum(series, name, filter) {
    const samples = series.get(name);
    if (!samples) return undefined;
    return samples.filter((sample) => !filter || filter(sample.labels))
      .reduce((sum, sample) => sum + sample.value, 0);
  }

  /** The smallest bucket bound holding `quantile` of a histogram's observations. */
  function histogramQuantile(series, name, quantile) {
    const buckets = (series.get(`${name}_bucket`) || [])
      .map((sample) => ({ le: sample.labels.le === '+Inf' ? Infinity : Number(sample.labels.le), count: sample.value }))
      .sort((a, b) => a.le - b.le);
    const total = buckets.length ? buckets[buckets.length - 1].count : 0;
    if (total === 0) return undefined;
    const found = buckets.find((bucket) => bucket.count >= quantile * total);
    return found ? found.le : undefined;
  }

  function secondsText(seconds) {
    if (seconds === undefined || !Number.isFinite(seconds)) return seconds === Infinity ? 'over the largest bucket' : '—';
    return durationText(seconds * 1000);
  }

  function serverView() {
    const view = {};
    const cards = h('div', { id: 'server-cards' });
    const jobs = h('div', { id: 'server-jobs' });
    const { error } = frame('Server', cards, h('h2', {}, 'Jobs by state'), jobs,
      h('p', { class: 'muted' }, 'From /readyz and /metrics, read every 5 s. The API is described at ',
        h('a', { href: '/v1/openapi.json' }, '/v1/openapi.json'), '.'));
    view.error = error;
    view.refresh = async () => {
      const [ready, metricsText] = await Promise.all([request('/readyz'), api('/metrics', { text: true })]);
      if (app.view !== view) return;
      const health = ready.body || {};
      const series = parseMetrics(metricsText);
      const value = (name, filter) => {
        const total = metricSum(series, name, filter);
        return total === undefined ? '—' : String(total);
      };
      const commitSum = metricSum(series, 'baton_commit_duration_seconds_sum');
      const commitCount = metricSum(series, 'baton_commit_duration_seconds_count');
      const card = (label, text, id) => h('li', { 'data-metric': id },
        h('span', { class: 'value' }, text), h('span', { class: 'label' }, label));
      replaceChildren(cards, h('ul', { class: 'cards', 'aria-label': 'Server' },
        card('Status', health.status || `answered ${ready.status}`, 'status'),
        card('Store', health.store || '—', 'store'),
        card('Role', health.role || 'single server', 'role'),
        health.active && health.role === 'standby' ? card('Active server', health.active, 'active') : null,
        card('Version', health.version || '—', 'version'),
        card('Locks', value('baton_locks'), 'locks'),
        card('Leases', value('baton_leases'), 'leases'),
        card('Waiters', value('baton_waiters'), 'waiters'),
        card('Locks in lock-delay', value('baton_locks_delayed'), 'locks_delayed'),
        card('Connections', value('baton_connections'), 'connections'),
        card('Event subscribers', value('baton_event_subscribers'), 'event_subscribers'),
        card('Commit latency, mean', commitCount ? secondsText(commitSum / commitCount) : '—', 'commit_mean'),
        card('Commit latency, p99 at most', secondsText(histogramQuantile(series, 'baton_commit_duration_seconds', 0.99)), 'commit_p99'),
        card('Durable commits', value('baton_commits_total'), 'commits'),
        card('Requests served', value('baton_http_requests_total'), 'requests')));
      const byState = (series.get('baton_jobs') || []).filter((sample) => sample.labels.state);
      replaceChildren(jobs, table(null, [['State'], ['Jobs', true]],
        byState.map((sample) => h('tr', {},
          cell('State', {}, h('span', { class: `state state-${sample.labels.state}` }, sample.labels.state)),
          cell('Jobs', { class: 'num' }, String(sample.value)))), 'No job counts.'));
    };
    view.onEvent = () => false;
    view.poll = SERVER_POLL_MS;
    return view;
  }

  function notFoundView() {
    const view = { refresh: async () => {} };
    view.error = frame('No such page', h('p', {}, link('#/locks', 'Go to the locks'))).error;
    return view;
  }

  // ----- routing ------------------------------------------------------------------------------

  /** The view of the URL's fragment; `null` for a fragment that is no route (`#main`). */
  function route() {
    const hash = location.hash || '#/locks';
    if (!hash.startsWith('#/')) return null;
    const [path, queryText = ''] = hash.slice(2).split('?');
    const query = new URLSearchParams(queryText);
    const slash = path.indexOf('/');
    const section = slash < 0 ? path : path.slice(0, slash);
    let argument = null;
    if (slash >= 0) {
      try {
        argument = decodeURIComponent(path.slice(slash + 1));
      } catch {
        return { section, make: notFoundView };
      }
    }
    if (section === 'locks' && argument) return { section, make: () => lockView(argument) };
    if (section === 'locks') return { section, make: locksView };
    if (section === 'jobs' && argument) return { section, make: () => jobView(argument) };
    if (section === 'jobs') return { section, make: () => jobsView(query) };
    if (section === 'server') return { section, make: serverView };
    return { section, make: notFoundView };
  }

  function show(moveFocus) {
    const next = route();
    if (!next) return;
    for (const anchor of document.querySelectorAll('nav a[data-section]')) {
      if (anchor.getAttribute('data-section') === next.section) anchor.setAttribute('aria-current', 'page');
      else anchor.removeAttribute('aria-current');
    }
    app.view = next.make();
    if (moveFocus) $('main').focus();
    refresh();
  }

  /** Shows the page and follows the event stream (again, after a key was given or forgotten). */
  function start() {
    $('key-panel').hidden = true;
    $('main').hidden = false;
    showForgetButton();
    setLive('', 'Connecting…');
    show(false);
    followEvents();
  }

  function init() {
    $('key-form').addEventListener('submit', useKey);
    $('forget-key').addEventListener('click', forgetKey);
    $('skip-link').addEventListener('click', (event) => {
      event.preventDefault();
      $('main').focus();
    });
    window.addEventListener('hashchange', () => show(true));
    let resizeTimer = null;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { if (app.view && app.view.onResize) app.view.onResize(); }, 200);
    });
    setInterval(tick, 1000);
    // Without a live stream, and on the server page (whose counters have no events), read
    // the state now and then.
    let lastPoll = Date.now();
    setInterval(() => {
      const view = app.view;
      if (!view || !$('key-panel').hidden) return;
      const period = view.poll || (app.live ? Infinity : POLL_MS);
      if (Date.now() - lastPoll >= period) {
        lastPoll = Date.now();
        scheduleRefresh();
      }
    }, 1000);
    start();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
