// A safe reader for PyTorch checkpoints (.pth / .pt / .ckpt / .bin written by torch.save). Nothing in
// the file is ever executed: the zip container (torch >= 1.6) or the legacy pickle stream (older
// torch) is parsed with bounds checks, and the pickle inside is interpreted by a small stack machine
// that understands only the opcodes and the whitelisted globals a state dict needs
// (collections.OrderedDict, torch._utils._rebuild_tensor*, _rebuild_parameter*, the storage types,
// torch dtypes, and a few inert data types). Any other global (os.system, builtins.eval, a model
// class, ...) makes the whole file fail with UnsupportedError naming it. docs/TORCH_CHECKPOINTS.md
// lists exactly what is read.
//
// The result is the file's tensors, flattened: nested dicts are joined with '.', e.g.
// `params_ema.conv_first.weight` or `state_dict.model.0.weight`; non-tensor values (ints, strings,
// lists, tuples, optimizer hyper-parameters, ...) are skipped. Tensors whose dtype has no DType
// (complex, quantized, exotic float8 variants) are skipped and listed in `skipped`.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"

namespace sdserve {

// Caps on what a file may make the reader do; a file over a cap fails with UnsupportedError. The
// defaults admit every real checkpoint we know of (SDXL .ckpt with EMA and optimizer state included).
struct TorchReadLimits {
  uint64_t max_zip_entries = uint64_t(1) << 20;     // central-directory records
  uint64_t max_pickle_bytes = uint64_t(256) << 20;  // data.pkl (or the legacy stream's pickles)
  uint64_t max_pickle_objects = uint64_t(1) << 23;  // values the pickle interpreter may create
  uint64_t max_tensors = uint64_t(1) << 20;         // tensors returned
  uint64_t max_tensor_bytes = uint64_t(1) << 37;    // total bytes of the tensors returned (128 GiB)
  uint32_t max_nesting = 64;                        // dict nesting above a tensor
};

struct TorchTensors {
  // In the pickle's order. Contiguous tensors stored uncompressed and aligned are zero-copy views
  // into the file (they keep it mapped); strided views are materialised as contiguous copies.
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::vector<std::string> skipped;  // names of tensors with a dtype sdserve cannot represent
};

// Throws NotFoundError / IoError (cannot open), ModelFormatError (corrupt or truncated: a one-line
// message naming the file and what is wrong), UnsupportedError (a valid file we do not read: a
// non-whitelisted global, big-endian data, the pre-0.4 tar format, a limit exceeded).
TorchTensors load_torch_checkpoint_tensors(const std::string& path, const TorchReadLimits& limits = {});
TorchTensors load_torch_checkpoint_tensors_bytes(std::shared_ptr<const std::vector<uint8_t>> bytes,
                                                 const std::string& name, const TorchReadLimits& limits = {});

// The same tensors as an in-memory safetensors file (no metadata), so every safetensors loader can
// read a PyTorch checkpoint. The tensors are copied once into the returned file.
SafeTensorsFile read_torch_checkpoint(const std::string& path, const TorchReadLimits& limits = {});
SafeTensorsFile read_torch_checkpoint_bytes(std::shared_ptr<const std::vector<uint8_t>> bytes, std::string name,
                                            const TorchReadLimits& limits = {});

// Whether the first bytes look like a torch.save file (zip local header, or pickle protocol 2+).
bool looks_like_torch_checkpoint(const uint8_t* data, size_t size);

}  // namespace sdserve
