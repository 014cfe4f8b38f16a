// An image slot: choose a file, drag and drop, paste, or receive one from the gallery.
import { el, loadImage, notify } from './ui.js';

const ACCEPT = ['image/png', 'image/jpeg', 'image/webp'];

export function imageFromTransfer(dt) {
  if (!dt) return null;
  for (const item of dt.items || []) {
    if (item.kind === 'file' && item.type.startsWith('image/')) return item.getAsFile();
  }
  for (const f of dt.files || []) if (f.type.startsWith('image/')) return f;
  return null;
}

/** Makes `zone` accept dropped image files: onFile(file). */
export function makeDropTarget(zone, onFile) {
  zone.addEventListener('dragover', (e) => {
    if ([...(e.dataTransfer?.types || [])].includes('Files')) {
      e.preventDefault();
      e.dataTransfer.dropEffect = 'copy';
      zone.classList.add('dragover');
    }
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('dragover'));
  zone.addEventListener('drop', (e) => {
    zone.classList.remove('dragover');
    const file = imageFromTransfer(e.dataTransfer);
    if (!file) return;
    e.preventDefault();
    e.stopPropagation();
    onFile(file);
  });
}

export class ImageInput {
  /** root: an empty container; name: used for ids and labels. */
  constructor(root, name, label, { preview = true } = {}) {
    this.root = root;
    this.name = name;
    this.blob = null;
    this.image = null; // HTMLImageElement (naturalWidth/Height)
    this.listeners = [];
    this.seq = 0; // the latest set()/clear(): an older image that decodes later is dropped
    const id = `${name}-file`;
    this.file = el('input', { type: 'file', id, accept: ACCEPT.join(','), class: 'sr-only' });
    this.showPreview = preview;
    this.preview = el('img', { class: 'input-preview', alt: `${label} (preview)`, hidden: true });
    this.info = el('span', { class: 'muted input-info' });
    this.clearBtn = el('button', { type: 'button', class: 'ghost small', hidden: true, 'aria-label': `Remove the ${label.toLowerCase()}` }, 'Remove');
    this.zone = el('div', { class: 'dropzone' },
      this.file,
      el('label', { for: id, class: 'drop-label' },
        `${label}: drop an image here, paste one, or `, el('span', { class: 'link' }, 'choose a file')),
      this.preview,
      el('div', { class: 'row' }, this.info, this.clearBtn));
    root.append(this.zone);
    this.file.addEventListener('change', () => {
      if (this.file.files[0]) this.set(this.file.files[0]);
      this.file.value = '';
    });
    this.clearBtn.addEventListener('click', () => this.clear());
    makeDropTarget(this.zone, (f) => this.set(f));
  }

  onChange(fn) { this.listeners.push(fn); }

  async set(blob) {
    if (!blob) return;
    if (blob.type && !ACCEPT.includes(blob.type)) {
      notify(`That file is ${blob.type}; use a PNG, JPEG or WebP image.`, 'error');
      return;
    }
    const seq = ++this.seq;
    let img;
    try { img = await loadImage(blob); } catch (e) { if (seq === this.seq) notify(`Cannot read that image: ${e.message}`, 'error'); return; }
    if (seq !== this.seq) { URL.revokeObjectURL(img.objectURL); return; }
    if (this.image?.objectURL) URL.revokeObjectURL(this.image.objectURL);
    this.blob = blob;
    this.image = img;
    this.preview.src = img.objectURL;
    this.preview.hidden = !this.showPreview;
    this.clearBtn.hidden = false;
    this.zone.classList.add('has-image');
    this.info.textContent = `${img.naturalWidth}×${img.naturalHeight}`;
    for (const fn of this.listeners) fn(this);
  }

  clear() {
    this.seq++;
    if (this.image?.objectURL) URL.revokeObjectURL(this.image.objectURL);
    this.blob = null;
    this.image = null;
    this.preview.hidden = true;
    this.preview.removeAttribute('src');
    this.clearBtn.hidden = true;
    this.zone.classList.remove('has-image');
    this.info.textContent = '';
    for (const fn of this.listeners) fn(this);
  }

  get width() { return this.image ? this.image.naturalWidth : 0; }
  get height() { return this.image ? this.image.naturalHeight : 0; }
}
