#include "io/infotext.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/sha256.h"

namespace sdserve {
namespace {

using KV = std::vector<std::pair<std::string, std::string>>;

// ---- writing ----

TEST(Infotext, WritesA1111Format) {
  GenerationParams p;
  p.prompt = "a cat";
  p.negative_prompt = "blurry";
  p.steps = 20;
  p.sampler = "Euler a";
  p.schedule_type = "Karras";
  p.cfg_scale = 7;
  p.seed = 123;
  p.width = 512;
  p.height = 768;
  p.model_hash = "abcdef1234";
  p.model_name = "name";
  p.clip_skip = 2;
  p.version = "sdserve 0.1.0";
  EXPECT_EQ(to_infotext(p),
            "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, "
            "Seed: 123, Size: 512x768, Model hash: abcdef1234, Model: name, Clip skip: 2, Version: sdserve 0.1.0");
}

TEST(Infotext, OmitsEmptyAndDefaultFields) {
  GenerationParams p;
  p.prompt = "x";
  p.sampler = "Euler";
  p.cfg_scale = 7.5f;
  p.seed = 4294967295LL;
  p.clip_skip = 1;
  EXPECT_EQ(to_infotext(p), "x\nSteps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 4294967295, Size: 512x512");
  p.prompt.clear();  // A1111 strips the leading newline
  EXPECT_EQ(to_infotext(p), "Steps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 4294967295, Size: 512x512");
}

TEST(Infotext, FloatsInShortestForm) {
  GenerationParams p;
  p.cfg_scale = 0.1f;
  p.denoising_strength = 0.75f;
  const std::string t = to_infotext(p);
  EXPECT_NE(t.find("CFG scale: 0.1,"), std::string::npos) << t;
  EXPECT_NE(t.find("Denoising strength: 0.75"), std::string::npos) << t;
  p.cfg_scale = 12;
  EXPECT_NE(to_infotext(p).find("CFG scale: 12,"), std::string::npos);
}

TEST(Infotext, QuotesLikeA1111) {
  EXPECT_EQ(infotext_quote("Euler a"), "Euler a");
  EXPECT_EQ(infotext_quote("say \"hi\""), "say \"hi\"");  // quotes alone do not trigger quoting
  EXPECT_EQ(infotext_quote("a,b"), "\"a,b\"");
  EXPECT_EQ(infotext_quote("lora: 7c6b"), "\"lora: 7c6b\"");
  EXPECT_EQ(infotext_quote("a\nb"), "\"a\\nb\"");
  EXPECT_EQ(infotext_quote("q\"b\\s,\t\x01"), "\"q\\\"b\\\\s,\\t\\u0001\"");
  EXPECT_EQ(infotext_quote("日本, ü"), "\"日本, ü\"");  // ensure_ascii=False
  // Our one addition: a leading quote would start a quoted value in A1111's parser.
  EXPECT_EQ(infotext_quote("\"a"), "\"\\\"a\"");
  EXPECT_EQ(infotext_quote(" \"a\" b"), "\" \\\"a\\\" b\"");
  GenerationParams p;
  p.sampler = "\"a";
  p.model_name = "b\"";
  p.seed = 5;
  EXPECT_EQ(parse_infotext(to_infotext(p)).seed, 5);
  EXPECT_EQ(parse_infotext(to_infotext(p)).sampler, "\"a");
}

TEST(Infotext, ExtraKeysKeepOrderAndQuoting) {
  GenerationParams p;
  p.sampler = "DPM++ 2M";
  p.denoising_strength = 0.7f;
  p.extra = {{"Hires upscale", "2"},
             {"Hires upscaler", "Latent"},
             {"Lora hashes", "add_detail: 7c6bad76eb54"},
             {"Steps", "ignored: core key"}};
  EXPECT_EQ(to_infotext(p),
            "Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: -1, Size: 512x512, Denoising strength: 0.7, "
            "Hires upscale: 2, Hires upscaler: Latent, Lora hashes: \"add_detail: 7c6bad76eb54\"");
}

// ---- parsing literal A1111 infotexts ----

TEST(Infotext, ParsesA1111DocstringExample) {
  // The example in the docstring of A1111's parse_generation_parameters (modules/infotext_utils.py).
  const char* text =
      "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, by Alphonse "
      "Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate\n"
      "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly drawn "
      "face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing\n"
      "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b";
  const GenerationParams p = parse_infotext(text);
  EXPECT_EQ(p.prompt.substr(0, 29), "girl with an artist's beret, ");
  EXPECT_EQ(p.prompt.substr(p.prompt.size() - 9), "intricate");
  EXPECT_EQ(p.negative_prompt.substr(0, 10), "ugly, fat,");
  EXPECT_EQ(p.negative_prompt.substr(p.negative_prompt.size() - 13), "messy drawing");
  EXPECT_EQ(p.steps, 20);
  EXPECT_EQ(p.sampler, "Euler a");
  EXPECT_EQ(p.cfg_scale, 7.f);
  EXPECT_EQ(p.seed, 965400086);
  EXPECT_EQ(p.width, 512);
  EXPECT_EQ(p.height, 512);
  EXPECT_EQ(p.model_hash, "45dee52b");
  EXPECT_EQ(p.clip_skip, 1);  // missing means 1
  EXPECT_TRUE(p.extra.empty());
  EXPECT_EQ(to_infotext(p), text);
}

TEST(Infotext, ParsesModernA1111Infotext) {
  // The shape A1111 1.10 writes for a hires-fix txt2img with a LoRA.
  const char* text =
      "masterpiece, 1girl, <lora:add_detail:0.6>\n"
      "second line of prompt\n"
      "Negative prompt: lowres, bad hands\n"
      "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3051930512, Size: 512x768, "
      "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, "
      "Hires upscale: 2, Hires steps: 10, Hires upscaler: R-ESRGAN 4x+, Lora hashes: \"add_detail: 7c6bad76eb54\", "
      "Version: v1.10.1";
  const GenerationParams p = parse_infotext(text);
  EXPECT_EQ(p.prompt, "masterpiece, 1girl, <lora:add_detail:0.6>\nsecond line of prompt");
  EXPECT_EQ(p.negative_prompt, "lowres, bad hands");
  EXPECT_EQ(p.steps, 25);
  EXPECT_EQ(p.sampler, "DPM++ 2M");
  EXPECT_EQ(p.schedule_type, "Karras");
  EXPECT_EQ(p.cfg_scale, 6.5f);
  EXPECT_EQ(p.seed, 3051930512LL);
  EXPECT_EQ(p.width, 512);
  EXPECT_EQ(p.height, 768);
  EXPECT_EQ(p.model_hash, "6ce0161689");
  EXPECT_EQ(p.model_name, "v1-5-pruned-emaonly");
  ASSERT_TRUE(p.denoising_strength.has_value());
  EXPECT_FLOAT_EQ(*p.denoising_strength, 0.45f);
  EXPECT_EQ(p.clip_skip, 2);
  EXPECT_EQ(p.version, "v1.10.1");
  EXPECT_EQ(p.extra, (KV{{"Hires upscale", "2"},
                         {"Hires steps", "10"},
                         {"Hires upscaler", "R-ESRGAN 4x+"},
                         {"Lora hashes", "add_detail: 7c6bad76eb54"}}));
  EXPECT_EQ(to_infotext(p), text);
}

TEST(Infotext, ShortLastLineIsPrompt) {
  // Fewer than three key: value pairs on the last line: it is part of the prompt.
  GenerationParams p = parse_infotext("a photo\nstyle: cinematic, mood: dark");
  EXPECT_EQ(p.prompt, "a photo\nstyle: cinematic, mood: dark");
  EXPECT_TRUE(p.extra.empty());
  p = parse_infotext("just a prompt");
  EXPECT_EQ(p.prompt, "just a prompt");
  EXPECT_EQ(p.steps, 20);
  p = parse_infotext("");
  EXPECT_EQ(p.prompt, "");
  p = parse_infotext("Steps: 5, Seed: 1, Size: 64x32");
  EXPECT_EQ(p.prompt, "");
  EXPECT_EQ(p.steps, 5);
  EXPECT_EQ(p.width, 64);
  EXPECT_EQ(p.height, 32);
}

TEST(Infotext, NegativePromptLines) {
  const GenerationParams p =
      parse_infotext("  p1  \n\n p2\nNegative prompt:   n1 \nn2\nNegative prompt: n3\nSteps: 1, Seed: 2, Size: 8x8");
  EXPECT_EQ(p.prompt, "p1\n\np2");
  EXPECT_EQ(p.negative_prompt, "n1\nn2\nn3");
}

TEST(Infotext, FindParamsMatchesA1111Regex) {
  // Raw (still quoted) values, as re.findall returns them.
  EXPECT_EQ(infotext_find_params("Steps: 20, Sampler: Euler a, CFG scale: 7"),
            (KV{{"Steps", "20"}, {"Sampler", "Euler a"}, {"CFG scale", "7"}}));
  EXPECT_EQ(infotext_find_params("Ab: \"x, y\", Bc: \"q\\\"z\", Cd: 1"),
            (KV{{"Ab", "\"x, y\""}, {"Bc", "\"q\\\"z\""}, {"Cd", "1"}}));
  // A quoted value not followed by ',' or the end falls back to [^,]*; "y\" z" then holds no key.
  EXPECT_EQ(infotext_find_params("Aa: \"x, y\" z, Bb: 1"), (KV{{"Aa", "\"x"}, {"Bb", "1"}}));
  // Keys need two characters; '.' breaks a key; an empty quoted "" is not the quoted alternative.
  EXPECT_EQ(infotext_find_params("a: 1, bb: 2, x.yz: 3, EE: \"\""), (KV{{"bb", "2"}, {"yz", "3"}, {"EE", "\"\""}}));
  EXPECT_EQ(infotext_find_params("Hires-fix/v 2: on"), (KV{{"Hires-fix/v 2", "on"}}));
  EXPECT_EQ(infotext_find_params(""), KV{});
  EXPECT_EQ(infotext_find_params("no pairs here"), KV{});
}

TEST(Infotext, ValueEdgeCasesFollowA1111) {
  // Empty values are skipped (A1111's v[0] raises); undecodable JSON stays raw; a lone surrogate
  // escape becomes U+FFFD; WxH values of other keys stay whole in `extra`.
  const GenerationParams p = parse_infotext(
      "Steps: 3, Empty: , Bad: \"\\x\", Pair: \"\\ud83c\\udf38\", Lone: \"\\ud800\", Seed resize from: 64x64, "
      "Seed: 9, Size: 64x64");
  EXPECT_EQ(p.steps, 3);
  EXPECT_EQ(p.seed, 9);
  EXPECT_EQ(p.extra, (KV{{"Bad", "\"\\x\""}, {"Pair", "🌸"}, {"Lone", "\xEF\xBF\xBD"}, {"Seed resize from", "64x64"}}));
  // A core key whose value does not parse keeps its default; the raw text is kept in extra.
  const GenerationParams q = parse_infotext("Steps: many, CFG scale: 7.5, Seed: 12345678901234, Size: 10x");
  EXPECT_EQ(q.steps, 20);
  EXPECT_EQ(q.cfg_scale, 7.5f);
  EXPECT_EQ(q.seed, 12345678901234LL);
  EXPECT_EQ(q.width, 512);
  EXPECT_EQ(q.extra, (KV{{"Steps", "many"}, {"Size", "10x"}}));
  // A later duplicate wins, like a Python dict.
  EXPECT_EQ(parse_infotext("Steps: 1, Steps: 2, Seed: 3").steps, 2);
}

TEST(Infotext, StripsPythonWhitespace) {
  // \r\n line ends, NBSP and ideographic space are whitespace to Python's str.strip().
  const GenerationParams p =
      parse_infotext("\xC2\xA0 prompt \r\nNegative prompt: neg\xE3\x80\x80\r\nSteps: 7, Seed: 1, Size: 8x16\r\n");
  EXPECT_EQ(p.prompt, "prompt");
  EXPECT_EQ(p.negative_prompt, "neg");
  EXPECT_EQ(p.steps, 7);
  EXPECT_EQ(p.height, 16);
}

TEST(Infotext, LinearOnHostileInput) {
  // Inputs on which a backtracking regex (A1111's, in Python) goes quadratic: long key runs never
  // followed by ':', and many quoted values whose closing quote is far away. 2 MB each must be quick.
  std::string run(2 << 20, 'a');
  std::string quotes;
  while (quotes.size() < (2u << 20)) quotes += "Ke: \"x, ";
  std::string escapes = "Ke: \"" + std::string(2 << 20, '\\');
  for (const std::string* s : {&run, &quotes, &escapes}) {
    const auto t0 = std::chrono::steady_clock::now();
    const GenerationParams p = parse_infotext(*s + "\nSteps: 1, Seed: 2, Size: 3x4");
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(p.steps, 1);
    EXPECT_LT(sec, 2.0);
    const auto t1 = std::chrono::steady_clock::now();
    infotext_find_params(*s);
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count(), 2.0);
  }
}

// ---- round trip ----

std::string random_text(std::mt19937& rng, bool multiline) {
  static const std::vector<std::string> atoms = {
      "cat", "a",     "(masterpiece:1.2)", ",",         ", ",  ":", "\"", "\\", "'",  "日本語",  "ü", "é",
      "🌸",   "[x|y]", "<lora:name:0.5>",   "Steps: 20", "x=1", "-", "/",  "  ", "\t", "Negative"};
  std::uniform_int_distribution<size_t> pick(0, atoms.size() - 1), len(1, 12);
  std::string s;
  const size_t n = len(rng);
  for (size_t i = 0; i < n; ++i) {
    s += atoms[pick(rng)];
    if (multiline && rng() % 7 == 0) s += "\n";
  }
  return s;
}

// What A1111's writer-then-parser pair preserves: each line stripped, leading empty lines dropped.
std::string normalize_prompt(const std::string& s) {
  std::string out;
  size_t start = 0;
  while (true) {
    const size_t nl = s.find('\n', start);
    std::string line = s.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    const size_t b = line.find_first_not_of(" \t\r");
    const size_t e = line.find_last_not_of(" \t\r");
    line = b == std::string::npos ? "" : line.substr(b, e - b + 1);
    if (!out.empty()) out += "\n";
    out += line;
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  return out;
}

TEST(Infotext, RoundTripRandomParams) {
  std::mt19937 rng(1234);
  int checked = 0;
  for (int it = 0; it < 3000; ++it) {
    GenerationParams p;
    p.prompt = normalize_prompt(random_text(rng, true));
    if (p.prompt.rfind("Negative prompt:", 0) == 0 || p.prompt.find("\nNegative prompt:") != std::string::npos)
      continue;  // A1111 cannot tell such a prompt from the negative prompt either
    p.negative_prompt = rng() % 3 == 0 ? "" : normalize_prompt(random_text(rng, true));
    while (!p.prompt.empty() && p.prompt.back() == '\n') p.prompt.pop_back();
    while (!p.prompt.empty() && p.prompt.front() == '\n') p.prompt.erase(0, 1);
    while (!p.negative_prompt.empty() && p.negative_prompt.back() == '\n') p.negative_prompt.pop_back();
    while (!p.negative_prompt.empty() && p.negative_prompt.front() == '\n') p.negative_prompt.erase(0, 1);
    p.steps = int(rng() % 150) + 1;
    p.sampler = rng() % 4 == 0 ? "" : "DPM++ 2M SDE";
    p.schedule_type = rng() % 2 ? "Karras" : "";
    p.cfg_scale = float(rng() % 61) / 2.f;
    p.seed = int64_t(rng()) * (rng() % 2 ? 1 : -1);
    p.width = 8 * int(rng() % 256 + 1);
    p.height = 8 * int(rng() % 256 + 1);
    p.model_hash = rng() % 2 ? "0123456789" : "";
    p.model_name = rng() % 2 ? "model, v2: \"final\"" : "";
    p.clip_skip = int(rng() % 4) + 1;
    if (rng() % 2) p.denoising_strength = float(rng() % 101) / 100.f;
    if (rng() % 2) p.version = "sdserve 0.1.0";
    // Extra values: A1111 round-trips any value that does not start and end with '"' unless quoted,
    // has no edge whitespace, and is not empty.
    for (int k = 0; k < int(rng() % 3); ++k) {
      std::string v = random_text(rng, true);
      const size_t b = v.find_first_not_of(" \t\n"), e = v.find_last_not_of(" \t\n");
      if (b == std::string::npos) continue;
      v = v.substr(b, e - b + 1);
      p.set_extra("Extra " + std::to_string(k), v);
    }

    const std::string text = to_infotext(p);
    const GenerationParams q = parse_infotext(text);
    SCOPED_TRACE(text);
    // An empty prompt with a multi-line negative prompt, or a prompt that parses as parameters, is
    // ambiguous in A1111's format; compare only what the format can carry.
    EXPECT_EQ(q.prompt, p.prompt);
    EXPECT_EQ(q.negative_prompt, p.negative_prompt);
    EXPECT_EQ(q.steps, p.steps);
    EXPECT_EQ(q.sampler, p.sampler);
    EXPECT_EQ(q.schedule_type, p.schedule_type);
    EXPECT_EQ(q.cfg_scale, p.cfg_scale);
    EXPECT_EQ(q.seed, p.seed);
    EXPECT_EQ(q.width, p.width);
    EXPECT_EQ(q.height, p.height);
    EXPECT_EQ(q.model_hash, p.model_hash);
    EXPECT_EQ(q.model_name, p.model_name);
    EXPECT_EQ(q.clip_skip, p.clip_skip);
    EXPECT_EQ(q.denoising_strength, p.denoising_strength);
    EXPECT_EQ(q.version, p.version);
    EXPECT_EQ(q.extra, p.extra);
    EXPECT_EQ(to_infotext(q), text);
    if (::testing::Test::HasFailure()) break;
    ++checked;
  }
  EXPECT_GT(checked, 2000);
}

// ---- goldens computed by A1111's own parser ----

TEST(Infotext, MatchesA1111ParserGoldens) {
  // tests/fixtures/infotext/a1111_goldens.jsonl: {"text", "prompt", "negative", "params": [[k, v], ...]}
  // where params are re.findall results after A1111's unquote (see docs/INFOTEXT.md).
  std::ifstream in(std::string(SDSERVE_SOURCE_DIR) + "/tests/fixtures/infotext/a1111_goldens.jsonl");
  ASSERT_TRUE(in.good());
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    const std::string text = j["text"];
    SCOPED_TRACE(text);
    const GenerationParams p = parse_infotext(text);
    // "Prompt" / "Negative prompt" keys on the parameters line override the prompt lines, as in A1111.
    std::string prompt = j["prompt"], negative = j["negative"];
    KV raw;
    for (const auto& kv : j["params"]) raw.emplace_back(kv[0], kv[1]);
    for (const auto& [k, v] : raw) {
      if (k == "Prompt") prompt = v;
      if (k == "Negative prompt") negative = v;
    }
    EXPECT_EQ(p.prompt, prompt);
    EXPECT_EQ(p.negative_prompt, negative);
    // Every non-core key's final value lands in extra.
    for (const auto& [k, v] : raw) {
      if (k == "Prompt" || k == "Negative prompt" || k == "Steps" || k == "Sampler" || k == "Schedule type" ||
          k == "CFG scale" || k == "Seed" || k == "Size" || k == "Model hash" || k == "Model" || k == "Clip skip" ||
          k == "Denoising strength" || k == "Version")
        continue;
      std::string last;
      for (const auto& [k2, v2] : raw)
        if (k2 == k) last = v2;
      const std::string* got = p.find_extra(k);
      ASSERT_NE(got, nullptr) << k;
      EXPECT_EQ(*got, last) << k;
    }
    if (::testing::Test::HasFailure()) break;
    ++n;
  }
  EXPECT_GT(n, 100);
}

// ---- model hash ----

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  std::string million(1000000, 'a');
  EXPECT_EQ(sha256_hex(million), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Streaming in odd pieces gives the same digest.
  Sha256 s;
  for (size_t i = 0; i < million.size();) {
    const size_t n = std::min<size_t>(1 + i % 97, million.size() - i);
    s.update(million.data() + i, n);
    i += n;
  }
  const auto d = s.digest();
  EXPECT_EQ(to_hex(d.data(), d.size()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, HardwareAndPortablePathsAgree) {
  std::mt19937 rng(3);
  std::string data(100000, '\0');
  for (char& c : data) c = char(rng());
  for (size_t n : {0, 1, 55, 56, 63, 64, 65, 127, 128, 1000, 65536, 100000}) {
    Sha256 fast, portable(true);
    fast.update(data.data(), n);
    portable.update(data.data(), n);
    EXPECT_EQ(fast.digest(), portable.digest()) << n;
  }
}

TEST(Sha256, ModelHashIsFirstTenHexDigitsOfFileHash) {
  const std::string path =
      (std::filesystem::path(::testing::TempDir()) / ("sdserve_hash_" + std::to_string(::getpid()))).string();
  std::ofstream(path, std::ios::binary) << std::string(3 << 20, 'a') << "tail";
  std::string all(3 << 20, 'a');
  all += "tail";
  EXPECT_EQ(a1111_model_hash(path), sha256_hex(all).substr(0, 10));
  std::filesystem::remove(path);
  EXPECT_THROW(a1111_model_hash(path), NotFoundError);
  // Empty file: the hash of nothing.
  std::ofstream(path, std::ios::binary).close();
  EXPECT_EQ(a1111_model_hash(path), "e3b0c44298");
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace sdserve
