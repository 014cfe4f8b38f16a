#include "io/torch_checkpoint.h"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <deque>
#include <functional>
#include <optional>
#include <span>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/utf8.h"
#include "io/mmap_file.h"

namespace sdserve {

namespace {

using Bytes = std::span<const uint8_t>;

constexpr size_t kMaxRank = 64;
// Storage keys are decimal numbers in every torch format; names of real weights are < 300 bytes.
constexpr size_t kMaxStorageKey = 256;
constexpr size_t kMaxName = 65536;

uint16_t rd16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
uint32_t rd32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
uint64_t rd64(const uint8_t* p) { return uint64_t(rd32(p)) | (uint64_t(rd32(p + 4)) << 32); }

std::string quoted(std::string_view s) {
  std::string out(1, '\'');  // appended, not "'" + ...: GCC 12 warns falsely (-Wrestrict) on that
  out += printable(s, 160);
  out += '\'';
  return out;
}

bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_len(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// The file name every message starts with, and the two kinds of failure.
struct Where {
  std::string file;
  [[noreturn]] void corrupt(const std::string& msg) const { throw ModelFormatError(file + ": " + msg); }
  [[noreturn]] void unsupported(const std::string& msg) const { throw UnsupportedError(file + ": " + msg); }
};

const char* const kResave =
    "re-save it with a current PyTorch (torch.save(torch.load(f, weights_only=True), f)) or convert it to "
    ".safetensors";

// ---------------------------------------------------------------------------------------------------
// Zip container: a central-directory reader that trusts nothing. Every offset and size is checked
// against the file before use; stored entries are views into the file, deflated ones are inflated
// into buffers that grow with the data actually produced (never sized from a header field alone).

struct ZipEntry {
  std::string name;
  uint16_t flags = 0, method = 0;
  uint64_t csize = 0, usize = 0, local_offset = 0;
};

class ZipReader {
 public:
  ZipReader(Bytes file, const Where& w, const TorchReadLimits& lim) : f_(file), w_(w) { parse(lim); }

  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &entries_[it->second];
  }

  // The entry's uncompressed bytes: a view into the file (stored) or `out` (deflated).
  Bytes read(const ZipEntry& e, uint64_t max_size, const char* what, std::vector<uint8_t>& out) const {
    const std::string name = "zip entry " + quoted(e.name);
    if (e.flags & 1) w_.unsupported(name + " is encrypted");
    if (e.usize > max_size)
      w_.unsupported(name + " (" + what + ") is " + std::to_string(e.usize) + " bytes, over the limit of " +
                     std::to_string(max_size));
    const uint64_t lo = e.local_offset;
    if (lo > f_.size() || f_.size() - lo < 30)
      w_.corrupt(name + ": local header at " + std::to_string(lo) + " lies outside the " + std::to_string(f_.size()) +
                 "-byte file (truncated?)");
    const uint8_t* h = f_.data() + lo;
    if (rd32(h) != 0x04034b50) w_.corrupt(name + ": no local header signature at offset " + std::to_string(lo));
    const uint64_t nlen = rd16(h + 26), xlen = rd16(h + 28);
    if (f_.size() - lo - 30 < nlen + xlen) w_.corrupt(name + ": local header runs past the end of the file");
    if (std::string_view(reinterpret_cast<const char*>(h + 30), nlen) != e.name)
      w_.corrupt(name + ": its local header names a different file");
    const uint64_t data = lo + 30 + nlen + xlen;
    if (e.csize > f_.size() - data)
      w_.corrupt(name + ": data [" + std::to_string(data) + ", +" + std::to_string(e.csize) +
                 ") runs past the end of the " + std::to_string(f_.size()) + "-byte file (truncated?)");
    if (e.method == 0) {
      if (e.csize != e.usize)
        w_.corrupt(name + ": stored entry with compressed size " + std::to_string(e.csize) + " != size " +
                   std::to_string(e.usize));
      return f_.subspan(size_t(data), size_t(e.usize));
    }
    if (e.method != 8)
      w_.unsupported(name + " uses zip compression method " + std::to_string(e.method) +
                     " (only stored and deflate are read)");
    inflate_raw(f_.data() + data, e.csize, e.usize, out, name);
    return Bytes(out.data(), out.size());
  }

 private:
  void parse(const TorchReadLimits& lim) {
    const uint8_t* p = f_.data();
    const size_t size = f_.size();
    if (size < 22)
      w_.corrupt("zip archive of " + std::to_string(size) + " bytes is too short for its directory (truncated?)");
    // End of central directory: the last signature in the final 64 KiB + 22 bytes whose comment fits.
    size_t eocd = SIZE_MAX;
    const size_t lowest = size > 22 + 65535 ? size - 22 - 65535 : 0;
    for (size_t pos = size - 22;; --pos) {
      if (rd32(p + pos) == 0x06054b50 && pos + 22 + rd16(p + pos + 20) <= size) {
        eocd = pos;
        break;
      }
      if (pos == lowest) break;
    }
    if (eocd == SIZE_MAX) w_.corrupt("no zip end-of-central-directory record (truncated or not a zip archive)");
    uint64_t disk = rd16(p + eocd + 4), cd_disk = rd16(p + eocd + 6);
    uint64_t count = rd16(p + eocd + 10), cd_size = rd32(p + eocd + 12), cd_offset = rd32(p + eocd + 16);
    // ZIP64: a locator right before the end record points at the 64-bit end record.
    if (eocd >= 20 && rd32(p + eocd - 20) == 0x07064b50) {
      const uint64_t at = rd64(p + eocd - 20 + 8);
      if (at > eocd - 20 || eocd - 20 - at < 56 || rd32(p + at) != 0x06064b50)
        w_.corrupt("zip64 end-of-central-directory locator points at " + std::to_string(at) +
                   ", where there is no zip64 record");
      disk = rd32(p + at + 16);
      cd_disk = rd32(p + at + 20);
      count = rd64(p + at + 32);
      cd_size = rd64(p + at + 40);
      cd_offset = rd64(p + at + 48);
    }
    if (disk != 0 || cd_disk != 0) w_.unsupported("multi-volume zip archives are not read");
    if (cd_offset > size || cd_size > size - cd_offset)
      w_.corrupt("zip central directory [" + std::to_string(cd_offset) + ", +" + std::to_string(cd_size) +
                 ") lies outside the " + std::to_string(size) + "-byte file (truncated?)");
    if (count > lim.max_zip_entries)
      w_.unsupported("zip archive has " + std::to_string(count) + " entries, over the limit of " +
                     std::to_string(lim.max_zip_entries));
    if (count > cd_size / 46)
      w_.corrupt("zip central directory of " + std::to_string(cd_size) + " bytes cannot hold " + std::to_string(count) +
                 " entries");
    entries_.reserve(size_t(count));
    uint64_t pos = cd_offset;
    const uint64_t end = cd_offset + cd_size;
    for (uint64_t i = 0; i < count; ++i) {
      if (end - pos < 46 || rd32(p + pos) != 0x02014b50)
        w_.corrupt("zip central directory record " + std::to_string(i) + " at " + std::to_string(pos) +
                   " is missing or cut short");
      const uint8_t* c = p + pos;
      ZipEntry e;
      e.flags = rd16(c + 8);
      e.method = rd16(c + 10);
      e.csize = rd32(c + 20);
      e.usize = rd32(c + 24);
      const uint64_t nlen = rd16(c + 28), xlen = rd16(c + 30), clen = rd16(c + 32);
      e.local_offset = rd32(c + 42);
      if (end - pos - 46 < nlen + xlen + clen)
        w_.corrupt("zip central directory record " + std::to_string(i) + " runs past the directory's end");
      e.name.assign(reinterpret_cast<const char*>(c + 46), nlen);
      // ZIP64 extended information (header id 1): the 64-bit values of the saturated fields, in order.
      const uint8_t* x = c + 46 + nlen;
      for (uint64_t k = 0; k + 4 <= xlen;) {
        const uint16_t id = rd16(x + k), len = rd16(x + k + 2);
        if (len > xlen - k - 4) w_.corrupt("zip entry " + quoted(e.name) + ": extra field runs past its record");
        if (id == 1) {
          const uint8_t* q = x + k + 4;
          uint64_t left = len;
          auto take = [&](uint64_t& field) {
            if (field != 0xFFFFFFFFu) return;
            if (left < 8) w_.corrupt("zip entry " + quoted(e.name) + ": zip64 extra field too short");
            field = rd64(q);
            q += 8;
            left -= 8;
          };
          take(e.usize);
          take(e.csize);
          take(e.local_offset);
        }
        k += 4 + uint64_t(len);
      }
      if (!index_.emplace(e.name, entries_.size()).second) w_.corrupt("zip archive holds " + quoted(e.name) + " twice");
      entries_.push_back(std::move(e));
      pos += 46 + nlen + xlen + clen;
    }
  }

  void inflate_raw(const uint8_t* src, uint64_t csize, uint64_t usize, std::vector<uint8_t>& out,
                   const std::string& name) const {
    z_stream zs{};
    if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) throw InternalError(w_.file + ": zlib inflateInit2 failed");
    struct End {
      z_stream* z;
      ~End() { inflateEnd(z); }
    } end{&zs};
    // Deflate expands at most ~1032:1, so the first buffer is bounded by the bytes actually present.
    out.clear();
    out.resize(size_t(std::min<uint64_t>(usize, csize * 1032 + 1024)));
    uint64_t in_left = csize, produced = 0;
    uint8_t sink[64];
    for (;;) {
      if (zs.avail_in == 0 && in_left > 0) {
        const uInt chunk = uInt(std::min<uint64_t>(in_left, 1u << 30));
        zs.next_in = const_cast<Bytef*>(src);
        zs.avail_in = chunk;
        src += chunk;
        in_left -= chunk;
      }
      if (produced == out.size() && produced < usize)
        out.resize(size_t(std::min<uint64_t>(usize, uint64_t(out.size()) * 2 + 4096)));
      const bool full = produced == usize;  // anything more is past the declared size
      zs.next_out = full ? sink : out.data() + produced;
      zs.avail_out = full ? uInt(sizeof(sink)) : uInt(std::min<uint64_t>(out.size() - produced, 1u << 30));
      const uInt before = zs.avail_out;
      const int rc = inflate(&zs, Z_NO_FLUSH);
      const uInt got = before - zs.avail_out;
      if (full && got > 0) w_.corrupt(name + " inflates to more than its declared " + std::to_string(usize) + " bytes");
      if (!full) produced += got;
      if (rc == Z_STREAM_END) break;
      if (rc == Z_BUF_ERROR && zs.avail_in == 0 && in_left == 0) w_.corrupt(name + ": deflate data is truncated");
      if (rc != Z_OK && rc != Z_BUF_ERROR) w_.corrupt(name + ": corrupt deflate data");
    }
    if (produced != usize)
      w_.corrupt(name + " inflates to " + std::to_string(produced) + " bytes, not its declared " +
                 std::to_string(usize));
    out.resize(size_t(produced));
  }

  Bytes f_;
  const Where& w_;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, size_t> index_;
};

// ---------------------------------------------------------------------------------------------------
// Whitelisted globals.

struct ElemType {
  const char* name;
  bool representable;  // has a DType; other tensors are skipped
  DType dtype;
  uint8_t size;
};

// torch.<Name>Storage (typed storages, in persistent ids of _rebuild_tensor_v2 files).
constexpr ElemType kStorageTypes[] = {
    {"FloatStorage", true, DType::F32, 4},
    {"HalfStorage", true, DType::F16, 2},
    {"BFloat16Storage", true, DType::BF16, 2},
    {"DoubleStorage", true, DType::F64, 8},
    {"LongStorage", true, DType::I64, 8},
    {"IntStorage", true, DType::I32, 4},
    {"ShortStorage", true, DType::I16, 2},
    {"CharStorage", true, DType::I8, 1},
    {"ByteStorage", true, DType::U8, 1},
    {"BoolStorage", true, DType::Bool, 1},
    {"UntypedStorage", true, DType::U8, 1},
    {"ComplexFloatStorage", false, DType::U8, 8},
    {"ComplexDoubleStorage", false, DType::U8, 16},
    {"QInt8Storage", false, DType::U8, 1},
    {"QUInt8Storage", false, DType::U8, 1},
    {"QInt32Storage", false, DType::U8, 4},
    {"QUInt4x2Storage", false, DType::U8, 1},
    {"QUInt2x4Storage", false, DType::U8, 1},
};

// torch.<dtype> (the dtype argument of _rebuild_tensor_v3, used for dtypes without a storage class).
constexpr ElemType kDTypes[] = {
    {"float32", true, DType::F32, 4},
    {"float16", true, DType::F16, 2},
    {"bfloat16", true, DType::BF16, 2},
    {"float64", true, DType::F64, 8},
    {"int64", true, DType::I64, 8},
    {"int32", true, DType::I32, 4},
    {"int16", true, DType::I16, 2},
    {"int8", true, DType::I8, 1},
    {"uint8", true, DType::U8, 1},
    {"bool", true, DType::Bool, 1},
    {"uint16", true, DType::U16, 2},
    {"uint32", true, DType::U32, 4},
    {"uint64", true, DType::U64, 8},
    {"float8_e4m3fn", true, DType::F8E4M3, 1},
    {"float8_e5m2", true, DType::F8E5M2, 1},
    {"complex32", false, DType::U8, 4},
    {"complex64", false, DType::U8, 8},
    {"complex128", false, DType::U8, 16},
    {"float8_e4m3fnuz", false, DType::U8, 1},
    {"float8_e5m2fnuz", false, DType::U8, 1},
    {"float8_e8m0fnu", false, DType::U8, 1},
    {"float4_e2m1fn_x2", false, DType::U8, 1},
    {"qint8", false, DType::U8, 1},
    {"quint8", false, DType::U8, 1},
    {"qint32", false, DType::U8, 4},
    {"quint4x2", false, DType::U8, 1},
    {"quint2x4", false, DType::U8, 1},
};

enum class G : uint8_t {
  OrderedDict,
  RebuildTensor,              // torch._utils._rebuild_tensor(storage, offset, size, stride)
  RebuildTensorV2,            // + requires_grad, backward_hooks[, metadata]
  RebuildTensorV3,            // + requires_grad, backward_hooks, dtype[, metadata]
  RebuildParameter,           // (tensor, requires_grad, backward_hooks)
  RebuildParameterWithState,  // + state
  RebuildFromTypeV2,          // (func, type, args, state): tensors with Python attributes
  TensorClass,                // torch.Tensor, torch.nn.parameter.Parameter (type argument only)
  StorageType,                // aux: index into kStorageTypes
  DTypeValue,                 // aux: index into kDTypes
  Size,                       // torch.Size(tuple) -> the tuple
  ParameterDict,              // torch.nn.modules.container.ParameterDict (A1111 embeddings)
  Set,                        // builtins.set / frozenset
  Inert,                      // data-only types kept as opaque values (numpy scalars, torch.device, ...)
};

struct GlobalId {
  G g;
  uint16_t aux = 0;
};

std::optional<GlobalId> lookup_global(std::string_view module, std::string_view name) {
  auto storage = [&]() -> std::optional<GlobalId> {
    for (size_t i = 0; i < std::size(kStorageTypes); ++i)
      if (name == kStorageTypes[i].name) return GlobalId{G::StorageType, uint16_t(i)};
    return std::nullopt;
  };
  if (module == "collections" && name == "OrderedDict") return GlobalId{G::OrderedDict};
  if (module == "torch._utils") {
    if (name == "_rebuild_tensor") return GlobalId{G::RebuildTensor};
    if (name == "_rebuild_tensor_v2") return GlobalId{G::RebuildTensorV2};
    if (name == "_rebuild_tensor_v3") return GlobalId{G::RebuildTensorV3};
    if (name == "_rebuild_parameter") return GlobalId{G::RebuildParameter};
    if (name == "_rebuild_parameter_with_state") return GlobalId{G::RebuildParameterWithState};
  }
  if (module == "torch._tensor" && name == "_rebuild_from_type_v2") return GlobalId{G::RebuildFromTypeV2};
  if (module == "torch") {
    if (auto s = storage()) return s;
    for (size_t i = 0; i < std::size(kDTypes); ++i)
      if (name == kDTypes[i].name) return GlobalId{G::DTypeValue, uint16_t(i)};
    if (name == "Tensor") return GlobalId{G::TensorClass};
    if (name == "Size") return GlobalId{G::Size};
    if (name == "device") return GlobalId{G::Inert};
  }
  if (module == "torch.cuda" || module == "torch.storage") {  // legacy GPU files; torch.storage.UntypedStorage
    if (auto s = storage(); s && (module == "torch.cuda" || name == "UntypedStorage")) return s;
  }
  if (module == "torch.nn.parameter" && name == "Parameter") return GlobalId{G::TensorClass};
  if (module == "torch.nn.modules.container" && name == "ParameterDict") return GlobalId{G::ParameterDict};
  if ((module == "builtins" || module == "__builtin__") && (name == "set" || name == "frozenset"))
    return GlobalId{G::Set};
  if ((module == "numpy.core.multiarray" || module == "numpy._core.multiarray") &&
      (name == "scalar" || name == "_reconstruct"))
    return GlobalId{G::Inert};
  if (module == "numpy" && (name == "dtype" || name == "ndarray")) return GlobalId{G::Inert};
  if (module == "_codecs" && name == "encode") return GlobalId{G::Inert};
  if (module == "pytorch_lightning.callbacks.model_checkpoint" && name == "ModelCheckpoint") return GlobalId{G::Inert};
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------------
// The pickle interpreter. Values live in an arena owned by the interpreter (cycles cost nothing);
// nothing is ever called: REDUCE/NEWOBJ/BUILD on a whitelisted global are interpreted here.

enum class Kind : uint8_t {
  None,
  Bool,
  Int,
  BigInt,  // a LONG of more than 8 bytes: s holds its little-endian bytes
  Float,
  Str,
  Bytes,
  Tuple,
  List,
  Set,
  Dict,  // items: key, value, key, value, ...
  Global,
  Storage,  // i: index into storage refs
  Tensor,   // i: index into tensor records
  Object,   // a ParameterDict: items[0] is the BUILD state, if any
  Opaque,   // an inert object we keep but never look into
};

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::None:
      return "None";
    case Kind::Bool:
      return "bool";
    case Kind::Int:
    case Kind::BigInt:
      return "int";
    case Kind::Float:
      return "float";
    case Kind::Str:
      return "str";
    case Kind::Bytes:
      return "bytes";
    case Kind::Tuple:
      return "tuple";
    case Kind::List:
      return "list";
    case Kind::Set:
      return "set";
    case Kind::Dict:
      return "dict";
    case Kind::Global:
      return "global";
    case Kind::Storage:
      return "storage";
    case Kind::Tensor:
      return "tensor";
    case Kind::Object:
      return "ParameterDict";
    case Kind::Opaque:
      return "object";
  }
  return "value";
}

struct Obj {
  Kind kind = Kind::None;
  GlobalId g{G::Inert};
  int64_t i = 0;
  double f = 0;
  std::string_view s;
  std::vector<Obj*> items;
};

// One storage (a `data/<key>` record, or a legacy stream record), in bytes.
struct StorageRec {
  std::string key;
  uint64_t nbytes = 0;
  uint8_t elsize = 1;
  Bytes data;
  std::shared_ptr<void> keep;
  bool resolved = false;
};

// A persistent-id reference: a byte window of a storage (the whole of it except for legacy views).
struct StorageRef {
  size_t rec;
  uint64_t begin, len;
  uint16_t type;  // kStorageTypes index
};

struct TensorRec {
  size_t ref;
  const ElemType* elem;
  int64_t offset;
  Shape shape, stride;
  int64_t numel;
};

class Unpickler {
 public:
  // Called once per new storage key with its byte size; checks that the data exists.
  using StorageCheck = std::function<void(const std::string& key, uint64_t nbytes)>;

  Unpickler(const Where& w, std::string what, const TorchReadLimits& lim, StorageCheck check)
      : w_(w), what_(std::move(what)), lim_(lim), check_(std::move(check)) {}

  // Runs one pickle from d[pos] to its STOP and returns its value; pos moves past the STOP.
  Obj* load(Bytes d, size_t& pos, bool persistent_ids);

  std::vector<StorageRec> storages;
  std::vector<StorageRef> refs;
  std::vector<TensorRec> tensors;
  const StorageRec* find_storage(std::string_view key) const {
    const auto it = storage_index_.find(std::string(key));
    return it == storage_index_.end() ? nullptr : &storages[it->second];
  }
  StorageRec* find_storage(std::string_view key) {
    const auto it = storage_index_.find(std::string(key));
    return it == storage_index_.end() ? nullptr : &storages[it->second];
  }

 private:
  [[noreturn]] void corrupt(const std::string& msg) const {
    w_.corrupt(what_ + " byte " + std::to_string(op_at_) + ": " + msg);
  }
  [[noreturn]] void unsupported(const std::string& msg) const {
    w_.unsupported(what_ + " byte " + std::to_string(op_at_) + ": " + msg);
  }

  Obj* make(Kind k) {
    if (arena_.size() >= lim_.max_pickle_objects)
      w_.unsupported(what_ + ": more than " + std::to_string(lim_.max_pickle_objects) +
                     " pickle values, over the limit");
    arena_.emplace_back();
    arena_.back().kind = k;
    return &arena_.back();
  }
  Obj* make_int(int64_t v) {
    Obj* o = make(Kind::Int);
    o->i = v;
    return o;
  }
  size_t avail() const { return stack_.size() - (marks_.empty() ? 0 : marks_.back()); }
  void push(Obj* o) { stack_.push_back(o); }
  Obj* pop() {
    if (avail() == 0) corrupt("stack underflow");
    Obj* o = stack_.back();
    stack_.pop_back();
    return o;
  }
  Obj* top() {
    if (avail() == 0) corrupt("stack underflow");
    return stack_.back();
  }
  std::vector<Obj*> pop_mark() {
    if (marks_.empty()) corrupt("no MARK to pop to");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Obj*> items(stack_.begin() + std::ptrdiff_t(m), stack_.end());
    stack_.resize(m);
    return items;
  }

  Obj* global(std::string_view module, std::string_view name) {
    const auto id = lookup_global(module, name);
    if (!id) {
      std::string full(module);
      full += '.';
      full += name;
      unsupported("refusing to load global " + quoted(full) +
                  ": only tensors, dicts and a few data types are read from PyTorch files, never code");
    }
    Obj* o = make(Kind::Global);
    o->g = *id;
    return o;
  }

  Obj* call(Obj* fn, Obj* args, int depth = 0);
  Obj* newobj(Obj* cls, Obj* args);
  void build(Obj* inst, Obj* state);
  Obj* persistent_load(Obj* pid);
  Obj* rebuild_tensor(G g, const std::vector<Obj*>& a);
  int64_t want_int(Obj* o, const char* what) {
    if (o->kind != Kind::Int && o->kind != Kind::Bool) corrupt(std::string(what) + " is a " + kind_name(o->kind));
    return o->i;
  }

  const Where& w_;
  std::string what_;
  const TorchReadLimits& lim_;
  StorageCheck check_;
  std::deque<Obj> arena_;
  std::vector<Obj*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Obj*> memo_;
  std::unordered_map<std::string, size_t> storage_index_;
  size_t op_at_ = 0;
};

Obj* Unpickler::load(Bytes d, size_t& pos, bool persistent_ids) {
  stack_.clear();
  marks_.clear();
  memo_.clear();
  const size_t start = pos;
  auto need = [&](uint64_t n) {
    if (n > d.size() - pos)
      corrupt("opcode needs " + std::to_string(n) + " more bytes, the pickle has " + std::to_string(d.size() - pos) +
              " (truncated?)");
  };
  auto u8 = [&] {
    need(1);
    return d[pos++];
  };
  auto le = [&](int n) {
    need(uint64_t(n));
    uint64_t v = 0;
    for (int k = n - 1; k >= 0; --k) v = (v << 8) | d[pos + size_t(k)];
    pos += size_t(n);
    return v;
  };
  auto view = [&](uint64_t n) {
    need(n);
    std::string_view s(reinterpret_cast<const char*>(d.data() + pos), size_t(n));
    pos += size_t(n);
    return s;
  };
  auto str = [&](uint64_t n) {
    Obj* o = make(Kind::Str);
    o->s = view(n);
    if (!valid_utf8(o->s)) corrupt("string is not valid UTF-8");
    return o;
  };
  auto bytes = [&](uint64_t n) {
    Obj* o = make(Kind::Bytes);
    o->s = view(n);
    return o;
  };
  auto line = [&] {
    const uint8_t* nl = static_cast<const uint8_t*>(std::memchr(d.data() + pos, '\n', d.size() - pos));
    if (!nl) corrupt("GLOBAL name is not terminated by a newline (truncated?)");
    std::string_view s(reinterpret_cast<const char*>(d.data() + pos), size_t(nl - (d.data() + pos)));
    pos += s.size() + 1;
    return s;
  };
  auto long_bytes = [&](uint64_t n) {
    std::string_view b = view(n);
    if (n > 8) {
      Obj* o = make(Kind::BigInt);
      o->s = b;
      return o;
    }
    uint64_t v = 0;
    for (size_t k = n; k-- > 0;) v = (v << 8) | uint8_t(b[k]);
    if (n > 0 && n < 8 && (uint8_t(b[n - 1]) & 0x80)) v |= ~uint64_t(0) << (8 * n);
    return make_int(int64_t(v));
  };
  auto memo_put = [&](uint64_t idx) { memo_[idx] = top(); };
  auto memo_get = [&](uint64_t idx) {
    const auto it = memo_.find(idx);
    if (it == memo_.end()) corrupt("memo entry " + std::to_string(idx) + " was never stored");
    push(it->second);
  };
  auto set_items = [&](Obj* target, const std::vector<Obj*>& kv) {
    if (target->kind != Kind::Dict) corrupt(std::string("SETITEM on a ") + kind_name(target->kind));
    if (kv.size() % 2) corrupt("SETITEMS with an odd number of values");
    target->items.insert(target->items.end(), kv.begin(), kv.end());
  };
  auto append = [&](Obj* target, const std::vector<Obj*>& v, Kind want, const char* op) {
    if (target->kind != want) corrupt(std::string(op) + " on a " + kind_name(target->kind));
    target->items.insert(target->items.end(), v.begin(), v.end());
  };

  for (;;) {
    if (pos >= d.size()) {
      op_at_ = pos;
      corrupt("pickle ends without STOP (truncated?)");
    }
    op_at_ = pos;
    if (pos - start >= lim_.max_pickle_bytes)
      w_.unsupported(what_ + ": pickle is longer than the limit of " + std::to_string(lim_.max_pickle_bytes) +
                     " bytes");
    const uint8_t op = d[pos++];
    switch (op) {
      case 0x80: {  // PROTO
        const uint8_t v = u8();
        if (v > 5) unsupported("pickle protocol " + std::to_string(v) + " (at most 5 is read)");
        break;
      }
      case 0x95:  // FRAME: a length hint only
        le(8);
        break;
      case '(':  // MARK
        marks_.push_back(stack_.size());
        break;
      case '.': {  // STOP
        Obj* v = pop();
        return v;
      }
      case '0':  // POP (Python pops the mark when the current frame is empty)
        if (avail() > 0) {
          stack_.pop_back();
        } else if (!marks_.empty()) {
          marks_.pop_back();
        } else {
          corrupt("stack underflow");
        }
        break;
      case '1':  // POP_MARK
        pop_mark();
        break;
      case '2':  // DUP
        push(top());
        break;
      case 'N':
        push(make(Kind::None));
        break;
      case 0x88:
      case 0x89: {  // NEWTRUE, NEWFALSE
        Obj* o = make(Kind::Bool);
        o->i = op == 0x88;
        push(o);
        break;
      }
      case 'J':  // BININT
        push(make_int(int32_t(uint32_t(le(4)))));
        break;
      case 'K':  // BININT1
        push(make_int(u8()));
        break;
      case 'M':  // BININT2
        push(make_int(int64_t(le(2))));
        break;
      case 0x8a:  // LONG1
        push(long_bytes(u8()));
        break;
      case 0x8b: {  // LONG4
        const int32_t n = int32_t(uint32_t(le(4)));
        if (n < 0) corrupt("LONG4 with a negative length");
        push(long_bytes(uint64_t(n)));
        break;
      }
      case 'G': {  // BINFLOAT, big-endian
        need(8);
        uint64_t v = 0;
        for (int k = 0; k < 8; ++k) v = (v << 8) | d[pos + size_t(k)];
        pos += 8;
        Obj* o = make(Kind::Float);
        std::memcpy(&o->f, &v, 8);
        push(o);
        break;
      }
      case 'X':  // BINUNICODE
        push(str(le(4)));
        break;
      case 0x8c:  // SHORT_BINUNICODE
        push(str(u8()));
        break;
      case 0x8d:  // BINUNICODE8
        push(str(le(8)));
        break;
      case 'T':    // BINSTRING (Python 2 str; torch.load decodes it as UTF-8)
      case 'U': {  // SHORT_BINSTRING
        uint64_t n = op == 'U' ? u8() : le(4);
        if (op == 'T' && int32_t(uint32_t(n)) < 0) corrupt("BINSTRING with a negative length");
        Obj* o = bytes(n);
        if (valid_utf8(o->s)) o->kind = Kind::Str;
        push(o);
        break;
      }
      case 'B':  // BINBYTES
        push(bytes(le(4)));
        break;
      case 'C':  // SHORT_BINBYTES
        push(bytes(u8()));
        break;
      case 0x8e:  // BINBYTES8
      case 0x96:  // BYTEARRAY8
        push(bytes(le(8)));
        break;
      case ']':
        push(make(Kind::List));
        break;
      case '}':
        push(make(Kind::Dict));
        break;
      case ')':
        push(make(Kind::Tuple));
        break;
      case 0x8f:  // EMPTY_SET
        push(make(Kind::Set));
        break;
      case 'l':     // LIST
      case 't':     // TUPLE
      case 0x91: {  // FROZENSET
        std::vector<Obj*> items = pop_mark();
        Obj* o = make(op == 'l' ? Kind::List : op == 't' ? Kind::Tuple : Kind::Set);
        o->items = std::move(items);
        push(o);
        break;
      }
      case 'd': {  // DICT
        std::vector<Obj*> items = pop_mark();
        Obj* o = make(Kind::Dict);
        set_items(o, items);
        push(o);
        break;
      }
      case 0x85:
      case 0x86:
      case 0x87: {  // TUPLE1..3
        const size_t n = size_t(op - 0x84);
        if (avail() < n) corrupt("stack underflow");
        Obj* o = make(Kind::Tuple);
        o->items.assign(stack_.end() - std::ptrdiff_t(n), stack_.end());
        stack_.resize(stack_.size() - n);
        push(o);
        break;
      }
      case 'a': {  // APPEND
        Obj* v = pop();
        append(top(), {v}, Kind::List, "APPEND");
        break;
      }
      case 'e': {  // APPENDS
        std::vector<Obj*> v = pop_mark();
        append(top(), v, Kind::List, "APPENDS");
        break;
      }
      case 0x90: {  // ADDITEMS
        std::vector<Obj*> v = pop_mark();
        append(top(), v, Kind::Set, "ADDITEMS");
        break;
      }
      case 's': {  // SETITEM
        Obj* v = pop();
        Obj* k = pop();
        set_items(top(), {k, v});
        break;
      }
      case 'u': {  // SETITEMS
        std::vector<Obj*> kv = pop_mark();
        set_items(top(), kv);
        break;
      }
      case 'c': {  // GLOBAL "module\nname\n"
        const std::string_view module = line();
        const std::string_view name = line();
        push(global(module, name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        Obj* name = pop();
        Obj* module = pop();
        if (name->kind != Kind::Str || module->kind != Kind::Str) corrupt("STACK_GLOBAL needs two strings");
        push(global(module->s, name->s));
        break;
      }
      case 'R': {  // REDUCE
        Obj* args = pop();
        Obj* fn = pop();
        push(call(fn, args));
        break;
      }
      case 0x81: {  // NEWOBJ
        Obj* args = pop();
        Obj* cls = pop();
        push(newobj(cls, args));
        break;
      }
      case 0x92: {  // NEWOBJ_EX
        Obj* kwargs = pop();
        Obj* args = pop();
        Obj* cls = pop();
        if (kwargs->kind != Kind::Dict || !kwargs->items.empty()) unsupported("NEWOBJ_EX with keyword arguments");
        push(newobj(cls, args));
        break;
      }
      case 'b': {  // BUILD
        Obj* state = pop();
        build(top(), state);
        break;
      }
      case 'Q': {  // BINPERSID
        Obj* pid = pop();
        if (!persistent_ids) corrupt("persistent id where none may be");
        push(persistent_load(pid));
        break;
      }
      case 'h':  // BINGET
        memo_get(u8());
        break;
      case 'j':  // LONG_BINGET
        memo_get(le(4));
        break;
      case 'q':  // BINPUT
        memo_put(u8());
        break;
      case 'r':  // LONG_BINPUT
        memo_put(le(4));
        break;
      case 0x94:  // MEMOIZE
        memo_put(memo_.size());
        break;
      case 'i':
      case 'o':
        unsupported(std::string("pickle opcode ") + (op == 'i' ? "INST" : "OBJ") +
                    " (instantiates a class) is never run");
      case 0x82:
      case 0x83:
      case 0x84:
        unsupported("pickle extension-registry opcodes (EXT1/2/4) are not read");
      case 'I':
      case 'L':
      case 'F':
      case 'S':
      case 'V':
      case 'P':
      case 'g':
      case 'p':
        unsupported(std::string("text-mode pickle opcode '") + char(op) +
                    "' (protocol 0/1); torch.save writes protocol 2 or later");
      case 0x97:
      case 0x98:
        unsupported("out-of-band pickle buffers are not read");
      default: {
        static const char hex[] = "0123456789abcdef";
        corrupt(std::string("unknown pickle opcode 0x") + hex[op >> 4] + hex[op & 15]);
      }
    }
  }
}

Obj* Unpickler::call(Obj* fn, Obj* args, int depth) {
  if (fn->kind != Kind::Global) corrupt(std::string("REDUCE calls a ") + kind_name(fn->kind));
  if (args->kind != Kind::Tuple) corrupt(std::string("REDUCE arguments are a ") + kind_name(args->kind));
  const std::vector<Obj*>& a = args->items;
  switch (fn->g.g) {
    case G::OrderedDict:
      if (!a.empty()) unsupported("OrderedDict built from arguments");
      return make(Kind::Dict);
    case G::RebuildTensor:
    case G::RebuildTensorV2:
    case G::RebuildTensorV3:
      return rebuild_tensor(fn->g.g, a);
    case G::RebuildParameter:
    case G::RebuildParameterWithState:
      if (a.size() != (fn->g.g == G::RebuildParameter ? 3u : 4u) || a[0]->kind != Kind::Tensor)
        corrupt("_rebuild_parameter needs (tensor, requires_grad, hooks[, state])");
      return a[0];
    case G::RebuildFromTypeV2:
      // (func, type, args, state): a tensor subclass or a tensor with Python attributes; only plain
      // tensors and parameters are rebuilt, their attributes dropped.
      if (a.size() != 4 || a[0]->kind != Kind::Global || a[1]->kind != Kind::Global || a[1]->g.g != G::TensorClass ||
          depth > 0)
        unsupported("_rebuild_from_type_v2 of anything but a plain tensor or parameter");
      return call(a[0], a[2], depth + 1);
    case G::Size: {
      if (a.size() != 1 || a[0]->kind != Kind::Tuple) corrupt("torch.Size needs one tuple");
      return a[0];
    }
    case G::Set:  // never looked into, so its items are not copied
      return make(Kind::Set);
    case G::Inert:
      return make(Kind::Opaque);
    case G::ParameterDict: {
      Obj* o = make(Kind::Object);
      o->g = fn->g;
      return o;
    }
    case G::TensorClass:
    case G::StorageType:
    case G::DTypeValue:
      break;
  }
  unsupported("REDUCE on this torch global (a storage, dtype or tensor class is not callable here)");
}

Obj* Unpickler::newobj(Obj* cls, Obj* args) {
  if (cls->kind != Kind::Global) corrupt(std::string("NEWOBJ of a ") + kind_name(cls->kind));
  if (args->kind != Kind::Tuple) corrupt(std::string("NEWOBJ arguments are a ") + kind_name(args->kind));
  switch (cls->g.g) {
    case G::OrderedDict:
      return make(Kind::Dict);
    case G::Set:
      return make(Kind::Set);
    case G::Inert:
      return make(Kind::Opaque);
    case G::ParameterDict: {
      Obj* o = make(Kind::Object);
      o->g = cls->g;
      return o;
    }
    default:
      unsupported("NEWOBJ of a torch function or type is not supported");
  }
}

void Unpickler::build(Obj* inst, Obj* state) {
  switch (inst->kind) {
    case Kind::Dict:    // OrderedDict attributes (a state dict's _metadata): not needed
    case Kind::Opaque:  // inert objects: never looked into
    case Kind::Set:
      return;
    case Kind::Object:
      inst->items.assign(1, state);
      return;
    case Kind::Tensor:
      unsupported("BUILD on a tensor (setting tensor state) is not supported");
    default:
      corrupt(std::string("BUILD on a ") + kind_name(inst->kind));
  }
}

Obj* Unpickler::persistent_load(Obj* pid) {
  // ('storage', storage_type, key, location, numel) in zip files; legacy files add view_metadata:
  // None or (view_key, offset, numel).
  if (pid->kind != Kind::Tuple || pid->items.empty() ||
      (pid->items[0]->kind != Kind::Str && pid->items[0]->kind != Kind::Bytes))
    corrupt("persistent id is not a ('storage', ...) tuple");
  const std::vector<Obj*>& a = pid->items;
  if (a[0]->s != "storage") unsupported("persistent id of type " + quoted(a[0]->s) + " (only storages are read)");
  if (a.size() != 5 && a.size() != 6) corrupt("storage persistent id with " + std::to_string(a.size()) + " fields");
  if (a[1]->kind != Kind::Global || a[1]->g.g != G::StorageType)
    corrupt("storage persistent id without a storage type");
  if (a[2]->kind != Kind::Str && a[2]->kind != Kind::Bytes) corrupt("storage key is not a string");
  if (a[2]->s.size() > kMaxStorageKey)
    corrupt("storage key is " + std::to_string(a[2]->s.size()) + " bytes long (torch writes short numbers)");
  const uint16_t type = a[1]->g.aux;
  const ElemType& et = kStorageTypes[type];
  const int64_t numel = want_int(a[4], "storage size");
  if (numel < 0 || uint64_t(numel) > (uint64_t(1) << 62) / et.size)
    corrupt("storage size " + std::to_string(numel) + " is out of range");
  const uint64_t nbytes = uint64_t(numel) * et.size;
  const std::string key(a[2]->s);
  auto [it, fresh] = storage_index_.emplace(key, storages.size());
  if (fresh) {
    if (storages.size() >= lim_.max_zip_entries)
      w_.unsupported(what_ + ": more than " + std::to_string(lim_.max_zip_entries) + " storages");
    StorageRec r;
    r.key = key;
    r.nbytes = nbytes;
    r.elsize = et.size;
    storages.push_back(std::move(r));
    if (check_) check_(key, nbytes);
  } else if (storages[it->second].nbytes != nbytes) {
    corrupt("storage " + quoted(key) + " is given as " + std::to_string(storages[it->second].nbytes) + " and as " +
            std::to_string(nbytes) + " bytes");
  }
  StorageRef ref{it->second, 0, nbytes, type};
  if (a.size() == 6 && a[5]->kind != Kind::None) {
    const Obj* v = a[5];
    if (v->kind != Kind::Tuple || v->items.size() != 3) corrupt("storage view metadata is not (key, offset, size)");
    const int64_t off = want_int(v->items[1], "storage view offset");
    const int64_t len = want_int(v->items[2], "storage view size");
    if (off < 0 || len < 0 || uint64_t(off) > uint64_t(numel) || uint64_t(len) > uint64_t(numel) - uint64_t(off))
      corrupt("storage view [" + std::to_string(off) + ", +" + std::to_string(len) + ") lies outside storage " +
              quoted(key) + " of " + std::to_string(numel) + " elements");
    ref.begin = uint64_t(off) * et.size;
    ref.len = uint64_t(len) * et.size;
  }
  Obj* o = make(Kind::Storage);
  o->i = int64_t(refs.size());
  refs.push_back(ref);
  return o;
}

Obj* Unpickler::rebuild_tensor(G g, const std::vector<Obj*>& a) {
  const size_t lo = g == G::RebuildTensor ? 4 : g == G::RebuildTensorV2 ? 6 : 7;
  const size_t hi = g == G::RebuildTensor ? 4 : lo + 1;
  if (a.size() < lo || a.size() > hi) corrupt("tensor rebuild with " + std::to_string(a.size()) + " arguments");
  if (a[0]->kind != Kind::Storage) corrupt(std::string("tensor storage is a ") + kind_name(a[0]->kind));
  const StorageRef& ref = refs[size_t(a[0]->i)];
  const ElemType* elem = &kStorageTypes[ref.type];
  if (g == G::RebuildTensorV3) {
    if (a[6]->kind != Kind::Global || a[6]->g.g != G::DTypeValue) corrupt("tensor dtype is not a torch dtype");
    elem = &kDTypes[a[6]->g.aux];
  }
  TensorRec t{size_t(a[0]->i), elem, want_int(a[1], "storage offset"), {}, {}, 1};
  if (a[2]->kind != Kind::Tuple || a[3]->kind != Kind::Tuple) corrupt("tensor size or stride is not a tuple");
  const std::vector<Obj*>& sz = a[2]->items;
  const std::vector<Obj*>& st = a[3]->items;
  if (sz.size() != st.size())
    corrupt("tensor has " + std::to_string(sz.size()) + " sizes and " + std::to_string(st.size()) + " strides");
  if (sz.size() > kMaxRank) corrupt("tensor has more than " + std::to_string(kMaxRank) + " dimensions");
  if (t.offset < 0) corrupt("negative storage offset");
  unsigned __int128 numel = 1, last = uint64_t(t.offset);
  for (size_t k = 0; k < sz.size(); ++k) {
    const int64_t n = want_int(sz[k], "tensor size"), s = want_int(st[k], "tensor stride");
    if (n < 0 || s < 0) corrupt("negative tensor size or stride");
    t.shape.push_back(n);
    t.stride.push_back(s);
    numel *= uint64_t(n);
    if (numel > (uint64_t(1) << 62)) corrupt("tensor of shape " + shape_str(t.shape) + "... is too large");
    if (n > 0) last += (unsigned __int128)uint64_t(n - 1) * uint64_t(s);
    if (last > (unsigned __int128)(uint64_t(1) << 62)) corrupt("tensor strides reach past any storage");
  }
  t.numel = int64_t(numel);
  if (numel > 0 && (last + 1) * elem->size > ref.len)
    corrupt("tensor of shape " + shape_str(t.shape) + " (stride " + shape_str(t.stride) + ", offset " +
            std::to_string(t.offset) + ", " + std::to_string(elem->size) + "-byte elements) reaches past the " +
            std::to_string(ref.len) + " bytes of storage " + quoted(storages[ref.rec].key));
  Obj* o = make(Kind::Tensor);
  o->i = int64_t(tensors.size());
  tensors.push_back(std::move(t));
  return o;
}

// ---------------------------------------------------------------------------------------------------
// From the unpickled value to named tensors.

struct Flattener {
  const Where& w;
  const TorchReadLimits& lim;
  std::vector<std::pair<std::string, size_t>> out;  // name, tensor record
  std::vector<std::string> skipped;
  std::unordered_set<std::string> seen;
  uint64_t visits = 0;
  const std::vector<TensorRec>& tensors;

  // A dict, or a ParameterDict (whose parameters are its BUILD state's '_parameters' dict).
  void container(const Obj* v, const std::string& prefix, uint32_t depth) {
    const Obj* d = v;
    if (v->kind == Kind::Object) {
      d = nullptr;
      if (!v->items.empty() && v->items[0]->kind == Kind::Dict) {
        const Obj* state = v->items[0];
        for (size_t k = 0; k + 1 < state->items.size(); k += 2)
          if (state->items[k]->kind == Kind::Str && state->items[k]->s == "_parameters" &&
              state->items[k + 1]->kind == Kind::Dict)
            d = state->items[k + 1];
      }
      if (!d) return;
    }
    for (size_t k = 0; k + 1 < d->items.size(); k += 2) {
      const Obj* key = d->items[k];
      const Kind vk = d->items[k + 1]->kind;
      if (vk != Kind::Tensor && vk != Kind::Dict && vk != Kind::Object) {
        count_visit();
        continue;  // numbers, strings, lists, tuples, None, opaque objects: not weights
      }
      if (prefix.size() + key->s.size() > kMaxName)
        w.unsupported("a tensor or dict name is longer than " + std::to_string(kMaxName) + " bytes");
      std::string name = prefix;
      if (key->kind == Kind::Str) {
        name += key->s;
      } else if (key->kind == Kind::Int) {
        name += std::to_string(key->i);
      } else {
        continue;  // a class, tuple, ... as key (e.g. Lightning callbacks): never a weight
      }
      value(d->items[k + 1], name, depth);
    }
  }
  void count_visit() {
    if (++visits > lim.max_pickle_objects)
      w.unsupported("nested dicts are shared so often that flattening them visits more than " +
                    std::to_string(lim.max_pickle_objects) + " values");
  }
  void value(const Obj* v, const std::string& name, uint32_t depth) {
    count_visit();
    switch (v->kind) {
      case Kind::Tensor: {
        const TensorRec& t = tensors[size_t(v->i)];
        if (name == "__metadata__") w.unsupported("a tensor is named '__metadata__', which safetensors reserves");
        if (!seen.insert(name).second) w.corrupt("tensor name " + quoted(name) + " occurs twice");
        if (!t.elem->representable) {
          skipped.push_back(name);
          return;
        }
        if (out.size() >= lim.max_tensors)
          w.unsupported("more than " + std::to_string(lim.max_tensors) + " tensors, over the limit");
        out.emplace_back(name, size_t(v->i));
        return;
      }
      case Kind::Dict:
      case Kind::Object:
        if (depth >= lim.max_nesting)
          w.unsupported("dicts nested more than " + std::to_string(lim.max_nesting) + " deep");
        container(v, name + ".", depth + 1);
        return;
      default:
        return;  // numbers, strings, lists, tuples, None, opaque objects: not weights
    }
  }
};

void strided_copy(uint8_t* dst, const uint8_t* src, const Shape& shape, const Shape& stride, size_t es, int64_t numel) {
  const size_t nd = shape.size();
  if (nd == 0) {
    std::memcpy(dst, src, es);
    return;
  }
  const int64_t inner = shape[nd - 1], is = stride[nd - 1];
  std::vector<int64_t> idx(nd, 0);
  int64_t base = 0;
  for (int64_t r = 0, rows = numel / inner; r < rows; ++r) {
    const uint8_t* s = src + base * int64_t(es);
    if (is == 1) {
      std::memcpy(dst, s, size_t(inner) * es);
      dst += size_t(inner) * es;
    } else {
      const int64_t step = is * int64_t(es);
      for (int64_t j = 0; j < inner; ++j, s += step, dst += es) std::memcpy(dst, s, es);
    }
    for (size_t dd = nd - 1; dd-- > 0;) {
      if (++idx[dd] < shape[dd]) {
        base += stride[dd];
        break;
      }
      base -= stride[dd] * (shape[dd] - 1);
      idx[dd] = 0;
    }
  }
}

bool is_contiguous(const Shape& shape, const Shape& stride) {
  int64_t expect = 1;
  for (size_t k = shape.size(); k-- > 0;) {
    if (shape[k] != 1 && stride[k] != expect) return false;
    expect *= shape[k];
  }
  return true;
}

// Storage data is resolved only for tensors that are returned.
using StorageResolver = std::function<void(StorageRec&)>;

TorchTensors collect(const Obj* root, Unpickler& u, const StorageResolver& resolve, const Where& w,
                     const TorchReadLimits& lim) {
  if (root->kind != Kind::Dict && root->kind != Kind::Object)
    w.unsupported(std::string("the file holds a ") + kind_name(root->kind) + ", not a dict of tensors (a state dict)");
  Flattener fl{w, lim, {}, {}, {}, 0, u.tensors};
  fl.container(root, "", 0);
  uint64_t total = 0;
  for (const auto& [name, idx] : fl.out) {
    const TensorRec& t = u.tensors[idx];
    if (uint64_t(t.numel) > (lim.max_tensor_bytes - total) / t.elem->size)
      w.unsupported("tensors total more than " + std::to_string(lim.max_tensor_bytes) + " bytes, over the limit");
    total += uint64_t(t.numel) * t.elem->size;
  }
  TorchTensors res;
  res.skipped = std::move(fl.skipped);
  res.tensors.reserve(fl.out.size());
  for (auto& [name, idx] : fl.out) {
    const TensorRec& t = u.tensors[idx];
    const DType dt = t.elem->dtype;
    const size_t es = t.elem->size;
    if (t.numel == 0) {
      res.tensors.emplace_back(std::move(name), Tensor::empty(t.shape, dt));
      continue;
    }
    const StorageRef& ref = u.refs[t.ref];
    StorageRec& rec = u.storages[ref.rec];
    if (!rec.resolved) {
      resolve(rec);
      rec.resolved = true;
    }
    if (rec.data.size() != rec.nbytes) w.corrupt("storage " + quoted(rec.key) + " has no data of the declared size");
    const uint8_t* base = rec.data.data() + ref.begin + uint64_t(t.offset) * es;
    if (is_contiguous(t.shape, t.stride) && reinterpret_cast<uintptr_t>(base) % es == 0) {
      res.tensors.emplace_back(std::move(name), Tensor::from_blob(const_cast<uint8_t*>(base), t.shape, dt, rec.keep));
    } else {
      Tensor c = Tensor::empty(t.shape, dt);
      strided_copy(static_cast<uint8_t*>(c.raw_data()), base, t.shape, t.stride, es, t.numel);
      res.tensors.emplace_back(std::move(name), std::move(c));
    }
  }
  return res;
}

// ---------------------------------------------------------------------------------------------------
// The two container formats.

TorchTensors load_zip(Bytes file, const std::shared_ptr<void>& keep, const Where& w, const TorchReadLimits& lim) {
  const ZipReader zip(file, w, lim);
  if (zip.entries().empty()) w.corrupt("zip archive has no entries");
  const std::string& first = zip.entries()[0].name;
  const size_t slash = first.find('/');
  if (slash == std::string::npos)
    w.corrupt("not a torch.save archive: its first entry " + quoted(first) + " is not inside a folder");
  const std::string prefix = first.substr(0, slash + 1);
  const ZipEntry* pkl = zip.find(prefix + "data.pkl");
  if (!pkl) {
    if (zip.find(prefix + "constants.pkl"))
      w.unsupported("this is a TorchScript archive (torch.jit.save), which holds code; save its state_dict() instead");
    w.corrupt("not a torch.save archive: no " + quoted(prefix + "data.pkl"));
  }
  if (const ZipEntry* bo = zip.find(prefix + "byteorder")) {
    std::vector<uint8_t> buf;
    const Bytes b = zip.read(*bo, 16, "byteorder", buf);
    const std::string_view order(reinterpret_cast<const char*>(b.data()), b.size());
    if (order == "big")
      w.unsupported("tensors are stored big-endian; " + std::string(kResave) + " on a little-endian machine");
    if (order != "little") w.corrupt("byteorder record is " + quoted(order) + ", not 'little' or 'big'");
  }
  std::vector<uint8_t> pkl_buf;
  const Bytes pickle = zip.read(*pkl, lim.max_pickle_bytes, "pickle", pkl_buf);
  auto check = [&](const std::string& key, uint64_t nbytes) {
    const ZipEntry* e = zip.find(prefix + "data/" + key);
    if (!e) w.corrupt("storage " + quoted(key) + " has no " + quoted(prefix + "data/" + key) + " entry");
    if (e->usize != nbytes)
      w.corrupt("storage " + quoted(key) + " is " + std::to_string(nbytes) + " bytes but its entry holds " +
                std::to_string(e->usize));
  };
  Unpickler u(w, prefix + "data.pkl", lim, check);
  size_t pos = 0;
  const Obj* root = u.load(pickle, pos, true);
  auto resolve = [&](StorageRec& rec) {
    const ZipEntry* e = zip.find(prefix + "data/" + rec.key);
    auto buf = std::make_shared<std::vector<uint8_t>>();
    rec.data = zip.read(*e, lim.max_tensor_bytes, "tensor data", *buf);
    rec.keep = e->method == 0 ? keep : std::shared_ptr<void>(buf);
  };
  return collect(root, u, resolve, w, lim);
}

// torch.save(..., _use_new_zipfile_serialization=False) and torch < 1.6: five pickles in a row
// (magic number, format version, system info, the object, the storage keys), then each storage as
// an 8-byte element count and its raw bytes, in the order of the keys.
TorchTensors load_legacy(Bytes file, const std::shared_ptr<void>& keep, const Where& w, const TorchReadLimits& lim) {
  Unpickler u(w, "legacy pickle", lim, nullptr);
  size_t pos = 0;
  const Obj* magic = u.load(file, pos, false);
  static const uint8_t kMagic[] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9,
                                   0x20, 0x6a, 0xa8, 0x50, 0x19};  // 0x1950a86a20f9469cfc6c
  if (magic->kind != Kind::BigInt || magic->s != std::string_view(reinterpret_cast<const char*>(kMagic), 10))
    w.corrupt("a pickle file, but not a PyTorch checkpoint (no torch.save magic number)");
  const Obj* version = u.load(file, pos, false);
  if (version->kind != Kind::Int || version->i != 1001)
    w.unsupported("legacy PyTorch format version " +
                  (version->kind == Kind::Int ? std::to_string(version->i) : std::string("?")) + "; " + kResave);
  const Obj* info = u.load(file, pos, false);
  if (info->kind == Kind::Dict)
    for (size_t k = 0; k + 1 < info->items.size(); k += 2)
      if (info->items[k]->kind == Kind::Str && info->items[k]->s == "little_endian" &&
          info->items[k + 1]->kind == Kind::Bool && info->items[k + 1]->i == 0)
        w.unsupported("tensors are stored big-endian; " + std::string(kResave) + " on a little-endian machine");
  const Obj* root = u.load(file, pos, true);
  const Obj* keys = u.load(file, pos, false);
  if (keys->kind != Kind::List) w.corrupt("legacy storage key list is missing");
  for (const Obj* k : keys->items) {
    if (k->kind != Kind::Str && k->kind != Kind::Bytes) w.corrupt("legacy storage key is not a string");
    StorageRec* rec = u.find_storage(k->s);
    if (!rec) w.corrupt("legacy storage " + quoted(k->s) + " is listed but no tensor uses it");
    if (rec->resolved) w.corrupt("legacy storage " + quoted(k->s) + " is listed twice");
    if (file.size() - pos < 8) w.corrupt("legacy storage " + quoted(k->s) + " is cut short (truncated?)");
    const uint64_t numel = rd64(file.data() + pos);
    pos += 8;
    if (numel > (uint64_t(1) << 62) / rec->elsize || numel * rec->elsize != rec->nbytes)
      w.corrupt("legacy storage " + quoted(k->s) + " holds " + std::to_string(numel) + " elements, its tensors say " +
                std::to_string(rec->nbytes / rec->elsize));
    if (file.size() - pos < rec->nbytes)
      w.corrupt("legacy storage " + quoted(k->s) + " runs past the end of the file (truncated?)");
    rec->data = file.subspan(pos, size_t(rec->nbytes));
    rec->keep = keep;
    rec->resolved = true;
    pos += size_t(rec->nbytes);
  }
  auto resolve = [&](StorageRec& rec) { w.corrupt("legacy storage " + quoted(rec.key) + " has no data"); };
  return collect(root, u, resolve, w, lim);
}

bool is_zip(const uint8_t* p, size_t n) { return n >= 4 && p[0] == 'P' && p[1] == 'K' && p[2] == 3 && p[3] == 4; }
bool is_pickle(const uint8_t* p, size_t n) { return n >= 2 && p[0] == 0x80 && p[1] >= 2 && p[1] <= 5; }

TorchTensors load_any(Bytes file, const std::shared_ptr<void>& keep, const std::string& name,
                      const TorchReadLimits& lim) {
  const Where w{printable(name, 4096)};
  const uint8_t* p = file.data();
  const size_t n = file.size();
  if (is_zip(p, n)) return load_zip(file, keep, w, lim);
  if (is_pickle(p, n)) return load_legacy(file, keep, w, lim);
  if (n >= 262 && std::memcmp(p + 257, "ustar", 5) == 0)
    w.unsupported(std::string("this is PyTorch's pre-1.0 tar checkpoint format, which is not read; ") + kResave);
  if (n >= 9 && p[8] == '{')
    w.unsupported("this looks like a safetensors file, not a PyTorch checkpoint; use it as it is");
  w.corrupt("not a PyTorch checkpoint (no zip or pickle signature" +
            std::string(n == 0 ? "; the file is empty)" : ")"));
}

SafeTensorsFile to_safetensors(TorchTensors t, std::string name) {
  std::vector<uint8_t> bytes;
  try {
    bytes = serialize_safetensors(t.tensors);
  } catch (const InvalidArgument& e) {
    throw ModelFormatError(printable(name, 4096) + ": " + e.what());
  }
  t.tensors.clear();  // release the file mapping before the copy is used
  return SafeTensorsFile::from_memory(std::make_shared<const std::vector<uint8_t>>(std::move(bytes)), std::move(name));
}

}  // namespace

bool looks_like_torch_checkpoint(const uint8_t* data, size_t size) {
  return is_zip(data, size) || is_pickle(data, size);
}

TorchTensors load_torch_checkpoint_tensors(const std::string& path, const TorchReadLimits& limits) {
  const std::shared_ptr<MappedFile> m = MappedFile::open(path);
  m->advise_sequential();
  return load_any(Bytes(m->data(), m->size()), m, path, limits);
}

TorchTensors load_torch_checkpoint_tensors_bytes(std::shared_ptr<const std::vector<uint8_t>> bytes,
                                                 const std::string& name, const TorchReadLimits& limits) {
  if (!bytes) throw InvalidArgument("load_torch_checkpoint_tensors_bytes: null buffer for " + name);
  const Bytes span(bytes->data(), bytes->size());
  return load_any(span, std::const_pointer_cast<std::vector<uint8_t>>(bytes), name, limits);
}

SafeTensorsFile read_torch_checkpoint(const std::string& path, const TorchReadLimits& limits) {
  return to_safetensors(load_torch_checkpoint_tensors(path, limits), path);
}

SafeTensorsFile read_torch_checkpoint_bytes(std::shared_ptr<const std::vector<uint8_t>> bytes, std::string name,
                                            const TorchReadLimits& limits) {
  TorchTensors t = load_torch_checkpoint_tensors_bytes(std::move(bytes), name, limits);
  return to_safetensors(std::move(t), std::move(name));
}

}  // namespace sdserve
