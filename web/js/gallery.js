// The results gallery: this browser's images (IndexedDB), a full-size viewer and its actions.
import { galleryDb } from './store.js';
import { $, el, notify, copyText } from './ui.js';

const MAX_ITEMS = 300;

export class Gallery {
  /** actions: {send(mode, item), load(item), seed(item), removed(ids)} */
  constructor(actions) {
    this.actions = actions;
    this.items = [];
    this.urls = new Map();
    this.list = $('#gallery');
    this.count = $('#gallery-count');
    this.empty = $('#gallery-empty');
    this.viewer = $('#viewer');
    this.current = null;
    this.persistent = true;
    this.bindViewer();
    const clear = $('#gallery-clear');
    let armed = 0;
    clear.addEventListener('click', () => {
      if (!this.items.length) return;
      if (!armed) {
        clear.textContent = 'Click again to clear';
        armed = setTimeout(() => { armed = 0; clear.textContent = 'Clear gallery'; }, 4000);
        return;
      }
      clearTimeout(armed);
      armed = 0;
      clear.textContent = 'Clear gallery';
      this.clear();
    });
  }

  async init() {
    try {
      // A record without its image (another version's, or one the browser failed to store) is skipped.
      this.items = (await galleryDb.all()).filter((i) => i && typeof i.id === 'string' && i.blob instanceof Blob);
    } catch (e) {
      this.persistent = false;
      notify(`The gallery cannot be kept in this browser (${e.message}); it lasts for this session only.`, 'info');
    }
    this.render();
  }

  url(item) {
    let u = this.urls.get(item.id);
    if (!u) { u = URL.createObjectURL(item.blob); this.urls.set(item.id, u); }
    return u;
  }

  async add(newItems) {
    this.items = [...newItems, ...this.items];
    const dropped = this.items.splice(MAX_ITEMS);
    this.render();
    // Evicted items go whether or not the browser keeps the gallery (their object URLs too).
    if (dropped.length) this.actions.removed?.(dropped.map((i) => i.id));
    for (const item of dropped) this.revoke(item.id);
    if (!this.persistent) return;
    try {
      for (const item of dropped) await galleryDb.remove(item.id);
      const fresh = new Set(newItems.map((i) => i.id));
      let evicted = 0;
      for (const item of newItems) evicted += await this.store(item, fresh);
      if (evicted) {
        notify(`This browser's storage for the gallery is full: the ${evicted === 1 ? 'oldest image was' : `${evicted} oldest images were`} removed to keep the new one${newItems.length > 1 ? 's' : ''}.`, 'info', { key: 'gallery' });
      }
    } catch (e) {
      notify(`Could not save the image in this browser: ${e.message}`, 'error', { key: 'gallery' });
    }
  }

  // Stores one item; while the browser says its quota is full, the oldest stored image (never one
  // of this batch's) leaves the gallery to make room. Returns how many left.
  async store(item, fresh) {
    for (let evicted = 0; ; evicted++) {
      try {
        await galleryDb.put(item);
        return evicted;
      } catch (e) {
        const oldest = this.items.findLast((i) => !fresh.has(i.id));
        if (e?.name !== 'QuotaExceededError' || !oldest) throw e;
        await this.remove(oldest);
      }
    }
  }

  revoke(id) {
    const u = this.urls.get(id);
    if (u) { URL.revokeObjectURL(u); this.urls.delete(id); }
  }

  async remove(item) {
    this.actions.removed?.([item.id]);
    this.items = this.items.filter((i) => i.id !== item.id);
    this.revoke(item.id);
    this.render();
    if (this.persistent) await galleryDb.remove(item.id).catch(() => {});
  }

  async clear() {
    this.actions.removed?.(this.items.map((i) => i.id));
    for (const item of this.items) this.revoke(item.id);
    this.items = [];
    this.render();
    if (this.persistent) await galleryDb.clear().catch(() => {});
  }

  render() {
    // Rebuilding the tiles drops keyboard focus: keep it on the same image, or on the deleted
    // one's neighbour.
    const focused = this.list.contains(document.activeElement) ? document.activeElement.closest('li')?.dataset.id : null;
    const focusIndex = focused ? [...this.list.children].findIndex((li) => li.dataset.id === focused) : -1;
    this.list.replaceChildren(...this.items.map((item, i) => {
      const summary = (item.mode === 'upscale' ? 'Upscaled image' : item.prompt || 'image').slice(0, 80);
      return el('li', { class: 'tile', dataset: { id: item.id } },
        el('button', { type: 'button', class: 'thumb', 'aria-label': `Open image ${i + 1}: ${summary}`, onclick: () => this.open(item) },
          el('img', { src: this.url(item), alt: '', loading: 'lazy', width: item.width || null, height: item.height || null }),
          el('span', { class: 'badge' }, item.mode)));
    }));
    this.count.textContent = this.items.length ? `(${this.items.length})` : '';
    this.empty.hidden = !!this.items.length;
    if (focusIndex >= 0) {
      const tiles = [...this.list.children];
      const tile = tiles.find((li) => li.dataset.id === focused) || tiles[Math.min(focusIndex, tiles.length - 1)];
      (tile ? tile.querySelector('button') : $('#gallery-clear')).focus({ preventScroll: true });
    }
  }

  // ----------------------------------------------------------------- the viewer
  bindViewer() {
    const v = this.viewer;
    $('#viewer-close').addEventListener('click', () => v.close());
    v.addEventListener('click', (e) => { if (e.target === v) v.close(); });
    const act = (id, fn) => $(`#${id}`).addEventListener('click', () => { if (this.current) fn(this.current); });
    act('viewer-copy', async (item) => {
      const ok = await copyText(item.infotext || '');
      notify(ok ? 'Parameters copied to the clipboard.' : 'Could not copy: select the text and copy it yourself.', ok ? 'ok' : 'error');
    });
    act('viewer-load', (item) => { v.close(); this.actions.load(item); });
    act('viewer-seed', (item) => { v.close(); this.actions.seed(item); });
    act('viewer-img2img', (item) => { v.close(); this.actions.send('img2img', item); });
    act('viewer-inpaint', (item) => { v.close(); this.actions.send('inpaint', item); });
    act('viewer-upscale', (item) => { v.close(); this.actions.send('upscale', item); });
    act('viewer-delete', (item) => { v.close(); this.remove(item); });
  }

  open(item) {
    this.current = item;
    const url = this.url(item);
    $('#viewer-image').src = url;
    $('#viewer-title').textContent = `${item.mode} · ${item.width}×${item.height}${item.seed !== null && item.seed !== undefined ? ` · seed ${item.seed}` : ''}`;
    $('#viewer-info').textContent = item.infotext || '(no parameters)';
    const a = $('#viewer-download');
    a.href = url;
    a.download = `sdserve-${item.mode}-${item.seed ?? ''}-${item.id.slice(0, 8)}.png`.replace('--', '-');
    $('#viewer-seed').disabled = item.seed === null || item.seed === undefined;
    $('#viewer-load').disabled = !item.infotext;
    if (!this.viewer.open) this.viewer.showModal();
  }
}
