// CLIP BPE tokenizer, id-for-id equal to transformers 5 `CLIPTokenizer(vocab, merges)(text).input_ids`
// (the HF `tokenizers` pipeline: NFC, \s+ -> " ", lowercase, CLIP split, byte-level, BPE with "</w>").
// See docs/TOKENIZER.md for the exact reference and its corner cases.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sdserve {

class ClipTokenizer {
 public:
  // vocab.json (token -> id) and merges.txt ("#version" header, then "a b" per line), matched like
  // `CLIPTokenizer(vocab_file, merges_file)`: only "<|startoftext|>"/"<|endoftext|>" are added tokens, and
  // pad is EOS. Throws NotFoundError/IoError/ModelFormatError naming the file.
  static ClipTokenizer from_files(const std::string& vocab_json, const std::string& merges_txt);
  // A diffusers tokenizer/ folder, id-for-id equal to transformers' `CLIPTokenizer.from_pretrained(dir)`:
  // vocab.json + merges.txt, plus the added/special tokens of tokenizer_config.json (added_tokens_decoder,
  // *_token, additional/extra_special_tokens, split_special_tokens) or, without added_tokens_decoder,
  // special_tokens_map.json and added_tokens.json, with their lstrip/rstrip/single_word/normalized flags
  // (e.g. SD 2.x's pad token "!" becomes id 0 wherever it appears). Tokens not in vocab.json get ids from
  // vocab_size() on. Malformed or mistyped files throw a one-line ModelFormatError naming the file.
  static ClipTokenizer from_dir(const std::string& tokenizer_dir);
  // Standard CLIP ViT-L/14 vocabulary (49408 tokens) built from the embedded open_clip merges file, with
  // from_files() matching (= `CLIPTokenizer(vocab_file, merges_file)` on that vocabulary).
  // Built once (thread-safe); copies share the same immutable tables.
  static ClipTokenizer bundled();

  // Untrusted bytes in; invalid UTF-8 is decoded like Python's errors="replace" (one U+FFFD per
  // maximal ill-formed subsequence). No truncation, no padding.
  std::vector<int32_t> encode(std::string_view text) const;    // BOS ... EOS
  std::vector<int32_t> tokenize(std::string_view text) const;  // without BOS/EOS
  // Ids back to text ("</w>" becomes a space, ends trimmed), like CLIPTokenizer.decode.
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t pad_id() const;
  size_t vocab_size() const;  // entries of vocab.json (added tokens outside it not counted)

  struct Impl;

 private:
  explicit ClipTokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

namespace tokenizer_detail {
// Exposed for tests: the normalizer (NFC, whitespace runs -> " ", lowercase) on UTF-8 text, and the
// lossy UTF-8 decoder.
std::string normalize(std::string_view utf8);
std::u32string decode_utf8_lossy(std::string_view bytes);
// Unicode letter or number (the tokenizer's \p{L} / \p{N} classes).
bool unicode_is_alnum(char32_t c);
}  // namespace tokenizer_detail

}  // namespace sdserve
