#include "pipeline/prompt.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>

#include "core/error.h"

#include "pipeline/tokenizer.h"

namespace sdserve {

namespace {

// The code point starting at byte i and its length; invalid bytes decode as themselves (one
// byte, never alphanumeric or space), which is all the callers need.
char32_t decode_at(std::string_view s, size_t i, size_t* len) {
  const auto b = static_cast<uint8_t>(s[i]);
  int n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + size_t(n) > s.size()) {
    *len = 1;
    return 0xFFFD;
  }
  char32_t c = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (int k = 1; k < n; ++k) {
    const auto cb = static_cast<uint8_t>(s[i + size_t(k)]);
    if ((cb & 0xC0) != 0x80) {
      *len = 1;
      return 0xFFFD;
    }
    c = (c << 6) | (cb & 0x3F);
  }
  *len = size_t(n);
  return c;
}

// The code point ending just before byte i.
char32_t decode_before(std::string_view s, size_t i) {
  size_t start = i - 1;
  while (start > 0 && i - start < 4 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
  size_t len = 0;
  const char32_t c = decode_at(s, start, &len);
  return start + len == i ? c : 0xFFFD;
}

// Python's str.isspace(), which is what \s matches in a str pattern.
bool py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// \w in a Python str pattern: alphanumeric or underscore.
bool py_word(char32_t c) { return c == '_' || tokenizer_detail::unicode_is_alnum(c); }

size_t skip_space(std::string_view s, size_t i) {
  while (i < s.size()) {
    size_t len = 0;
    if (!py_space(decode_at(s, i, &len))) break;
    i += len;
  }
  return i;
}

// Python float() on what [+-]?[.\d]+ matched: at least one digit and at most one dot.
bool parse_weight(std::string_view w, double* out) {
  if (!w.empty() && (w[0] == '+' || w[0] == '-')) {
    if (!parse_weight(w.substr(1), out)) return false;
    if (w[0] == '-') *out = -*out;
    return true;
  }
  int dots = 0, digits = 0;
  for (char c : w) (c == '.' ? dots : digits) += 1;
  if (digits == 0 || dots > 1) return false;
  const std::string s = w.back() == '.' ? std::string(w) + "0" : std::string(w);  // "1." -> "1.0"
  const auto r = std::from_chars(s.data(), s.data() + s.size(), *out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

// re_attention's weighted close at i (which holds ':'): ":\s*([+-]?[.\d]+)\s*\)". Returns the
// token length (0: no match) and the number's text.
size_t match_weighted_close(std::string_view s, size_t i, std::string_view* number) {
  size_t p = skip_space(s, i + 1);
  const size_t n0 = p;
  if (p < s.size() && (s[p] == '+' || s[p] == '-')) ++p;
  const size_t d0 = p;
  while (p < s.size() && (s[p] == '.' || (s[p] >= '0' && s[p] <= '9'))) ++p;
  if (p == d0) return 0;
  *number = s.substr(n0, p - n0);
  p = skip_space(s, p);
  if (p >= s.size() || s[p] != ')') return 0;
  return p + 1 - i;
}

// re.split(r"\s*\bBREAK\b\s*", text): the pieces between matches.
std::vector<std::string> split_break(std::string_view t) {
  std::vector<std::string> parts;
  size_t from = 0, search = 0;
  while (true) {
    const size_t p = t.find("BREAK", search);
    if (p == std::string_view::npos) break;
    const size_t q = p + 5;
    size_t len = 0;
    const bool left = p == 0 || !py_word(decode_before(t, p));
    const bool right = q == t.size() || !py_word(decode_at(t, q, &len));
    if (!left || !right) {
      search = p + 1;
      continue;
    }
    size_t start = p;  // leading whitespace, back to where the previous match ended
    while (start > from) {
      const char32_t c = decode_before(t, start);
      if (!py_space(c)) break;
      size_t back = start - 1;
      while (back > from && (static_cast<uint8_t>(t[back]) & 0xC0) == 0x80) --back;
      start = back;
    }
    parts.emplace_back(t.substr(from, start - from));
    from = search = skip_space(t, q);
  }
  parts.emplace_back(t.substr(from));
  return parts;
}

bool is_text_byte(char c) { return c != '\\' && c != '(' && c != ')' && c != '[' && c != ']' && c != ':'; }

}  // namespace

std::vector<PromptPiece> parse_prompt_attention(std::string_view s) {
  std::vector<PromptPiece> res;
  std::vector<size_t> round, square;
  auto multiply_range = [&](size_t start, double m) {
    for (size_t p = start; p < res.size(); ++p) res[p].weight *= m;
  };
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    size_t len = 1;
    std::string_view number;
    double w = 0;
    if (c == '\\') {
      // \( \) \[ \] \\ are the escaped character; a backslash before anything else is dropped.
      const bool pair = i + 1 < s.size() &&
                        (s[i + 1] == '(' || s[i + 1] == ')' || s[i + 1] == '[' || s[i + 1] == ']' || s[i + 1] == '\\');
      len = pair ? 2 : 1;
      res.push_back({std::string(s.substr(i + 1, len - 1)), 1.0});
    } else if (c == '(') {
      round.push_back(res.size());
    } else if (c == '[') {
      square.push_back(res.size());
    } else if (c == ':' && (len = match_weighted_close(s, i, &number)) > 0 && parse_weight(number, &w) &&
               !round.empty()) {
      multiply_range(round.back(), w);
      round.pop_back();
    } else if (c == ')' && !round.empty()) {
      multiply_range(round.back(), 1.1);
      round.pop_back();
    } else if (c == ']' && !square.empty()) {
      multiply_range(square.back(), 1 / 1.1);
      square.pop_back();
    } else {
      if (c == ':') {
        if (len == 0) len = 1;  // a plain ':' (the weighted-close token stays whole if it matched)
      } else if (is_text_byte(c)) {
        while (i + len < s.size() && is_text_byte(s[i + len])) ++len;
      }
      const auto parts = split_break(s.substr(i, len));
      for (size_t k = 0; k < parts.size(); ++k) {
        if (k > 0) res.push_back({"BREAK", -1});
        res.push_back({parts[k], 1.0});
      }
    }
    i += len;
  }
  for (size_t pos : round) multiply_range(pos, 1.1);
  for (size_t pos : square) multiply_range(pos, 1 / 1.1);
  if (res.empty()) res.push_back({"", 1.0});
  for (size_t k = 0; k + 1 < res.size();) {
    if (res[k].weight == res[k + 1].weight) {
      res[k].text += res[k + 1].text;
      res.erase(res.begin() + std::ptrdiff_t(k + 1));
    } else {
      ++k;
    }
  }
  return res;
}

ExtraNetworkPrompt parse_extra_networks(std::string_view s) {
  ExtraNetworkPrompt out;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] == '<') {
      // \w+ (maximal: it cannot contain ':'), then ':', then [^>]+ up to the first '>'.
      size_t j = i + 1, len = 0;
      while (j < s.size() && py_word(decode_at(s, j, &len))) j += len;
      const size_t close = j < s.size() && s[j] == ':' ? s.find('>', j + 1) : std::string_view::npos;
      if (j > i + 1 && close != std::string_view::npos && close > j + 1) {
        ExtraNetworkCall call;
        call.network = std::string(s.substr(i + 1, j - i - 1));
        const std::string_view args = s.substr(j + 1, close - j - 1);
        size_t a = 0;
        while (true) {
          const size_t colon = args.find(':', a);
          call.items.emplace_back(args.substr(a, colon == std::string_view::npos ? args.npos : colon - a));
          if (colon == std::string_view::npos) break;
          a = colon + 1;
        }
        out.calls.push_back(std::move(call));
        i = close + 1;
        continue;
      }
    }
    out.prompt += s[i++];
  }
  return out;
}

namespace {

// Python float() on a multiplier: surrounding whitespace allowed; finite values only.
bool parse_multiplier(const std::string& text, float* out) {
  size_t b = 0, e = text.size();
  while (b < e && py_space(static_cast<unsigned char>(text[b]))) ++b;
  while (e > b && py_space(static_cast<unsigned char>(text[e - 1]))) --e;
  if (b == e) return false;
  const std::string t = text.substr(b, e - b);
  char* end = nullptr;
  const double v = std::strtod(t.c_str(), &end);
  if (end != t.c_str() + t.size() || !std::isfinite(v)) return false;
  *out = float(v);
  return true;
}

std::string tag_text(const ExtraNetworkCall& c) {
  std::string t = "<" + c.network;
  for (const auto& item : c.items) t += ":" + item;
  return t + ">";
}

}  // namespace

std::vector<LoraCall> lora_calls(const std::vector<ExtraNetworkCall>& calls) {
  std::vector<LoraCall> out;
  for (const ExtraNetworkCall& c : calls) {
    if (c.network != "lora" && c.network != "lyco") continue;
    std::vector<std::string> positional;
    std::map<std::string, std::string> named;
    for (const std::string& item : c.items) {
      const size_t eq = item.find('=');
      // Python's item.split('=', 2): exactly two parts make a named argument.
      if (eq != std::string::npos && item.find('=', eq + 1) == std::string::npos)
        named[item.substr(0, eq)] = item.substr(eq + 1);
      else
        positional.push_back(item);
    }
    if (positional.empty() || positional[0].empty())
      throw InvalidArgument("prompt tag " + tag_text(c) + " names no LoRA: write <lora:NAME:WEIGHT>");
    LoraCall l;
    l.name = positional[0];
    auto number = [&](const std::string& text, const char* what) {
      float v = 0.f;
      if (!parse_multiplier(text, &v))
        throw InvalidArgument("prompt tag " + tag_text(c) + ": " + what + " multiplier '" + text +
                              "' is not a number (write e.g. <lora:" + l.name + ":0.8>)");
      return v;
    };
    if (positional.size() > 1) l.te_multiplier = number(positional[1], "text-encoder");
    if (named.count("te")) l.te_multiplier = number(named["te"], "te=");
    l.unet_multiplier = positional.size() > 2 ? number(positional[2], "UNet") : l.te_multiplier;
    if (named.count("unet")) l.unet_multiplier = number(named["unet"], "unet=");
    out.push_back(std::move(l));
  }
  return out;
}

std::vector<PromptChunk> chunk_prompt(const ClipTokenizer& tok, std::string_view prompt, const ChunkOptions& opt,
                                      const std::vector<EmbeddingName>& embeddings) {
  constexpr size_t kChunk = 75;
  const std::vector<int32_t> comma_ids = tok.tokenize(",");
  const int32_t comma = comma_ids.size() == 1 ? comma_ids[0] : -1;
  std::vector<PromptChunk> chunks;
  std::vector<int32_t> ids;
  std::vector<float> mult;
  std::vector<PromptChunk::Fix> fixes;
  int64_t last_comma = -1;
  // Embeddings by their first token id, longest names first (A1111's ids_lookup).
  std::map<int32_t, std::vector<size_t>> by_first;
  for (size_t e = 0; e < embeddings.size(); ++e) {
    if (embeddings[e].ids.empty()) continue;
    SD_CHECK_ARG(embeddings[e].vectors >= 1 && embeddings[e].vectors <= int64_t(kChunk),
                 "a textual-inversion embedding has " + std::to_string(embeddings[e].vectors) +
                     " vectors; at most 75 fit in a prompt chunk");
    by_first[embeddings[e].ids[0]].push_back(e);
  }
  for (auto& [first, list] : by_first)
    std::stable_sort(list.begin(), list.end(),
                     [&](size_t a, size_t b) { return embeddings[a].ids.size() > embeddings[b].ids.size(); });
  auto next_chunk = [&] {
    if (chunks.size() == opt.max_chunks)
      throw InvalidArgument("prompt too long: more than " + std::to_string(opt.max_chunks) + " chunks of 75 tokens (" +
                            std::to_string(opt.max_chunks * kChunk) + " tokens); shorten it");
    PromptChunk c;
    c.ids.reserve(kChunk + 2);
    c.ids.push_back(tok.bos_id());
    c.ids.insert(c.ids.end(), ids.begin(), ids.end());
    c.ids.push_back(tok.eos_id());  // the first EOS; everything after it is padding
    c.ids.resize(kChunk + 2, tok.pad_id());
    c.multipliers.push_back(1.f);
    c.multipliers.insert(c.multipliers.end(), mult.begin(), mult.end());
    c.multipliers.resize(kChunk + 2, 1.f);
    c.fixes = std::move(fixes);
    chunks.push_back(std::move(c));
    ids.clear();
    mult.clear();
    fixes.clear();
    last_comma = -1;
  };
  for (const PromptPiece& piece : parse_prompt_attention(prompt)) {
    if (piece.weight == -1 && piece.text == "BREAK") {
      next_chunk();
      continue;
    }
    const std::vector<int32_t> tokens = tok.tokenize(piece.text);
    for (size_t pos = 0; pos < tokens.size();) {
      const int32_t t = tokens[pos];
      if (t == comma) {
        last_comma = int64_t(ids.size());
      } else if (opt.comma_backtrack != 0 && ids.size() == kChunk && last_comma != -1 &&
                 int64_t(ids.size()) - last_comma <= opt.comma_backtrack) {
        const size_t cut = size_t(last_comma) + 1;
        std::vector<int32_t> moved_ids(ids.begin() + int64_t(cut), ids.end());
        std::vector<float> moved_mult(mult.begin() + int64_t(cut), mult.end());
        std::vector<PromptChunk::Fix> moved_fixes, kept_fixes;
        for (const auto& f : fixes) (f.position >= int64_t(cut) ? moved_fixes : kept_fixes).push_back(f);
        for (auto& f : moved_fixes) f.position -= int64_t(cut);
        ids.resize(cut);
        mult.resize(cut);
        fixes = std::move(kept_fixes);
        next_chunk();
        ids = std::move(moved_ids);
        mult = std::move(moved_mult);
        fixes = std::move(moved_fixes);
      }
      if (ids.size() == kChunk) next_chunk();
      const EmbeddingName* found = nullptr;
      size_t found_index = 0;
      if (auto it = by_first.find(t); it != by_first.end())
        for (size_t e : it->second) {
          const auto& name = embeddings[e].ids;
          if (pos + name.size() <= tokens.size() &&
              std::equal(name.begin(), name.end(), tokens.begin() + int64_t(pos))) {
            found = &embeddings[e];
            found_index = e;
            break;
          }
        }
      if (!found) {
        ids.push_back(t);
        mult.push_back(float(piece.weight));
        ++pos;
        continue;
      }
      if (ids.size() + size_t(found->vectors) > kChunk) next_chunk();
      fixes.push_back({int64_t(ids.size()), found_index});
      ids.insert(ids.end(), size_t(found->vectors), 0);
      mult.insert(mult.end(), size_t(found->vectors), float(piece.weight));
      pos += found->ids.size();
    }
  }
  if (!ids.empty() || chunks.empty()) next_chunk();
  return chunks;
}

PromptTokenCount count_prompt_tokens(const std::vector<PromptChunk>& chunks, int32_t eos_id) {
  PromptTokenCount c;
  c.chunks = chunks.size();
  if (chunks.empty()) return c;
  const std::vector<int32_t>& last = chunks.back().ids;
  size_t n = 0;
  while (1 + n < last.size() && last[1 + n] != eos_id) ++n;
  c.tokens = 75 * (chunks.size() - 1) + n;
  c.limit = std::max<size_t>(1, (c.tokens + 74) / 75) * 75;
  return c;
}

}  // namespace sdserve
