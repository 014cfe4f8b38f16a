// sdserve studio: wires the modules together. No framework, no build step; everything is served
// by sdserve itself (CSP: same origin only).
import { getJSON, postJSON, onApiError, describeError, ApiError } from './js/api.js';
import { settings } from './js/store.js';
import { $, $$, notify, clearMessages } from './js/ui.js';
import { ImageInput, makeDropTarget, imageFromTransfer } from './js/image-input.js';
import { MaskEditor } from './js/mask.js';
import { Form, FIELD_CONTROLS, ValidationError, fieldLabels } from './js/form.js';
import { TokenCounter } from './js/prompt.js';
import { LoraPanel } from './js/lora.js';
import { Gallery } from './js/gallery.js';
import { JobRunner } from './js/jobs.js';
import { PngInfo, readPngInfo } from './js/pnginfo.js';
import { parseInfotext } from './js/infotext.js';

const MODES = ['txt2img', 'img2img', 'inpaint', 'upscale', 'pnginfo'];
const GENERATE_LABEL = { txt2img: 'Generate', img2img: 'Generate', inpaint: 'Generate', upscale: 'Upscale', pnginfo: 'Generate' };

const inputs = {
  img2img: new ImageInput($('#img2img-input'), 'img2img', 'Input image'),
  inpaint: new ImageInput($('#inpaint-input'), 'inpaint', 'Image to inpaint', { preview: false }),
  upscale: new ImageInput($('#upscale-input'), 'upscale', 'Image to upscale'),
};
const mask = new MaskEditor();
const form = new Form({ inputs, mask });
const runner = new JobRunner();
const counters = [new TokenCounter($('#prompt'), $('#prompt-tokens')), new TokenCounter($('#negative-prompt'), $('#negative-tokens'))];
const loras = new LoraPanel($('#prompt'));
let mode = 'txt2img';
let latest = null; // the newest gallery item, shown large after a job

inputs.inpaint.onChange((input) => {
  form.resetOutpaint();
  mask.setImage(input.image);
});

// ------------------------------------------------------------------------------------ tabs
function setMode(next, { focus = false } = {}) {
  if (!MODES.includes(next)) next = 'txt2img';
  mode = next;
  for (const tab of $$('[role="tab"]')) {
    const on = tab.dataset.mode === next;
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    if (on && focus) tab.focus();
  }
  $('#workspace').setAttribute('aria-labelledby', `tab-${next}`);
  for (const node of $$('[data-modes]')) node.hidden = !node.dataset.modes.split(' ').includes(next);
  const gen = $('#generate');
  gen.textContent = GENERATE_LABEL[next];
  gen.dataset.off = String(next === 'pnginfo');
  gen.disabled = runner.busy || next === 'pnginfo';
  document.body.dataset.mode = next;
  form.setMode(next);
  if (next === 'inpaint') mask.render();
  settings.set('mode', next);
}

for (const tab of $$('[role="tab"]')) {
  tab.addEventListener('click', () => setMode(tab.dataset.mode));
  tab.addEventListener('keydown', (e) => {
    const i = MODES.indexOf(tab.dataset.mode);
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: MODES.length - 1 }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    setMode(MODES[(to + MODES.length) % MODES.length], { focus: true });
  });
}

// ------------------------------------------------------------------------------------ errors
function markInvalid(controlId) {
  const c = controlId && document.getElementById(controlId);
  if (!c) return;
  c.setAttribute('aria-invalid', 'true');
  const details = c.closest('details'); // e.g. the hires fix: show the field the error names
  if (details) details.open = true;
  if (!c.closest('[hidden]')) c.focus({ preventScroll: false });
}

function showError(e, prefix = '') {
  if (e instanceof ValidationError) {
    notify(e.message, 'error', { key: 'job' });
    markInvalid(e.controlId);
    return;
  }
  notify(prefix + describeError(e, fieldLabels()), 'error', { key: 'job' });
  if (e instanceof ApiError && e.field) markInvalid(FIELD_CONTROLS[e.field]);
  if (e instanceof ApiError && e.status === 503) checkHealth();
}

// ------------------------------------------------------------------------------------ API key
const keyDialog = $('#key-dialog');
function openKeyDialog(reason) {
  $('#key-reason').textContent = reason;
  if (keyDialog.open) return; // another refused call: keep what is being typed
  $('#api-key').value = settings.get('apiKey', '');
  keyDialog.showModal();
  $('#api-key').focus();
}
$('#key-button').addEventListener('click', () => openKeyDialog(
  settings.get('apiKey', '') ? 'The key in use is kept in this browser and sent as an Authorization header.'
    : 'If this server requires an API key, enter it here. It is kept in this browser and sent as an Authorization header.'));
$('#key-cancel').addEventListener('click', () => keyDialog.close());
$('#key-forget').addEventListener('click', () => {
  settings.set('apiKey', null);
  $('#api-key').value = '';
  keyDialog.close();
  notify('The API key was removed from this browser.', 'info');
  syncKeyButton();
});
$('#key-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const key = $('#api-key').value.trim();
  // A header carries printable ASCII only; fetch() would refuse anything else as a network error.
  if (!/^[\x21-\x7e]*$/.test(key)) {
    $('#key-reason').textContent = 'An API key is printable ASCII without spaces: check for a pasted character that is not part of it.';
    $('#api-key').setAttribute('aria-invalid', 'true');
    return;
  }
  $('#api-key').removeAttribute('aria-invalid');
  settings.set('apiKey', key || null);
  keyDialog.close();
  syncKeyButton();
  clearMessages('auth');
  loadLists();
});
function syncKeyButton() {
  $('#key-button').classList.toggle('has-key', !!settings.get('apiKey', ''));
  $('#key-button').textContent = settings.get('apiKey', '') ? 'API key ✓' : 'API key';
}

onApiError((e) => {
  if (e.status !== 401) return;
  const msg = describeError(e);
  notify(msg, 'error', { key: 'auth' });
  openKeyDialog(msg);
});

// ------------------------------------------------------------------------------------ server state
const pill = $('#server-status');
function setStatus(text, kind) {
  pill.textContent = text;
  pill.className = `pill ${kind}`;
}

let healthTimer = 0;
function pollHealth(ms) {
  clearTimeout(healthTimer); // one polling loop, however many calls overlap (each 503 calls this)
  healthTimer = setTimeout(checkHealth, ms);
}
async function checkHealth() {
  clearTimeout(healthTimer);
  let res;
  try {
    res = await fetch('/health', { cache: 'no-store' });
  } catch {
    setStatus('Offline', 'bad');
    notify('Cannot reach the server. Retrying…', 'error', { key: 'health' });
    pollHealth(3000);
    return false;
  }
  if (res.ok) {
    clearTimeout(healthTimer);
    setStatus('Ready', 'ok');
    clearMessages('health');
    // The server came back after the lists failed to load (it was unreachable at first): load them now.
    if (listsState === 'failed') loadLists();
    return true;
  }
  let body = {};
  try { body = await res.json(); } catch { /* not JSON */ }
  const detail = body.detail || '';
  if (body.status === 'draining') {
    setStatus('Shutting down', 'bad');
    notify(`The server is shutting down (503): ${detail}`, 'error', { key: 'health' });
  } else if (/fail/i.test(detail)) {
    setStatus('Model failed', 'bad');
    notify(`The model failed to load (503): ${detail}`, 'error', { key: 'health' });
  } else {
    setStatus('Loading model…', 'warn');
    notify(`The model is loading (503)${detail && !/is loading/.test(detail) ? `: ${detail}` : ''}. You can generate once it is ready.`, 'info', { key: 'health', timeout: 0 });
  }
  pollHealth(2000);
  return false;
}

async function loadModels() {
  const sel = $('#model');
  try {
    const r = await getJSON('/v1/models');
    const names = r.models.map((m) => m.name);
    sel.replaceChildren(...r.models.map((m) => {
      const o = document.createElement('option');
      o.value = m.name;
      o.textContent = m.title && m.title !== m.name ? `${m.name} — ${m.title}` : m.name;
      return o;
    }));
    if (r.current && names.includes(r.current)) sel.value = r.current;
  } catch { /* reported by the error listener or lists below */ }
}

let listsState = 'new'; // 'loading', 'loaded', or 'failed' (the server could not be reached)
async function loadLists() {
  if (listsState === 'loading') return;
  listsState = 'loading';
  let unreachable = false;
  const safe = (p) => getJSON(p).catch((e) => {
    if (e.status === 0) unreachable = true;
    else if (e.status !== 401) console.warn(p, e.message);
    return [];
  });
  const [samplers, schedulers, upscalers] = await Promise.all([
    safe('/sdapi/v1/samplers'), safe('/sdapi/v1/schedulers'), safe('/sdapi/v1/upscalers')]);
  listsState = unreachable ? 'failed' : 'loaded';
  form.setLists({
    samplers: samplers.map((s) => s.name),
    schedulers: schedulers.map((s) => s.label || s.name),
    upscalers: upscalers.map((u) => u.name),
  });
  await Promise.all([loadModels(), loras.load()]);
  for (const c of counters) c.update();
}

$('#model').addEventListener('change', async (e) => {
  const name = e.target.value;
  setStatus('Loading model…', 'warn');
  try {
    await postJSON('/v1/models/load', { name });
    setStatus('Ready', 'ok');
    notify(`Model ${name} loaded.`, 'ok');
  } catch (err) {
    setStatus('Ready', 'ok');
    notify(`Could not switch to ${name}: ${describeError(err)}`, 'error');
    loadModels();
  }
});

// ------------------------------------------------------------------------------------ gallery
const gallery = new Gallery({
  send(to, item) {
    setMode(to);
    inputs[to].set(item.blob);
    notify(`Image sent to ${to}.`, 'ok');
  },
  load(item) {
    const notes = form.applyParams(parseInfotext(item.infotext));
    if (mode === 'upscale' || mode === 'pnginfo') setMode('txt2img');
    notify(`Parameters loaded${notes.length ? ` (${notes.join('; ')})` : ''}.`, 'ok');
  },
  seed(item) {
    form.reuseSeed(item.seed);
    notify(`Seed ${item.seed} will be reused.`, 'ok');
  },
  removed(ids) {
    if (latest && ids.includes(latest.id)) { latest = null; runner.hidePreview(); }
  },
});

function applyParams(params, to, blob) {
  const notes = form.applyParams(params);
  setMode(to);
  if (blob && inputs[to]) inputs[to].set(blob);
  notify(`Parameters loaded into ${to}${notes.length ? ` (${notes.join('; ')})` : ''}.`, 'ok');
}
const pngInfo = new PngInfo({ apply: applyParams });

// A PNG dropped on the prompt loads its parameters, as in A1111.
makeDropTarget($('#prompt'), async (file) => {
  try {
    const r = await readPngInfo(file);
    if (!r.params) { notify('That PNG carries no generation parameters.', 'info'); return; }
    applyParams(r.params, mode === 'txt2img' || mode === 'img2img' || mode === 'inpaint' ? mode : 'txt2img');
  } catch (e) {
    notify(e instanceof ApiError ? `PNG Info: ${describeError(e)}` : e.message, 'error');
  }
});

// A file dropped anywhere else would make the browser open it in place of the page (and a file the
// prompt does not take, e.g. a .txt, falls through its drop handler): refuse such drops.
const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes('Files');
document.addEventListener('dragover', (e) => {
  if (e.defaultPrevented || !hasFiles(e)) return;
  e.preventDefault();
  e.dataTransfer.dropEffect = 'none';
});
document.addEventListener('drop', (e) => { if (hasFiles(e)) e.preventDefault(); });

// Pasting an image puts it into the current tab's image slot; text pasted into a text field stays
// there (a clipboard copied from a web page can carry an image beside its text).
document.addEventListener('paste', (e) => {
  const t = e.target;
  const inText = t instanceof HTMLElement && (t.matches('input, textarea') || t.isContentEditable);
  if (inText && e.clipboardData && Array.from(e.clipboardData.types).includes('text/plain')) return;
  const file = imageFromTransfer(e.clipboardData);
  if (!file) return;
  if (inputs[mode]) { e.preventDefault(); inputs[mode].set(file); } else if (mode === 'pnginfo') { e.preventDefault(); pngInfo.read(file); }
});

// ------------------------------------------------------------------------------------ generate
let starting = false; // from Generate until the job is submitted: reading the input image takes a while
async function generate() {
  if (runner.busy || starting || mode === 'pnginfo') return;
  starting = true;
  for (const c of $$('[aria-invalid="true"]')) c.removeAttribute('aria-invalid');
  clearMessages('job');
  const jobMode = mode;
  let body;
  try {
    body = await form.build(jobMode);
  } catch (e) { showError(e); return; } finally { starting = false; }
  try {
    const { status, items } = await runner.run(body, jobMode);
    if (items.length) {
      await gallery.add(items);
      latest = items[0];
      runner.showResult(gallery.url(latest), `Latest result: ${jobMode === 'upscale' ? 'upscaled image' : latest.prompt}`);
      if (jobMode !== 'upscale' && status.seeds && status.seeds.length) form.setLastSeed(status.seeds[0]);
    }
  } catch (e) {
    showError(e);
  }
}

$('#preview-open').addEventListener('click', () => { if (latest) gallery.open(latest); });
$('#generate').addEventListener('click', generate);
document.addEventListener('keydown', (e) => {
  if (e.isComposing) return; // an input method is composing text: its Enter/Escape are its own
  const dialogOpen = !!document.querySelector('dialog[open]');
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
    if (dialogOpen) return;
    e.preventDefault();
    generate();
  } else if (e.key === 'Escape' && runner.busy && !dialogOpen) {
    e.preventDefault();
    runner.cancel();
  }
});

// ------------------------------------------------------------------------------------ start
setMode(settings.get('mode', 'txt2img'));
syncKeyButton();
gallery.init();
(async () => {
  await checkHealth();
  await loadLists();
})();
