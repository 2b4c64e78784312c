#include "runtime/export/lora_merge.h"

#include <ATen/ATen.h>

namespace dstrain::runtime::exporter {

base::Status merge_lora(float* weight, const float* a, const float* b, int64_t out, int64_t in,
                        int64_t rank, double scale) {
  try {
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    at::Tensor w = at::from_blob(weight, {out, in}, f32);
    // from_blob wants a mutable pointer; a and b are only read.
    const at::Tensor ta = at::from_blob(const_cast<float*>(a), {rank, in}, f32);
    const at::Tensor tb = at::from_blob(const_cast<float*>(b), {out, rank}, f32);
    w.addmm_(tb, ta, /*beta=*/1.0, /*alpha=*/scale);
  } catch (const std::exception& e) {
    return base::Status::Internal(std::string("merging a LoRA adapter: ") + e.what());
  }
  return base::Status::Ok();
}

}  // namespace dstrain::runtime::exporter
