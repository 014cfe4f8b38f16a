// Token counters for the prompts: the server's CLIP count in 75-token chunks (POST /v1/tokenize),
// debounced; a rough local estimate (marked "≈") when the server has no such route.
import { postJSON, ApiError } from './api.js';
import { debounce } from './ui.js';

let serverCounts = true;

/** A rough count when the server cannot tell: words, punctuation, <lora> tags and weights dropped. */
export function estimateTokens(text) {
  const chunks = text.replace(/<(lora|lyco|hypernet):[^>]*>/gi, ' ').split(/\bBREAK\b/);
  let total = 0, k = 0;
  for (const chunk of chunks) {
    const clean = chunk.replace(/:\s*-?\d+(\.\d+)?\s*\)/g, ')').replace(/[()[\]]/g, ' ');
    const n = (clean.match(/[A-Za-z]+|\d|[^\sA-Za-z\d]/g) || []).length;
    total += n;
    k += Math.max(1, Math.ceil(n / 75));
  }
  return { tokens: total, chunks: Math.max(1, k), limit: 75 * Math.max(1, k) };
}

export class TokenCounter {
  constructor(textarea, output) {
    this.textarea = textarea;
    this.output = output;
    this.seq = 0;
    const run = debounce(() => this.update(), 300);
    textarea.addEventListener('input', run);
    this.update();
  }

  show({ tokens, chunks, limit }, estimated) {
    this.output.value = `${estimated ? '≈' : ''}${tokens}/${limit}`;
    this.output.title = estimated
      ? 'Estimated: this server does not count tokens'
      : `${tokens} CLIP tokens in ${chunks} chunk${chunks > 1 ? 's' : ''} of 75`;
    this.output.classList.toggle('multi', chunks > 1);
  }

  async update() {
    const text = this.textarea.value;
    const seq = ++this.seq;
    if (!text.trim()) { this.show({ tokens: 0, chunks: 1, limit: 75 }, false); return; }
    if (serverCounts) {
      try {
        const r = await postJSON('/v1/tokenize', { prompt: text }, { quiet: true });
        if (seq === this.seq) this.show(r, false);
        return;
      } catch (e) {
        if (e instanceof ApiError && (e.status === 404 || e.status === 405)) serverCounts = false;
        else if (seq === this.seq) { this.show(estimateTokens(text), true); return; }
      }
    }
    if (seq === this.seq) this.show(estimateTokens(text), true);
  }
}
