// The inpaint mask editor: paint and erase a mask over the image with a round brush, undo, clear;
// shows the outpaint area around the image when the canvas is extended.
import { $, clamp } from './ui.js';

const MASK_COLOR = '#ff3d71';
const UNDO_DEPTH = 20;
const UNDO_BYTES = 256 * 1024 * 1024; // a 4096² mask is 64 MiB a snapshot: keep fewer of those

export class MaskEditor {
  constructor() {
    this.root = $('#mask-editor');
    this.stage = $('#mask-stage');
    this.base = $('#mask-base');
    this.mask = $('#mask-canvas');
    this.cursor = $('#brush-cursor');
    this.note = $('#mask-note');
    this.size = $('#brush-size');
    this.sizeOut = $('#brush-size-value');
    this.mctx = this.mask.getContext('2d', { willReadFrequently: true });
    this.image = null;
    this.pad = { left: 0, right: 0, top: 0, bottom: 0 };
    this.undoStack = [];
    this.drawing = false;
    this.pointerId = null; // the one pointer painting the current stroke
    this.last = null;
    this.listeners = [];

    this.size.addEventListener('input', () => { this.sizeOut.value = this.size.value; this.updateCursorSize(); });
    this.sizeOut.value = this.size.value;
    $('#mask-clear').addEventListener('click', () => this.clear(true));
    $('#mask-undo').addEventListener('click', () => this.undo());

    const m = this.mask;
    m.addEventListener('pointerdown', (e) => this.down(e));
    m.addEventListener('pointermove', (e) => this.move(e));
    m.addEventListener('pointerup', (e) => this.up(e));
    m.addEventListener('pointercancel', (e) => this.up(e));
    m.addEventListener('lostpointercapture', (e) => this.up(e)); // e.g. the canvas hidden mid-stroke
    m.addEventListener('pointerleave', () => { this.cursor.hidden = true; });
    m.addEventListener('pointerenter', () => { this.cursor.hidden = false; });
    m.addEventListener('keydown', (e) => {
      if ((e.ctrlKey || e.metaKey) && e.key === 'z') { e.preventDefault(); this.undo(); }
    });
    new ResizeObserver(() => this.updateCursorSize()).observe(this.stage);
  }

  onChange(fn) { this.listeners.push(fn); }
  changed() { for (const fn of this.listeners) fn(this); }

  get tool() { return document.querySelector('input[name="mask-tool"]:checked')?.value || 'brush'; }
  get outpainting() { return Object.values(this.pad).some((v) => v > 0); }

  /** A new image (HTMLImageElement) or null; clears the mask. */
  setImage(img) {
    this.image = img;
    this.root.hidden = !img;
    if (!img) return;
    this.mask.width = img.naturalWidth;
    this.mask.height = img.naturalHeight;
    this.undoStack = [];
    this.drawing = false; // a stroke under way belonged to the old image
    this.pointerId = null;
    this.clear(false);
    this.render();
  }

  setPadding(pad) {
    this.pad = { ...pad };
    this.render();
  }

  render() {
    const img = this.image;
    if (!img) return;
    const { left, right, top, bottom } = this.pad;
    const w = img.naturalWidth, h = img.naturalHeight;
    const W = w + left + right, H = h + top + bottom;
    this.base.width = W;
    this.base.height = H;
    const ctx = this.base.getContext('2d');
    if (this.outpainting) {
      // The new area: diagonal stripes, so it reads as "to be painted".
      ctx.fillStyle = '#1d2230';
      ctx.fillRect(0, 0, W, H);
      ctx.strokeStyle = '#39415a';
      ctx.lineWidth = Math.max(2, Math.round(Math.max(W, H) / 120));
      const stepPx = ctx.lineWidth * 4;
      ctx.beginPath();
      for (let x = -H; x < W; x += stepPx) { ctx.moveTo(x, H); ctx.lineTo(x + H, 0); }
      ctx.stroke();
    }
    ctx.drawImage(img, left, top);
    // The mask overlay covers exactly the original image inside the (possibly larger) canvas.
    const s = this.mask.style;
    s.left = `${(left / W) * 100}%`;
    s.top = `${(top / H) * 100}%`;
    s.width = `${(w / W) * 100}%`;
    s.height = `${(h / H) * 100}%`;
    this.mask.hidden = this.outpainting;
    this.note.textContent = this.outpainting
      ? `Outpainting to ${W}×${H}: the striped area is generated (outpaint makes its own mask, so the painted mask is not used).`
      : 'Paint the area to repaint. Eraser removes mask; Ctrl+Z undoes.';
    this.updateCursorSize();
  }

  scale() {
    const r = this.mask.getBoundingClientRect();
    return r.width ? r.width / this.mask.width : 1;
  }

  updateCursorSize() {
    const d = Number(this.size.value) * this.scale();
    this.cursor.style.width = `${d}px`;
    this.cursor.style.height = `${d}px`;
  }

  point(e) {
    const r = this.mask.getBoundingClientRect();
    return {
      x: ((e.clientX - r.left) / r.width) * this.mask.width,
      y: ((e.clientY - r.top) / r.height) * this.mask.height,
    };
  }

  moveCursor(e) {
    const sr = this.stage.getBoundingClientRect();
    this.cursor.style.left = `${e.clientX - sr.left}px`;
    this.cursor.style.top = `${e.clientY - sr.top}px`;
    this.cursor.classList.toggle('eraser', this.tool === 'eraser');
  }

  down(e) {
    // A second finger (a pinch) while a stroke is under way is not a stroke of its own.
    if (e.button !== 0 || !this.image || (this.drawing && e.pointerId !== this.pointerId)) return;
    e.preventDefault(); // (this also keeps the browser from focusing the canvas: do it below)
    this.mask.focus({ preventScroll: true }); // so that Ctrl+Z undoes this stroke, not a prompt edit
    try { this.mask.setPointerCapture(e.pointerId); } catch { /* the pointer is already gone */ }
    this.pushUndo();
    this.drawing = true;
    this.pointerId = e.pointerId;
    this.last = this.point(e);
    this.stroke(this.last, this.last);
  }

  move(e) {
    this.moveCursor(e);
    if (!this.drawing || e.pointerId !== this.pointerId) return;
    const p = this.point(e);
    this.stroke(this.last, p);
    this.last = p;
  }

  up(e) {
    if (!this.drawing || e.pointerId !== this.pointerId) return;
    this.drawing = false;
    this.pointerId = null;
    try { this.mask.releasePointerCapture(e.pointerId); } catch { /* already released */ }
    this.changed();
  }

  stroke(a, b) {
    const ctx = this.mctx;
    ctx.save();
    ctx.globalCompositeOperation = this.tool === 'eraser' ? 'destination-out' : 'source-over';
    ctx.strokeStyle = MASK_COLOR;
    ctx.fillStyle = MASK_COLOR;
    ctx.lineCap = 'round';
    ctx.lineJoin = 'round';
    ctx.lineWidth = Number(this.size.value);
    ctx.beginPath();
    if (a.x === b.x && a.y === b.y) {
      ctx.arc(a.x, a.y, ctx.lineWidth / 2, 0, Math.PI * 2);
      ctx.fill();
    } else {
      ctx.moveTo(a.x, a.y);
      ctx.lineTo(b.x, b.y);
      ctx.stroke();
    }
    ctx.restore();
  }

  pushUndo() {
    if (!this.mask.width) return;
    const depth = clamp(Math.floor(UNDO_BYTES / (this.mask.width * this.mask.height * 4)), 1, UNDO_DEPTH);
    this.undoStack.push(this.mctx.getImageData(0, 0, this.mask.width, this.mask.height));
    while (this.undoStack.length > depth) this.undoStack.shift();
  }

  undo() {
    const snap = this.undoStack.pop();
    if (snap) { this.mctx.putImageData(snap, 0, 0); this.changed(); }
  }

  clear(undoable) {
    if (undoable) this.pushUndo();
    this.mctx.clearRect(0, 0, this.mask.width, this.mask.height);
    this.changed();
  }

  /** Share of the image covered by the mask, 0..1. */
  coverage() {
    if (!this.mask.width) return 0;
    const { data } = this.mctx.getImageData(0, 0, this.mask.width, this.mask.height);
    let n = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 127) n++;
    return n / (data.length / 4);
  }

  /** The mask as the server reads it: a PNG data URL, white = repaint on black; null when empty. */
  toDataURL() {
    if (!this.image || this.coverage() === 0) return null;
    const { width, height } = this.mask;
    const white = document.createElement('canvas');
    white.width = width;
    white.height = height;
    const w = white.getContext('2d');
    w.drawImage(this.mask, 0, 0);
    w.globalCompositeOperation = 'source-in';
    w.fillStyle = '#fff';
    w.fillRect(0, 0, width, height);
    const out = document.createElement('canvas');
    out.width = width;
    out.height = height;
    const o = out.getContext('2d');
    o.fillStyle = '#000';
    o.fillRect(0, 0, width, height);
    o.drawImage(white, 0, 0);
    return out.toDataURL('image/png');
  }
}

export function clampPad(v) { return clamp(Math.round((Number(v) || 0) / 8) * 8, 0, 1024); }
