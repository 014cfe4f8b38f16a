// LoRA browser (the server's list, searchable; a click inserts <lora:name:1>) and weight sliders
// for the LoRA tags already in the prompt.
import { getJSON } from './api.js';
import { $, el } from './ui.js';

const TAG = /<lora:([^:>]+):([^:>]*)(:[^>]*)?>/gi;

/** The <lora:...> tags of a prompt: [{name, weight, index, length}]. */
export function loraTags(prompt) {
  const out = [];
  for (const m of prompt.matchAll(TAG)) {
    const w = Number(m[2]);
    out.push({ name: m[1], weight: Number.isFinite(w) ? w : 1, index: m.index, length: m[0].length, rest: m[3] || '' });
  }
  return out;
}

const fmt = (w) => String(Math.round(w * 100) / 100);

export class LoraPanel {
  constructor(prompt) {
    this.prompt = prompt;
    this.list = $('#lora-list');
    this.search = $('#lora-search');
    this.count = $('#lora-count');
    this.weights = $('#lora-weights');
    this.names = [];
    this.rowsKey = '';
    this.search.addEventListener('input', () => this.renderList());
    prompt.addEventListener('input', () => this.renderWeights());
    this.renderWeights();
  }

  async load() {
    try {
      const loras = await getJSON('/sdapi/v1/loras');
      this.names = loras.map((l) => l.name).sort((a, b) => a.localeCompare(b));
    } catch {
      this.names = [];
    }
    this.renderList();
  }

  renderList() {
    const q = this.search.value.trim().toLowerCase();
    const shown = this.names.filter((n) => n.toLowerCase().includes(q));
    this.count.textContent = this.names.length ? `(${this.names.length})` : '';
    this.list.replaceChildren(...shown.map((name) => el('li', {},
      el('button', { type: 'button', class: 'chip', title: `Insert <lora:${name}:1>`, onclick: () => this.insert(name) }, name))));
    if (!this.names.length) {
      this.list.append(el('li', { class: 'note' }, 'No LoRAs on this server (start it with --lora-dir).'));
    } else if (!shown.length) {
      this.list.append(el('li', { class: 'note' }, `No LoRA matches “${this.search.value}”.`));
    }
  }

  insert(name) {
    const p = this.prompt;
    const tag = `<lora:${name}:1>`;
    const start = p.selectionStart ?? p.value.length;
    const end = p.selectionEnd ?? p.value.length;
    const before = p.value.slice(0, start);
    const after = p.value.slice(end);
    const sep = before && !/[\s,]$/.test(before) ? ' ' : '';
    p.value = before + sep + tag + after;
    const pos = (before + sep + tag).length;
    p.setSelectionRange(pos, pos);
    p.dispatchEvent(new Event('input', { bubbles: true }));
    p.focus();
  }

  /** Rewrites the weight of the i-th tag in the prompt. */
  setWeight(i, weight) {
    const p = this.prompt;
    const tag = loraTags(p.value)[i];
    if (!tag) return;
    const text = `<lora:${tag.name}:${fmt(weight)}${tag.rest}>`;
    p.value = p.value.slice(0, tag.index) + text + p.value.slice(tag.index + tag.length);
    p.dispatchEvent(new Event('input', { bubbles: true }));
  }

  remove(i) {
    const p = this.prompt;
    const tag = loraTags(p.value)[i];
    if (!tag) return;
    // Tidy the spaces where the tag was, not the whole prompt (its line breaks stay).
    const before = p.value.slice(0, tag.index).replace(/[ \t]+$/, '');
    let after = p.value.slice(tag.index + tag.length);
    // "a, <lora:x:1>, b" leaves "a, b"; "<lora:x:1>, b" leaves "b".
    if (!before) after = after.replace(/^[ \t]*,?[ \t]*/, '');
    else if (/,$/.test(before)) after = after.replace(/^[ \t]*,/, '');
    if (!before || /\s$/.test(before)) after = after.replace(/^[ \t]+/, '');
    else if (after && !/^[\s,]/.test(after)) after = ` ${after}`;
    p.value = before + after;
    p.dispatchEvent(new Event('input', { bubbles: true }));
  }

  renderWeights() {
    const tags = loraTags(this.prompt.value);
    const key = tags.map((t) => t.name).join('\n');
    if (key === this.rowsKey) {
      // Same tags: only refresh the values, so a slider being dragged keeps its focus.
      tags.forEach((t, i) => {
        const range = this.weights.querySelector(`#lora-w-${i}`);
        const out = this.weights.querySelector(`#lora-w-${i}-value`);
        if (range && document.activeElement !== range) range.value = t.weight;
        if (out) out.value = fmt(t.weight);
      });
      return;
    }
    this.rowsKey = key;
    this.weights.replaceChildren(...tags.map((t, i) => {
      const id = `lora-w-${i}`;
      const out = el('output', { id: `${id}-value`, for: id, 'aria-label': `LoRA ${t.name} weight value` }, fmt(t.weight));
      const range = el('input', { type: 'range', id, min: '-1', max: '2', step: '0.05', value: String(t.weight) });
      range.addEventListener('input', () => { out.value = fmt(Number(range.value)); this.setWeight(i, Number(range.value)); });
      return el('div', { class: 'lora-weight' },
        el('label', { for: id }, el('span', { class: 'sr-only' }, 'LoRA '), t.name, el('span', { class: 'sr-only' }, ' weight')),
        range, out,
        el('button', { type: 'button', class: 'icon small', 'aria-label': `Remove LoRA ${t.name}`, onclick: () => this.remove(i) }, '✕'));
    }));
    this.weights.hidden = !tags.length;
  }
}
