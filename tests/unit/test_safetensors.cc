#include "io/safetensors.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>

#include "core/error.h"

namespace sdserve {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test so parallel ctest runs never share files.
class SafeTensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ =
        fs::path(::testing::TempDir()) / ("sdserve_st_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string write(const std::string& name, const std::vector<uint8_t>& bytes) const {
    const std::string p = path(name);
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    return p;
  }
  fs::path dir_;
};

// Little-endian u64 followed by `tail`.
std::vector<uint8_t> le64(uint64_t v, std::string_view tail = {}) {
  std::vector<uint8_t> out;
  out.reserve(8 + tail.size());
  for (int i = 0; i < 8; ++i) out.push_back(uint8_t(v >> (8 * i)));
  for (char c : tail) out.push_back(uint8_t(c));
  return out;
}

// A file from a raw header string; `pad` pads it with spaces to 8 bytes like the Python writer.
std::vector<uint8_t> make_file(std::string header, const std::vector<uint8_t>& data = {}, bool pad = true) {
  if (pad) header.append((8 - header.size() % 8) % 8, ' ');
  std::vector<uint8_t> out = le64(header.size(), header);
  for (uint8_t b : data) out.push_back(b);
  return out;
}

std::vector<uint8_t> read_all(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
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

constexpr DType kAllDTypes[] = {DType::F32, DType::F16, DType::BF16, DType::F64,    DType::I8,
                                DType::I16, DType::I32, DType::I64,  DType::U8,     DType::U16,
                                DType::U32, DType::U64, DType::Bool, DType::F8E4M3, DType::F8E5M2};

TEST_F(SafeTensorsTest, RoundTripEveryDtype) {
  std::vector<std::pair<std::string, Tensor>> in;
  for (DType dt : kAllDTypes) {
    Tensor t = Tensor::empty({2, 3}, dt);
    auto* b = static_cast<uint8_t*>(t.raw_data());
    for (size_t i = 0; i < t.nbytes(); ++i) b[i] = uint8_t(i * 37 + int(dt) * 11 + 1);
    if (dt == DType::Bool)
      for (size_t i = 0; i < t.nbytes(); ++i) b[i] &= 1;
    in.emplace_back(std::string("t.") + dtype_name(dt), t);
  }
  const std::string p = path("all.safetensors");
  write_safetensors(p, in, {{"format", "pt"}, {"k", "v\"with\nescapes"}});

  const auto f = SafeTensorsFile::open(p);
  EXPECT_EQ(f.path(), p);
  EXPECT_EQ(f.file_size(), fs::file_size(p));
  EXPECT_EQ(f.header_size() % 8, 0u);
  ASSERT_EQ(f.tensors().size(), in.size());
  EXPECT_EQ(f.metadata().at("k"), "v\"with\nescapes");
  uint64_t prev_end = 0;
  for (const TensorInfo& ti : f.tensors()) {
    EXPECT_EQ(ti.begin, prev_end) << "tensors() must be in data order";
    prev_end = ti.end;
  }
  for (const auto& [name, t] : in) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(f.contains(name));
    const TensorInfo* ti = f.find(name);
    ASSERT_NE(ti, nullptr);
    EXPECT_EQ(ti->dtype, t.dtype());
    EXPECT_EQ(ti->shape, (Shape{2, 3}));
    Tensor v = f.get(name);
    EXPECT_EQ(v.dtype(), t.dtype());
    EXPECT_EQ(v.shape(), t.shape());
    EXPECT_EQ(std::memcmp(v.raw_data(), t.raw_data(), t.nbytes()), 0);
    // The writer orders tensors by element size, so every view is aligned.
    EXPECT_TRUE(f.is_aligned(*ti));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v.raw_data()) % dtype_size(t.dtype()), 0u);
  }
  // The in-memory serialization is byte-identical to the file.
  EXPECT_EQ(serialize_safetensors(in, {{"format", "pt"}, {"k", "v\"with\nescapes"}}), read_all(p));
}

TEST_F(SafeTensorsTest, HeaderIsPaddedWithSpacesLikePython) {
  const std::string p = path("pad.safetensors");
  write_safetensors(p, {{"ab", Tensor::from_vector({1.f}, {1})}});
  const auto bytes = read_all(p);
  const std::string json = R"({"ab":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const size_t pad = (8 - json.size() % 8) % 8;
  ASSERT_NE(pad, 0u);
  ASSERT_EQ(bytes.size(), 8 + json.size() + pad + 4);
  EXPECT_EQ(std::vector<uint8_t>(bytes.begin(), bytes.begin() + 8), le64(json.size() + pad));
  EXPECT_EQ(std::string(bytes.begin() + 8, bytes.end() - 4), json + std::string(pad, ' '));
}

TEST_F(SafeTensorsTest, EmptyFileAndZeroSizedTensors) {
  const std::string p = path("empty.safetensors");
  write_safetensors(p, {});
  EXPECT_TRUE(SafeTensorsFile::open(p).tensors().empty());

  write_safetensors(p, {{"z", Tensor::empty({0, 4}, DType::F16)}, {"s", Tensor::from_vector({2.f}, {})}});
  const auto f = SafeTensorsFile::open(p);
  EXPECT_EQ(f.get("z").numel(), 0);
  EXPECT_EQ(f.get_as("z", DType::F32).shape(), (Shape{0, 4}));
  EXPECT_EQ(f.get("s").dim(), 0);
  EXPECT_EQ(f.get("s").to_vector(), std::vector<float>{2.f});
}

TEST_F(SafeTensorsTest, F16AndBf16ConvertToF32) {
  const std::vector<float> vals = {
      1.f, -2.f, 0.5f, 65504.f, 6.103515625e-05f, 5.9604644775390625e-08f, -0.f, INFINITY, 0.0999755859375f};
  const std::string p = path("conv.safetensors");
  write_safetensors(p, {{"h", Tensor::from_vector(vals, {3, 3}, DType::F16)},
                        {"b", Tensor::from_vector({1.f, -3.f, 0.0078125f, 3.0e38f}, {4}, DType::BF16)},
                        {"i", Tensor::from_ids({-5, 7}, {2})}});
  const auto f = SafeTensorsFile::open(p);
  Tensor h = f.get_as("h", DType::F32);
  EXPECT_EQ(h.dtype(), DType::F32);
  EXPECT_EQ(h.shape(), (Shape{3, 3}));
  for (size_t i = 0; i < vals.size(); ++i) EXPECT_EQ(h.data<float>()[i], vals[i]) << i;
  EXPECT_TRUE(std::signbit(h.data<float>()[6]));

  Tensor b = f.get_as("b", DType::F32);
  EXPECT_EQ(b.data<float>()[0], 1.f);
  EXPECT_EQ(b.data<float>()[1], -3.f);
  EXPECT_EQ(b.data<float>()[2], 0.0078125f);
  EXPECT_EQ(b.data<float>()[3], bf16_to_f32(f32_to_bf16(3.0e38f)));

  EXPECT_EQ(f.get_as("i", DType::F32).to_vector(), (std::vector<float>{-5.f, 7.f}));
  EXPECT_EQ(f.get_as("b", DType::F16).dtype(), DType::F16);
  expect_error<UnsupportedError>([&] { f.get_as("h", DType::I32); }, {p, "'h'", "i32"});

  // Converted tensors are owned, 64-byte aligned copies outside the mapping.
  const auto raw = f.raw_bytes();
  const auto* hp = static_cast<const uint8_t*>(h.raw_data());
  EXPECT_TRUE(hp < raw.data() || hp >= raw.data() + raw.size());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(hp) % 64, 0u);
}

TEST_F(SafeTensorsTest, GetIsZeroCopyAndOutlivesTheFileObject) {
  const std::string p = path("view.safetensors");
  write_safetensors(p, {{"w", Tensor::from_vector({1.f, 2.f, 3.f}, {3})}});
  Tensor view;
  {
    const auto f = SafeTensorsFile::open(p);
    view = f.get("w");
    const auto raw = f.raw_bytes();
    const auto* vp = static_cast<const uint8_t*>(view.raw_data());
    EXPECT_TRUE(vp >= raw.data() && vp < raw.data() + raw.size());
    EXPECT_EQ(f.get_as("w", DType::F32).raw_data(), view.raw_data()) << "same dtype, aligned: no copy";
    EXPECT_EQ(f.tensor_bytes(*f.find("w")).size(), 12u);
    f.prefetch(*f.find("w"));
  }
  // The mapping is kept alive by the view.
  EXPECT_EQ(view.to_vector(), (std::vector<float>{1.f, 2.f, 3.f}));
  // Writing through a view is copy-on-write: the file on disk is untouched.
  view.data<float>()[0] = 42.f;
  EXPECT_EQ(SafeTensorsFile::open(p).get("w").to_vector(), (std::vector<float>{1.f, 2.f, 3.f}));
}

TEST_F(SafeTensorsTest, MisalignedDataIsReadableAndGetAsCopiesAligned) {
  // Unpadded 59-byte header: the data section starts at an odd file offset.
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::vector<uint8_t> data(8);
  const float v[2] = {1.25f, -7.f};
  std::memcpy(data.data(), v, 8);
  const std::string p = write("odd.safetensors", make_file(header, data, /*pad=*/false));
  const auto f = SafeTensorsFile::open(p);
  ASSERT_NE((8 + f.header_size()) % 4, 0u);
  EXPECT_FALSE(f.is_aligned(*f.find("a")));
  EXPECT_EQ(f.get("a").to_vector(), (std::vector<float>{1.25f, -7.f}));  // memcpy-based read
  Tensor c = f.get_as("a", DType::F32);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(c.raw_data()) % 64, 0u);
  EXPECT_EQ(c.data<float>()[0], 1.25f);
  EXPECT_EQ(c.data<float>()[1], -7.f);
}

TEST_F(SafeTensorsTest, FindAndNotFound) {
  const std::string p = path("nf.safetensors");
  write_safetensors(p, {{"unet.a", Tensor::from_vector({1.f}, {1})}});
  const auto f = SafeTensorsFile::open(p);
  EXPECT_EQ(f.find("unet.b"), nullptr);
  EXPECT_FALSE(f.contains("unet.b"));
  EXPECT_TRUE(f.contains(std::string_view("unet.a_", 6)));
  expect_error<NotFoundError>([&] { f.get("unet.b"); }, {p, "'unet.b'"});
  expect_error<NotFoundError>([&] { f.get_as("unet.b", DType::F32); }, {p, "'unet.b'"});
}

TEST_F(SafeTensorsTest, FromMemoryMatchesOpen) {
  auto bytes = std::make_shared<const std::vector<uint8_t>>(
      serialize_safetensors({{"x", Tensor::from_vector({4.f, 5.f}, {2}, DType::BF16)}}, {{"a", "b"}}));
  const auto f = SafeTensorsFile::from_memory(bytes, "mem.safetensors");
  EXPECT_EQ(f.path(), "mem.safetensors");
  EXPECT_EQ(f.metadata().at("a"), "b");
  EXPECT_EQ(f.get_as("x", DType::F32).to_vector(), (std::vector<float>{4.f, 5.f}));
  auto bad = std::make_shared<const std::vector<uint8_t>>(std::vector<uint8_t>{1, 2, 3});
  expect_error<ModelFormatError>([&] { SafeTensorsFile::from_memory(bad, "mem2.safetensors"); },
                                 {"mem2.safetensors", "too short"});
}

TEST_F(SafeTensorsTest, WriterRejectsBadInput) {
  const std::string p = path("w.safetensors");
  const Tensor t = Tensor::from_vector({1.f}, {1});
  expect_error<InvalidArgument>([&] { write_safetensors(p, {{"a", t}, {"a", t}}); }, {"duplicate", "'a'"});
  expect_error<InvalidArgument>([&] { write_safetensors(p, {{"__metadata__", t}}); }, {"reserved"});
  expect_error<InvalidArgument>([&] { write_safetensors(p, {{"a", Tensor()}}); }, {"undefined"});
  expect_error<InvalidArgument>([&] { write_safetensors(p, {{"\xff\xfe", t}}); }, {"UTF-8"});
  EXPECT_FALSE(fs::exists(p));
  expect_error<IoError>(
      [&] {
        write_safetensors(path("no/such/dir/x.safetensors"), {{"a", t}});
      },
      {"no/such/dir/x.safetensors"});
}

TEST_F(SafeTensorsTest, WriterMakesNonContiguousTensorsContiguous) {
  const Tensor t = Tensor::from_vector({1.f, 2.f, 3.f, 4.f, 5.f, 6.f}, {2, 3}).transpose(0, 1);
  const std::string p = path("nc.safetensors");
  write_safetensors(p, {{"t", t}});
  const auto f = SafeTensorsFile::open(p);
  EXPECT_EQ(f.get("t").shape(), (Shape{3, 2}));
  EXPECT_EQ(f.get("t").to_vector(), (std::vector<float>{1.f, 4.f, 2.f, 5.f, 3.f, 6.f}));
}

// Written by the reference Python library (tests/fixtures/safetensors/make_python_written.py).
TEST_F(SafeTensorsTest, PythonWrittenFixture) {
  const std::string p = std::string(SDSERVE_SOURCE_DIR) + "/tests/fixtures/safetensors/python_written.safetensors";
  const auto f = SafeTensorsFile::open(p);
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "sdserve fixture"}}));
  ASSERT_EQ(f.tensors().size(), 8u);

  const Tensor w = f.get("unet.conv.weight");
  EXPECT_EQ(w.dtype(), DType::F32);
  EXPECT_EQ(w.shape(), (Shape{2, 3}));
  EXPECT_EQ(w.to_vector(), (std::vector<float>{1.f, -2.f, 3.5f, 0.25f, -0.125f, 1e-3f}));

  EXPECT_EQ(f.find("unet.norm.bias")->dtype, DType::F16);
  EXPECT_EQ(f.get_as("unet.norm.bias", DType::F32).to_vector(),
            (std::vector<float>{1.f, -0.5f, 65504.f, 6.103515625e-05f}));
  EXPECT_EQ(f.find("text.embed")->dtype, DType::BF16);
  EXPECT_EQ(f.find("text.embed")->shape, (Shape{2, 2}));
  EXPECT_EQ(f.get_as("text.embed", DType::F32).to_vector(), (std::vector<float>{1.f, 2.f, -3.f, 0.0078125f}));

  const Tensor ids = f.get("ids");
  EXPECT_EQ(ids.dtype(), DType::I64);
  EXPECT_EQ(ids.data<int64_t>()[0], 0);
  EXPECT_EQ(ids.data<int64_t>()[1], 49406);
  EXPECT_EQ(ids.data<int64_t>()[2], -7);
  const Tensor mask = f.get("mask");
  EXPECT_EQ(mask.dtype(), DType::U8);
  EXPECT_EQ(std::vector<uint8_t>(mask.data<uint8_t>(), mask.data<uint8_t>() + 5),
            (std::vector<uint8_t>{0, 1, 255, 7, 9}));
  EXPECT_EQ(f.find("flag")->dtype, DType::Bool);
  EXPECT_EQ(f.get_as("flag", DType::F32).to_vector(), (std::vector<float>{1.f, 0.f}));
  EXPECT_EQ(f.get("f64").data<double>()[0], 0.5);
  EXPECT_EQ(f.get("empty").shape(), (Shape{0, 3}));
  for (const TensorInfo& ti : f.tensors()) EXPECT_TRUE(f.is_aligned(ti)) << ti.name;
}

// ---- corrupt files: every one a ModelFormatError naming the file and the problem ----

struct CorruptCase {
  const char* name;
  std::function<std::vector<uint8_t>()> bytes;
  std::vector<std::string> needles;
};

std::string repeat(const std::string& s, size_t n) {
  std::string out;
  out.reserve(s.size() * n);
  for (size_t i = 0; i < n; ++i) out += s;
  return out;
}

const std::string kU8x4 = R"({"dtype":"U8","shape":[4],"data_offsets":)";

std::vector<CorruptCase> corrupt_cases() {
  std::vector<CorruptCase> c;
  auto add = [&](const char* name, std::function<std::vector<uint8_t>()> b, std::vector<std::string> n) {
    c.push_back({name, std::move(b), std::move(n)});
  };
  const std::vector<uint8_t> d4(4, 7), d8(8, 7);
  add("EmptyFile", [] { return std::vector<uint8_t>{}; }, {"0 bytes", "too short"});
  add("ShorterThan8", [] { return std::vector<uint8_t>{2, 0, 0}; }, {"3 bytes", "too short"});
  add("HeaderLengthZero", [] { return le64(0); }, {"header length is 0"});
  add("HeaderLengthOverLimit",
      [] {
        auto b = le64(100'000'001);
        b.resize(64, ' ');
        return b;
      },
      {"100000001", "limit"});
  add("LyingHeaderLength", [] { return le64(1000, "{}"); }, {"header length 1000", "10-byte file"});
  add("TruncatedHeader",
      [=] {
        auto b = make_file("{\"a\":" + kU8x4 + "[0,4]}}", d4);
        b.resize(30);
        return b;
      },
      {"runs past the end"});
  add("TruncatedData",
      [=] {
        return make_file("{\"a\":" + kU8x4 + "[0,4]}}", {1, 2});
      },
      {"'a'", "[0, 4)", "outside the 2-byte data section"});
  add("NotStartingWithBrace", [] { return make_file("[1,2]"); }, {"does not start with '{'"});
  add("LeadingSpace", [] { return make_file(" {}"); }, {"does not start with '{'"});
  add("InvalidJson", [] { return make_file("{\"a\":}"); }, {"not valid JSON"});
  add("UnterminatedJson", [] { return make_file("{\"a\":{\"dtype\"", {}, false); }, {"not valid JSON"});
  add("TrailingGarbage", [] { return make_file("{} x"); }, {"not valid JSON"});
  add("NulInHeader", [] { return make_file(std::string("{}\0\0\0\0\0\0", 8), {}, false); }, {"NUL byte at offset 10"});
  add("NulHidesRestOfHeader", [] { return make_file(std::string("{}\0{\"a\":{\"dtype\":\"F4\"}}", 23), {}, false); },
      {"NUL byte"});
  add("InvalidUtf8Name", [] { return make_file("{\"\xff\":{}}"); }, {"not valid JSON"});
  add("TensorNotObject", [] { return make_file(R"({"a":[1,2]})"); }, {"'a' is an array, not an object"});
  add("TensorIsNumber", [] { return make_file(R"({"a":3})"); }, {"'a' is a number"});
  add("Claims100GB",
      [] { return make_file(R"({"big":{"dtype":"F32","shape":[100000,250000],"data_offsets":[0,100000000000]}})"); },
      {"'big'", "[0, 100000000000)", "outside the 0-byte data section"});
  add("OverlappingOffsets",
      [=] {
        return make_file("{\"unet.y.weight\":" + kU8x4 + "[2,6]},\"unet.x.weight\":" + kU8x4 + "[0,4]}}",
                         std::vector<uint8_t>(6));
      },
      {"tensor 'unet.x.weight' data [0, 4) overlaps 'unet.y.weight' [2, 6)"});
  add("SameRangeTwice", [=] { return make_file("{\"a\":" + kU8x4 + "[0,4]},\"b\":" + kU8x4 + "[0,4]}}", d4); },
      {"overlaps"});
  add("OffsetsOutOfRange", [=] { return make_file("{\"a\":" + kU8x4 + "[4,8]}}", d4); },
      {"'a'", "outside the 4-byte data section"});
  add("GapBetweenTensors",
      [=] { return make_file("{\"a\":" + kU8x4 + "[0,4]},\"b\":" + kU8x4 + "[6,10]}}", std::vector<uint8_t>(10)); },
      {"data [4, 6) before tensor 'b'", "gap"});
  add("GapAtStart", [=] { return make_file("{\"a\":" + kU8x4 + "[4,8]}}", d8); }, {"data [0, 4)", "gap"});
  add("TrailingBytes", [=] { return make_file("{\"a\":" + kU8x4 + "[0,4]}}", d8); },
      {"data [4, 8) at the end", "belongs to no tensor"});
  add("DuplicateNames", [=] { return make_file("{\"a\":" + kU8x4 + "[0,4]},\"a\":" + kU8x4 + "[4,8]}}", d8); },
      {"duplicate tensor name 'a'"});
  add("DuplicateMetadata", [] { return make_file(R"({"__metadata__":{},"__metadata__":{}})"); },
      {"duplicate", "__metadata__"});
  add("DuplicateMetadataKey", [] { return make_file(R"({"__metadata__":{"k":"1","k":"2"}})"); },
      {"__metadata__ has duplicate key 'k'"});
  add("DuplicateField",
      [] { return make_file(R"({"a":{"dtype":"U8","dtype":"U8","shape":[0],"data_offsets":[0,0]}})"); },
      {"'a'", "duplicate field 'dtype'"});
  add("BadDtype", [] { return make_file(R"({"a":{"dtype":"F4","shape":[1],"data_offsets":[0,1]}})", {0}); },
      {"'a'", "unknown dtype 'F4'"});
  add("LowercaseDtype",
      [] {
        return make_file(R"({"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", {0, 0, 0, 0});
      },
      {"unknown dtype 'f32'"});
  add("DtypeNotString", [] { return make_file(R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,1]}})", {0}); },
      {"'a'", "field 'dtype' is a number"});
  add("NegativeShape", [] { return make_file(R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})"); },
      {"'a'", "shape has a negative entry -1"});
  add("FloatShape", [] { return make_file(R"({"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})", {0}); },
      {"'a'", "shape must hold non-negative integers, got 1.5"});
  add("ShapeNotArray",
      [] {
        return make_file(R"({"a":{"dtype":"U8","shape":4,"data_offsets":[0,4]}})", {0, 0, 0, 0});
      },
      {"field 'shape' is a number"});
  add("ShapeEntryTooLarge",
      [] { return make_file(R"({"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0]}})"); },
      {"'a'", "too large"});
  add("ShapeEntryBeyondUint64",
      [] { return make_file(R"({"a":{"dtype":"U8","shape":[99999999999999999999999],"data_offsets":[0,0]}})"); },
      {"'a'", "non-negative integers"});
  add("NumelOverflow",
      [] { return make_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,0]}})"); },
      {"'a'", "overflows"});
  add("BytesOverflow",
      [] { return make_file(R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}})"); },
      {"'a'", "overflows"});
  add("ShapeBytesMismatch", [=] { return make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", d4); },
      {"'a'", "needs 8 bytes but data_offsets [0, 4) hold 4"});
  add("EndBeforeBegin", [] { return make_file(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})"); },
      {"'a'", "end before they begin"});
  add("ThreeOffsets", [] { return make_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})", {0}); },
      {"'a'", "exactly 2"});
  add("OneOffset", [] { return make_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", {0}); },
      {"'a'", "exactly 2"});
  add("NegativeOffset", [] { return make_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})", {0}); },
      {"'a'", "negative"});
  add("MissingField", [] { return make_file(R"({"a":{"dtype":"U8","shape":[1]}})", {0}); },
      {"'a'", "missing field 'data_offsets'"});
  add("UnknownField",
      [] { return make_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":1}})", {0}); },
      {"'a'", "unknown field 'extra'"});
  add("MetadataNotObject", [] { return make_file(R"({"__metadata__":"x"})"); }, {"__metadata__ is a string"});
  add("MetadataNull", [] { return make_file(R"({"__metadata__":null})"); }, {"__metadata__ is null"});
  add("MetadataNonString", [] { return make_file(R"({"__metadata__":{"steps":20}})"); },
      {"__metadata__ value for 'steps' is a number, not a string"});
  add("MetadataNested", [] { return make_file(R"({"__metadata__":{"a":{"b":"c"}}})"); },
      {"__metadata__ value for 'a' is an object"});
  add("DeeplyNestedArrays", [] { return make_file("{\"a\":" + repeat("[", 100000)); }, {"'a' is an array"});
  add("DeeplyNestedObjects", [] { return make_file(repeat("{\"a\":", 100000) + "1" + repeat("}", 100000)); },
      {"field 'a'"});
  add("DeeplyNestedInShape",
      [] {
        return make_file("{\"a\":{\"dtype\":\"U8\",\"shape\":" + repeat("[", 100000) + repeat("]", 100000) + "}}");
      },
      {"'a'", "shape must hold non-negative integers, got an array"});
  add("DeeplyNestedMetadata", [] { return make_file("{\"__metadata__\":" + repeat("{\"a\":", 100000)); },
      {"__metadata__ value for 'a' is an object"});
  add("ControlCharsInName",
      [] { return make_file(R"({"line1\nline2\u0000":{"dtype":"XX","shape":[0],"data_offsets":[0,0]}})"); },
      {"'line1\\x0aline2\\x00'", "unknown dtype"});
  add("HugeName",
      [] {
        return make_file("{\"" + std::string(100000, 'n') +
                         "\":{\"dtype\":\"XX\",\"shape\":[0],\"data_offsets\":[0,0]}}");
      },
      {"nnnn...'", "unknown dtype"});
  add("TooManyDims",
      [] {
        std::string dims = repeat("1,", 100) + "1";
        return make_file("{\"a\":{\"dtype\":\"U8\",\"shape\":[" + dims + "],\"data_offsets\":[0,1]}}", {0});
      },
      {"'a'", "more than 64 dimensions"});
  return c;
}

class CorruptFileTest : public SafeTensorsTest, public ::testing::WithParamInterface<CorruptCase> {};

TEST_P(CorruptFileTest, OpenThrowsOneLineModelFormatError) {
  const CorruptCase& c = GetParam();
  const std::string p = write(std::string(c.name) + ".safetensors", c.bytes());
  std::vector<std::string> needles = c.needles;
  needles.push_back(p + ": ");
  expect_error<ModelFormatError>([&] { SafeTensorsFile::open(p); }, needles);
  // from_memory validates identically.
  auto mem = std::make_shared<const std::vector<uint8_t>>(c.bytes());
  expect_error<ModelFormatError>([&] { SafeTensorsFile::from_memory(mem, "mem.safetensors"); }, {"mem.safetensors: "});
}

INSTANTIATE_TEST_SUITE_P(Safetensors, CorruptFileTest, ::testing::ValuesIn(corrupt_cases()),
                         [](const ::testing::TestParamInfo<CorruptCase>& i) { return std::string(i.param.name); });

// ---- pickle checkpoints are refused, never executed ----

TEST_F(SafeTensorsTest, PickleCheckpointIsUnsupportedWithConversionHint) {
  // A protocol-2 pickle of {'a': 1}.
  const std::vector<uint8_t> pickle = {0x80, 0x02, '}', 'q',  0x00, 'X',  0x01, 0,  0,
                                       0,    'a',  'q', 0x01, 'K',  0x01, 'u',  '.'};
  const std::string p = write("model.ckpt", pickle);
  expect_error<UnsupportedError>([&] { SafeTensorsFile::open(p); },
                                 {p, "PyTorch pickle checkpoint", "never executes pickle",
                                  "torch.load('model.ckpt', weights_only=True)", "'model.safetensors'"});
  // The same bytes under a safetensors name are still recognised by their magic.
  const std::string p2 = write("renamed.safetensors", pickle);
  expect_error<UnsupportedError>([&] { SafeTensorsFile::open(p2); }, {p2, "pickle"});
}

TEST_F(SafeTensorsTest, ZipCheckpointRenamedIsUnsupported) {
  std::vector<uint8_t> zip = {'P', 'K', 3, 4, 20, 0, 0, 0, 8, 0};
  zip.resize(64, 0);
  const std::string p = write("model.safetensors", zip);
  expect_error<UnsupportedError>([&] { SafeTensorsFile::open(p); },
                                 {p, "zip", "never executes pickle", "'model.converted.safetensors'"});
}

TEST_F(SafeTensorsTest, PickleExtensionsAreUnsupported) {
  for (const char* name : {"a.pt", "b.PTH", "c.bin", "d.ckpt"}) {
    const std::string p = write(name, {1, 2, 3, 4, 5, 6, 7, 8, 9});
    expect_error<UnsupportedError>([&] { SafeTensorsFile::open(p); }, {p, "never executes pickle"});
  }
}

TEST_F(SafeTensorsTest, SafetensorsWhoseLengthLooksLikePickleMagicStillOpens) {
  // A 640-byte header (0x0280) makes the file start with 80 02, the pickle protocol-2 magic.
  std::string header = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  header.append(640 - header.size(), ' ');
  const auto bytes = make_file(header, {9});
  ASSERT_EQ(bytes[0], 0x80);
  ASSERT_EQ(bytes[1], 0x02);
  EXPECT_EQ(SafeTensorsFile::open(write("x.safetensors", bytes)).get("a").data<uint8_t>()[0], 9);
  // Real safetensors content under a .bin name opens too.
  EXPECT_TRUE(SafeTensorsFile::open(write("diffusion_pytorch_model.bin", bytes)).contains("a"));
}

// ---- OS errors ----

TEST_F(SafeTensorsTest, MissingFileIsNotFound) {
  const std::string p = path("nope.safetensors");
  expect_error<NotFoundError>([&] { SafeTensorsFile::open(p); }, {p, "no such file"});
}

TEST_F(SafeTensorsTest, DirectoryIsAClearIoError) {
  expect_error<IoError>([&] { SafeTensorsFile::open(dir_.string()); }, {dir_.string(), "is a directory"});
}

TEST_F(SafeTensorsTest, FifoIsRejectedWithoutBlocking) {
  const std::string p = path("pipe.safetensors");
  ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0);
  expect_error<IoError>([&] { SafeTensorsFile::open(p); }, {p, "not a regular file"});
}

TEST_F(SafeTensorsTest, UnreadableFileIsIoError) {
  if (::geteuid() == 0) GTEST_SKIP() << "root can read any file";
  const std::string p = path("locked.safetensors");
  write_safetensors(p, {});
  ::chmod(p.c_str(), 0);
  expect_error<IoError>([&] { SafeTensorsFile::open(p); }, {p, "Permission denied"});
}

}  // namespace
}  // namespace sdserve
