// PNG Info: read the generation parameters of a dropped/pasted/chosen PNG through the server
// (POST /sdapi/v1/png-info) and load them into the form.
import { postJSON, describeError, ApiError } from './api.js';
import { $, notify, blobToDataURL } from './ui.js';
import { makeDropTarget } from './image-input.js';
import { parseInfotext } from './infotext.js';

export async function readPngInfo(file) {
  if (file.type && file.type !== 'image/png') throw new Error(`${file.name || 'that file'} is not a PNG (${file.type}); PNG Info reads PNG files.`);
  const res = await postJSON('/sdapi/v1/png-info', { image: await blobToDataURL(file) });
  const info = res && res.info ? res.info : '';
  const params = res && res.parameters && Object.keys(res.parameters).length ? res.parameters : (info ? parseInfotext(info) : null);
  return { info, params, items: (res && res.items) || {} };
}

export class PngInfo {
  /** apply(params, mode): loads parameters into the form and switches to mode. */
  constructor({ apply }) {
    this.apply = apply;
    this.params = null;
    this.blob = null;
    this.zone = $('#pnginfo-drop');
    this.file = $('#pnginfo-file');
    this.result = $('#pnginfo-result');
    this.image = $('#pnginfo-image');
    this.text = $('#pnginfo-text');
    this.file.addEventListener('change', () => {
      if (this.file.files[0]) this.read(this.file.files[0]);
      this.file.value = '';
    });
    makeDropTarget(this.zone, (f) => this.read(f));
    $('#pnginfo-to-txt2img').addEventListener('click', () => this.params && this.apply(this.params, 'txt2img'));
    $('#pnginfo-to-img2img').addEventListener('click', () => this.params && this.apply(this.params, 'img2img', this.blob));
  }

  async read(file) {
    let r;
    try {
      r = await readPngInfo(file);
    } catch (e) {
      notify(e instanceof ApiError ? `PNG Info: ${describeError(e)}` : e.message, 'error', { key: 'pnginfo' });
      return;
    }
    if (this.image.src.startsWith('blob:')) URL.revokeObjectURL(this.image.src);
    this.blob = file;
    this.image.src = URL.createObjectURL(file);
    this.params = r.params;
    const extra = Object.entries(r.items).map(([k, v]) => `\n\n${k}:\n${v}`).join('');
    this.text.textContent = (r.info || 'This PNG carries no generation parameters.') + extra;
    this.result.hidden = false;
    $('#pnginfo-to-txt2img').disabled = !r.params;
    $('#pnginfo-to-img2img').disabled = !r.params;
  }
}
