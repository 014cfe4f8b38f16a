// CLIP tokenizer: parity with transformers' CLIPTokenizer on a generated corpus, hand-checked cases,
// malformed files, reduced vocabularies and random bytes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "pipeline/tokenizer.h"

namespace fs = std::filesystem;
using sdserve::ClipTokenizer;

namespace {

const fs::path kFixtures = fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures" / "tokenizer";

std::string b64decode(const std::string& in) {
  static const std::string kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    const size_t v = kAlphabet.find(c);
    if (v == std::string::npos) continue;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  return out;
}

std::vector<std::string> read_lines(const fs::path& p) {
  std::ifstream f(p);
  EXPECT_TRUE(f.good()) << p;
  std::vector<std::string> lines;
  for (std::string line; std::getline(f, line);) lines.push_back(line);
  return lines;
}

struct Golden {
  std::string text;
  std::vector<int32_t> ids, tiny_ids;
};

const std::vector<Golden>& goldens() {
  static const std::vector<Golden> g = [] {
    const auto corpus = read_lines(kFixtures / "corpus.b64");
    const auto lines = read_lines(kFixtures / "corpus_goldens.jsonl");
    std::vector<Golden> out;
    if (lines.empty()) return out;
    const auto header = nlohmann::json::parse(lines[0]);
    EXPECT_EQ(header["items"].get<size_t>(), corpus.size());
    EXPECT_EQ(lines.size(), corpus.size() + 1);
    for (size_t i = 0; i < corpus.size() && i + 1 < lines.size(); ++i) {
      const auto j = nlohmann::json::parse(lines[i + 1]);
      out.push_back(Golden{b64decode(corpus[i]), j["ids"].get<std::vector<int32_t>>(),
                           j["tiny_ids"].get<std::vector<int32_t>>()});
    }
    return out;
  }();
  return g;
}

std::string escape(const std::string& s) {
  std::ostringstream os;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      os << c;
    } else {
      char buf[8];
      snprintf(buf, sizeof(buf), "\\x%02x", c);
      os << buf;
    }
  }
  return os.str();
}

void expect_corpus(const ClipTokenizer& tok, bool tiny) {
  const auto& g = goldens();
  ASSERT_GE(g.size(), 2000u);
  size_t failures = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const auto& want = tiny ? g[i].tiny_ids : g[i].ids;
    const auto got = tok.encode(g[i].text);
    if (got != want && ++failures <= 10) {
      ADD_FAILURE() << "corpus item " << i << " \"" << escape(g[i].text.substr(0, 200)) << "\": "
                    << ::testing::PrintToString(got) << " != " << ::testing::PrintToString(want);
    }
  }
  EXPECT_EQ(failures, 0u) << "of " << g.size() << " corpus items";
}

fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("sdserve_tok_" + name + "_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

void write(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}

}  // namespace

TEST(ClipTokenizer, BundledMatchesTransformersOnCorpus) { expect_corpus(ClipTokenizer::bundled(), false); }

TEST(ClipTokenizer, ReducedVocabularyMatchesTransformersOnCorpus) {
  const auto tok = ClipTokenizer::from_files((kFixtures / "tiny1000" / "vocab.json").string(),
                                             (kFixtures / "tiny1000" / "merges.txt").string());
  EXPECT_EQ(tok.vocab_size(), 1514u);
  EXPECT_EQ(tok.bos_id(), 1512);
  EXPECT_EQ(tok.eos_id(), 1513);
  EXPECT_EQ(tok.pad_id(), 1513);
  expect_corpus(tok, true);
}

TEST(ClipTokenizer, FromDirReadsPadToken) {
  const auto tok = ClipTokenizer::from_dir((kFixtures / "tiny1000").string());
  EXPECT_EQ(tok.pad_id(), 0);  // "!" from special_tokens_map.json
  EXPECT_EQ(tok.eos_id(), 1513);
  EXPECT_EQ(tok.encode("a photo"), (std::vector<int32_t>{1512, 320, 1125, 1513}));
}

TEST(ClipTokenizer, HandCheckedIds) {
  const auto tok = ClipTokenizer::bundled();
  EXPECT_EQ(tok.vocab_size(), 49408u);
  EXPECT_EQ(tok.bos_id(), 49406);
  EXPECT_EQ(tok.eos_id(), 49407);
  EXPECT_EQ(tok.pad_id(), 49407);
  EXPECT_EQ(tok.encode("a photo of a cat"), (std::vector<int32_t>{49406, 320, 1125, 539, 320, 2368, 49407}));
  EXPECT_EQ(tok.encode("A  PHOTO\tof\na cat"), tok.encode("a photo of a cat"));
  EXPECT_EQ(tok.encode(""), (std::vector<int32_t>{49406, 49407}));
  EXPECT_EQ(tok.encode(" \t\r\n "), (std::vector<int32_t>{49406, 49407}));
  EXPECT_EQ(tok.tokenize("a photo"), (std::vector<int32_t>{320, 1125}));
  // Special tokens in raw text are matched before normalization; other spellings are plain text.
  EXPECT_EQ(tok.encode("a<|endoftext|>b"), (std::vector<int32_t>{49406, 320, 49407, 321, 49407}));
  EXPECT_EQ(tok.encode("<|startoftext|>x"), (std::vector<int32_t>{49406, 49406, 343, 49407}));
  EXPECT_EQ(tok.encode("a<|ENDOFTEXT|>b"),
            (std::vector<int32_t>{49406, 320, 27, 347, 40786, 4160, 91, 285, 321, 49407}));
  // 's and 't split off, "it" keeps its own token.
  EXPECT_EQ(tok.encode("don't it's"), (std::vector<int32_t>{49406, 847, 713, 585, 568, 49407}));
  // Digits are always single tokens.
  EXPECT_EQ(tok.encode("A1111"), (std::vector<int32_t>{49406, 320, 272, 272, 272, 272, 49407}));
  EXPECT_EQ(tok.encode("e\xcc\x81"), (std::vector<int32_t>{49406, 4166, 49407}));  // NFC: e + U+0301 = é
  EXPECT_EQ(tok.encode("\xc3\xa9"), tok.encode("e\xcc\x81"));
}

TEST(ClipTokenizer, NormalizerDetails) {
  using sdserve::tokenizer_detail::normalize;
  EXPECT_EQ(normalize("A\xC2\xA0 B\xE3\x80\x80" "C"), "a b c");          // NBSP, ideographic space
  EXPECT_EQ(normalize("\xC4\xB0"), "i\xCC\x87");                         // İ -> i + U+0307
  EXPECT_EQ(normalize("\xCE\xA3\xCE\x91\xCE\xA3"), "\xCF\x83\xCE\xB1\xCF\x83");  // no final sigma
  EXPECT_EQ(normalize("\xC3\x9F"), "\xC3\x9F");                          // ß stays
  EXPECT_EQ(normalize("\xE1\xBA\x9E"), "\xC3\x9F");                      // ẞ -> ß
  EXPECT_EQ(normalize("\xEF\xAC\x81"), "\xEF\xAC\x81");                  // ligature ﬁ is not NFKC'd
  EXPECT_EQ(normalize("\x1C" "a"), "\x1C" "a");                          // not \s for the reference
  EXPECT_EQ(normalize("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");  // jamo -> 각
}

TEST(ClipTokenizer, InvalidUtf8IsReplacedLikeCPython) {
  using sdserve::tokenizer_detail::decode_utf8_lossy;
  EXPECT_EQ(decode_utf8_lossy("\xff"), U"\uFFFD");
  EXPECT_EQ(decode_utf8_lossy("\xe2\x82("), U"\uFFFD(");       // truncated 3-byte sequence: one U+FFFD
  EXPECT_EQ(decode_utf8_lossy("\xed\xa0\x80"), U"\uFFFD\uFFFD\uFFFD");  // surrogate: each byte
  EXPECT_EQ(decode_utf8_lossy("\xf0\x9f\x98"), U"\uFFFD");
  EXPECT_EQ(decode_utf8_lossy("\xc0\xaf"), U"\uFFFD\uFFFD");
  EXPECT_EQ(decode_utf8_lossy("\xf4\x90\x80\x80"), U"\uFFFD\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(decode_utf8_lossy("\xf0\x9f\x98\x80"), U"\U0001F600");
  const auto tok = ClipTokenizer::bundled();
  EXPECT_EQ(tok.encode("\xff"), tok.encode("\xef\xbf\xbd"));
}

TEST(ClipTokenizer, DecodeRoundTrips) {
  const auto tok = ClipTokenizer::bundled();
  EXPECT_EQ(tok.decode(tok.tokenize("a photo of a cat, 8k!")), "a photo of a cat , 8 k !");
  EXPECT_EQ(tok.decode(tok.tokenize("caf\xc3\xa9 \xf0\x9f\x98\x80")), "caf\xc3\xa9 \xf0\x9f\x98\x80");
}

TEST(ClipTokenizer, MalformedFilesGiveErrorsNamingTheFile) {
  const fs::path d = temp_dir("bad");
  const std::string good_vocab = R"({"a": 0, "b": 1, "ab": 2, "<|startoftext|>": 3, "<|endoftext|>": 4})";
  const std::string good_merges = "#version: 0.2\na b\n";
  auto expect_error = [&](const std::string& vocab, const std::string& merges, const std::string& bad_file,
                          const std::string& what) {
    write(d / "vocab.json", vocab);
    write(d / "merges.txt", merges);
    try {
      ClipTokenizer::from_files((d / "vocab.json").string(), (d / "merges.txt").string());
      ADD_FAILURE() << "no error for " << what;
    } catch (const sdserve::ModelFormatError& e) {
      EXPECT_NE(std::string(e.what()).find(bad_file), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  };
  expect_error("{not json", good_merges, "vocab.json", "broken json");
  expect_error("[1, 2]", good_merges, "vocab.json", "array");
  expect_error("{}", good_merges, "vocab.json", "empty");
  expect_error(R"({"a": "x", "<|startoftext|>": 1, "<|endoftext|>": 2})", good_merges, "vocab.json", "id type");
  expect_error(R"({"a": -1, "<|startoftext|>": 1, "<|endoftext|>": 2})", good_merges, "vocab.json", "negative");
  expect_error(R"({"a": 0, "b": 1, "ab": 2})", good_merges, "vocab.json", "no special tokens");
  expect_error(good_vocab, "#version: 0.2\na b c\n", "merges.txt", "three parts");
  expect_error(good_vocab, "#version: 0.2\nab\n", "merges.txt", "one part");
  expect_error(good_vocab, "#version: 0.2\na b\n\n", "merges.txt", "blank line");
  expect_error(good_vocab, "#version: 0.2\nb a\n", "merges.txt", "merge result not in vocab");
  expect_error(good_vocab, "#version: 0.2\nx b\n", "merges.txt", "merge part not in vocab");
  // A valid toy vocabulary works, and bytes without a vocabulary entry become the unknown (EOS) id.
  write(d / "vocab.json", good_vocab);
  write(d / "merges.txt", good_merges);
  const auto tok = ClipTokenizer::from_files((d / "vocab.json").string(), (d / "merges.txt").string());
  // Checked against CLIPTokenizer: "b</w>" is unknown, so "ab" cannot merge at the end of a word.
  EXPECT_EQ(tok.encode("ab"), (std::vector<int32_t>{3, 0, 4, 4}));
  EXPECT_EQ(tok.encode("abab a"), (std::vector<int32_t>{3, 2, 0, 4, 4, 4}));
  EXPECT_THROW(ClipTokenizer::from_files((d / "nope.json").string(), (d / "merges.txt").string()),
               sdserve::NotFoundError);
  EXPECT_THROW(ClipTokenizer::from_dir((d / "missing_dir").string()), sdserve::NotFoundError);
  write(d / "tokenizer_config.json", R"({"pad_token": "zz"})");
  EXPECT_THROW(ClipTokenizer::from_dir(d.string()), sdserve::ModelFormatError);
  fs::remove_all(d);
}

TEST(ClipTokenizer, RandomBytesDoNotCrash) {
  const auto tok = ClipTokenizer::bundled();
  std::mt19937 rng(1234);
  for (int i = 0; i < 3000; ++i) {
    std::string s(rng() % 64, '\0');
    for (char& c : s) {
      const uint32_t r = rng();
      // Mix plain ASCII, UTF-8 lead/continuation bytes and specials so that valid sequences also occur.
      c = static_cast<char>(r % 4 == 0 ? 'a' + r % 26 : r % 4 == 1 ? 0x80 + r % 64 : r % 4 == 2 ? 0xC0 + r % 64 : r);
    }
    if (i % 50 == 0) s += "<|endoftext|>";
    const auto ids = tok.encode(s);
    ASSERT_GE(ids.size(), 2u);
    EXPECT_EQ(ids.front(), 49406);
    EXPECT_EQ(ids.back(), 49407);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < 49408);
  }
}

TEST(ClipTokenizer, ThreadSafeAndConsistent) {
  const auto tok = ClipTokenizer::bundled();
  const auto& g = goldens();
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = t; i < g.size(); i += 2)
        if (tok.encode(g[i].text) != g[i].ids) ++mismatches;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// The tiny test models ship the same 1000-merge vocabulary as tiny1000/, so the corpus goldens apply.
TEST(ClipTokenizer, TinyModelTokenizerFolders) {
  const fs::path models = fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures" / "models";
  int seen = 0;
  for (const char* name : {"sd1-tiny", "sd2-tiny"}) {
    const fs::path dir = models / name / "tokenizer";
    if (!fs::exists(dir / "vocab.json")) continue;
    ++seen;
    const auto tok = ClipTokenizer::from_dir(dir.string());
    if (tok.vocab_size() != 1514) continue;  // a different tiny vocabulary: no goldens for it
    EXPECT_EQ(tok.pad_id(), std::string(name) == "sd2-tiny" ? 0 : 1513) << name;
    // "!" stays "!</w>" (256): only BOS/EOS are matched as special tokens (see docs/TOKENIZER.md).
    EXPECT_EQ(tok.encode("a photo of a cat!"), (std::vector<int32_t>{1512, 320, 1125, 539, 320, 66, 536, 256, 1513}));
    expect_corpus(tok, true);
  }
  if (seen == 0) GTEST_SKIP() << "no tiny model fixtures in " << models;
}
