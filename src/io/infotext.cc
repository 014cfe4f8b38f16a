#include "io/infotext.h"

#include "core/utf8.h"

#include <charconv>
#include <cmath>
#include <limits>
#include <system_error>

#include "core/error.h"
#include "io/mmap_file.h"
#include "io/sha256.h"

namespace sdserve {
namespace {

// ---- UTF-8 code points, as Python's str sees them ----

// A byte that does not start a valid UTF-8 sequence decodes to one code point outside Unicode
// (so it is neither a word character nor whitespace) and is kept byte for byte.
constexpr uint32_t kInvalid = 0x110000;

struct CodePoint {
  uint32_t cp;
  size_t len;
};

CodePoint decode_utf8(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = b(i);
  if (c < 0x80) return {c, 1};
  size_t len;
  uint32_t cp, min;
  if ((c & 0xE0) == 0xC0) {
    len = 2, cp = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3, cp = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4, cp = c & 0x07, min = 0x10000;
  } else {
    return {kInvalid, 1};
  }
  if (i + len > s.size()) return {kInvalid, 1};
  for (size_t k = 1; k < len; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return {kInvalid, 1};
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return {kInvalid, 1};
  return {cp, len};
}

// Python's str.isspace() (also what `\s` matches in a str pattern).
bool is_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// `\w` in a Python str pattern (alphanumeric in any script, or '_'). Exact for ASCII and Latin-1;
// above that an approximation: everything except whitespace and the common punctuation, symbol and
// emoji blocks. Keys are ASCII in every infotext we know of.
bool is_word(uint32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'A' && cp <= 'Z') || (cp >= 'a' && cp <= 'z') || cp == '_';
  if (cp < 0x100) {
    return cp == 0xAA || cp == 0xB2 || cp == 0xB3 || cp == 0xB5 || cp == 0xB9 || cp == 0xBA ||
           (cp >= 0xBC && cp <= 0xBE) || (cp >= 0xC0 && cp != 0xD7 && cp != 0xF7);
  }
  if (cp >= kInvalid || is_space(cp)) return false;
  if (cp >= 0x2000 && cp <= 0x2BFF) return false;  // punctuation, arrows, math, box drawing, dingbats
  if (cp >= 0x2E00 && cp <= 0x2E7F) return false;  // supplemental punctuation
  if ((cp >= 0x3000 && cp <= 0x3004) || (cp >= 0x3008 && cp <= 0x3020) || cp == 0x3030 || cp == 0x303D) return false;
  if (cp >= 0xD800 && cp <= 0xF8FF) return false;  // surrogates, private use
  if (cp >= 0xFE10 && cp <= 0xFE6F) return false;  // vertical / small forms
  if ((cp >= 0xFF01 && cp <= 0xFF0F) || (cp >= 0xFF1A && cp <= 0xFF20) || (cp >= 0xFF3B && cp <= 0xFF40) ||
      (cp >= 0xFF5B && cp <= 0xFF65))
    return false;                                    // fullwidth punctuation
  if (cp >= 0x1F000 && cp <= 0x1FAFF) return false;  // emoji, symbols
  return true;
}

bool is_key_char(uint32_t cp) { return is_word(cp) || cp == ' ' || cp == '-' || cp == '/'; }

// Python's str.strip() with no arguments.
std::string_view py_strip(std::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    const CodePoint c = decode_utf8(s, begin);
    if (!is_space(c.cp)) break;
    begin += c.len;
  }
  size_t end = begin;
  for (size_t i = begin; i < s.size();) {
    const CodePoint c = decode_utf8(s, i);
    i += c.len;
    if (!is_space(c.cp)) end = i;
  }
  return s.substr(begin, end - begin);
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// ---- JSON strings (Python's json.dumps(ensure_ascii=False) / json.loads) ----

std::string json_dumps(std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size() + 2);
  out += '"';
  for (const char ch : s) {
    const uint8_t c = static_cast<uint8_t>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 15];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool read_hex4(std::string_view s, size_t i, uint32_t& v) {
  if (i + 4 > s.size()) return false;
  v = 0;
  for (size_t k = 0; k < 4; ++k) {
    const int h = hex_value(s[i + k]);
    if (h < 0) return false;
    v = v * 16 + uint32_t(h);
  }
  return true;
}

// json.loads(s) for an s that starts and ends with '"': the string, or nullopt where Python raises
// (bad escape, raw control character, extra data after the closing quote, no closing quote).
// A lone surrogate escape (which Python keeps and UTF-8 cannot hold) becomes U+FFFD.
std::optional<std::string> json_loads_string(std::string_view s) {
  if (s.size() < 2 || s.front() != '"') return std::nullopt;
  std::string out;
  size_t i = 1;
  while (i < s.size()) {
    const uint8_t c = static_cast<uint8_t>(s[i]);
    if (c == '"') return i + 1 == s.size() ? std::optional<std::string>(std::move(out)) : std::nullopt;
    if (c < 0x20) return std::nullopt;
    if (c != '\\') {
      out += char(c);
      ++i;
      continue;
    }
    if (i + 1 >= s.size()) return std::nullopt;
    const char e = s[i + 1];
    i += 2;
    switch (e) {
      case '"':
        out += '"';
        break;
      case '\\':
        out += '\\';
        break;
      case '/':
        out += '/';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      case 't':
        out += '\t';
        break;
      case 'u': {
        uint32_t u;
        if (!read_hex4(s, i, u)) return std::nullopt;
        i += 4;
        if (u >= 0xD800 && u <= 0xDBFF && i + 1 < s.size() && s[i] == '\\' && s[i + 1] == 'u') {
          uint32_t lo;
          if (read_hex4(s, i + 2, lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
            u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            i += 6;
          }
        }
        if (u >= 0xD800 && u <= 0xDFFF) u = 0xFFFD;
        append_utf8(out, u);
        break;
      }
      default:
        return std::nullopt;
    }
  }
  return std::nullopt;
}

// ---- numbers ----

std::string format_float(float v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

template <typename T>
std::optional<T> parse_int(std::string_view s) {
  s = py_strip(s);
  if (!s.empty() && s.front() == '+') s.remove_prefix(1);
  if (s.empty() || s.front() == '+') return std::nullopt;
  T v{};
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<float> parse_float(std::string_view s) {
  s = py_strip(s);
  if (!s.empty() && s.front() == '+') s.remove_prefix(1);
  if (s.empty() || s.front() == '+') return std::nullopt;
  float v = 0;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

// re_imagesize = ^(\d+)x(\d+)$ (ASCII digits; `$` also matches before one final '\n').
bool parse_size(std::string_view v, int& w, int& h) {
  if (!v.empty() && v.back() == '\n') v.remove_suffix(1);
  const size_t x = v.find('x');
  if (x == std::string_view::npos || x == 0 || x + 1 == v.size()) return false;
  const auto digits = [](std::string_view d) {
    for (char c : d)
      if (c < '0' || c > '9') return false;
    return true;
  };
  const std::string_view a = v.substr(0, x), b = v.substr(x + 1);
  if (!digits(a) || !digits(b)) return false;
  const auto wi = parse_int<int>(a), hi = parse_int<int>(b);
  if (!wi || !hi) return false;
  w = *wi;
  h = *hi;
  return true;
}

constexpr std::string_view kCoreKeys[] = {
    "Prompt", "Negative prompt", "Steps", "Sampler",   "Schedule type",      "CFG scale", "Seed",
    "Size",   "Model hash",      "Model", "Clip skip", "Denoising strength", "Version"};

bool is_core_key(std::string_view k) {
  for (std::string_view c : kCoreKeys)
    if (c == k) return true;
  return false;
}

}  // namespace

const std::string* GenerationParams::find_extra(std::string_view key) const {
  for (const auto& [k, v] : extra)
    if (k == key) return &v;
  return nullptr;
}

void GenerationParams::set_extra(std::string key, std::string value) {
  for (auto& [k, v] : extra) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  extra.emplace_back(std::move(key), std::move(value));
}

std::string infotext_quote(std::string_view value) {
  // Beyond A1111: a value whose first non-space character is '"' is quoted too. A1111 writes it raw
  // and its parser then reads it as the start of a quoted value that can swallow the pairs after it.
  size_t i = 0;
  while (i < value.size()) {
    const CodePoint c = decode_utf8(value, i);
    if (!is_space(c.cp)) break;
    i += c.len;
  }
  const bool looks_quoted = i < value.size() && value[i] == '"';
  if (!looks_quoted && value.find_first_of(",:\n") == std::string_view::npos) return std::string(value);
  return json_dumps(value);
}

// re_param = \s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$), applied with re.findall. The
// backtracking regex is deterministic here, which allows a linear scan:
//  * the key is the maximal run of [\w \-/] starting at a \w, at least two characters, and must be
//    followed directly by ':' (a shorter key would end before a class character, never before ':');
//  * the quoted alternative ends at the first unescaped '"' and is taken only if a ',' or the end
//    follows; otherwise the value is everything up to the next ',' (quote characters included).
// When no match starts at a position, no start inside the same key run can match either, so the
// scan resumes after the run (Python retries each one and gets the same answer).
std::vector<std::pair<std::string, std::string>> infotext_find_params(std::string_view s) {
  std::vector<std::pair<std::string, std::string>> out;
  const size_t n = s.size();
  constexpr size_t npos = std::string_view::npos;

  // qend[i]: where `(?:\\.|[^\\"])*"` starting at i finds its closing quote, or npos.
  std::vector<size_t> qend;
  if (s.find('"') != npos) {
    qend.assign(n + 1, npos);
    for (size_t i = n; i-- > 0;) {
      if (s[i] == '"') {
        qend[i] = i;
      } else if (s[i] == '\\') {
        if (i + 1 < n && s[i + 1] != '\n') qend[i] = qend[i + 1 + decode_utf8(s, i + 1).len];
      } else {
        qend[i] = qend[i + decode_utf8(s, i).len];
      }
    }
  }

  size_t pos = 0;
  while (pos < n) {
    size_t q = pos;
    CodePoint c{0, 0};
    while (q < n && is_space((c = decode_utf8(s, q)).cp)) q += c.len;
    if (q >= n) break;
    if (!is_word(c.cp)) {
      pos = q + c.len;
      continue;
    }
    size_t e = q + c.len, key_chars = 1;
    while (e < n) {
      const CodePoint k = decode_utf8(s, e);
      if (!is_key_char(k.cp)) break;
      e += k.len;
      ++key_chars;
    }
    if (key_chars < 2 || e >= n || s[e] != ':') {
      pos = e;
      continue;
    }
    size_t v = e + 1;
    while (v < n && is_space((c = decode_utf8(s, v)).cp)) v += c.len;
    // Quoted alternative: '"', at least one item, the closing '"', then ',' or the end.
    if (v + 1 < n && s[v] == '"' && s[v + 1] != '"') {
      const size_t close = qend[v + 1];
      // `$` also matches before a final '\n'.
      const bool at_end = close != npos && (close + 1 == n || (close + 2 == n && s[close + 1] == '\n'));
      if (close != npos && (at_end || s[close + 1] == ',')) {
        out.emplace_back(std::string(s.substr(q, e - q)), std::string(s.substr(v, close + 1 - v)));
        pos = at_end ? close + 1 : close + 2;
        continue;
      }
    }
    size_t comma = s.find(',', v);
    if (comma == npos) comma = n;
    out.emplace_back(std::string(s.substr(q, e - q)), std::string(s.substr(v, comma - v)));
    pos = comma == n ? n : comma + 1;
  }
  return out;
}

std::string to_infotext(const GenerationParams& p) {
  std::vector<std::pair<std::string, std::string>> kv;
  kv.emplace_back("Steps", std::to_string(p.steps));
  if (!p.sampler.empty()) kv.emplace_back("Sampler", p.sampler);
  if (!p.schedule_type.empty()) kv.emplace_back("Schedule type", p.schedule_type);
  kv.emplace_back("CFG scale", format_float(p.cfg_scale));
  kv.emplace_back("Seed", std::to_string(p.seed));
  kv.emplace_back("Size", std::to_string(p.width) + "x" + std::to_string(p.height));
  if (!p.model_hash.empty()) kv.emplace_back("Model hash", p.model_hash);
  if (!p.model_name.empty()) kv.emplace_back("Model", p.model_name);
  if (p.denoising_strength) kv.emplace_back("Denoising strength", format_float(*p.denoising_strength));
  if (p.clip_skip > 1) kv.emplace_back("Clip skip", std::to_string(p.clip_skip));
  for (const auto& [k, v] : p.extra)
    if (!is_core_key(k)) kv.emplace_back(k, v);
  if (!p.version.empty()) kv.emplace_back("Version", p.version);

  std::string params;
  for (const auto& [k, v] : kv) {
    if (!params.empty()) params += ", ";
    params += k;
    if (k != v) params += ": " + infotext_quote(v);
  }
  std::string text = p.prompt;
  if (!p.negative_prompt.empty()) text += "\nNegative prompt: " + p.negative_prompt;
  text += "\n" + params;
  return std::string(py_strip(text));
}

GenerationParams parse_infotext(std::string_view x) {
  GenerationParams p;
  const std::string_view text = py_strip(x);

  std::vector<std::string_view> lines;
  for (size_t start = 0;;) {
    const size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) {
      lines.push_back(text.substr(start));
      break;
    }
    lines.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  std::string_view lastline = lines.back();
  lines.pop_back();
  auto params = infotext_find_params(lastline);
  if (params.size() < 3) {
    lines.push_back(lastline);
    params.clear();
  }

  bool done_with_prompt = false;
  for (std::string_view line : lines) {
    line = py_strip(line);
    if (starts_with(line, "Negative prompt:")) {
      done_with_prompt = true;
      line = py_strip(line.substr(16));
    }
    std::string& dst = done_with_prompt ? p.negative_prompt : p.prompt;
    if (!dst.empty()) dst += '\n';
    dst += line;
  }

  for (auto& [k, raw] : params) {
    if (raw.empty()) continue;  // A1111 raises IndexError on v[0] and skips the pair
    std::string v = raw;
    if (v.front() == '"' && v.back() == '"') {
      if (auto u = json_loads_string(v)) v = std::move(*u);
    }
    bool ok = true;
    if (k == "Prompt") {
      p.prompt = v;
    } else if (k == "Negative prompt") {
      p.negative_prompt = v;
    } else if (k == "Steps") {
      const auto i = parse_int<int>(v);
      if ((ok = i.has_value())) p.steps = *i;
    } else if (k == "Sampler") {
      p.sampler = v;
    } else if (k == "Schedule type") {
      p.schedule_type = v;
    } else if (k == "CFG scale") {
      const auto f = parse_float(v);
      if ((ok = f.has_value())) p.cfg_scale = *f;
    } else if (k == "Seed") {
      const auto i = parse_int<int64_t>(v);
      if ((ok = i.has_value())) p.seed = *i;
    } else if (k == "Size") {
      ok = parse_size(v, p.width, p.height);
    } else if (k == "Model hash") {
      p.model_hash = v;
    } else if (k == "Model") {
      p.model_name = v;
    } else if (k == "Clip skip") {
      const auto i = parse_int<int>(v);
      if ((ok = i.has_value())) p.clip_skip = *i;
    } else if (k == "Denoising strength") {
      const auto f = parse_float(v);
      if ((ok = f.has_value())) p.denoising_strength = *f;
    } else if (k == "Version") {
      p.version = v;
    } else {
      ok = false;
    }
    if (!ok) p.set_extra(k, std::move(v));
  }
  return p;
}

std::string a1111_model_hash(const std::string& path) {
  const auto f = MappedFile::open(path);
  f->advise_sequential();
  Sha256 h;
  constexpr size_t kChunk = size_t(1) << 20;
  for (size_t off = 0; off < f->size(); off += kChunk) h.update(f->data() + off, std::min(kChunk, f->size() - off));
  const auto d = h.digest();
  return to_hex(d.data(), d.size()).substr(0, 10);
}

}  // namespace sdserve
