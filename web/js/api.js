// Talking to sdserve: fetch with the API key, typed errors, and Server-Sent Events read with
// fetch() (EventSource cannot send an Authorization header).
import { settings } from './store.js';

/** An error answer ({error, detail}) or a network failure, with what the UI needs to explain it. */
export class ApiError extends Error {
  constructor(status, kind, detail, { retryAfter = null, path = '' } = {}) {
    super(detail || kind || `HTTP ${status}`);
    this.status = status;           // 0: the request never got an answer
    this.kind = kind || '';         // the server's `error` field
    this.detail = detail || '';
    this.retryAfter = retryAfter;   // seconds, from Retry-After
    this.path = path;
    this.field = status === 400 || status === 404 ? fieldOf(this.detail) : null;
  }
}

const listeners = new Set();
/** Called with every ApiError (the app opens the key dialog on 401). */
export function onApiError(fn) { listeners.add(fn); }

export function authHeaders() {
  const key = settings.get('apiKey', '');
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorFrom(res, path) {
  let kind = '', detail = '';
  try {
    const text = await res.text();
    try {
      const body = JSON.parse(text);
      kind = body.error || body.status || '';
      detail = body.detail || '';
    } catch { detail = text.slice(0, 300); }
  } catch { /* body unreadable */ }
  const ra = res.headers.get('Retry-After');
  return new ApiError(res.status, kind, detail, { retryAfter: ra ? Number(ra) : null, path });
}

function raise(err) {
  for (const fn of listeners) {
    try { fn(err); } catch (e) { console.warn(e); }
  }
  throw err;
}

/**
 * fetch() against the same origin with the key; throws ApiError for non-2xx answers. `quiet`: the
 * error is only thrown, not announced to onApiError listeners (background calls such as the token
 * counter must not reopen the key dialog on every keystroke).
 */
export async function request(path, { method = 'GET', body, signal, headers = {}, auth = true, quiet = false } = {}) {
  const fail = (err) => { if (quiet) throw err; return raise(err); };
  const h = { ...(auth ? authHeaders() : {}), ...headers };
  let payload;
  if (body !== undefined) {
    h['Content-Type'] = 'application/json';
    payload = typeof body === 'string' ? body : JSON.stringify(body);
  } else if (method === 'POST') {
    payload = ''; // the server wants a Content-Length on every POST
  }
  let res;
  try {
    res = await fetch(path, { method, headers: h, body: payload, signal, cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    return fail(new ApiError(0, 'network', 'cannot reach the server', { path }));
  }
  if (!res.ok) return fail(await errorFrom(res, path));
  return res;
}

export async function getJSON(path, opts) {
  const res = await request(path, opts);
  return res.json();
}

export async function postJSON(path, body, opts = {}) {
  const res = await request(path, { ...opts, method: 'POST', body });
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

export async function getBlob(path, opts) {
  const res = await request(path, opts);
  return res.blob();
}

/**
 * Reads an SSE stream (`event:`/`data:` lines, blank-line separated, `:` comments) and calls
 * onEvent(type, data) with data parsed as JSON. Resolves when the stream ends.
 */
export async function streamEvents(path, onEvent, { signal } = {}) {
  const res = await request(path, { signal, headers: { Accept: 'text/event-stream' } });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let type = 'message';
  let data = [];
  const dispatch = () => {
    if (data.length) {
      let parsed;
      try { parsed = JSON.parse(data.join('\n')); } catch { parsed = data.join('\n'); }
      onEvent(type, parsed);
    }
    type = 'message';
    data = [];
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let nl;
    while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') { dispatch(); continue; }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const name = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? '' : line.slice(colon + 1);
      if (val.startsWith(' ')) val = val.slice(1);
      if (name === 'event') type = val;
      else if (name === 'data') data.push(val);
    }
  }
  dispatch();
}

/** The request field a 400/404 detail names ("field 'steps' must be…", "width must be…"). */
export function fieldOf(detail) {
  if (!detail) return null;
  if (/^unknown sampler/i.test(detail)) return 'sampler';
  if (/^unknown (schedule|scheduler)/i.test(detail)) return 'scheduler';
  if (/^unknown LoRA|LoRA/.test(detail)) return 'prompt';
  if (/^unknown upscaler/i.test(detail)) return 'upscaler';
  let m = detail.match(/field '([\w.[\]]+)'/);
  if (m) return m[1].replace(/\[.*$/, '').split('.')[0];
  m = detail.match(/^([a-z_]+)(?::| must| is| should| has)/);
  if (m) return m[1];
  m = detail.match(/^'([a-z_]+)'/);
  return m ? m[1] : null;
}

/** Human words for an error; `labels` maps request fields to form labels. */
export function describeError(err, labels = {}) {
  if (!(err instanceof ApiError)) return `Something went wrong: ${err && err.message ? err.message : err}`;
  const d = err.detail;
  switch (err.status) {
    case 0: return 'Cannot reach the server. Is sdserve still running?';
    case 401: return settings.get('apiKey', '')
      ? 'The API key was refused (401). Enter a valid key.'
      : 'This server requires an API key (401). Enter it to continue.';
    case 413: return `The request is too large for the server (413): ${d}`;
    case 429: {
      const s = err.retryAfter;
      return `The queue is full (429): retry in ${s && s > 0 ? s : 'a few'} s.`;
    }
    case 503:
      if (/load/i.test(d) && !/fail/i.test(d)) return 'The model is loading (503): try again in a moment.';
      return `The server is unavailable (503): ${d || err.kind}`;
    case 504: return `The job timed out on the server (504): ${d}`;
    default: break;
  }
  if (err.status === 400 || err.status === 404) {
    const label = err.field && (labels[err.field] || err.field);
    const what = err.status === 400 ? 'Invalid request' : 'Not found';
    return label ? `${what} — ${label}: ${d}` : `${what}: ${d || err.kind}`;
  }
  if (err.status === 409 && err.kind === 'finished') return `The job has already ended: ${d}`;
  if (err.status === 422) return `The server cannot do this (422${err.kind ? ` ${err.kind}` : ''}): ${d}`;
  return `Server error ${err.status}${err.kind ? ` (${err.kind})` : ''}: ${d}`;
}
