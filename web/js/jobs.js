// One job at a time: submit, follow its events (queue position, steps, ETA, previews), cancel,
// and fetch its images for the gallery.
import { postJSON, getJSON, getBlob, streamEvents, ApiError, describeError } from './api.js';
import { $, notify } from './ui.js';

const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);

function fmtSeconds(s) {
  if (!Number.isFinite(s) || s < 0) return '';
  if (s < 1) return '<1 s';
  if (s < 60) return `${Math.round(s)} s`;
  return `${Math.floor(s / 60)} min ${String(Math.round(s % 60)).padStart(2, '0')} s`;
}

async function imageSize(blob) {
  try {
    const bmp = await createImageBitmap(blob);
    const size = { width: bmp.width, height: bmp.height };
    bmp.close();
    return size;
  } catch { return { width: 0, height: 0 }; }
}

export class JobRunner {
  constructor() {
    this.bar = $('#progress');
    this.text = $('#progress-text');
    this.announcer = $('#progress-announce');
    this.quarter = 0; // the last quarter of the steps announced
    this.preview = $('#preview');
    this.previewImg = $('#preview-image');
    this.generateBtn = $('#generate');
    this.cancelBtn = $('#cancel');
    this.busy = false;
    this.job = null;
    this.cancelWanted = false;
    this.cancelBtn.addEventListener('click', () => this.cancel());
  }

  // The visible status changes every step; only the moments that matter go to the live region
  // (start, queue moves, each quarter, the end), so a screen reader is not read every step.
  setText(t, announce = true) {
    this.text.textContent = t;
    if (announce && this.announcer.textContent !== t) this.announcer.textContent = t;
  }

  hidePreview() {
    this.preview.hidden = true;
    this.previewImg.removeAttribute('src');
    document.getElementById('preview-open').disabled = true;
  }

  /** Shows a finished image (a gallery item's object URL) where the live preview was. */
  showResult(url, alt) {
    this.preview.classList.remove('live');
    this.previewImg.src = url;
    this.previewImg.alt = alt;
    this.preview.hidden = false;
    document.getElementById('preview-open').disabled = false;
  }

  setBusy(busy) {
    this.busy = busy;
    this.generateBtn.disabled = busy || this.generateBtn.dataset.off === 'true';
    this.cancelBtn.disabled = !busy;
    document.body.classList.toggle('busy', busy);
  }

  indeterminate() { this.bar.removeAttribute('value'); }

  setProgress(step, steps) {
    this.bar.max = 100;
    this.bar.value = steps > 0 ? Math.min(100, (100 * step) / steps) : 0;
  }

  /**
   * Runs `body` as a job; resolves with the finished status and gallery items
   * ({status, items}); throws ApiError when the server refuses or the job fails.
   */
  async run(body, mode) {
    this.setBusy(true);
    this.cancelWanted = false;
    this.job = null;
    this.preview.hidden = true;
    this.preview.classList.add('live');
    this.previewImg.removeAttribute('src');
    this.previewImg.alt = '';
    document.getElementById('preview-open').disabled = true;
    this.indeterminate();
    this.quarter = 0;
    this.setText('Submitting…');
    const started = performance.now();
    try {
      const job = await postJSON('/v1/jobs', body);
      this.job = job;
      if (this.cancelWanted) this.cancel();
      let last = null;
      try {
        await streamEvents(job.events_url || `/v1/jobs/${job.id}/events`, (type, s) => {
          if (s && typeof s === 'object') { last = s; this.show(type, s, mode); }
        });
      } catch (e) {
        // The stream could not open (an ApiError) or broke mid-way (a TypeError from the reader:
        // proxy, network): fall back to polling below. Only a refused key ends the run here.
        if (e instanceof ApiError && e.status === 401) throw e;
      }
      let misses = 0;
      while (!last || !TERMINAL.has(last.status)) {
        await new Promise((r) => setTimeout(r, 500));
        try {
          last = await getJSON(`/v1/jobs/${job.id}`);
          misses = 0;
        } catch (e) {
          // The job goes on on the server: ride out a short network outage (about 10 s).
          if (e instanceof ApiError && e.status === 0 && ++misses < 20) continue;
          throw e;
        }
        this.show(last.status === 'running' ? 'progress' : last.status, last, mode);
      }
      if (last.status === 'failed') {
        const e = last.error || {};
        throw new ApiError(e.status || 500, e.error, e.detail);
      }
      if (last.status === 'canceled') return { status: last, items: [] };
      this.setText(`Fetching ${last.images.length} image${last.images.length > 1 ? 's' : ''}…`);
      const items = [];
      const base = Date.now();
      for (let i = 0; i < last.images.length; i++) {
        const blob = await getBlob(last.images[i]);
        const size = await imageSize(blob);
        items.push({
          id: `${job.id}-${i}`, created: base + (last.images.length - i), blob, mode, ...size,
          infotext: (last.infotexts || [])[i] || '', seed: (last.seeds || [])[i] ?? null,
          prompt: body.prompt || '', jobId: job.id,
        });
      }
      // The server's running time, or ours from submit to done when it has none.
      const server = last.timings?.running_s;
      const took = fmtSeconds(Number.isFinite(server) && server > 0 ? server : (performance.now() - started) / 1000);
      this.setProgress(1, 1);
      this.setText(`Done: ${items.length} image${items.length > 1 ? 's' : ''}${took ? ` in ${took}` : ''}`);
      return { status: last, items };
    } catch (e) {
      this.setProgress(0, 1);
      this.setText(e instanceof ApiError && e.status === 429 ? 'Queue full' : 'Failed');
      throw e;
    } finally {
      this.job = null;
      this.bar.removeAttribute('aria-valuetext'); // the last step's words no longer describe the bar
      this.setBusy(false);
    }
  }

  show(type, s, mode) {
    const unit = mode === 'upscale' ? 'Tile' : 'Step';
    if (type === 'queued' || s.status === 'queued') {
      this.indeterminate();
      const ahead = s.queue_position ?? 0;
      this.setText(ahead > 0 ? `Queued: ${ahead} job${ahead > 1 ? 's' : ''} ahead` : 'Queued: next');
      return;
    }
    if (type === 'progress' || s.status === 'running') {
      this.setProgress(s.step || 0, s.steps || 0);
      const eta = s.eta_s !== undefined && s.step > 0 ? ` · ETA ${fmtSeconds(s.eta_s)}` : '';
      const quarter = s.steps ? Math.min(4, Math.floor((4 * (s.step || 0)) / s.steps)) : 0;
      const milestone = s.steps > 0 && quarter > this.quarter && quarter < 4;
      if (milestone) this.quarter = quarter;
      const started = !s.steps && this.text.textContent !== 'Starting…';
      this.setText(s.steps ? `${unit} ${s.step}/${s.steps}${eta}` : 'Starting…', milestone || started);
      this.bar.setAttribute('aria-valuetext', this.text.textContent);
      if (s.preview) {
        this.previewImg.src = `data:image/png;base64,${s.preview}`;
        this.previewImg.alt = `Live preview at step ${s.preview_step ?? s.step}`;
        this.preview.classList.add('live');
        this.preview.hidden = false;
      }
      return;
    }
    if (type === 'canceled' || s.status === 'canceled') {
      this.setProgress(s.step || 0, s.steps || 1);
      this.setText(`Canceled at ${unit.toLowerCase()} ${s.step || 0}/${s.steps || 0}`);
    }
  }

  async cancel() {
    if (!this.busy) return;
    if (!this.job) { this.cancelWanted = true; this.setText('Canceling…'); return; }
    this.setText('Canceling…');
    this.cancelBtn.disabled = true;
    try {
      await postJSON(`/v1/jobs/${this.job.id}/cancel`);
    } catch (e) {
      // 409: it ended meanwhile; the stream reports how.
      if (!(e instanceof ApiError && e.status === 409)) notify(`Cancel failed: ${describeError(e)}`, 'error');
      this.cancelBtn.disabled = !this.busy;
    }
  }
}
