// A1111 extra-network tags, long-prompt chunking and weighted conditioning.
// Goldens: tests/fixtures/golden/prompt/long_<model>.safetensors from
// tools/make_long_prompt_goldens.py (A1111's algorithm written out with transformers' CLIP);
// our conditioning must match within 1e-4 per chunk, widened by 2e-7 * kappa * max|value| on
// chunks whose weighted mean is near zero (kappa = mean|z*m| / |mean(z*m)|: the emphasis
// rescale divides by that mean; the tiny random models have chunks with kappa ~ 1e4).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "pipeline/embeddings.h"
#include "pipeline/prompt.h"
#include "pipeline/stable_diffusion.h"
#include "pipeline/tokenizer.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdserve::test {
namespace {

const fs::path kFixtures = fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures";

TEST(ExtraNetworks, TagsAreCutOutAndSplitLikeA1111) {
  const auto r = parse_extra_networks("a <lora:film:0.8> cat, <hypernet:x> <lora:b:0.5:1.2> dog");
  EXPECT_EQ(r.prompt, "a  cat,   dog");
  ASSERT_EQ(r.calls.size(), 3u);
  EXPECT_EQ(r.calls[0].network, "lora");
  EXPECT_EQ(r.calls[0].items, (std::vector<std::string>{"film", "0.8"}));
  EXPECT_EQ(r.calls[1].network, "hypernet");
  EXPECT_EQ(r.calls[2].items, (std::vector<std::string>{"b", "0.5", "1.2"}));
  // Not tags: no word before ':', nothing after it, no '>', a space in the network name.
  for (const char* s : {"<:x>", "<lora:>", "<lora:x", "<lo ra:x>", "a < b > c", "<lora>"})
    EXPECT_EQ(parse_extra_networks(s).prompt, s) << s;
  // [^>]+ takes everything up to the first '>', '<' and ':' included; \w is Unicode-aware.
  const auto odd = parse_extra_networks("<lora:a<b:1>> <ñame_2:x:y=z>");
  EXPECT_EQ(odd.prompt, "> ");
  ASSERT_EQ(odd.calls.size(), 2u);
  EXPECT_EQ(odd.calls[0].items, (std::vector<std::string>{"a<b", "1"}));
  EXPECT_EQ(odd.calls[1].network, "ñame_2");
}

TEST(ExtraNetworks, LoraMultipliersFollowA1111Defaults) {
  auto one = [](const char* p) { return lora_calls(parse_extra_networks(p).calls).at(0); };
  LoraCall l = one("<lora:x>");
  EXPECT_EQ(l.name, "x");
  EXPECT_EQ(l.te_multiplier, 1.f);
  EXPECT_EQ(l.unet_multiplier, 1.f);
  l = one("<lora:x:0.6>");
  EXPECT_FLOAT_EQ(l.te_multiplier, 0.6f);
  EXPECT_FLOAT_EQ(l.unet_multiplier, 0.6f);  // the UNet multiplier defaults to the TE one
  l = one("<lora:x:0.6:1.5>");
  EXPECT_FLOAT_EQ(l.unet_multiplier, 1.5f);
  l = one("<lora:x:te=0.25:unet=-1>");
  EXPECT_FLOAT_EQ(l.te_multiplier, 0.25f);
  EXPECT_FLOAT_EQ(l.unet_multiplier, -1.f);
  l = one("<lyco:y: 2 >");  // lyco is an alias; float() allows surrounding spaces
  EXPECT_EQ(l.name, "y");
  EXPECT_FLOAT_EQ(l.te_multiplier, 2.f);
  EXPECT_TRUE(lora_calls(parse_extra_networks("<hypernet:x:1>").calls).empty());
  for (const char* bad : {"<lora:x:abc>", "<lora:x:1:nan>", "<lora:x:inf>", "<lora:x:te=>", "<lora:te=1>"})
    EXPECT_THROW(lora_calls(parse_extra_networks(bad).calls), InvalidArgument) << bad;
}

class Chunking : public testing::Test {
 protected:
  ClipTokenizer tok = ClipTokenizer::bundled();
  std::string words(int n, const char* w = "cat") {
    std::string s;
    for (int i = 0; i < n; ++i) s += std::string(i ? " " : "") + w;
    return s;
  }
};

TEST_F(Chunking, ChunksOf75WithBosEosAndPadding) {
  EXPECT_EQ(chunk_prompt(tok, "").size(), 1u);
  for (auto [n, chunks] : {std::pair{1, 1}, {75, 1}, {76, 2}, {150, 2}, {151, 3}, {400, 6}}) {
    const auto c = chunk_prompt(tok, words(n));
    ASSERT_EQ(c.size(), size_t(chunks)) << n;
    for (const PromptChunk& k : c) {
      ASSERT_EQ(k.ids.size(), 77u);
      ASSERT_EQ(k.multipliers.size(), 77u);
      EXPECT_EQ(k.ids.front(), tok.bos_id());
    }
    // The last chunk: its tokens, EOS, then padding (the bundled vocabulary pads with EOS).
    const int rest = n - 75 * (chunks - 1);
    EXPECT_EQ(c.back().ids[size_t(rest) + 1], tok.eos_id()) << n;
  }
  // Short prompts get exactly diffusers' ids.
  EXPECT_EQ(chunk_prompt(tok, "a photo of a cat")[0].ids, context_ids(tok, "a photo of a cat", 77));
}

// A1111's counter beside the prompt box (get_prompt_lengths): full chunks count 75, the last
// its tokens; the limit is the next multiple of 75.
TEST_F(Chunking, TokenCountIsA1111s) {
  const auto count = [&](const std::string& p) { return count_prompt_tokens(chunk_prompt(tok, p), tok.eos_id()); };
  for (auto [n, tokens, limit] : {std::tuple{0, 0, 75}, {1, 1, 75}, {75, 75, 75}, {76, 76, 150}, {151, 151, 225}}) {
    const PromptTokenCount c = count(words(n));
    EXPECT_EQ(c.tokens, size_t(tokens)) << n;
    EXPECT_EQ(c.limit, size_t(limit)) << n;
    EXPECT_EQ(c.chunks, size_t(limit / 75)) << n;
  }
  EXPECT_EQ(count("a photo of a cat").tokens, 5u);
  // Weights and their brackets are not tokens; BREAK closes the chunk (75) and starts the next.
  EXPECT_EQ(count("a (photo:1.3) of [a] cat").tokens, 5u);
  const PromptTokenCount b = count("a cat BREAK a dog");
  EXPECT_EQ(b.tokens, 77u);
  EXPECT_EQ(b.limit, 150u);
  // The comma backtrack moves 4 words into the second chunk: 75 + 10.
  EXPECT_EQ(count(words(70) + ", " + words(10, "dog")).tokens, 85u);
  EXPECT_EQ(count_prompt_tokens({}, tok.eos_id()).tokens, 0u);
}

TEST_F(Chunking, BreakWeightsAndCommaBacktrack) {
  const auto b = chunk_prompt(tok, "a cat BREAK a dog");
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[1].ids[1], tok.tokenize("a")[0]);
  const auto w = chunk_prompt(tok, "a (cat:1.5) [dog]");
  EXPECT_FLOAT_EQ(w[0].multipliers[2], 1.5f);
  EXPECT_NEAR(w[0].multipliers[3], 1 / 1.1, 1e-6);
  EXPECT_EQ(w[0].multipliers[0], 1.f);
  EXPECT_EQ(w[0].multipliers[4], 1.f);  // EOS
  // 70 words, a comma, then 10 more: the chunk fills at 75 with the comma 5 tokens back, so the
  // 4 words after the comma move to the second chunk.
  const auto c = chunk_prompt(tok, words(70) + ", " + words(10, "dog"));
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].ids[71], tok.tokenize(",")[0]);
  EXPECT_EQ(c[0].ids[72], tok.eos_id());
  ChunkOptions off;
  off.comma_backtrack = 0;
  EXPECT_EQ(chunk_prompt(tok, words(70) + ", " + words(10, "dog"), off)[0].ids[72], tok.tokenize("dog")[0]);
  ChunkOptions cap;
  cap.max_chunks = 2;
  EXPECT_THROW(chunk_prompt(tok, words(151), cap), InvalidArgument);
}

// Every golden case of `file` (metadata "cases": prompt, chunks, kappa) against encode_prompt:
// 1e-4 per chunk, widened by 2e-7 * kappa * max|value| where the emphasis rescale is
// ill-conditioned.
void expect_goldens_match(const StableDiffusion& sd, const std::string& file, size_t min_cases) {
  const auto golden = SafeTensorsFile::open((kFixtures / "golden" / "prompt" / file).string());
  const auto cases = nlohmann::json::parse(golden.metadata().at("cases"));
  ASSERT_GE(cases.size(), min_cases);
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string prompt = cases[i].at("prompt");
    const Tensor want = golden.get_as("cond_" + std::to_string(i), DType::F32);
    const Tensor got = sd.encode_prompt(prompt, 1);
    ASSERT_EQ(got.shape(), want.shape()) << file << " case " << i << ": " << prompt.substr(0, 60);
    const int64_t chunks = cases[i].at("chunks");
    EXPECT_EQ(got.size(1), 77 * chunks);
    const std::vector<double> kappa = cases[i].at("kappa");
    for (int64_t c = 0; c < chunks; ++c) {
      const Tensor g = got.narrow(1, 77 * c, 77), w = want.narrow(1, 77 * c, 77);
      double peak = 0;
      for (float v : w.to_vector()) peak = std::max(peak, double(std::abs(v)));
      const double tol = 1e-4 + 2e-7 * kappa[size_t(c)] * peak;
      EXPECT_LE(max_abs_diff(g, w), tol) << file << " case " << i << " chunk " << c << " (kappa " << kappa[size_t(c)]
                                         << "): " << prompt.substr(0, 60);
    }
  }
}

class LongPromptGolden : public testing::TestWithParam<std::string> {};

TEST_P(LongPromptGolden, MatchesA1111Reference) {
  const auto sd = StableDiffusion::load((kFixtures / "models" / GetParam()).string());
  expect_goldens_match(*sd, "long_" + GetParam() + ".safetensors", 15);
}

INSTANTIATE_TEST_SUITE_P(Models, LongPromptGolden, testing::Values("sd1-tiny", "sd2-tiny"),
                         [](const testing::TestParamInfo<std::string>& i) { return i.param.substr(0, 3); });

TEST(TextualInversion, EmbeddingsMatchA1111Reference) {
  LoadOptions o;
  o.embeddings_dir = (kFixtures / "embeddings" / "sd1-tiny").string();
  const auto sd = StableDiffusion::load((kFixtures / "models" / "sd1-tiny").string(), o);
  ASSERT_EQ(sd->embeddings().size(), 2u);  // wideone has another width: skipped, as A1111 does
  EXPECT_EQ(sd->embeddings()[0].name, "hero");
  EXPECT_EQ(sd->embeddings()[1].name, "tinystyle");
  EXPECT_EQ(sd->embeddings()[1].vectors.shape(), (Shape{3, 32}));
  expect_goldens_match(*sd, "ti_sd1-tiny.safetensors", 7);
  // The embedding really changes the conditioning: without the folder the name is plain text.
  const auto plain = StableDiffusion::load((kFixtures / "models" / "sd1-tiny").string());
  EXPECT_GT(max_abs_diff(plain->encode_prompt("a tinystyle horse", 1), sd->encode_prompt("a tinystyle horse", 1)),
            1e-2);
}

TEST(TextualInversion, BadFoldersAndFilesAreClearErrors) {
  LoadOptions o;
  o.embeddings_dir = "/no/such/embeddings";
  EXPECT_THROW(StableDiffusion::load((kFixtures / "models" / "sd1-tiny").string(), o), NotFoundError);
  const fs::path dir = fs::temp_directory_path() / "sdserve_bad_embeddings";
  fs::create_directories(dir);
  { std::ofstream(dir / "broken.safetensors") << "not a safetensors file"; }
  try {
    load_embeddings_dir(dir.string(), 32);
    FAIL() << "expected ModelFormatError";
  } catch (const ModelFormatError& e) {
    EXPECT_NE(std::string(e.what()).find("broken.safetensors"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(LongPrompt, TheTailOfA300TokenPromptChangesTheImage) {
  const auto sd = StableDiffusion::load((kFixtures / "models" / "sd1-tiny").string());
  const ClipTokenizer tok = ClipTokenizer::from_dir((kFixtures / "models" / "sd1-tiny" / "tokenizer").string());
  // 300 one-token words from the tiny vocabulary; the first 75 of them on their own.
  const std::vector<std::string> vocab = {"photo", "horse", "red", "blue", "cat", "dog", "tree", "house"};
  std::string full, head;
  int count = 0;
  for (int i = 0; count < 300; ++i) {
    const std::string w = vocab[size_t(i * 7 + i / 8) % vocab.size()];
    const int t = int(tok.tokenize(w).size());
    if (count + t <= 75) head += (head.empty() ? "" : " ") + w;
    full += (full.empty() ? "" : " ") + w;
    count += t;
  }
  EXPECT_EQ(sd->encode_prompt(full, 1).size(1), 77 * 4);
  GenerateRequest r;
  r.width = r.height = 32;
  r.steps = 3;
  r.seed = 7;
  r.prompt = head;
  const auto a = sd->txt2img(r);
  r.prompt = full;
  const auto b = sd->txt2img(r);
  EXPECT_NE(a[0].rgb, b[0].rgb) << "tokens past the first chunk must condition the image";
  // A long negative prompt pads the positive one with empty chunks instead of failing.
  r.negative_prompt = full;
  r.prompt = "a cat";
  EXPECT_NO_THROW(sd->txt2img(r));
}

TEST(LongPrompt, ZeroWeightsGiveFiniteConditioning) {
  const auto sd = StableDiffusion::load((kFixtures / "models" / "sd1-tiny").string());
  for (const char* p : {"(a photo of a horse:0)", "(horse:0) BREAK (cat:0)", "(:0)"})
    for (float v : sd->encode_prompt(p, 1).to_vector()) ASSERT_TRUE(std::isfinite(v)) << p;
}

TEST(LongPrompt, ExtraNetworkTagsAreCheckedBeforeLoading) {
  GenerateRequest r;
  r.prompt = "a cat <lora:film:0.8>";  // the name is checked against a model's LoRA folder (test_lora.cc)
  EXPECT_NO_THROW(validate_request(r));
  r.prompt = "a cat <lora:film:zero>";
  EXPECT_THROW(validate_request(r), InvalidArgument);
  r.prompt = "a cat <hypernet:film:1>";
  try {
    validate_request(r);
    FAIL() << "expected UnsupportedError";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("film"), std::string::npos);
  }
  r.prompt = "a cat <unknownnet:x>";  // A1111 skips unknown networks
  EXPECT_NO_THROW(validate_request(r));
}

}  // namespace
}  // namespace sdserve::test
