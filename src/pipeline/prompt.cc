#include "pipeline/prompt.h"

#include <charconv>
#include <cstdint>

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

}  // namespace sdserve
