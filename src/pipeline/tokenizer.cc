#include "pipeline/tokenizer.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
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
    const auto* it = std::lower_bound(ut::kDecomp, end, c,
                                      [](const uint32_t(&row)[3], char32_t v) { return row[0] < v; });
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
  const auto* it = std::lower_bound(ut::kLowerSingle, end, c,
                                    [](const uint32_t(&row)[2], char32_t v) { return row[0] < v; });
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

std::string gunzip(const unsigned char* data, size_t size, const std::string& what) {
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw InternalError(what + ": inflateInit failed");
  zs.next_in = const_cast<Bytef*>(data);
  zs.avail_in = static_cast<uInt>(size);
  std::string out;
  char buf[1 << 16];
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof(buf);
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      inflateEnd(&zs);
      throw ModelFormatError(what + ": corrupt gzip data");
    }
    out.append(buf, sizeof(buf) - zs.avail_out);
  }
  inflateEnd(&zs);
  return out;
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

// ------------------------------------------------------------------ Impl

struct ClipTokenizer::Impl {
  std::unordered_map<std::string, int32_t> vocab;  // token string (byte-level chars) -> id
  std::unordered_map<int32_t, std::string> id_to_token;
  std::array<std::array<int32_t, 2>, 256> byte_ids{};  // [byte][is_last] -> id or -1
  std::unordered_map<uint64_t, MergeEntry> merges;
  int32_t bos = -1, eos = -1, pad = -1, unk = -1;

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
  pre_tokenize(norm, [&](const char32_t* pb, const char32_t* pe) {
    word.clear();
    for (; pb != pe; ++pb) append_utf8(word, *pb);
    bpe(word, out);
  });
}

void ClipTokenizer::Impl::tokenize_into(std::string_view text, std::vector<int32_t>& out) const {
  const std::u32string s = tokenizer_detail::decode_utf8_lossy(text);
  // Special tokens are matched on the raw text (before normalization), leftmost first.
  const char32_t* p = s.data();
  const char32_t* end = p + s.size();
  const char32_t* seg = p;
  while (p != end) {
    if (*p == U'<') {
      if (starts_with(p, end, kBos) || starts_with(p, end, kEos)) {
        const bool is_bos = starts_with(p, end, kBos);
        encode_segment(seg, p, out);
        out.push_back(is_bos ? bos : eos);
        p += is_bos ? 15 : 13;
        seg = p;
        continue;
      }
    }
    ++p;
  }
  encode_segment(seg, end, out);
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
  // pad_token: a string or an AddedToken object {"content": ...}; special_tokens_map.json wins.
  for (const char* name : {"tokenizer_config.json", "special_tokens_map.json"}) {
    const fs::path p = dir / name;
    std::error_code ec;
    if (!fs::exists(p, ec)) continue;
    const nlohmann::json cfg = parse_json(read_file(p.string()), p.string());
    if (!cfg.is_object() || !cfg.contains("pad_token") || cfg["pad_token"].is_null()) continue;
    const nlohmann::json& pt = cfg["pad_token"];
    std::string pad;
    if (pt.is_string()) {
      pad = pt.get<std::string>();
    } else if (pt.is_object() && pt.contains("content") && pt["content"].is_string()) {
      pad = pt["content"].get<std::string>();
    } else {
      throw ModelFormatError(p.string() + ": pad_token is neither a string nor {\"content\": ...}");
    }
    auto it = impl->vocab.find(pad);
    if (it == impl->vocab.end())
      throw ModelFormatError(p.string() + ": pad_token \"" + pad + "\" is not in " + vocab_path);
    impl->pad = it->second;
  }
  return ClipTokenizer(std::move(impl));
}

ClipTokenizer ClipTokenizer::bundled() {
  static const std::shared_ptr<const Impl> impl = [] {
    const std::string name = "embedded bpe_simple_vocab_16e6.txt.gz";
    const std::string text = gunzip(sdserve_clip_bpe_gz,
                                    static_cast<size_t>(sdserve_clip_bpe_gz_end - sdserve_clip_bpe_gz), name);
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
