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
#include <string>
#include <string_view>
#include <vector>

namespace sdserve {

struct PromptPiece {
  std::string text;  // UTF-8, exactly as written (escapes resolved)
  double weight;     // product of the multipliers around it; -1 for a BREAK marker
  bool operator==(const PromptPiece&) const = default;
};

std::vector<PromptPiece> parse_prompt_attention(std::string_view prompt);

}  // namespace sdserve
