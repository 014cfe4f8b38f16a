#include "pipeline/tokenizer.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>
#include <set>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "io/gzip.h"
#include "pipeline/unicode_tables.h"

extern "C" const unsigned char sdserve_clip_bpe_gz[];
extern "C" const unsigned char sdserve_clip_bpe_gz_end[];

namespace sdserve {

namespace ut = unicode_tables;

namespace {

constexpr const char* kBos = "<|startoftext|>";
constexpr const char* kEos = "<|endoftext|>";
constexpr const char* kEndOfWord = "</w>";
constexpr size_t kCacheMaxEntries = 1 << 16;
constexpr size_t kCacheMaxWordBytes = 256;

// ---------------------------------------------------------------- UTF-8

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

std::string to_utf8(const char32_t* b, const char32_t* e) {
  std::string s;
  s.reserve(static_cast<size_t>(e - b));
  for (; b != e; ++b) append_utf8(s, *b);
  return s;
}

// --------------------------------------------------------- Unicode data

// Run tables hold (first << 8 | value); find the last run starting at or before c.
uint8_t run_lookup(const uint32_t* runs, size_t n, char32_t c) {
  const uint32_t key = (static_cast<uint32_t>(c) << 8) | 0xFF;
  const uint32_t* it = std::upper_bound(runs, runs + n, key);
  return it == runs ? 0 : static_cast<uint8_t>(*(it - 1) & 0xFF);
}

uint8_t char_class(char32_t c) {
  if (c < 0x80) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return ut::kLetter;
    if (c >= '0' && c <= '9') return ut::kNumber;
    if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return ut::kSpace;
    return ut::kOther;
  }
  return run_lookup(ut::kClassRuns, ut::kClassRunsSize, c);
}

uint8_t ccc(char32_t c) { return c < 0x300 ? 0 : run_lookup(ut::kCccRuns, ut::kCccRunsSize, c); }

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount;
constexpr char32_t kSCount = kLCount * kNCount;

void decompose_into(char32_t c, std::u32string& out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const char32_t i = c - kSBase;
    out += kLBase + i / kNCount;
    out += kVBase + (i % kNCount) / kTCount;
    if (i % kTCount) out += kTBase + i % kTCount;
    return;
  }
  if (c >= 0xC0) {
    const auto* end = ut::kDecomp + ut::kDecompSize;
    const auto* it =
        std::lower_bound(ut::kDecomp, end, c, [](const uint32_t(&row)[3], char32_t v) { return row[0] < v; });
    if (it != end && (*it)[0] == c) {
      for (uint32_t k = 0; k < (*it)[2]; ++k) out += static_cast<char32_t>(ut::kDecompPool[(*it)[1] + k]);
      return;
    }
  }
  out += c;
}

// 0 when the pair does not compose.
char32_t compose_pair(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto* end = ut::kCompose + ut::kComposeSize;
  const auto* it = std::lower_bound(ut::kCompose, end, std::pair<char32_t, char32_t>(a, b),
                                    [](const uint32_t(&row)[3], const std::pair<char32_t, char32_t>& v) {
                                      return row[0] != v.first ? row[0] < v.first : row[1] < v.second;
                                    });
  if (it != end && (*it)[0] == a && (*it)[1] == b) return (*it)[2];
  return 0;
}

std::u32string nfc(const std::u32string& s) {
  // Below U+0300 nothing decomposes into a non-starter or composes, except letters followed by marks
  // (which are >= U+0300), so pure Latin-1 text is already NFC.
  if (std::all_of(s.begin(), s.end(), [](char32_t c) { return c < 0x300; })) return s;
  std::u32string d;
  d.reserve(s.size() + 8);
  for (char32_t c : s) decompose_into(c, d);
  // Canonical ordering: stable sort of every run of non-starters by class.
  for (size_t i = 0; i < d.size();) {
    if (ccc(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && ccc(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + i, d.begin() + j, [](char32_t x, char32_t y) { return ccc(x) < ccc(y); });
    i = j;
  }
  std::u32string out;
  if (d.empty()) return out;
  out.reserve(d.size());
  out += d[0];
  ptrdiff_t starter = ccc(d[0]) == 0 ? 0 : -1;
  int last = ccc(d[0]) == 0 ? 0 : 256;
  for (size_t i = 1; i < d.size(); ++i) {
    const char32_t c = d[i];
    const int cc = ccc(c);
    if (starter >= 0 && (last < cc || last == 0)) {
      if (char32_t comp = compose_pair(out[starter], c)) {
        out[starter] = comp;
        continue;
      }
    }
    if (cc == 0) starter = static_cast<ptrdiff_t>(out.size());
    last = cc;
    out += c;
  }
  return out;
}

void append_lower(char32_t c, std::u32string& out) {
  if (c < 0x80) {
    out += (c >= 'A' && c <= 'Z') ? c + 32 : c;
    return;
  }
  const auto* end = ut::kLowerSingle + ut::kLowerSingleSize;
  const auto* it =
      std::lower_bound(ut::kLowerSingle, end, c, [](const uint32_t(&row)[2], char32_t v) { return row[0] < v; });
  if (it != end && (*it)[0] == c) {
    out += static_cast<char32_t>((*it)[1]);
    return;
  }
  for (size_t i = 0; i < ut::kLowerMultiSize; ++i) {
    if (ut::kLowerMulti[i][0] == c) {
      for (uint32_t k = 0; k < ut::kLowerMulti[i][1]; ++k) out += static_cast<char32_t>(ut::kLowerMulti[i][2 + k]);
      return;
    }
  }
  out += c;
}

// The CLIP normalizer: NFC, then every run of \s becomes one space, then per-character lowercase.
std::u32string normalize32(const std::u32string& s) {
  const std::u32string n = nfc(s);
  std::u32string out;
  out.reserve(n.size());
  for (size_t i = 0; i < n.size();) {
    if (char_class(n[i]) == ut::kSpace) {
      out += U' ';
      while (i < n.size() && char_class(n[i]) == ut::kSpace) ++i;
      continue;
    }
    append_lower(n[i++], out);
  }
  return out;
}

// -------------------------------------------------------- pre-tokenizer

bool starts_with(const char32_t* p, const char32_t* end, const char* lit) {
  for (; *lit; ++lit, ++p) {
    if (p == end || *p != static_cast<char32_t>(static_cast<unsigned char>(*lit))) return false;
  }
  return true;
}

// Length of a contraction ('s 't 're 've 'm 'll 'd) at p, or 0; alternatives in regex order.
size_t contraction_len(const char32_t* p, const char32_t* end) {
  static const char* const kAlts[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  for (const char* alt : kAlts)
    if (starts_with(p, end, alt)) return std::char_traits<char>::length(alt);
  return 0;
}

// Length of the class run at p (letters+, one number (CLIP) or numbers+ (GPT-2), other+).
size_t class_run_len(const char32_t* p, const char32_t* end, bool single_number) {
  const uint8_t cls = char_class(*p);
  if (cls == ut::kNumber && single_number) return 1;
  const char32_t* q = p + 1;
  while (q != end && char_class(*q) == cls) ++q;
  return static_cast<size_t>(q - p);
}

// The CLIP split regex (matches kept, whitespace dropped):
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// followed by ByteLevel's GPT-2 regex on each piece:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Pieces hold no whitespace, so the second split only changes "<|...|>" pieces ("<|", word, "|>").
template <typename Fn>
void pre_tokenize(const std::u32string& s, Fn&& emit) {
  const char32_t* p = s.data();
  const char32_t* end = p + s.size();
  while (p != end) {
    if (char_class(*p) == ut::kSpace) {
      ++p;
      continue;
    }
    size_t n = 0;
    if (starts_with(p, end, kBos)) {
      n = 15;
    } else if (starts_with(p, end, kEos)) {
      n = 13;
    } else if ((n = contraction_len(p, end)) == 0) {
      n = class_run_len(p, end, /*single_number=*/true);
    }
    // GPT-2 split of the piece [p, p+n).
    const char32_t* q = p;
    const char32_t* piece_end = p + n;
    while (q != piece_end) {
      size_t m = contraction_len(q, piece_end);
      if (m == 0) m = class_run_len(q, piece_end, /*single_number=*/false);
      emit(q, q + m);
      q += m;
    }
    p = piece_end;
  }
}

// Byte-level alphabet: byte -> printable code point (GPT-2 / CLIP `bytes_to_unicode`).
const std::array<char32_t, 256>& byte_to_unicode() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = printable ? static_cast<char32_t>(b) : 256 + n++;
    }
    return t;
  }();
  return table;
}

struct MergeEntry {
  int32_t rank;
  int32_t new_id;
};

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw NotFoundError(path + ": no such file");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw IoError(path + ": cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw IoError(path + ": read failed");
  return ss.str();
}

std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    pos = nl + 1;
  }
  return lines;
}

}  // namespace

// An added token as the reference's AddedVocabulary matches it: one per id, with the flags of the
// last token added for that id.
struct AddedMatcher {
  std::u32string pattern;  // content, or its normalized form for normalized tokens
  int32_t id = -1;
  bool single_word = false, lstrip = false, rstrip = false;
  bool skip = false;  // split_special_tokens is set and the content is a special token: never matched
};

// Rust regex's Unicode \w (Alphabetic, marks, Nd, Pc, Join_Control), approximated from our tables
// (letters, numbers, marks with a non-zero combining class). Only single_word tokens use it.
bool is_word_char(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  switch (c) {
    case 0x200C:
    case 0x200D:  // Join_Control
    case 0x203F:
    case 0x2040:
    case 0x2054:
    case 0xFE33:  // Pc
    case 0xFE34:
    case 0xFE4D:
    case 0xFE4E:
    case 0xFE4F:
    case 0xFF3F:
      return true;
    default:
      break;
  }
  const uint8_t cls = char_class(c);
  return cls == ut::kLetter || cls == ut::kNumber || ccc(c) != 0;
}

// AddedVocabulary::find_matches: leftmost-longest, non-overlapping matches of the patterns; a match
// that breaks single_word is dropped (the search goes on after it); lstrip/rstrip widen a match over
// the whitespace beside it. Calls emit(id, begin, end) for every piece in order, id -1 for plain text.
template <typename Fn>
void find_added(const std::u32string& s, const std::vector<AddedMatcher>& tokens, Fn&& emit) {
  const size_t n = s.size();
  if (tokens.empty() || n == 0) {
    if (n) emit(-1, 0, n);
    return;
  }
  size_t start_offset = 0, pos = 0;
  while (pos < n) {
    const AddedMatcher* best = nullptr;
    size_t at = pos;
    for (; at < n && !best; ++at) {
      for (const AddedMatcher& t : tokens) {
        if (t.pattern.size() > n - at || (best && t.pattern.size() <= best->pattern.size())) continue;
        if (s.compare(at, t.pattern.size(), t.pattern) == 0) best = &t;
      }
      if (best) break;
    }
    if (!best) break;
    size_t start = at, stop = at + best->pattern.size();
    pos = stop;
    if (best->skip) continue;
    if (best->single_word) {
      const bool start_space = start == 0 || !is_word_char(s[start - 1]);
      const bool stop_space = stop == n || !is_word_char(s[stop]);
      if (!start_space || !stop_space) continue;
    }
    if (best->lstrip) {
      size_t newstart = start;
      while (newstart > 0 && char_class(s[newstart - 1]) == ut::kSpace) --newstart;
      start = std::max(newstart, start_offset);
    }
    if (best->rstrip) {
      while (stop < n && char_class(s[stop]) == ut::kSpace) ++stop;
    }
    if (start_offset < start) emit(-1, start_offset, start);
    emit(best->id, start, stop);
    start_offset = stop;
  }
  if (start_offset != n) emit(-1, start_offset, n);
}

// ------------------------------------------------------------------ Impl

struct ClipTokenizer::Impl {
  std::unordered_map<std::string, int32_t> vocab;  // token string (byte-level chars) -> id
  std::unordered_map<int32_t, std::string> id_to_token;
  std::array<std::array<int32_t, 2>, 256> byte_ids{};  // [byte][is_last] -> id or -1
  std::unordered_map<uint64_t, MergeEntry> merges;
  int32_t bos = -1, eos = -1, pad = -1, unk = -1;
  // Added tokens matched on the raw text, and on the normalized text of what lies between them.
  std::vector<AddedMatcher> raw_added, normalized_added;

  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  void bpe(std::string_view word, std::vector<int32_t>& out) const;
  void encode_segment(const char32_t* b, const char32_t* e, std::vector<int32_t>& out) const;
  void tokenize_into(std::string_view text, std::vector<int32_t>& out) const;
};

namespace {

std::unique_ptr<ClipTokenizer::Impl> build_impl(const nlohmann::json& vocab_json, std::string_view merges_text,
                                                const std::string& vocab_name, const std::string& merges_name) {
  auto impl = std::make_unique<ClipTokenizer::Impl>();
  if (!vocab_json.is_object() || vocab_json.empty())
    throw ModelFormatError(vocab_name + ": expected a non-empty JSON object of token -> id");
  impl->vocab.reserve(vocab_json.size());
  for (const auto& [tok, id] : vocab_json.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
      throw ModelFormatError(vocab_name + ": id of token \"" + tok + "\" is not a non-negative 32-bit integer");
    const auto v = static_cast<int32_t>(id.get<int64_t>());
    impl->vocab[tok] = v;
    impl->id_to_token.emplace(v, tok);
  }
  auto find = [&](const std::string& tok) -> int32_t {
    auto it = impl->vocab.find(tok);
    return it == impl->vocab.end() ? -1 : it->second;
  };
  impl->bos = find(kBos);
  impl->eos = find(kEos);
  if (impl->bos < 0 || impl->eos < 0)
    throw ModelFormatError(vocab_name + ": missing special token " + std::string(impl->bos < 0 ? kBos : kEos));
  impl->unk = impl->eos;
  impl->pad = impl->eos;
  // What CLIPTokenizer(vocab, merges) registers: BOS and EOS as special tokens with normalized=false.
  for (const char* tok : {kBos, kEos}) {
    AddedMatcher m;
    m.id = tok == kBos ? impl->bos : impl->eos;
    for (const char* c = tok; *c; ++c) m.pattern += static_cast<char32_t>(*c);
    impl->raw_added.push_back(std::move(m));
  }
  const auto& b2u = byte_to_unicode();
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    append_utf8(ch, b2u[b]);
    impl->byte_ids[b][0] = find(ch);
    impl->byte_ids[b][1] = find(ch + kEndOfWord);
  }

  const auto lines = split_lines(merges_text);
  int32_t rank = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string_view line = lines[i];
    if (line.starts_with("#version")) continue;
    const size_t sp = line.find(' ');
    if (sp == std::string_view::npos || line.find(' ', sp + 1) != std::string_view::npos)
      throw ModelFormatError(merges_name + ": line " + std::to_string(i + 1) + " is not \"<a> <b>\"");
    const std::string a(line.substr(0, sp)), b(line.substr(sp + 1));
    const int32_t ia = find(a), ib = find(b), inew = find(a + b);
    if (ia < 0 || ib < 0 || inew < 0) {
      const std::string& missing = ia < 0 ? a : ib < 0 ? b : a + b;
      throw ModelFormatError(merges_name + ": line " + std::to_string(i + 1) + ": token \"" + missing +
                             "\" is not in the vocabulary");
    }
    // Later duplicates win, as in the reference's hash map.
    impl->merges[pair_key(ia, ib)] = MergeEntry{rank++, inew};
  }
  return impl;
}

nlohmann::json parse_json(const std::string& text, const std::string& name) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw ModelFormatError(name + ": invalid JSON (" + e.what() + ")");
  }
}

// ------------------------------------------- from_pretrained emulation
//
// transformers 5 `CLIPTokenizer.from_pretrained(dir)` (tokenization_utils_base._from_pretrained,
// TokenizersBackend.__init__) followed by tokenizers' AddedVocabulary::add_tokens. The comments name
// the Python steps; docs/TOKENIZER.md summarises the result.

using ojson = nlohmann::ordered_json;  // Python dicts keep insertion order, and so must we

// A tokenizers.AddedToken as Python holds it: flags not given stay unset, and `normalized` then
// defaults to `not special` when the Rust token is made (so setting `special` later changes it).
struct PyAddedToken {
  std::string content;
  bool special = false;
  std::optional<bool> single_word, lstrip, rstrip, normalized;
  bool norm() const { return normalized.value_or(!special); }
  // Rust AddedToken equality (all fields of the final token).
  bool operator==(const PyAddedToken& o) const {
    return content == o.content && special == o.special &&
           single_word.value_or(false) == o.single_word.value_or(false) &&
           lstrip.value_or(false) == o.lstrip.value_or(false) && rstrip.value_or(false) == o.rstrip.value_or(false) &&
           norm() == o.norm();
  }
};

// A special-token value: a Python str or an AddedToken.
struct TokVal {
  std::optional<std::string> str;
  PyAddedToken tok;
  const std::string& text() const { return str ? *str : tok.content; }  // Python str(value)
  bool truthy() const { return !str || !str->empty(); }
  // Python ==: str == str by value, AddedToken == AddedToken by all fields, never across types.
  bool operator==(const TokVal& o) const {
    if (str.has_value() != o.str.has_value()) return false;
    return str ? *str == *o.str : tok == o.tok;
  }
};

// Already-converted AddedTokens travel inside the JSON tree as objects tagged with this key, so that
// the tree can still hold raw dicts (which transformers only converts when they carry "__type").
constexpr const char* kTag =
    "\x01"
    "AddedToken";

std::string quote_text(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s.substr(0, 80)) {
    if (c < 0x20 || c == 0x7F || c == '"' || c == '\\') {
      char buf[8];
      snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + (s.size() > 80 ? "...\"" : "\"");
}

class ConfigError {
 public:
  explicit ConfigError(std::string where) : where_(std::move(where)) {}
  [[noreturn]] void fail(const std::string& msg) const { throw ModelFormatError(where_ + ": " + msg); }
  const std::string& where() const { return where_; }

 private:
  std::string where_;
};

// AddedToken(**obj) (plus special=True when `force_special`, as for special_tokens_map.json entries).
PyAddedToken added_token_from(const ojson& obj, const ConfigError& err, const std::string& what, bool force_special) {
  if (!obj.is_object()) err.fail(what + " is not an object");
  PyAddedToken t;
  auto flag = [&](const std::string& key, const ojson& v) -> bool {
    if (!v.is_boolean()) err.fail(what + ": \"" + key + "\" must be true or false");
    return v.get<bool>();
  };
  for (const auto& [key, v] : obj.items()) {
    if (key == "content") {
      if (v.is_null()) continue;
      if (!v.is_string()) err.fail(what + ": \"content\" must be a string");
      t.content = v.get<std::string>();
    } else if (key == "special") {
      if (force_special) err.fail(what + ": \"special\" given twice");
      t.special = flag(key, v);
    } else if (key == "single_word") {
      t.single_word = flag(key, v);
    } else if (key == "lstrip") {
      t.lstrip = flag(key, v);
    } else if (key == "rstrip") {
      t.rstrip = flag(key, v);
    } else if (key == "normalized") {
      t.normalized = flag(key, v);
    }  // anything else ("__type", ...) is ignored, as tokenizers does
  }
  if (force_special) t.special = true;
  return t;
}

ojson tagged(const PyAddedToken& t) {
  ojson o = ojson::object();
  o[kTag] = true;
  o["content"] = t.content;
  o["special"] = t.special;
  if (t.single_word) o["single_word"] = *t.single_word;
  if (t.lstrip) o["lstrip"] = *t.lstrip;
  if (t.rstrip) o["rstrip"] = *t.rstrip;
  if (t.normalized) o["normalized"] = *t.normalized;
  return o;
}

bool is_tagged(const ojson& v) { return v.is_object() && v.contains(kTag); }

// convert_added_tokens(init_kwargs): every {"__type": "AddedToken", ...}, at any depth, becomes one.
void convert_added_tokens(ojson& v, const ConfigError& err) {
  if (v.is_object()) {
    if (is_tagged(v)) return;
    auto it = v.find("__type");
    if (it != v.end() && it->is_string() && it->get<std::string>() == "AddedToken") {
      ojson rest = v;
      rest.erase("__type");
      v = tagged(added_token_from(
          rest, err,
          "AddedToken " + quote_text(rest.value("content", ojson()).is_string() ? rest["content"].get<std::string>()
                                                                                : std::string()),
          false));
      return;
    }
    for (auto& [key, child] : v.items()) convert_added_tokens(child, err);
  } else if (v.is_array()) {
    for (auto& child : v) convert_added_tokens(child, err);
  }
}

// A value that must be a str or an AddedToken (after conversion); anything else is the TypeError
// transformers raises.
std::optional<TokVal> tok_val(const ojson& v, const ConfigError& err, const std::string& what) {
  if (v.is_null()) return std::nullopt;
  TokVal t;
  if (v.is_string()) {
    t.str = v.get<std::string>();
  } else if (is_tagged(v)) {
    t.tok = added_token_from(v, err, what, false);
  } else {
    err.fail(what + " must be a string or an AddedToken");
  }
  return t;
}

// Python str(value) where it can equal a token's text; nullopt for other values (dict reprs etc.).
std::optional<std::string> py_str(const ojson& v) {
  if (v.is_string()) return v.get<std::string>();
  if (is_tagged(v) && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

bool py_truthy(const ojson& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number_integer() || v.is_number_unsigned()) return v.get<int64_t>() != 0;
  if (v.is_number_float()) return v.get<double>() != 0.0;
  if (is_tagged(v)) return true;
  return !v.empty();  // string, array, object
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Python int(str) for the keys of added_tokens_decoder.
int64_t py_int(const std::string& key, const ConfigError& err) {
  std::string digits;
  size_t i = 0, n = key.size();
  while (i < n && std::isspace(static_cast<unsigned char>(key[i]))) ++i;
  while (n > i && std::isspace(static_cast<unsigned char>(key[n - 1]))) --n;
  bool neg = false;
  if (i < n && (key[i] == '+' || key[i] == '-')) neg = key[i++] == '-';
  for (size_t j = i; j < n; ++j) {
    const char c = key[j];
    if (c >= '0' && c <= '9') {
      digits += c;
    } else if (c == '_' && j > i && j + 1 < n && key[j - 1] != '_' && key[j + 1] != '_') {
      continue;
    } else {
      err.fail("added_tokens_decoder key " + quote_text(key) + " is not an integer");
    }
  }
  if (digits.empty() || digits.size() > 15)
    err.fail("added_tokens_decoder key " + quote_text(key) + " is not an integer");
  const int64_t v = std::stoll(digits);
  return neg ? -v : v;
}

ojson load_json_object(const std::filesystem::path& p) {
  const std::string name = p.string();
  ojson j;
  try {
    j = ojson::parse(read_file(name));
  } catch (const nlohmann::json::exception& e) {
    throw ModelFormatError(name + ": invalid JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw ModelFormatError(name + ": expected a JSON object");
  return j;
}

const char* const kSpecialAttrs[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                     "pad_token", "cls_token", "mask_token"};

bool is_special_attr(const std::string& key) {
  return std::find_if(std::begin(kSpecialAttrs), std::end(kSpecialAttrs), [&](const char* a) { return key == a; }) !=
         std::end(kSpecialAttrs);
}

void apply_pretrained_config_impl(ClipTokenizer::Impl& impl, const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path config_path = dir / "tokenizer_config.json", map_path = dir / "special_tokens_map.json",
                 added_path = dir / "added_tokens.json";
  const ConfigError cfg_err(config_path.string()), map_err(map_path.string()), added_err(added_path.string());
  const ConfigError both_err(config_path.string() + " + special_tokens_map.json");

  // --- _from_pretrained: init_kwargs from tokenizer_config.json.
  ojson init = fs::exists(config_path, ec) ? load_json_object(config_path) : ojson::object();
  init.erase("tokenizer_class");
  init.erase("init_inputs");
  if (init.contains("additional_special_tokens") &&
      !(init.contains("extra_special_tokens") && py_truthy(init["extra_special_tokens"]))) {
    ojson v = init["additional_special_tokens"];
    init.erase("additional_special_tokens");
    init["extra_special_tokens"] = std::move(v);
  }
  // Model-specific tokens: other "*_token" keys holding a string, and a dict extra_special_tokens.
  ojson model_specific = ojson::object();
  {
    std::vector<std::string> keys;
    for (const auto& [key, v] : init.items()) keys.push_back(key);
    for (const std::string& key : keys) {
      if (!is_special_attr(key) && ends_with(key, "_token") && init[key].is_string()) {
        model_specific[key] = init[key];
        init.erase(key);
      }
    }
    if (init.contains("extra_special_tokens") && init["extra_special_tokens"].is_object()) {
      for (const auto& [key, v] : init["extra_special_tokens"].items()) model_specific[key] = v;
      init.erase("extra_special_tokens");
    }
    if (!model_specific.empty()) init["model_specific_special_tokens"] = model_specific;
  }

  // --- added_tokens_decoder, or the legacy special_tokens_map.json / added_tokens.json.
  std::map<int64_t, PyAddedToken> decoder;
  std::unordered_map<std::string, PyAddedToken> added_by_text;
  if (init.contains("added_tokens_decoder")) {
    const ojson& d = init["added_tokens_decoder"];
    if (!d.is_object()) cfg_err.fail("added_tokens_decoder must be an object of id -> AddedToken");
    for (const auto& [key, v] : d.items()) {
      if (!v.is_object()) cfg_err.fail("added_tokens_decoder[" + quote_text(key) + "] must be an object");
      PyAddedToken t = added_token_from(v, cfg_err, "added_tokens_decoder[" + quote_text(key) + "]", false);
      decoder[py_int(key, cfg_err)] = t;
      added_by_text[t.content] = t;
    }
  } else {
    if (fs::exists(map_path, ec)) {
      const ojson stm = load_json_object(map_path);
      for (const auto& [key, value] : stm.items()) {
        ojson v = value;
        if (v.is_object() && key != "extra_special_tokens") {
          ojson rest = v;
          rest.erase("special");
          v = tagged(added_token_from(rest, map_err, quote_text(key), true));
        } else if (key == "extra_special_tokens" && v.is_array()) {
          ojson existing = ojson::array();
          if (init.contains("extra_special_tokens") && py_truthy(init["extra_special_tokens"])) {
            const ojson& cur = init["extra_special_tokens"];
            if (cur.is_array()) {
              existing = cur;
            } else {
              map_err.fail("cannot merge extra_special_tokens into tokenizer_config.json's value");
            }
          }
          for (const ojson& tok : v) {
            ojson t =
                tok.is_object() ? tagged(added_token_from(tok, map_err, "extra_special_tokens entry", true)) : tok;
            bool present = false;
            for (const ojson& e : existing) {
              if (is_tagged(t) && is_tagged(e)) {
                present = present || added_token_from(t, map_err, "", false) == added_token_from(e, map_err, "", false);
              } else if (!is_tagged(t) && !is_tagged(e)) {
                present = present || t == e;
              }
            }
            if (!present) existing.push_back(t);
          }
          v = existing;
        }
        init[key] = v;
      }
      if (init.contains("extra_special_tokens") && init["extra_special_tokens"].is_object()) {
        if (!init.contains("model_specific_special_tokens")) init["model_specific_special_tokens"] = ojson::object();
        for (const auto& [key, v] : init["extra_special_tokens"].items())
          init["model_specific_special_tokens"][key] = v;
        init.erase("extra_special_tokens");
      }
    }
    if (fs::exists(added_path, ec)) {
      std::set<std::string> specials;
      for (const char* attr : kSpecialAttrs) {
        if (init.contains(attr) && py_truthy(init[attr]))
          if (auto s = py_str(init[attr])) specials.insert(*s);
      }
      if (init.contains("extra_special_tokens") && py_truthy(init["extra_special_tokens"])) {
        if (!init["extra_special_tokens"].is_array()) added_err.fail("extra_special_tokens is not a list");
        for (const ojson& t : init["extra_special_tokens"])
          if (auto s = py_str(t)) specials.insert(*s);
      }
      const ojson added = load_json_object(added_path);
      for (const auto& [text, index] : added.items()) {
        if (!index.is_number_integer()) added_err.fail("id of " + quote_text(text) + " is not an integer");
        PyAddedToken t;
        t.content = text;
        t.special = specials.count(text) > 0;
        t.lstrip = t.rstrip = false;
        t.normalized = !t.special;
        decoder[index.get<int64_t>()] = t;
        added_by_text[text] = t;
      }
    }
    // tokenizer.json is not read (see docs/TOKENIZER.md).
  }
  init.erase("added_tokens_decoder");
  convert_added_tokens(init, cfg_err);
  if (!added_by_text.empty()) {
    for (const char* attr : kSpecialAttrs) {
      if (!init.contains(attr) || init[attr].is_null()) continue;
      if (auto s = py_str(init[attr])) {
        auto it = added_by_text.find(*s);
        if (it != added_by_text.end()) init[attr] = tagged(it->second);
      }
    }
  }

  // --- CLIPTokenizer.__init__ defaults, then PreTrainedTokenizerBase.__init__.
  const std::pair<const char*, const char*> kDefaults[] = {
      {"unk_token", kEos}, {"bos_token", kBos}, {"eos_token", kEos}, {"pad_token", kEos}};
  ojson kwargs = ojson::object();
  for (const auto& [key, def] : kDefaults) {
    kwargs[key] = init.contains(key) ? init[key] : ojson(def);
    if (kwargs[key].is_null()) both_err.fail(std::string(key) + " is null");
  }
  for (const auto& [key, v] : init.items())
    if (!kwargs.contains(key)) kwargs[key] = v;
  if (kwargs.contains("additional_special_tokens") && !kwargs.contains("extra_special_tokens")) {
    ojson v = kwargs["additional_special_tokens"];
    kwargs.erase("additional_special_tokens");
    kwargs["extra_special_tokens"] = std::move(v);
  }
  std::vector<std::pair<std::string, std::optional<TokVal>>> special_map;
  for (const char* attr : kSpecialAttrs) special_map.emplace_back(attr, std::nullopt);
  auto set_special = [&](const std::string& key, const ojson& v) {
    std::optional<TokVal> t = tok_val(v, both_err, key);
    for (auto& [k, cur] : special_map) {
      if (k == key) {
        cur = t;
        return;
      }
    }
    special_map.emplace_back(key, t);
  };
  std::vector<TokVal> extra;
  ojson explicit_ms = ojson::object(), auto_ms = ojson::object();
  if (kwargs.contains("model_specific_special_tokens")) {
    explicit_ms = kwargs["model_specific_special_tokens"];
    if (!explicit_ms.is_object()) both_err.fail("model_specific_special_tokens must be an object");
  }
  bool split_special = false;
  for (const auto& [key, v] : kwargs.items()) {
    if (key == "model_specific_special_tokens") continue;
    if (is_special_attr(key)) {
      if (!v.is_null()) set_special(key, v);
    } else if (key == "extra_special_tokens") {
      if (v.is_null()) continue;
      if (v.is_object() && !is_tagged(v)) {
        for (const auto& [k2, v2] : v.items()) {
          if (v2.is_null()) both_err.fail(k2 + " is null");
          set_special(k2, v2);
        }
      } else if (v.is_array()) {
        for (const ojson& t : v) {
          auto tv = tok_val(t, both_err, "extra_special_tokens entry");
          if (!tv) both_err.fail("extra_special_tokens entry is null");
          extra.push_back(*tv);
        }
      } else {
        both_err.fail("extra_special_tokens must be a list or an object");
      }
    } else if (key == "split_special_tokens") {
      if (!v.is_boolean()) both_err.fail("split_special_tokens must be true or false");
      split_special = v.get<bool>();
    } else if (ends_with(key, "_token") && (v.is_string() || is_tagged(v))) {
      auto_ms[key] = v;
    }
  }
  for (const auto& [key, v] : explicit_ms.items()) auto_ms[key] = v;
  for (const auto& [key, v] : auto_ms.items()) {
    if (v.is_null()) both_err.fail(key + " is null");
    set_special(key, v);
  }

  // --- TokenizersBackend.__init__: which tokens it hands to the backend, in which order.
  std::vector<TokVal> to_add;
  for (const auto& [idx, t] : decoder) to_add.push_back(TokVal{std::nullopt, t});
  std::set<std::string> encoder;
  for (const TokVal& t : to_add) encoder.insert(t.text());
  auto consider = [&](const TokVal& v) {
    if (encoder.count(v.text())) return;
    if (std::find(to_add.begin(), to_add.end(), v) != to_add.end()) return;
    to_add.push_back(v);
  };
  for (const auto& [key, v] : special_map)
    if (v) consider(*v);
  for (const TokVal& v : extra) consider(v);
  std::set<std::string> named;
  for (const auto& [key, v] : special_map)
    if (v && v->truthy()) named.insert(v->text());
  std::vector<PyAddedToken> tokens;
  for (const TokVal& v : to_add) {
    PyAddedToken t = v.tok;
    if (v.str) {
      t = PyAddedToken{};
      t.content = *v.str;
      t.special = true;
    } else if (!t.special && named.count(t.content)) {
      t.special = true;
    }
    tokens.push_back(std::move(t));
  }

  // --- tokenizers AddedVocabulary::add_tokens: one token per id, the last one added for it wins.
  std::unordered_map<std::string, int32_t> added_ids;
  std::map<int32_t, PyAddedToken> by_id;
  std::set<std::string> special_set;
  int64_t next_id = static_cast<int64_t>(impl.vocab.size());
  for (const PyAddedToken& t : tokens) {
    if (t.content.empty()) continue;
    auto known = added_ids.find(t.content);
    if (known != added_ids.end() && by_id[known->second] == t) continue;
    int32_t id;
    if (known != added_ids.end()) {
      id = known->second;
    } else if (auto v = impl.vocab.find(t.content); v != impl.vocab.end()) {
      id = v->second;
    } else {
      if (next_id > INT32_MAX) both_err.fail("too many added tokens");
      id = static_cast<int32_t>(next_id++);
      impl.id_to_token.emplace(id, t.content);
    }
    added_ids[t.content] = id;
    if (t.special) special_set.insert(t.content);
    by_id[id] = t;
  }
  impl.raw_added.clear();
  impl.normalized_added.clear();
  std::set<std::u32string> raw_patterns, norm_patterns;
  for (const auto& [id, t] : by_id) {
    AddedMatcher m;
    m.id = id;
    m.single_word = t.single_word.value_or(false);
    m.lstrip = t.lstrip.value_or(false);
    m.rstrip = t.rstrip.value_or(false);
    m.skip = split_special && special_set.count(t.content) > 0;
    const std::u32string content = tokenizer_detail::decode_utf8_lossy(t.content);
    m.pattern = t.norm() ? normalize32(content) : content;
    auto& seen = t.norm() ? norm_patterns : raw_patterns;
    if (!seen.insert(m.pattern).second)
      both_err.fail("two added tokens match the same text " + quote_text(t.content) +
                    " (the reference fails to load too)");
    (t.norm() ? impl.normalized_added : impl.raw_added).push_back(std::move(m));
  }

  // --- RobertaProcessing(eos, bos) ids, the pad id, and BPE's unknown token (from the model's vocabulary).
  auto id_of = [&](const char* attr) -> int32_t {
    for (const auto& [key, v] : special_map) {
      if (key != attr) continue;
      if (!v || v->text().empty()) both_err.fail(std::string(attr) + " is empty");
      auto it = added_ids.find(v->text());
      if (it == added_ids.end()) both_err.fail(std::string(attr) + " " + quote_text(v->text()) + " was not registered");
      return it->second;
    }
    both_err.fail(std::string(attr) + " is missing");
  };
  impl.bos = id_of("bos_token");
  impl.eos = id_of("eos_token");
  impl.pad = id_of("pad_token");
  const std::string& unk_text = kwargs["unk_token"].is_string()
                                    ? kwargs["unk_token"].get_ref<const std::string&>()
                                    : kwargs["unk_token"]["content"].get_ref<const std::string&>();
  auto unk = impl.vocab.find(unk_text);
  if (unk == impl.vocab.end())
    both_err.fail("unk_token " + quote_text(unk_text) + " is not in vocab.json (unsupported, see docs/TOKENIZER.md)");
  impl.unk = unk->second;
}

void apply_pretrained_config(ClipTokenizer::Impl& impl, const std::filesystem::path& dir) {
  try {
    apply_pretrained_config_impl(impl, dir);
  } catch (const nlohmann::json::exception& e) {
    // Wrong types that slipped past the checks above; still one line naming the folder.
    throw ModelFormatError((dir / "tokenizer_config.json").string() + ": unexpected value (" + e.what() + ")");
  }
}

}  // namespace

// Byte-level BPE of one pre-token, merging by rank (lowest first, leftmost on ties) through a heap,
// with the same stale-entry rules as the reference so odd merge tables behave identically.
void ClipTokenizer::Impl::bpe(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() <= kCacheMaxWordBytes) {
    std::lock_guard<std::mutex> lock(cache_mu);
    auto it = cache.find(std::string(word));
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  struct Sym {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<Sym> syms;
  syms.reserve(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    const bool last = i + 1 == word.size();
    int32_t id = byte_ids[static_cast<unsigned char>(word[i])][last ? 1 : 0];
    if (id < 0) id = unk;  // not fused: one unknown per byte
    const auto n = static_cast<int32_t>(syms.size());
    syms.push_back(Sym{id, n - 1, n + 1, true});
  }
  if (!syms.empty()) syms.back().next = -1;

  struct Cand {
    int32_t rank, pos, new_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto lookup = [&](int32_t a, int32_t b) -> const MergeEntry* {
    auto it = merges.find(pair_key(a, b));
    return it == merges.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < syms.size(); ++i) {
    if (const MergeEntry* m = lookup(syms[i].id, syms[i + 1].id))
      heap.push(Cand{m->rank, static_cast<int32_t>(i), m->new_id});
  }
  while (!heap.empty()) {
    const Cand top = heap.top();
    heap.pop();
    Sym& cur = syms[top.pos];
    if (!cur.alive || cur.next < 0) continue;
    const Sym right = syms[cur.next];
    const MergeEntry* m = lookup(cur.id, right.id);
    if (!m || m->new_id != top.new_id) continue;  // stale entry
    cur.id = top.new_id;
    syms[cur.next].alive = false;
    cur.next = right.next;
    if (right.next >= 0) syms[right.next].prev = top.pos;
    if (cur.prev >= 0) {
      if (const MergeEntry* pm = lookup(syms[cur.prev].id, cur.id)) heap.push(Cand{pm->rank, cur.prev, pm->new_id});
    }
    if (cur.next >= 0) {
      if (const MergeEntry* nm = lookup(cur.id, syms[cur.next].id)) heap.push(Cand{nm->rank, top.pos, nm->new_id});
    }
  }
  const size_t first = out.size();
  for (int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
  if (word.size() <= kCacheMaxWordBytes) {
    std::lock_guard<std::mutex> lock(cache_mu);
    if (cache.size() >= kCacheMaxEntries) cache.clear();  // bounded; prompts repeat words, so this is rare
    cache.emplace(std::string(word), std::vector<int32_t>(out.begin() + first, out.end()));
  }
}

void ClipTokenizer::Impl::encode_segment(const char32_t* b, const char32_t* e, std::vector<int32_t>& out) const {
  if (b == e) return;
  const std::u32string norm = normalize32(std::u32string(b, e));
  std::string word;
  find_added(norm, normalized_added, [&](int32_t id, size_t pb, size_t pe) {
    if (id >= 0) {
      out.push_back(id);
      return;
    }
    const std::u32string piece = norm.substr(pb, pe - pb);
    pre_tokenize(piece, [&](const char32_t* wb, const char32_t* we) {
      word.clear();
      for (; wb != we; ++wb) append_utf8(word, *wb);
      bpe(word, out);
    });
  });
}

void ClipTokenizer::Impl::tokenize_into(std::string_view text, std::vector<int32_t>& out) const {
  const std::u32string s = tokenizer_detail::decode_utf8_lossy(text);
  // Added (special) tokens with normalized=false are cut out of the raw text first; each piece between
  // them is normalized, and then searched for the normalized=true ones.
  find_added(s, raw_added, [&](int32_t id, size_t b, size_t e) {
    if (id >= 0) {
      out.push_back(id);
    } else {
      encode_segment(s.data() + b, s.data() + e, out);
    }
  });
}

// ------------------------------------------------------------ public API

ClipTokenizer ClipTokenizer::from_files(const std::string& vocab_json, const std::string& merges_txt) {
  const nlohmann::json vocab = parse_json(read_file(vocab_json), vocab_json);
  const std::string merges = read_file(merges_txt);
  return ClipTokenizer(build_impl(vocab, merges, vocab_json, merges_txt));
}

ClipTokenizer ClipTokenizer::from_dir(const std::string& tokenizer_dir) {
  namespace fs = std::filesystem;
  const fs::path dir(tokenizer_dir);
  const std::string vocab_path = (dir / "vocab.json").string(), merges_path = (dir / "merges.txt").string();
  const nlohmann::json vocab = parse_json(read_file(vocab_path), vocab_path);
  auto impl = build_impl(vocab, read_file(merges_path), vocab_path, merges_path);
  apply_pretrained_config(*impl, dir);
  return ClipTokenizer(std::move(impl));
}

ClipTokenizer ClipTokenizer::bundled() {
  static const std::shared_ptr<const Impl> impl = [] {
    const std::string name = "embedded bpe_simple_vocab_16e6.txt.gz";
    const std::string text =
        gunzip(sdserve_clip_bpe_gz, static_cast<size_t>(sdserve_clip_bpe_gz_end - sdserve_clip_bpe_gz), name);
    // As CLIP: merges are lines 1..48894 (line 0 is a header); the vocabulary is the 256 byte
    // characters, the same with "</w>", one token per merge, then the two special tokens.
    constexpr size_t kMerges = 49152 - 256 - 2;
    auto lines = split_lines(text);
    if (lines.size() < kMerges + 1) throw ModelFormatError(name + ": too few merges");
    // CLIP's bytes_to_unicode() dict lists the printable bytes (mapped to themselves) first, then the
    // others (mapped to U+0100...), and its vocabulary follows that order.
    const auto& b2u = byte_to_unicode();
    std::vector<std::string> tokens;
    tokens.reserve(512 + kMerges + 2);
    for (int pass = 0; pass < 2; ++pass) {
      for (int b = 0; b < 256; ++b) {
        if ((b2u[b] < 256) != (pass == 0)) continue;
        tokens.emplace_back();
        append_utf8(tokens.back(), b2u[b]);
      }
    }
    for (int b = 0; b < 256; ++b) tokens.push_back(tokens[b] + kEndOfWord);
    std::string merges = "#version: 0.2\n";
    for (size_t i = 1; i <= kMerges; ++i) {
      const std::string_view line = lines[i];
      const size_t sp = line.find(' ');
      if (sp == std::string_view::npos) throw ModelFormatError(name + ": bad merge line " + std::to_string(i));
      tokens.emplace_back(std::string(line.substr(0, sp)) + std::string(line.substr(sp + 1)));
      merges.append(line.data(), line.size());
      merges += '\n';
    }
    tokens.emplace_back(kBos);
    tokens.emplace_back(kEos);
    nlohmann::json vocab = nlohmann::json::object();
    for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = static_cast<int64_t>(i);
    if (vocab.size() != tokens.size()) throw ModelFormatError(name + ": duplicate tokens");
    return std::shared_ptr<const Impl>(build_impl(vocab, merges, name, name));
  }();
  return ClipTokenizer(impl);
}

std::vector<int32_t> ClipTokenizer::tokenize(std::string_view text) const {
  std::vector<int32_t> out;
  impl_->tokenize_into(text, out);
  return out;
}

std::vector<int32_t> ClipTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  out.push_back(impl_->bos);
  impl_->tokenize_into(text, out);
  out.push_back(impl_->eos);
  return out;
}

std::string ClipTokenizer::decode(const std::vector<int32_t>& ids) const {
  static const std::unordered_map<char32_t, unsigned char> u2b = [] {
    std::unordered_map<char32_t, unsigned char> m;
    const auto& b2u = byte_to_unicode();
    for (int b = 0; b < 256; ++b) m[b2u[b]] = static_cast<unsigned char>(b);
    return m;
  }();
  std::string bytes;
  for (int32_t id : ids) {
    auto it = impl_->id_to_token.find(id);
    if (it == impl_->id_to_token.end()) continue;
    for (char32_t c : tokenizer_detail::decode_utf8_lossy(it->second)) {
      auto b = u2b.find(c);
      if (b != u2b.end()) {
        bytes += static_cast<char>(b->second);
      } else {
        append_utf8(bytes, c);
      }
    }
  }
  // Bytes may split a character between tokens; decode them as a whole, lossily.
  const std::u32string u = tokenizer_detail::decode_utf8_lossy(bytes);
  std::string text = to_utf8(u.data(), u.data() + u.size());
  std::string out;
  for (size_t pos = 0;;) {
    const size_t hit = text.find(kEndOfWord, pos);
    out.append(text, pos, hit == std::string::npos ? std::string::npos : hit - pos);
    if (hit == std::string::npos) break;
    out += ' ';
    pos = hit + 4;
  }
  const size_t b = out.find_first_not_of(" \t\n\r\f\v");
  if (b == std::string::npos) return "";
  return out.substr(b, out.find_last_not_of(" \t\n\r\f\v") - b + 1);
}

int32_t ClipTokenizer::bos_id() const { return impl_->bos; }
int32_t ClipTokenizer::eos_id() const { return impl_->eos; }
int32_t ClipTokenizer::pad_id() const { return impl_->pad; }
size_t ClipTokenizer::vocab_size() const { return impl_->vocab.size(); }

namespace tokenizer_detail {

std::string normalize(std::string_view utf8) {
  const std::u32string n = normalize32(decode_utf8_lossy(utf8));
  return to_utf8(n.data(), n.data() + n.size());
}

// CPython's UTF-8 decoder with errors="replace": a valid sequence gives its code point; otherwise the
// maximal prefix of a valid sequence (lead byte plus in-range continuation bytes) becomes one U+FFFD,
// and decoding resumes at the first byte that did not fit.
bool unicode_is_alnum(char32_t c) {
  const uint8_t cls = char_class(c);
  return cls == ut::kLetter || cls == ut::kNumber;
}

std::u32string decode_utf8_lossy(std::string_view bytes) {
  std::u32string out;
  out.reserve(bytes.size());
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      out += c;
      ++i;
      continue;
    }
    int len;
    char32_t cp;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2, cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3, cp = c & 0x0F;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;  // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4, cp = c & 0x07;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      out += U'\uFFFD';
      ++i;
      continue;
    }
    size_t j = i + 1;
    bool ok = true;
    for (int k = 1; k < len; ++k, ++j) {
      const unsigned char lo_k = k == 1 ? lo : 0x80, hi_k = k == 1 ? hi : 0xBF;
      if (j >= n || s[j] < lo_k || s[j] > hi_k) {
        ok = false;
        break;
      }
      cp = (cp << 6) | (s[j] & 0x3F);
    }
    out += ok ? cp : U'\uFFFD';
    i = j;
  }
  return out;
}

}  // namespace tokenizer_detail

}  // namespace sdserve
