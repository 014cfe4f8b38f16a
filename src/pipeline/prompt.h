// A1111 prompt syntax: attention weights and BREAK.
//
// parse_prompt_attention() follows AUTOMATIC1111's modules/prompt_parser.py
// parse_prompt_attention (v1.10) exactly, token for token:
//   (text)        weight x1.1          ((text))   x1.21, and so on
//   (text:1.3)    weight x1.3          [text]     weight /1.1
//   \( \) \[ \] \\   literal characters; a lone backslash is dropped
//   BREAK         (a whole word, surrounded by optional whitespace) ends the chunk: it comes back
//                 as the piece {"BREAK", -1}
// Malformed syntax never fails: unclosed "(" / "[" apply their multiplier to the rest of the
// prompt, unmatched ")" / "]" and stray ":" are text, and runs with equal weights are merged.
// One deliberate difference: A1111 raises (the request fails) on a weighted close whose number
// Python's float() rejects, such as "(a:1.2.3)"; here that token is kept as literal text.
// docs/PROMPTS.md has the details; tools/make_prompt_goldens.py holds the reference.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sdserve {

class ClipTokenizer;

struct PromptPiece {
  std::string text;  // UTF-8, exactly as written (escapes resolved)
  double weight;     // product of the multipliers around it; -1 for a BREAK marker
  bool operator==(const PromptPiece&) const = default;
};

std::vector<PromptPiece> parse_prompt_attention(std::string_view prompt);

// A1111 extra networks (modules/extra_networks.py): every <name:args> tag (regex
// <(\w+):([^>]+)>, \w Unicode-aware) is cut out of the prompt, and its args are split at ':'.
// A1111 does this on the positive prompt only; a tag in the negative prompt stays text.
struct ExtraNetworkCall {
  std::string network;             // "lora", "lyco", "hypernet", ...
  std::vector<std::string> items;  // args split at ':'
};
struct ExtraNetworkPrompt {
  std::string prompt;  // the prompt with the tags removed
  std::vector<ExtraNetworkCall> calls;
};
ExtraNetworkPrompt parse_extra_networks(std::string_view prompt);

// <lora:NAME[:TE[:UNET]]> with te=/unet= named forms, as A1111's extra_networks_lora: the UNet
// multiplier defaults to the text-encoder one, which defaults to 1. ("lyco" is an alias.)
// Throws InvalidArgument naming the tag when a multiplier is not a finite number or the name
// is missing.
struct LoraCall {
  std::string name;
  float te_multiplier = 1.f;
  float unet_multiplier = 1.f;
};
std::vector<LoraCall> lora_calls(const std::vector<ExtraNetworkCall>& calls);

// A1111's long-prompt chunking (modules/sd_hijack_clip.py, default options): the parsed pieces
// are tokenized one by one; tokens fill chunks of 75; BREAK closes a chunk; when a chunk is full
// and a comma came within its last `comma_backtrack` tokens, what follows the comma moves to the
// next chunk. Each chunk is [BOS] + 75 + [EOS] ids, padded with EOS, and every position after
// its first EOS holds the tokenizer's pad id (A1111's id_pad: EOS for OpenAI CLIP, 0 for
// OpenCLIP), with a multiplier per position (1 for BOS/EOS/padding). An empty prompt is one chunk.
struct PromptChunk {
  std::vector<int32_t> ids;
  std::vector<float> multipliers;
  // Textual-inversion insertions: the embedding (index into the names given to chunk_prompt)
  // whose vectors replace ids[position ...] (those ids are placeholders, 0).
  struct Fix {
    int64_t position = 0;
    size_t embedding = 0;
  };
  std::vector<Fix> fixes;
};
// A textual-inversion embedding as the chunker sees it: the token ids its name splits into
// (the prompt must contain them in sequence) and how many vectors it inserts.
struct EmbeddingName {
  std::vector<int32_t> ids;
  int64_t vectors = 1;
};
struct ChunkOptions {
  int comma_backtrack = 20;  // A1111's comma_padding_backtrack; 0 disables it
  size_t max_chunks = 64;    // more is an InvalidArgument (a prompt of ~4800 tokens)
};
// `embeddings`: names to replace by their vectors, A1111's find_embedding_at_position (within
// one parsed piece; the longest name wins at a position; an embedding that does not fit in the
// current chunk starts the next one).
std::vector<PromptChunk> chunk_prompt(const ClipTokenizer& tok, std::string_view prompt, const ChunkOptions& opt = {},
                                      const std::vector<EmbeddingName>& embeddings = {});

// A1111's token counter ("12/75" beside the prompt box; sd_hijack_clip's get_prompt_lengths):
// every chunk but the last counts 75 (a BREAK closes a chunk, so it rounds the count up), the
// last its tokens before the first EOS (an embedding's vectors count as tokens); `limit` is
// the count rounded up to a multiple of 75 (at least 75).
struct PromptTokenCount {
  size_t tokens = 0;
  size_t chunks = 0;
  size_t limit = 75;
};
PromptTokenCount count_prompt_tokens(const std::vector<PromptChunk>& chunks, int32_t eos_id);

}  // namespace sdserve
