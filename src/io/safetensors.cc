#include "io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "core/error.h"
#include "core/utf8.h"
#include "io/mmap_file.h"

namespace sdserve {

namespace {

using json = nlohmann::json;

// Longest tensor name or JSON excerpt quoted in an error message.
constexpr size_t kMaxQuoted = 160;
// Real tensors have a handful of dimensions; the cap bounds memory for hostile headers.
constexpr size_t kMaxRank = 64;

std::string qname(std::string_view name) {
  std::string out(1, '\'');  // appended, not "'" + ...: GCC 12 warns falsely (-Wrestrict) on that
  out += printable(name, kMaxQuoted);
  out += '\'';
  return out;
}

std::string range_str(uint64_t b, uint64_t e) { return "[" + std::to_string(b) + ", " + std::to_string(e) + ")"; }

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string lower_extension(std::string_view path) {
  const size_t slash = path.find_last_of('/');
  const size_t dot = path.find_last_of('.');
  if (dot == std::string_view::npos || (slash != std::string_view::npos && dot < slash)) return "";
  std::string ext(path.substr(dot));
  for (char& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
  return ext;
}

std::string base_name(std::string_view path) {
  const size_t slash = path.find_last_of('/');
  return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

bool looks_like_safetensors(const uint8_t* p, size_t size) {
  if (size < 9) return false;
  const uint64_t n = read_le64(p);
  return n > 0 && n <= kSafeTensorsMaxHeaderSize && n <= size - 8 && p[8] == '{';
}

// Pickle checkpoints can run arbitrary code when loaded, so they are refused outright, with the
// one command that converts them. Detected by magic bytes (pickle protocol 2-5, or the zip container
// torch.save has used since 1.6) and by extension, unless the bytes are a well-formed safetensors
// start (a header length of 0x0280 begins with the pickle magic 80 02).
void reject_pickle(std::string_view path, const uint8_t* p, size_t size) {
  if (looks_like_safetensors(p, size)) return;
  const bool pickle_magic = size >= 2 && p[0] == 0x80 && p[1] >= 2 && p[1] <= 5;
  const bool zip_magic = size >= 4 && p[0] == 'P' && p[1] == 'K' && p[2] == 3 && p[3] == 4;
  const std::string ext = lower_extension(path);
  const bool pickle_ext = ext == ".ckpt" || ext == ".pt" || ext == ".pth" || ext == ".bin";
  if (!pickle_magic && !zip_magic && !pickle_ext) return;

  const std::string base = base_name(path);
  std::string stem = base.substr(0, base.size() - ext.size());
  if (ext == ".safetensors") stem += ".converted";
  const std::string name = printable(base);
  stem = printable(stem);
  std::string what;
  if (pickle_magic) {
    what = " is a PyTorch pickle checkpoint";
  } else if (zip_magic) {
    what = " is a PyTorch zip (pickle) checkpoint, not safetensors";
  } else {
    what = " is not a safetensors file (" + ext + " files are PyTorch pickle checkpoints)";
  }
  throw UnsupportedError(
      printable(path, 4096) + what + "; sdserve never executes pickle files. Convert it to .safetensors " +
      "first, e.g. `python -c \"import torch, safetensors.torch as st; sd=torch.load('" + name +
      "', weights_only=True); sd=sd.get('state_dict', sd); st.save_file({k:v.contiguous() for k,v in " +
      "sd.items() if hasattr(v,'contiguous')}, '" + stem + ".safetensors')\"`");
}

struct RawTensor {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  std::vector<uint64_t> offsets;
};

// Streams the header through nlohmann's (non-recursive) SAX parser and checks the structure as it
// goes: the header can be at most 3 levels deep, so anything deeper is rejected at once and hostile
// nesting never builds up state. A SAX pass also sees duplicate keys, which a DOM parse would drop.
class HeaderSax final : public json::json_sax_t {
 public:
  std::string error;  // set when a callback returns false
  std::vector<RawTensor> tensors;
  std::map<std::string, std::string> metadata;

  bool null() override { return scalar("null"); }
  bool boolean(bool) override { return scalar("a boolean"); }
  bool number_integer(number_integer_t v) override {
    if (v >= 0) return number_unsigned(number_unsigned_t(v));  // "-0"
    if (depth_ == 3) return fail(where() + " has a negative entry " + std::to_string(v));
    return scalar("a number");
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (depth_ != 3) return scalar("a number");
    if (ctx_ == Ctx::Shape) {
      if (v > uint64_t(std::numeric_limits<int64_t>::max()))
        return fail(where() + " has an entry " + std::to_string(v) + " that is too large");
      if (cur_.shape.size() >= kMaxRank)
        return fail(where() + " has more than " + std::to_string(kMaxRank) + " dimensions");
      cur_.shape.push_back(v);
    } else {
      if (cur_.offsets.size() >= 2) return fail(where() + " must hold exactly 2 integers");
      cur_.offsets.push_back(v);
    }
    return true;
  }
  bool number_float(number_float_t, const string_t& s) override {
    if (depth_ == 3) return fail(where() + " must hold non-negative integers, got " + printable(s, 40));
    return scalar("a number");
  }
  bool string(string_t& s) override {
    if (depth_ == 2 && ctx_ == Ctx::Metadata) {
      metadata.emplace(key_, std::move(s));
      return true;
    }
    if (depth_ == 2 && ctx_ == Ctx::Tensor && key_ == "dtype") {
      cur_.dtype = std::move(s);
      return true;
    }
    return scalar("a string");
  }
  bool binary(binary_t&) override { return scalar("binary"); }

  bool start_object(std::size_t) override {
    if (depth_ == 0) {
      depth_ = 1;
      return true;
    }
    if (depth_ == 1) {
      depth_ = 2;
      fields_seen_.clear();
      if (entry_ == "__metadata__") {
        ctx_ = Ctx::Metadata;
      } else {
        ctx_ = Ctx::Tensor;
        cur_ = RawTensor{entry_, {}, {}, {}};
      }
      return true;
    }
    return scalar("an object");
  }
  bool end_object() override {
    if (depth_ == 2 && ctx_ == Ctx::Tensor) {
      for (const char* f : {"dtype", "shape", "data_offsets"})
        if (!fields_seen_.count(f)) return fail("tensor " + qname(entry_) + ": missing field '" + f + "'");
      tensors.push_back(std::move(cur_));
    }
    --depth_;
    ctx_ = Ctx::Root;
    return true;
  }
  bool start_array(std::size_t) override {
    if (depth_ == 2 && ctx_ == Ctx::Tensor && (key_ == "shape" || key_ == "data_offsets")) {
      depth_ = 3;
      ctx_ = key_ == "shape" ? Ctx::Shape : Ctx::Offsets;
      return true;
    }
    return scalar("an array");
  }
  bool end_array() override {
    if (ctx_ == Ctx::Offsets && cur_.offsets.size() != 2)
      return fail(where() + " must hold exactly 2 integers, got " + std::to_string(cur_.offsets.size()));
    depth_ = 2;
    ctx_ = Ctx::Tensor;
    return true;
  }
  bool key(string_t& k) override {
    if (depth_ == 1) {
      if (!names_.insert(k).second) return fail("duplicate tensor name " + qname(k) + " in header");
      entry_ = std::move(k);
      return true;
    }
    if (ctx_ == Ctx::Metadata) {
      if (metadata.count(k)) return fail("__metadata__ has duplicate key " + qname(k));
      key_ = std::move(k);
      return true;
    }
    // depth 2 inside a tensor entry
    if (k != "dtype" && k != "shape" && k != "data_offsets")
      return fail("tensor " + qname(entry_) + ": unknown field " + qname(k) + " (expected dtype, shape, data_offsets)");
    if (!fields_seen_.insert(k).second) return fail("tensor " + qname(entry_) + ": duplicate field " + qname(k));
    key_ = std::move(k);
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) override {
    std::string msg = ex.what();
    // Drop nlohmann's "[json.exception.parse_error.101] " prefix; keep "parse error at ...".
    if (const size_t p = msg.find("] "); msg.rfind("[json.exception", 0) == 0 && p != std::string::npos)
      msg = msg.substr(p + 2);
    return fail("header is not valid JSON: " + printable(msg, 300));
  }

 private:
  enum class Ctx { Root, Tensor, Metadata, Shape, Offsets };

  bool fail(std::string msg) {
    if (error.empty()) error = std::move(msg);
    return false;
  }
  std::string where() const {
    return "tensor " + qname(entry_) + ": " + (ctx_ == Ctx::Shape ? "shape" : "data_offsets");
  }
  // A value of the wrong kind at the current position.
  bool scalar(const char* got) {
    switch (depth_) {
      case 0:
        return fail(std::string("header is ") + got + ", not a JSON object");
      case 1:
        if (entry_ == "__metadata__") return fail(std::string("__metadata__ is ") + got + ", not an object");
        return fail("tensor " + qname(entry_) + " is " + got + ", not an object");
      case 2:
        if (ctx_ == Ctx::Metadata)
          return fail("__metadata__ value for " + qname(key_) + " is " + got + ", not a string");
        return fail("tensor " + qname(entry_) + ": field '" + key_ + "' is " + got + ", expected " +
                    (key_ == "dtype" ? "a string" : "an array of integers"));
      default:
        return fail(where() + " must hold non-negative integers, got " + got);
    }
  }

  int depth_ = 0;
  Ctx ctx_ = Ctx::Root;
  std::string entry_;  // current top-level key
  std::string key_;    // current key inside an entry
  RawTensor cur_;
  std::unordered_set<std::string> names_;
  std::unordered_set<std::string> fields_seen_;
};

}  // namespace

SafeTensorsFile SafeTensorsFile::open(const std::string& path) {
  std::shared_ptr<MappedFile> mapped = MappedFile::open(path);
  SafeTensorsFile f;
  f.path_ = path;
  f.base_ = mapped->data();
  f.size_ = mapped->size();
  f.mapped_ = mapped;
  f.keepalive_ = mapped;
  if (f.size_ >= 8) {
    // The header is read right away; the data is read later, mostly front to back.
    mapped->advise_willneed(0, size_t(std::min<uint64_t>(read_le64(f.base_), kSafeTensorsMaxHeaderSize) + 8));
  }
  f.parse(path);
  return f;
}

SafeTensorsFile SafeTensorsFile::from_memory(std::shared_ptr<const std::vector<uint8_t>> bytes, std::string name) {
  if (!bytes) throw InvalidArgument("SafeTensorsFile::from_memory: null buffer for " + name);
  SafeTensorsFile f;
  f.path_ = std::move(name);
  f.base_ = bytes->data();
  f.size_ = bytes->size();
  f.keepalive_ = std::const_pointer_cast<std::vector<uint8_t>>(bytes);
  f.parse(f.path_);
  return f;
}

void SafeTensorsFile::parse(std::string_view path_for_errors) {
  const std::string file = printable(path_for_errors, 4096);
  auto fail = [&](const std::string& msg) -> void { throw ModelFormatError(file + ": " + msg); };

  reject_pickle(path_for_errors, base_, size_);
  if (size_ < 8)
    fail("file is " + std::to_string(size_) +
         " bytes, too short for the 8-byte header length (truncated, or not a safetensors file)");
  const uint64_t n = read_le64(base_);
  if (n == 0) fail("header length is 0");
  if (n > kSafeTensorsMaxHeaderSize)
    fail("header length " + std::to_string(n) + " exceeds the " + std::to_string(kSafeTensorsMaxHeaderSize) +
         "-byte limit (corrupt, or not a safetensors file)");
  if (n > size_ - 8)
    fail("header length " + std::to_string(n) + " runs past the end of the " + std::to_string(size_) +
         "-byte file (truncated?)");
  if (base_[8] != '{') fail("header does not start with '{' (not a safetensors file?)");
  header_size_ = size_t(n);
  const uint64_t data_size = size_ - 8 - n;

  const char* hb = reinterpret_cast<const char*>(base_ + 8);
  // nlohmann's lexer reads a NUL byte as end of input, which would silently ignore the rest of the
  // header; valid JSON text never contains one (strings must escape it).
  if (const void* nul = std::memchr(hb, 0, n))
    fail("header contains a NUL byte at offset " + std::to_string(static_cast<const char*>(nul) - hb + 8) +
         " (corrupt header)");
  HeaderSax sax;
  if (!json::sax_parse(hb, hb + n, &sax, json::input_format_t::json, /*strict=*/true)) {
    fail(sax.error.empty() ? std::string("header is not valid JSON") : sax.error);
  }

  tensors_.clear();
  tensors_.reserve(sax.tensors.size());
  for (RawTensor& r : sax.tensors) {
    const std::string t = "tensor " + qname(r.name) + ": ";
    const auto dt = dtype_from_safetensors(r.dtype);
    if (!dt) fail(t + "unknown dtype " + qname(r.dtype));
    uint64_t numel = 1;
    bool overflow = false;
    for (uint64_t d : r.shape) overflow |= __builtin_mul_overflow(numel, d, &numel);
    uint64_t nbytes = 0;
    overflow |= __builtin_mul_overflow(numel, uint64_t(dtype_size(*dt)), &nbytes);
    overflow |= numel > uint64_t(std::numeric_limits<int64_t>::max());
    Shape shape(r.shape.begin(), r.shape.end());
    if (overflow) fail(t + "shape " + shape_str(shape) + " has too many elements (size overflows)");
    const uint64_t b = r.offsets[0], e = r.offsets[1];
    if (e < b) fail(t + "data_offsets " + range_str(b, e) + " end before they begin");
    if (e - b != nbytes)
      fail(t + "shape " + shape_str(shape) + " of " + dtype_safetensors_name(*dt) + " needs " + std::to_string(nbytes) +
           " bytes but data_offsets " + range_str(b, e) + " hold " + std::to_string(e - b));
    if (e > data_size)
      fail(t + "data " + range_str(b, e) + " is outside the " + std::to_string(data_size) +
           "-byte data section (truncated file?)");
    tensors_.push_back(TensorInfo{std::move(r.name), *dt, std::move(shape), b, e});
  }

  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;
  });
  // Like the reference implementation, the tensors must tile the data section exactly: no overlaps
  // (one byte read as two tensors), no gaps and no trailing bytes (hidden payloads).
  uint64_t cursor = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& ti : tensors_) {
    if (ti.begin < cursor)
      fail("tensor " + qname(prev->name) + " data " + range_str(prev->begin, prev->end) + " overlaps " +
           qname(ti.name) + " " + range_str(ti.begin, ti.end));
    if (ti.begin > cursor)
      fail("data " + range_str(cursor, ti.begin) + " before tensor " + qname(ti.name) +
           " belongs to no tensor (gap in the data section)");
    cursor = ti.end;
    prev = &ti;
  }
  if (cursor != data_size)
    fail("data " + range_str(cursor, data_size) + " at the end of the data section belongs to no tensor");

  index_.clear();
  index_.reserve(tensors_.size());
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  metadata_ = std::move(sax.metadata);
}

const TensorInfo* SafeTensorsFile::find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafeTensorsFile::require(std::string_view name) const {
  const TensorInfo* info = find(name);
  if (info == nullptr)
    throw NotFoundError(printable(path_, 4096) + ": no tensor " + qname(name) + " in this file (" +
                        std::to_string(tensors_.size()) + " tensors)");
  return *info;
}

std::span<const uint8_t> SafeTensorsFile::tensor_bytes(const TensorInfo& info) const {
  return {base_ + 8 + header_size_ + info.begin, size_t(info.end - info.begin)};
}

bool SafeTensorsFile::is_aligned(const TensorInfo& info) const {
  const auto addr = reinterpret_cast<uintptr_t>(tensor_bytes(info).data());
  return addr % dtype_size(info.dtype) == 0;
}

void SafeTensorsFile::prefetch(const TensorInfo& info) const {
  if (mapped_) mapped_->advise_willneed(8 + header_size_ + info.begin, size_t(info.end - info.begin));
}

Tensor SafeTensorsFile::get(std::string_view name) const {
  const TensorInfo& info = require(name);
  // const_cast: Tensor has no read-only flavour; see the header for why writing is still safe.
  auto* p = const_cast<uint8_t*>(tensor_bytes(info).data());
  return Tensor::from_blob(p, info.shape, info.dtype, keepalive_);
}

Tensor SafeTensorsFile::get_as(std::string_view name, DType dtype) const {
  const TensorInfo& info = require(name);
  if (info.dtype == dtype) {
    if (is_aligned(info)) return get(name);
    Tensor out = Tensor::empty(info.shape, dtype);
    std::memcpy(out.raw_data(), tensor_bytes(info).data(), tensor_bytes(info).size());
    return out;
  }
  if (dtype != DType::F32 && dtype != DType::F16 && dtype != DType::BF16)
    throw UnsupportedError(printable(path_, 4096) + ": tensor " + qname(name) + ": cannot convert " +
                           dtype_name(info.dtype) + " to " + dtype_name(dtype));
  // Nothing to convert (and core's converters would see null buffers).
  if (info.end == info.begin) return Tensor::empty(info.shape, dtype);
  // Tensor::to reads its source with memcpy, so a misaligned view is fine here.
  return get(name).to(dtype);
}

// ---- writer ----

namespace {

struct Prepared {
  std::string header;                                   // padded
  std::vector<std::pair<std::string, Tensor>> ordered;  // contiguous CPU tensors in data order
};

std::string json_string(const std::string& s, const char* what) {
  try {
    return json(s).dump(-1, ' ', false, json::error_handler_t::strict);
  } catch (const json::exception&) {
    throw InvalidArgument(std::string("write_safetensors: ") + what + " " + qname(s) + " is not valid UTF-8");
  }
}

Prepared prepare(const std::vector<std::pair<std::string, Tensor>>& tensors,
                 const std::map<std::string, std::string>& metadata) {
  std::unordered_set<std::string_view> names;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") throw InvalidArgument("write_safetensors: tensor name '__metadata__' is reserved");
    if (!names.insert(name).second) throw InvalidArgument("write_safetensors: duplicate tensor name " + qname(name));
    if (!t.defined()) throw InvalidArgument("write_safetensors: tensor " + qname(name) + " is undefined");
    if (t.device().type != DeviceType::CPU)
      throw InvalidArgument("write_safetensors: tensor " + qname(name) + " is not on the CPU");
  }
  Prepared p;
  // Larger elements first: with an 8-aligned data section every tensor is then aligned for its dtype.
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return dtype_size(tensors[a].second.dtype()) > dtype_size(tensors[b].second.dtype());
  });

  std::string h = "{";
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) h += ',';
      first = false;
      h += json_string(k, "metadata key") + ":" + json_string(v, "metadata value");
    }
    h += "}";
  }
  uint64_t offset = 0;
  for (size_t i : order) {
    const auto& [name, t] = tensors[i];
    Tensor c = t.contiguous();
    const uint64_t nbytes = c.nbytes();
    if (h.size() > 1) h += ',';
    h += json_string(name, "tensor name") + ":{\"dtype\":\"" + dtype_safetensors_name(c.dtype()) + "\",\"shape\":[";
    for (size_t d = 0; d < c.shape().size(); ++d) {
      if (d) h += ',';
      h += std::to_string(c.shape()[d]);
    }
    h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + nbytes) + "]}";
    offset += nbytes;
    p.ordered.emplace_back(name, std::move(c));
  }
  h += "}";
  h.append((8 - h.size() % 8) % 8, ' ');
  if (h.size() > kSafeTensorsMaxHeaderSize)
    throw InvalidArgument("write_safetensors: header of " + std::to_string(h.size()) + " bytes is over the limit");
  p.header = std::move(h);
  return p;
}

void put_le64(uint8_t* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = uint8_t(v >> (8 * i));
}

}  // namespace

std::vector<uint8_t> serialize_safetensors(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                           const std::map<std::string, std::string>& metadata) {
  const Prepared p = prepare(tensors, metadata);
  size_t total = 8 + p.header.size();
  for (const auto& [name, t] : p.ordered) total += t.nbytes();
  std::vector<uint8_t> out(total);
  put_le64(out.data(), p.header.size());
  std::memcpy(out.data() + 8, p.header.data(), p.header.size());
  size_t at = 8 + p.header.size();
  for (const auto& [name, t] : p.ordered) {
    if (t.nbytes() > 0) std::memcpy(out.data() + at, t.raw_data(), t.nbytes());
    at += t.nbytes();
  }
  return out;
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const Prepared p = prepare(tensors, metadata);
  // Write beside the target and rename, so a crash never leaves a truncated model under the real name.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError(path + ": cannot create " + tmp + ": " + std::strerror(errno));
  auto write_all = [&](const void* data, size_t n) {
    const auto* c = static_cast<const uint8_t*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd, c, std::min<size_t>(n, size_t(1) << 30));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        const int err = w < 0 ? errno : EIO;
        ::close(fd);
        ::unlink(tmp.c_str());
        throw IoError(path + ": write failed: " + std::strerror(err));
      }
      c += w;
      n -= size_t(w);
    }
  };
  uint8_t len[8];
  put_le64(len, p.header.size());
  write_all(len, 8);
  write_all(p.header.data(), p.header.size());
  for (const auto& [name, t] : p.ordered) write_all(t.raw_data(), t.nbytes());
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw IoError(path + ": write failed: " + std::strerror(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw IoError(path + ": cannot rename " + tmp + " into place: " + std::strerror(err));
  }
}

}  // namespace sdserve
