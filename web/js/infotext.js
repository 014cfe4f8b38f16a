// A1111 infotext ("parameters" text) parsing, as modules/infotext_utils.py does it, into the shape
// the server's /sdapi/v1/png-info answers: {"Prompt", "Negative prompt", "Steps", "Size-1", ...}.

const RE_PARAM = /\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/g;
const RE_SIZE = /^(\d+)x(\d+)$/;

export function parseInfotext(text) {
  const res = {};
  const lines = String(text || '').trim().split('\n');
  let last = lines.pop() || '';
  if ([...last.matchAll(RE_PARAM)].length < 3) { lines.push(last); last = ''; }
  let prompt = '', negative = '', inNegative = false;
  for (let line of lines) {
    line = line.trim();
    if (line.startsWith('Negative prompt:')) { inNegative = true; line = line.slice(16).trim(); }
    if (inNegative) negative += (negative ? '\n' : '') + line;
    else prompt += (prompt ? '\n' : '') + line;
  }
  res.Prompt = prompt;
  res['Negative prompt'] = negative;
  for (const m of last.matchAll(RE_PARAM)) {
    const k = m[1].trim();
    let v = m[2].trim();
    if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) {
      try { v = JSON.parse(v); } catch { v = v.slice(1, -1); }
    }
    const size = v.match(RE_SIZE);
    if (size) { res[`${k}-1`] = size[1]; res[`${k}-2`] = size[2]; }
    res[k] = v;
  }
  return res;
}

const SCHEDULE_SUFFIXES = ['Karras', 'Exponential', 'SGM Uniform', 'Automatic'];

/** Splits an old-style sampler name ("DPM++ 2M Karras") into sampler and schedule type. */
export function splitSampler(name, schedule) {
  if (schedule) return { sampler: name, scheduler: schedule };
  for (const s of SCHEDULE_SUFFIXES) {
    if (name && name.endsWith(` ${s}`)) return { sampler: name.slice(0, -s.length - 1), scheduler: s };
  }
  return { sampler: name, scheduler: null };
}
