// A1111 prompt attention syntax against the reference parser in tools/make_prompt_goldens.py
// (AUTOMATIC1111's parse_prompt_attention): hand-written cases plus 600 random strings of
// brackets, colons, numbers, escapes, BREAK, whitespace and non-ASCII text. Weights must be
// identical (same double operations in the same order), texts byte for byte.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "pipeline/prompt.h"

namespace sdserve::test {
namespace {

const std::filesystem::path kGolden =
    std::filesystem::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures" / "golden" / "prompt" / "attention.json";

TEST(PromptAttention, MatchesA1111Reference) {
  std::ifstream in(kGolden);
  ASSERT_TRUE(in) << kGolden << " missing: run tools/make_prompt_goldens.py";
  const auto cases = nlohmann::json::parse(in);
  ASSERT_GE(cases.size(), 600u);
  for (const auto& c : cases) {
    const std::string text = c.at("text");
    std::vector<PromptPiece> want;
    for (const auto& p : c.at("want")) want.push_back({p.at(0).get<std::string>(), p.at(1).get<double>()});
    EXPECT_EQ(parse_prompt_attention(text), want) << "prompt: " << text;
  }
}

TEST(PromptAttention, Examples) {
  using P = std::vector<PromptPiece>;
  EXPECT_EQ(parse_prompt_attention("a (cat:1.5) in the garden"),
            (P{{"a ", 1.0}, {"cat", 1.5}, {" in the garden", 1.0}}));
  EXPECT_EQ(parse_prompt_attention("[x]"), (P{{"x", 1 / 1.1}}));
  EXPECT_EQ(parse_prompt_attention("a BREAK b"), (P{{"a", 1.0}, {"BREAK", -1}, {"b", 1.0}}));
  EXPECT_EQ(parse_prompt_attention(""), (P{{"", 1.0}}));
  // A1111 would raise on this number; we keep the token as text.
  EXPECT_EQ(parse_prompt_attention("(a:1.2.3)"), (P{{"a:1.2.3)", 1.1}}));
}

// Property: whatever the bytes, the parser returns pieces with finite weights (or -1 for BREAK)
// and never throws.
TEST(PromptAttention, RandomBytesNeverBreakIt) {
  std::mt19937 gen(7);
  const std::string alphabet = "()[]:\\ .0123456789+-BREAKabc\n\t\xc3\xa9\xff";
  for (int n = 0; n < 3000; ++n) {
    std::string s;
    const int len = int(gen() % 40);
    for (int k = 0; k < len; ++k) s += alphabet[gen() % alphabet.size()];
    const auto pieces = parse_prompt_attention(s);
    ASSERT_FALSE(pieces.empty());
    for (const auto& p : pieces) ASSERT_TRUE(std::isfinite(p.weight)) << s;
  }
}

}  // namespace
}  // namespace sdserve::test
