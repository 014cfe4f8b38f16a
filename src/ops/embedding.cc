#include "ops/embedding.h"

#include "core/profile.h"
#include "cpu/kernels.h"
#include "ops/dispatch.h"

namespace sdserve::ops {

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  SD_PROFILE_SCOPE("embedding");
  SD_CHECK_ARG(weight.dim() == 2, "embedding: weight must be 2-D, got " + shape_str(weight.shape()));
  SD_CHECK_ARG(ids.dtype() == DType::I32, std::string("embedding: ids must be i32, got ") + dtype_name(ids.dtype()));
  // Ids may stay on the host while the table is on a GPU: they are checked here, then uploaded.
  SD_CHECK_ARG(ids.device().type == DeviceType::CPU || ids.device() == weight.device(),
               "embedding: ids on " + ids.device().str() + ", table on " + weight.device().str());
  const Tensor w = weight.contiguous();
  const Tensor idc = ids.contiguous().to(Device::cpu());
  const int64_t vocab = w.size(0), dim = w.size(1), n = idc.numel();
  const int32_t* id = idc.data<int32_t>();
  for (int64_t i = 0; i < n; ++i)
    SD_CHECK_ARG(id[i] >= 0 && id[i] < vocab,
                 "embedding: token id " + std::to_string(id[i]) + " out of range [0, " + std::to_string(vocab) + ")");
  Shape out_shape = idc.shape();
  out_shape.push_back(dim);
  SD_RETURN_IF_CUDA(w, cuda::embedding(w, idc));
  Tensor out = Tensor::empty(out_shape, w.dtype(), w.device());
  if (w.device().type != DeviceType::CPU) no_backend("embedding", w.device());
  SD_DISPATCH_FLOAT(w.dtype(), "embedding",
                    [&] { cpu::embedding<scalar_t>(w.data<scalar_t>(), vocab, dim, id, n, out.data<scalar_t>()); });
  return out;
}

}  // namespace sdserve::ops
