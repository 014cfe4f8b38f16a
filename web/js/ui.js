// Small DOM helpers shared by the modules.

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

/** Creates an element: el('button', {class: 'x', type: 'button', onclick}, 'text', child...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (v === true) node.setAttribute(k, '');
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function debounce(fn, ms) {
  let t = 0;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

const messages = () => document.getElementById('messages');

/**
 * Shows a message in the page's alert area. kind: 'error' | 'info' | 'ok'. Errors stay until
 * dismissed or replaced; others fade after a few seconds. Returns the element.
 */
export function notify(text, kind = 'info', { key = null, timeout = null } = {}) {
  const box = messages();
  if (key) for (const old of box.querySelectorAll(`[data-key="${key}"]`)) old.remove();
  const msg = el('div', { class: `message ${kind}`, role: kind === 'error' ? 'alert' : 'status', dataset: key ? { key } : {} },
    el('span', { class: 'message-text' }, text),
    el('button', { type: 'button', class: 'icon small', 'aria-label': 'Dismiss message', onclick: () => msg.remove() }, '✕'));
  box.append(msg);
  while (box.children.length > 4) box.firstElementChild.remove();
  const ms = timeout ?? (kind === 'error' ? 0 : 4000);
  if (ms) setTimeout(() => msg.remove(), ms);
  return msg;
}

export function clearMessages(key = null) {
  const box = messages();
  for (const m of [...box.children]) if (!key || m.dataset.key === key) m.remove();
}

export function blobToDataURL(blob) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(blob);
  });
}

export function dataURLToBlob(url) {
  const [head, b64] = url.split(',', 2);
  const mime = (head.match(/data:([^;]+)/) || [])[1] || 'application/octet-stream';
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Blob([bytes], { type: mime });
}

/** Decodes a Blob into an HTMLImageElement (object URL kept on it as .objectURL). */
export function loadImage(blob) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(blob);
    const img = new Image();
    img.onload = () => { img.objectURL = url; resolve(img); };
    img.onerror = () => { URL.revokeObjectURL(url); reject(new Error('not an image this browser can read')); };
    img.src = url;
  });
}

export function canvasToBlob(canvas, type = 'image/png') {
  return new Promise((resolve, reject) => canvas.toBlob((b) => (b ? resolve(b) : reject(new Error('canvas export failed'))), type));
}

/** Copies text to the clipboard, falling back to a hidden textarea where the API is refused. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const ta = el('textarea', { class: 'sr-only', 'aria-label': 'Clipboard', tabindex: '-1' });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch { ok = false; }
    ta.remove();
    return ok;
  }
}

export const round8 = (v) => Math.max(8, Math.round(v / 8) * 8);
export const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
