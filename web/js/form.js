// The generation form: defaults, values remembered across reloads, size presets and aspect lock,
// seed modes, server-filled lists, building the request body, and loading parameters back in.
import { settings } from './store.js';
import { $, $$, el, round8, clamp, notify, blobToDataURL } from './ui.js';
import { splitSampler } from './infotext.js';

const MAX_SIDE = 2048;
const DEFAULT_SELECTS = { sampler: 'Euler a', scheduler: 'Automatic', 'hr-upscaler': 'Latent', upscaler: 'Lanczos' };
const HIRES_LATENT = ['Latent', 'Latent (nearest)', 'Latent (nearest-exact)'];

/** Request field → form control id, for naming and marking the field a 400 answer points at. */
export const FIELD_CONTROLS = {
  prompt: 'prompt', negative_prompt: 'negative-prompt', sampler: 'sampler', sampler_name: 'sampler',
  scheduler: 'scheduler', steps: 'steps', cfg_scale: 'cfg', width: 'width', height: 'height', seed: 'seed',
  batch_size: 'batch-size', clip_skip: 'clip-skip', denoising_strength: 'strength', resize_mode: 'resize-mode',
  mask_blur: 'mask-blur', inpainting_fill: 'inpainting-fill', inpaint_full_res_padding: 'only-masked-padding',
  hr_scale: 'hr-scale', hr_upscaler: 'hr-upscaler', hr_second_pass_steps: 'hr-steps', upscaler: 'upscaler',
  scale: 'upscale-factor', upscaling_resize: 'upscale-factor', outpaint: 'outpaint-left', model: 'model',
  init_image: 'img2img-file', image: 'upscale-file', mask: 'mask-canvas',
};

export class ValidationError extends Error {
  constructor(message, controlId) { super(message); this.controlId = controlId; }
}

const num = (id) => Number($(`#${id}`).value);
const val = (id) => $(`#${id}`).value;
const checked = (id) => $(`#${id}`).checked;

export function labelOf(id) {
  const label = document.querySelector(`label[for="${id}"]`);
  return label ? label.textContent.trim() : id;
}

export function fieldLabels() {
  const out = {};
  for (const [field, id] of Object.entries(FIELD_CONTROLS)) out[field] = labelOf(id);
  out.mask = 'Mask';
  out.init_image = 'Input image';
  out.image = 'Image to upscale';
  return out;
}

export class Form {
  constructor({ inputs, mask }) {
    this.inputs = inputs; // {img2img, inpaint, upscale}: ImageInput
    this.mask = mask;
    this.mode = 'txt2img';
    const saved = settings.get('form', {});
    this.saved = saved && typeof saved === 'object' ? saved : {}; // a damaged entry must not stop the page
    this.ratio = null;
    this.restore();
    this.bind();
    this.syncPreset();
    this.syncSeed();
    this.syncOutputs();
  }

  // ----------------------------------------------------------------- persistence
  controls() { return $$('[data-persist]'); }

  restore() {
    for (const c of this.controls()) {
      if (!(c.id in this.saved)) continue;
      const v = this.saved[c.id];
      if (c.type === 'checkbox') c.checked = !!v;
      else if (c.tagName !== 'SELECT' || [...c.options].some((o) => o.value === v)) c.value = v;
    }
  }

  save() {
    const out = {};
    for (const c of this.controls()) {
      if (c.tagName === 'SELECT' && !c.options.length) {
        if (c.id in this.saved) out[c.id] = this.saved[c.id]; // its list has not loaded yet
        continue;
      }
      out[c.id] = c.type === 'checkbox' ? c.checked : c.value;
    }
    this.saved = out;
    settings.set('form', out);
  }

  /** Fills a select from the server's list, keeping the remembered or default choice. */
  fillSelect(id, names, fallback = DEFAULT_SELECTS[id]) {
    const s = $(`#${id}`);
    const want = this.saved[id] ?? s.value ?? fallback;
    s.replaceChildren(...names.map((n) => el('option', { value: n }, n)));
    s.value = names.includes(want) ? want : (names.includes(fallback) ? fallback : names[0] || '');
  }

  setLists({ samplers = [], schedulers = [], upscalers = [] }) {
    if (samplers.length) this.fillSelect('sampler', samplers);
    if (schedulers.length) this.fillSelect('scheduler', schedulers);
    const ups = upscalers.filter((u) => u !== 'None');
    this.fillSelect('upscaler', ups.length ? ups : ['Lanczos', 'Nearest']);
    this.fillSelect('hr-upscaler', [...HIRES_LATENT, ...(ups.length ? ups : ['Lanczos', 'Nearest'])]);
  }

  // ----------------------------------------------------------------- behaviour
  bind() {
    const form = $('#form');
    const onEdit = (e) => {
      const t = e.target;
      if (t.getAttribute('aria-invalid') === 'true') t.removeAttribute('aria-invalid');
      if (t.matches('[data-persist]')) this.save();
    };
    form.addEventListener('input', onEdit);
    form.addEventListener('change', onEdit);

    $('#width').addEventListener('input', () => this.sizeEdited('width'));
    $('#height').addEventListener('input', () => this.sizeEdited('height'));
    $('#size-preset').addEventListener('change', (e) => {
      if (!e.target.value) return;
      const [w, h] = e.target.value.split('x').map(Number);
      this.setSize(w, h);
      if (checked('aspect-lock')) this.ratio = w / h;
    });
    $('#aspect-lock').addEventListener('change', (e) => { this.ratio = e.target.checked ? num('width') / num('height') : null; });
    if (checked('aspect-lock')) this.ratio = num('width') / num('height');
    $('#swap-size').addEventListener('click', () => {
      this.setSize(num('height'), num('width'));
      if (this.ratio) this.ratio = 1 / this.ratio;
    });

    $('#seed-mode').addEventListener('change', () => this.syncSeed());
    $('#seed').addEventListener('input', () => {
      const v = $('#seed').value.trim();
      const mode = v === '' || Number(v) < 0 ? 'random' : 'fixed';
      if ($('#seed-mode').value !== mode) { $('#seed-mode').value = mode; this.save(); }
    });
    $('#seed-random').addEventListener('click', () => { $('#seed-mode').value = 'random'; this.syncSeed(); this.save(); });
    $('#seed-reuse').addEventListener('click', () => this.reuseSeed(settings.get('lastSeed', null)));

    for (const [id, out] of [['strength', 'strength-value']]) {
      $(`#${id}`).addEventListener('input', () => { $(`#${out}`).value = $(`#${id}`).value; });
    }
    for (const side of ['left', 'right', 'top', 'bottom']) {
      $(`#outpaint-${side}`).addEventListener('input', () => this.outpaintChanged());
    }
    $('#match-size').addEventListener('change', () => this.syncMatchSize());
    $('#upscale-factor').addEventListener('input', () => this.syncUpscaleNote());
    $('#upscaler').addEventListener('change', () => this.syncUpscaleNote());
    for (const input of Object.values(this.inputs)) input.onChange(() => { this.syncMatchSize(); this.syncUpscaleNote(); });
  }

  syncOutputs() {
    $('#strength-value').value = val('strength');
    // The mask editor showed the default before the remembered size was restored.
    $('#brush-size').dispatchEvent(new Event('input'));
    this.syncMatchSize();
    this.syncUpscaleNote();
  }

  setSize(w, h) {
    $('#width').value = clamp(round8(w), 64, MAX_SIDE);
    $('#height').value = clamp(round8(h), 64, MAX_SIDE);
    this.syncPreset();
    this.save();
  }

  sizeEdited(which) {
    if (this.ratio) {
      const w = num('width'), h = num('height');
      if (which === 'width' && w > 0) $('#height').value = clamp(round8(w / this.ratio), 64, MAX_SIDE);
      if (which === 'height' && h > 0) $('#width').value = clamp(round8(h * this.ratio), 64, MAX_SIDE);
    }
    this.syncPreset();
  }

  syncPreset() {
    const key = `${val('width')}x${val('height')}`;
    const sel = $('#size-preset');
    sel.value = [...sel.options].some((o) => o.value === key) ? key : '';
  }

  syncSeed() {
    const mode = val('seed-mode');
    const seed = $('#seed');
    if (mode === 'random') seed.value = -1;
    if (mode === 'last') {
      const last = settings.get('lastSeed', null);
      seed.value = last ?? -1;
    }
    seed.readOnly = mode === 'last';
  }

  /** After a job: remember its seed (and show it in "reuse last" mode). */
  setLastSeed(seed) {
    settings.set('lastSeed', seed);
    if (val('seed-mode') === 'last') $('#seed').value = seed;
  }

  reuseSeed(seed) {
    if (seed === null || seed === undefined) { notify('No seed yet: generate an image first.', 'info'); return; }
    $('#seed-mode').value = 'fixed';
    $('#seed').value = seed;
    this.syncSeed();
    this.save();
  }

  outpaint() {
    const o = {};
    for (const side of ['left', 'right', 'top', 'bottom']) o[side] = clamp(Math.round((num(`outpaint-${side}`) || 0) / 8) * 8, 0, 1024);
    return o;
  }

  outpaintChanged() {
    this.mask.setPadding(this.outpaint());
    this.syncMatchSize();
  }

  resetOutpaint() {
    for (const side of ['left', 'right', 'top', 'bottom']) $(`#outpaint-${side}`).value = 0;
    this.outpaintChanged();
  }

  /** The output size from the input image (+ outpaint), scaled into MAX_SIDE, multiples of 8. */
  imageSize(mode = this.mode) {
    const input = this.inputs[mode];
    if (!input || !input.image) return null;
    let w = input.width, h = input.height;
    if (mode === 'inpaint') {
      const o = this.outpaint();
      w += o.left + o.right;
      h += o.top + o.bottom;
    }
    const s = Math.min(1, MAX_SIDE / Math.max(w, h));
    return { width: clamp(round8(w * s), 64, MAX_SIDE), height: clamp(round8(h * s), 64, MAX_SIDE) };
  }

  syncMatchSize() {
    const imageMode = this.mode === 'img2img' || this.mode === 'inpaint';
    const size = imageMode && checked('match-size') ? this.imageSize() : null;
    $('#size-fields').disabled = !!size;
    $('#match-size-note').textContent = size
      ? `Output ${size.width}×${size.height}, from the image.`
      : (imageMode && checked('match-size') ? 'Add an image; the output takes its size.' : 'Output size: the Size settings below.');
  }

  syncUpscaleNote() {
    const input = this.inputs.upscale;
    const f = num('upscale-factor');
    $('#upscale-note').textContent = input.image && f > 0
      ? `${input.width}×${input.height} → ${Math.floor(input.width * f)}×${Math.floor(input.height * f)} with ${val('upscaler')}`
      : 'Add an image, or send one from the gallery.';
  }

  setMode(mode) {
    this.mode = mode;
    this.syncMatchSize();
  }

  // ----------------------------------------------------------------- the request
  number(id, { integer = false } = {}) {
    const raw = $(`#${id}`).value.trim();
    const v = Number(raw);
    if (raw === '' || !Number.isFinite(v)) throw new ValidationError(`${labelOf(id)} must be a number.`, id);
    return integer ? Math.trunc(v) : v;
  }

  seed() {
    const mode = val('seed-mode');
    if (mode === 'random') return -1;
    if (mode === 'last') return settings.get('lastSeed', -1) ?? -1;
    return this.number('seed', { integer: true });
  }

  /** The POST /v1/jobs body for the current mode. Throws ValidationError for missing input. */
  async build(mode = this.mode) {
    const model = $('#model').value;
    if (mode === 'upscale') {
      const input = this.inputs.upscale;
      if (!input.blob) throw new ValidationError('Add an image to upscale first.', 'upscale-file');
      return {
        type: 'upscale', image: await blobToDataURL(input.blob), upscaler: val('upscaler'),
        scale: this.number('upscale-factor'),
      };
    }
    const prompt = val('prompt');
    if (!prompt.trim()) throw new ValidationError('Write a prompt first.', 'prompt');
    const steps = this.number('steps', { integer: true });
    const body = {
      prompt, negative_prompt: val('negative-prompt'),
      sampler: val('sampler') || undefined, scheduler: val('scheduler') || undefined,
      steps, cfg_scale: this.number('cfg'),
      width: this.number('width', { integer: true }), height: this.number('height', { integer: true }),
      seed: this.seed(), batch_size: this.number('batch-size', { integer: true }),
      clip_skip: this.number('clip-skip', { integer: true }),
    };
    if (model) body.model = model;
    if (checked('live-preview')) body.preview_every = Math.max(1, Math.round(steps / 15));
    if (mode === 'txt2img' && checked('enable-hr')) {
      Object.assign(body, {
        enable_hr: true, hr_scale: this.number('hr-scale'), hr_upscaler: val('hr-upscaler'),
        hr_second_pass_steps: this.number('hr-steps', { integer: true }), denoising_strength: this.number('hr-denoise'),
      });
    }
    if (mode === 'img2img' || mode === 'inpaint') {
      const input = this.inputs[mode];
      if (!input.blob) throw new ValidationError('Add an input image first (drop, paste, choose a file, or send one from the gallery).', `${mode}-file`);
      body.init_image = await blobToDataURL(input.blob);
      body.denoising_strength = this.number('strength');
      const size = checked('match-size') ? this.imageSize(mode) : null;
      if (size) Object.assign(body, size);
    }
    if (mode === 'img2img') body.resize_mode = Number(val('resize-mode'));
    if (mode === 'inpaint') {
      Object.assign(body, {
        mask_blur: this.number('mask-blur', { integer: true }), inpainting_fill: Number(val('inpainting-fill')),
        inpaint_full_res: checked('only-masked'), inpaint_full_res_padding: this.number('only-masked-padding', { integer: true }),
        inpainting_mask_invert: checked('mask-invert'),
      });
      const o = this.outpaint();
      if (Object.values(o).some((v) => v > 0)) {
        body.outpaint = o;
      } else {
        const mask = this.mask.toDataURL();
        if (!mask) throw new ValidationError('Paint a mask over the area to repaint (or extend the canvas to outpaint).', 'mask-canvas');
        body.mask = mask;
      }
    }
    return body;
  }

  // ----------------------------------------------------------------- loading parameters
  setSelect(id, value) {
    const s = $(`#${id}`);
    if ([...s.options].some((o) => o.value === value)) { s.value = value; return true; }
    const ci = [...s.options].find((o) => o.value.toLowerCase() === String(value).toLowerCase());
    if (ci) { s.value = ci.value; return true; }
    return false;
  }

  /** Loads A1111 parameters ({"Prompt", "Steps", "Size-1", ...}) into the form; returns notes. */
  applyParams(p) {
    const notes = [];
    const setNum = (id, v) => { if (v !== undefined && v !== '' && Number.isFinite(Number(v))) $(`#${id}`).value = Number(v); };
    if (p.Prompt !== undefined) $('#prompt').value = p.Prompt;
    if (p['Negative prompt'] !== undefined) $('#negative-prompt').value = p['Negative prompt'];
    setNum('steps', p.Steps);
    setNum('cfg', p['CFG scale']);
    if (p['Size-1'] && p['Size-2']) {
      $('#width').value = Number(p['Size-1']);
      $('#height').value = Number(p['Size-2']);
      if (checked('aspect-lock')) this.ratio = num('width') / num('height');
      this.syncPreset();
    }
    if (p.Seed !== undefined && Number.isFinite(Number(p.Seed))) {
      $('#seed-mode').value = 'fixed';
      $('#seed').value = Number(p.Seed);
      this.syncSeed();
    }
    if (p.Sampler) {
      const { sampler, scheduler } = splitSampler(p.Sampler, p['Schedule type']);
      if (!this.setSelect('sampler', sampler)) notes.push(`sampler “${sampler}” is not available here`);
      if (scheduler && !this.setSelect('scheduler', scheduler)) notes.push(`schedule type “${scheduler}” is not available here`);
    }
    setNum('clip-skip', p['Clip skip']);
    setNum('batch-size', p['Batch size']);
    if (p['Denoising strength'] !== undefined) {
      setNum('strength', p['Denoising strength']);
      setNum('hr-denoise', p['Denoising strength']);
      $('#strength-value').value = val('strength');
    }
    $('#enable-hr').checked = !!(p['Hires upscale'] || p['Hires resize-1']);
    setNum('hr-scale', p['Hires upscale']);
    setNum('hr-steps', p['Hires steps']);
    if (p['Hires upscaler']) this.setSelect('hr-upscaler', p['Hires upscaler']);
    if (p['Mask blur'] !== undefined) setNum('mask-blur', p['Mask blur']);
    if (p.Model && $('#model').value !== p.Model) {
      if ([...$('#model').options].some((o) => o.value === p.Model)) notes.push(`made with model “${p.Model}”: pick it in the model list to match`);
      else notes.push(`made with model “${p.Model}”, which this server does not have`);
    }
    for (const id of ['prompt', 'negative-prompt']) $(`#${id}`).dispatchEvent(new Event('input', { bubbles: true }));
    this.save();
    return notes;
  }
}
