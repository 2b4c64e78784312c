// Builds without the CUDA toolkit: no fused kernels; callers take the ATen path.
#include <c10/util/Exception.h>

#include "runtime/kernels/fused_ops.h"

namespace dstrain::kernels {

bool cuda_kernels_built() { return false; }

std::array<at::Tensor, 3> rope_qkv(const at::Tensor&, int64_t, int64_t, const at::Tensor&,
                                   const at::Tensor&) {
  TORCH_CHECK(false, "dstrain was built without CUDA kernels (no CUDA toolkit at configure time)");
}

at::Tensor swiglu(const at::Tensor&) {
  TORCH_CHECK(false, "dstrain was built without CUDA kernels (no CUDA toolkit at configure time)");
}

void adamw_step(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                const at::Tensor&, const offload::AdamWHyper&) {
  TORCH_CHECK(false, "dstrain was built without CUDA kernels (no CUDA toolkit at configure time)");
}

CrossEntropyRows cross_entropy_rows(const at::Tensor&, const at::Tensor&, int64_t,
                                    std::optional<at::ScalarType>) {
  TORCH_CHECK(false, "dstrain was built without CUDA kernels (no CUDA toolkit at configure time)");
}

}  // namespace dstrain::kernels
