// The safe PyTorch checkpoint reader (io/torch_checkpoint.h): every fixture written by torch.save
// (tools/make_torch_fixtures.py) reads back bit for bit as its .expected.safetensors; hostile pickles
// are refused without side effects; corrupt and truncated files fail with one-line errors.
#include "io/torch_checkpoint.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"

namespace sdserve {
namespace {

namespace fs = std::filesystem;

const fs::path kDir = fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures" / "torch";
const char* const kMarker = "/tmp/sdserve-torch-hostile-marker";  // what the hostile fixtures would write

std::vector<uint8_t> read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

std::shared_ptr<const std::vector<uint8_t>> shared(std::vector<uint8_t> v) {
  return std::make_shared<const std::vector<uint8_t>>(std::move(v));
}

// Runs `fn`, expects error type E whose single-line message contains every needle.
template <typename E>
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no exception; expected " << ::testing::internal::GetTypeName<E>();
  } catch (const E& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_LT(msg.size(), 2000u) << msg;
    for (const std::string& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

void expect_same_tensors(const SafeTensorsFile& got, const SafeTensorsFile& want) {
  ASSERT_EQ(got.tensors().size(), want.tensors().size());
  for (const TensorInfo& w : want.tensors()) {
    SCOPED_TRACE(w.name);
    const TensorInfo* g = got.find(w.name);
    ASSERT_NE(g, nullptr) << "missing tensor";
    EXPECT_EQ(g->dtype, w.dtype);
    EXPECT_EQ(g->shape, w.shape);
    const auto gb = got.tensor_bytes(*g), wb = want.tensor_bytes(w);
    ASSERT_EQ(gb.size(), wb.size());
    EXPECT_TRUE(gb.empty() || std::memcmp(gb.data(), wb.data(), gb.size()) == 0) << "values differ";
  }
}

// ---- every fixture torch.save wrote reads back exactly -------------------------------------------

class TorchFixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TorchFixtureTest, MatchesTorchBitForBit) {
  const fs::path file = kDir / GetParam();
  const std::string stem = file.stem().string();
  const SafeTensorsFile want = SafeTensorsFile::open((kDir / (stem + ".expected.safetensors")).string());
  const SafeTensorsFile got = read_torch_checkpoint(file.string());
  EXPECT_EQ(got.path(), file.string());
  expect_same_tensors(got, want);
  // Same from bytes in memory.
  expect_same_tensors(read_torch_checkpoint_bytes(shared(read_all(file)), GetParam()), want);
}

INSTANTIATE_TEST_SUITE_P(Torch, TorchFixtureTest,
                         ::testing::Values("dtypes.pth", "deflated.pth", "esrgan_params_ema.pth",
                                           "module_state_dict.pt", "views.pth", "zip64.pth", "parameters.pt",
                                           "embedding_a1111.pt", "lightning.ckpt", "inert_extras.ckpt", "v3_dtypes.pt",
                                           "legacy.pth"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

TEST(TorchCheckpoint, NamesAreFlattenedWithDots) {
  const auto esr = read_torch_checkpoint((kDir / "esrgan_params_ema.pth").string());
  EXPECT_TRUE(esr.contains("params_ema.conv_first.weight"));
  EXPECT_TRUE(esr.contains("params_ema.body.0.rdb1.conv1.bias"));
  EXPECT_EQ(esr.tensors().size(), 5u);

  const auto ckpt = read_torch_checkpoint((kDir / "lightning.ckpt").string());
  EXPECT_TRUE(ckpt.contains("state_dict.model.diffusion_model.input_blocks.0.0.weight"));
  EXPECT_EQ(ckpt.tensors().size(), 3u) << "tensors inside lists (optimizer_states) are not weights";

  const auto emb = read_torch_checkpoint((kDir / "embedding_a1111.pt").string());
  ASSERT_TRUE(emb.contains("string_to_param.*"));
  EXPECT_EQ(emb.find("string_to_param.*")->shape, (Shape{2, 8}));
  EXPECT_EQ(emb.tensors().size(), 1u);

  const auto sd = read_torch_checkpoint((kDir / "module_state_dict.pt").string());
  EXPECT_TRUE(sd.contains("1.num_batches_tracked"));
  EXPECT_EQ(sd.find("1.num_batches_tracked")->dtype, DType::I64);
}

TEST(TorchCheckpoint, UnrepresentableDtypesAreSkippedAndListed) {
  const TorchTensors t = load_torch_checkpoint_tensors((kDir / "v3_dtypes.pt").string());
  EXPECT_EQ(t.skipped, std::vector<std::string>{"c64"});
  ASSERT_EQ(t.tensors.size(), 6u);
  EXPECT_EQ(t.tensors[0].first, "u16");
  EXPECT_EQ(t.tensors[0].second.dtype(), DType::U16);
}

TEST(TorchCheckpoint, ViewsAreZeroCopyWhenContiguousAndCopiedWhenStrided) {
  const TorchTensors t = load_torch_checkpoint_tensors((kDir / "views.pth").string());
  const Tensor* base = nullptr;
  const Tensor* rows = nullptr;
  const Tensor* tr = nullptr;
  for (const auto& [name, v] : t.tensors) {
    if (name == "base") base = &v;
    if (name == "rows") rows = &v;
    if (name == "t") tr = &v;
  }
  ASSERT_TRUE(base && rows && tr);
  // base[2:4] is a contiguous window of the same storage: a view into the same mapping.
  EXPECT_EQ(static_cast<const char*>(rows->raw_data()), static_cast<const char*>(base->raw_data()) + 2 * 8 * 4);
  EXPECT_TRUE(tr->is_contiguous());
  EXPECT_EQ(tr->shape(), (Shape{8, 6}));
  const std::vector<float> b = base->to_vector(), tv = tr->to_vector();
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 8; ++j) EXPECT_EQ(tv[size_t(j * 6 + i)], b[size_t(i * 8 + j)]);
}

TEST(TorchCheckpoint, LoadersCanConvert) {
  const auto f = read_torch_checkpoint((kDir / "legacy.pth").string());
  const Tensor b = f.get_as("params.b", DType::F32);
  EXPECT_EQ(b.dtype(), DType::F32);
  EXPECT_EQ(b.shape(), (Shape{4}));
}

// ---- hostile files: refused before anything could run ---------------------------------------------

TEST(TorchCheckpoint, HostileReduceIsRefusedWithoutSideEffects) {
  std::error_code ec;
  fs::remove(kMarker, ec);
  expect_error<UnsupportedError>([] { read_torch_checkpoint((kDir / "hostile_reduce.pth").string()); },
                                 {"hostile_reduce.pth", "refusing to load global 'posix.system'"});
  expect_error<UnsupportedError>([] { read_torch_checkpoint((kDir / "hostile_raw.pkl").string()); },
                                 {"hostile_raw.pkl", "refusing to load global 'posix.system'"});
  expect_error<UnsupportedError>([] { read_torch_checkpoint((kDir / "hostile_eval.pt").string()); },
                                 {"hostile_eval.pt", "refusing to load global 'builtins.eval'"});
  EXPECT_FALSE(fs::exists(kMarker)) << "a hostile fixture ran a command";
}

// ---- a tiny zip + pickle writer for hand-made files ------------------------------------------------

struct Pickle {
  std::string b = std::string("\x80\x02", 2);
  Pickle& op(char c) {
    b += c;
    return *this;
  }
  Pickle& raw(std::string_view s) {
    b += s;
    return *this;
  }
  Pickle& str(std::string_view s) {
    b += 'X';
    for (int i = 0; i < 4; ++i) b += char((s.size() >> (8 * i)) & 0xff);
    b += s;
    return *this;
  }
  Pickle& i4(int64_t v) {
    b += 'J';
    for (int i = 0; i < 4; ++i) b += char((uint64_t(v) >> (8 * i)) & 0xff);
    return *this;
  }
  Pickle& ints(const std::vector<int64_t>& v) {
    op('(');
    for (int64_t x : v) i4(x);
    return op('t');
  }
  Pickle& global(std::string_view m, std::string_view n) {
    b += 'c';
    b += m;
    b += '\n';
    b += n;
    b += '\n';
    return *this;
  }
  // Pushes torch._utils._rebuild_tensor_v2(storage key/numel, offset, size, stride, False, OrderedDict()).
  Pickle& tensor(std::string_view key, int64_t numel, int64_t offset, const std::vector<int64_t>& size,
                 const std::vector<int64_t>& stride, std::string_view type = "FloatStorage") {
    global("torch._utils", "_rebuild_tensor_v2").op('(');
    op('(').str("storage").global("torch", type).str(key).str("cpu").i4(numel).op('t').op('Q');
    i4(offset).ints(size).ints(stride).op('\x89').global("collections", "OrderedDict").op(')').op('R');
    return op('t').op('R');
  }
};

// A zip of stored entries as torch writes them (no data descriptors, no extras).
std::vector<uint8_t> make_zip(const std::vector<std::pair<std::string, std::string>>& entries) {
  std::vector<uint8_t> out, cd;
  auto put = [](std::vector<uint8_t>& v, uint64_t x, int n) {
    for (int i = 0; i < n; ++i) v.push_back(uint8_t(x >> (8 * i)));
  };
  for (const auto& [name, body] : entries) {
    const uint64_t off = out.size();
    put(out, 0x04034b50, 4);
    put(out, 20, 2);
    put(out, 0, 2);
    put(out, 0, 2);
    put(out, 0, 4);
    put(out, 0, 4);  // crc (not checked)
    put(out, body.size(), 4);
    put(out, body.size(), 4);
    put(out, name.size(), 2);
    put(out, 0, 2);
    out.insert(out.end(), name.begin(), name.end());
    out.insert(out.end(), body.begin(), body.end());
    put(cd, 0x02014b50, 4);
    put(cd, 20, 2);
    put(cd, 20, 2);
    put(cd, 0, 2);
    put(cd, 0, 2);
    put(cd, 0, 4);
    put(cd, 0, 4);
    put(cd, body.size(), 4);
    put(cd, body.size(), 4);
    put(cd, name.size(), 2);
    put(cd, 0, 2);
    put(cd, 0, 2);
    put(cd, 0, 2);
    put(cd, 0, 2);
    put(cd, 0, 4);
    put(cd, off, 4);
    cd.insert(cd.end(), name.begin(), name.end());
  }
  const uint64_t cd_off = out.size();
  out.insert(out.end(), cd.begin(), cd.end());
  put(out, 0x06054b50, 4);
  put(out, 0, 4);
  put(out, entries.size(), 2);
  put(out, entries.size(), 2);
  put(out, cd.size(), 4);
  put(out, cd_off, 4);
  put(out, 0, 2);
  return out;
}

std::string floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

TorchTensors load(const std::vector<uint8_t>& bytes, const TorchReadLimits& lim = {}) {
  return load_torch_checkpoint_tensors_bytes(shared(bytes), "hand.pth", lim);
}

TEST(TorchCheckpoint, HandMadeArchiveReads) {
  Pickle p;
  p.op('}').op('(').str("a").tensor("0", 6, 1, {2, 2}, {1, 2}).str("b").tensor("0", 6, 0, {}, {}).op('u').op('.');
  const auto t = load(make_zip({{"x/data.pkl", p.b}, {"x/data/0", floats({0, 1, 2, 3, 4, 5})}}));
  ASSERT_EQ(t.tensors.size(), 2u);
  EXPECT_EQ(t.tensors[0].second.to_vector(), (std::vector<float>{1, 3, 2, 4}));  // transposed, offset 1
  EXPECT_EQ(t.tensors[1].second.shape(), Shape{});
  EXPECT_EQ(t.tensors[1].second.to_vector(), std::vector<float>{0});
}

TEST(TorchCheckpoint, CyclicAndSharedStructuresAreHarmless) {
  // l = []; l.append(l); {"l": l, "d": d, "e": d} with d = {"w": tensor}: the list is skipped, the
  // shared dict is read under both names, and nothing leaks (the ASan build checks).
  Pickle p;
  p.op('}').op('(').str("l").op(']').raw("q\x01").raw("h\x01").op('a');
  p.str("d").op('}').raw("q\x02").str("w").tensor("0", 1, 0, {1}, {1}).op('s');
  p.str("e").raw("h\x02").op('u').op('.');
  const auto t = load(make_zip({{"x/data.pkl", p.b}, {"x/data/0", floats({7})}}));
  ASSERT_EQ(t.tensors.size(), 2u);
  EXPECT_EQ(t.tensors[0].first, "d.w");
  EXPECT_EQ(t.tensors[1].first, "e.w");
}

struct Corrupt {
  const char* name;
  std::function<std::vector<uint8_t>()> make;
  bool unsupported;  // UnsupportedError instead of ModelFormatError
  std::string needle;
};

std::vector<uint8_t> with_pickle(const Pickle& p, std::string data = floats({1, 2, 3, 4})) {
  return make_zip({{"x/data.pkl", p.b}, {"x/data/0", std::move(data)}});
}

std::vector<Corrupt> corrupt_cases() {
  auto dict_with = [](std::function<void(Pickle&)> f) {
    Pickle p;
    p.op('}').op('(').str("w");
    f(p);
    p.op('u').op('.');
    return p;
  };
  return {
      {"TensorPastStorage", [&] { return with_pickle(dict_with([](Pickle& p) { p.tensor("0", 4, 2, {3}, {1}); })); },
       false, "reaches past the 16 bytes of storage '0'"},
      {"StridePastStorage",
       [&] { return with_pickle(dict_with([](Pickle& p) {
               p.tensor("0", 4, 0, {2, 2}, {3, 1});
             })); }, false,
       "reaches past"},
      {"HugeStorageClaim",
       [&] { return with_pickle(dict_with([](Pickle& p) { p.tensor("0", int64_t(1) << 30, 0, {1}, {1}); })); }, false,
       "storage '0' is 4294967296 bytes but its entry holds 16"},
      {"MissingStorage", [&] { return with_pickle(dict_with([](Pickle& p) { p.tensor("7", 4, 0, {4}, {1}); })); },
       false, "storage '7' has no 'x/data/7' entry"},
      {"StorageKeyTooLong",
       [&] { return with_pickle(dict_with([](Pickle& p) { p.tensor(std::string(300, '7'), 4, 0, {4}, {1}); })); },
       false, "storage key is 300 bytes long"},
      {"NegativeSize", [&] { return with_pickle(dict_with([](Pickle& p) { p.tensor("0", 4, 0, {-1}, {1}); })); }, false,
       "negative tensor size"},
      {"HugeExpand",  // stride 0 over one element: 2^40 elements
       [&] { return with_pickle(dict_with([](Pickle& p) {
               p.tensor("0", 4, 0, {1 << 20, 1 << 20}, {0, 0});
             })); }, true,
       "over the limit"},
      {"MemoMissing", [&] { return with_pickle(dict_with([](Pickle& p) { p.raw("h\x09"); })); }, false,
       "memo entry 9 was never stored"},
      {"StackUnderflow",
       [&] {
         Pickle p;
         p.op('s').op('.');
         return with_pickle(p);
       },
       false, "stack underflow"},
      {"UnknownOpcode",
       [&] {
         Pickle p;
         p.op('\xff');
         return with_pickle(p);
       },
       false, "unknown pickle opcode 0xff"},
      {"NoStop",
       [&] {
         Pickle p;
         p.op('}');
         return with_pickle(p);
       },
       false, "without STOP"},
      {"InstOpcode",
       [&] {
         Pickle p;
         p.raw("ios\nsystem\n");
         return with_pickle(p);
       },
       true, "INST"},
      {"StackGlobalEval",
       [&] {
         Pickle p;
         p.str("builtins").str("exec").op('\x93').op('.');
         return with_pickle(p);
       },
       true, "refusing to load global 'builtins.exec'"},
      {"TopLevelList",
       [&] {
         Pickle p;
         p.op(']').op('.');
         return with_pickle(p);
       },
       true, "holds a list, not a dict"},
      {"DuplicateName",
       [&] {
         Pickle p;
         p.op('}').op('(').str("a.b").tensor("0", 4, 0, {4}, {1}).str("a").op('}').str("b");
         p.tensor("0", 4, 0, {4}, {1}).op('s').op('u').op('.');
         return with_pickle(p);
       },
       false, "tensor name 'a.b' occurs twice"},
      {"StorageSizesDisagree",
       [&] {
         Pickle p;
         p.op('}').op('(').str("a").tensor("0", 4, 0, {4}, {1}).str("b").tensor("0", 2, 0, {2}, {1}).op('u').op('.');
         return with_pickle(p);
       },
       false, "storage '0' is given as 16 and as 8 bytes"},
      {"InvalidUtf8",
       [&] {
         Pickle p;
         p.op('}').str("\xff\xfe").op('N').op('s').op('.');
         return with_pickle(p);
       },
       false, "not valid UTF-8"},
      {"BigEndian",
       [&] {
         Pickle p;
         p.op('}').op('.');
         return make_zip({{"x/data.pkl", p.b}, {"x/byteorder", "big"}});
       },
       true, "big-endian"},
      {"NoDataPkl",
       [&] {
         return make_zip({{"x/other", "1"}});
       },
       false, "no 'x/data.pkl'"},
      {"TorchScript",
       [&] {
         return make_zip({{"x/constants.pkl", "1"}});
       },
       true, "TorchScript"},
      {"DuplicateEntry",
       [&] {
         return make_zip({{"x/data.pkl", "1"}, {"x/data.pkl", "2"}});
       },
       false, "holds 'x/data.pkl' twice"},
      {"CentralDirectoryOutside",
       [&] {
         auto z = make_zip({{"x/data.pkl", "\x80\x02}."}});
         z[z.size() - 6] = 0xff;  // cd offset
         return z;
       },
       false, "central directory"},
      {"LocalHeaderOutside",
       [&] {
         auto z = make_zip({{"x/data.pkl", "\x80\x02}."}});
         const size_t cd = z.size() - 22 - 46 - 10;
         z[cd + 42 + 3] = 0x7f;  // local header offset
         return z;
       },
       false, "outside the"},
      {"EntryPastEnd",
       [&] {
         auto z = make_zip({{"x/data.pkl", "\x80\x02}."}});
         const size_t cd = z.size() - 22 - 46 - 10;
         z[cd + 20 + 2] = z[cd + 24 + 2] = 0x10;  // sizes
         return z;
       },
       false, "runs past the end"},
      {"Empty", [] { return std::vector<uint8_t>{}; }, false, "the file is empty"},
      {"NotACheckpoint",
       [] {
         return std::vector<uint8_t>{'h', 'e', 'l', 'l', 'o'};
       },
       false, "not a PyTorch"},
      {"Safetensors",
       [] {
         std::vector<uint8_t> v = {2, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
         return v;
       },
       true, "safetensors"},
      {"TarFormat",
       [] {
         std::vector<uint8_t> v(1024, 0);
         std::memcpy(v.data() + 257, "ustar", 5);
         return v;
       },
       true, "tar checkpoint format"},
      {"PickleWithoutMagic",
       [] {
         Pickle p;
         p.op('}').op('.');
         return std::vector<uint8_t>(p.b.begin(), p.b.end());
       },
       false, "no torch.save magic"},
  };
}

class TorchCorruptTest : public ::testing::TestWithParam<Corrupt> {};

TEST_P(TorchCorruptTest, FailsWithOneLineError) {
  const Corrupt& c = GetParam();
  const std::vector<uint8_t> bytes = c.make();
  auto run = [&] { load(bytes); };
  if (c.unsupported) {
    expect_error<UnsupportedError>(run, {"hand.pth: ", c.needle});
  } else {
    expect_error<ModelFormatError>(run, {"hand.pth: ", c.needle});
  }
}

INSTANTIATE_TEST_SUITE_P(Torch, TorchCorruptTest, ::testing::ValuesIn(corrupt_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(TorchCheckpoint, DeepNestingIsRefused) {
  Pickle p;
  for (int i = 0; i < 100; ++i) p.op('}').str("k");
  p.tensor("0", 4, 0, {4}, {1});
  for (int i = 0; i < 100; ++i) p.op('s');
  p.op('.');
  expect_error<UnsupportedError>([&] { load(with_pickle(p)); }, {"nested more than 64 deep"});
}

TEST(TorchCheckpoint, TruncatedFilesAreModelFormatErrors) {
  expect_error<ModelFormatError>([] { read_torch_checkpoint((kDir / "truncated.pth").string()); }, {"truncated.pth: "});
  expect_error<ModelFormatError>([] { read_torch_checkpoint((kDir / "legacy_truncated.pth").string()); },
                                 {"legacy_truncated.pth: ", "truncated"});
  // Every prefix of a zip and of a legacy file fails cleanly.
  for (const char* name : {"dtypes.pth", "legacy.pth", "deflated.pth"}) {
    const std::vector<uint8_t> all = read_all(kDir / name);
    for (size_t n = 0; n < all.size(); ++n) {
      try {
        load(std::vector<uint8_t>(all.begin(), all.begin() + std::ptrdiff_t(n)));
        ADD_FAILURE() << name << " cut at " << n << " loaded";
      } catch (const ModelFormatError& e) {
        EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
      } catch (const std::exception& e) {
        ADD_FAILURE() << name << " cut at " << n << ": " << e.what();
      }
    }
  }
}

TEST(TorchCheckpoint, EveryBitFlipFailsCleanlyOrLoads) {
  for (const char* name : {"views.pth", "legacy.pth", "deflated.pth"}) {
    const std::vector<uint8_t> all = read_all(kDir / name);
    for (size_t i = 0; i < all.size(); ++i) {
      for (uint8_t bit : {uint8_t(0x01), uint8_t(0x80)}) {
        std::vector<uint8_t> v = all;
        v[i] ^= bit;
        try {
          const auto f = read_torch_checkpoint_bytes(shared(std::move(v)), name);
          for (const TensorInfo& t : f.tensors()) (void)f.get(t.name);
        } catch (const Error& e) {
          EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
        } catch (const std::exception& e) {
          ADD_FAILURE() << name << " byte " << i << ": " << e.what();
        }
      }
    }
  }
}

TEST(TorchCheckpoint, LimitsAreEnforced) {
  const auto bytes = read_all(kDir / "dtypes.pth");
  TorchReadLimits lim;
  lim.max_tensor_bytes = 64;
  expect_error<UnsupportedError>([&] { load(bytes, lim); }, {"over the limit"});
  lim = {};
  lim.max_pickle_bytes = 100;
  expect_error<UnsupportedError>([&] { load(bytes, lim); }, {"over the limit of 100"});
  lim = {};
  lim.max_zip_entries = 3;
  expect_error<UnsupportedError>([&] { load(bytes, lim); }, {"entries, over the limit of 3"});
  lim = {};
  lim.max_tensors = 2;
  expect_error<UnsupportedError>([&] { load(bytes, lim); }, {"more than 2 tensors"});
  lim = {};
  lim.max_pickle_objects = 50;
  expect_error<UnsupportedError>([&] { load(bytes, lim); }, {"more than 50 pickle values"});
}

TEST(TorchCheckpoint, MissingFileIsNotFound) {
  EXPECT_THROW(read_torch_checkpoint((kDir / "no-such-file.pth").string()), NotFoundError);
}

TEST(TorchCheckpoint, LooksLikeTorchCheckpoint) {
  const auto z = read_all(kDir / "dtypes.pth");
  const auto l = read_all(kDir / "legacy.pth");
  EXPECT_TRUE(looks_like_torch_checkpoint(z.data(), z.size()));
  EXPECT_TRUE(looks_like_torch_checkpoint(l.data(), l.size()));
  const uint8_t st[] = {8, 0, 0, 0, 0, 0, 0, 0, '{'};
  EXPECT_FALSE(looks_like_torch_checkpoint(st, sizeof(st)));
}

}  // namespace
}  // namespace sdserve
