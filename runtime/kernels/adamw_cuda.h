#pragma once
// The raw CUDA launcher of the device optimizer's AdamW step. Torch-free, so nvcc compiles it
// without LibTorch's headers; fused_ops_cuda.cc wraps it for ATen tensors.
#include <cuda_runtime.h>

#include <cstdint>

#include "offload/cpu_adam.h"
#include "runtime/kernels/elementwise_cuda.h"

namespace dstrain::kernels {

// One AdamW step (decoupled weight decay, as torch.optim.AdamW; `hyper` as the CPU AdamW takes it)
// over `n` fp32 elements, in place
// in param, exp_avg and exp_avg_sq, and the updated parameters also written to `param_copy` in
// `copy_dtype` (rounded once) when it is not null: the compute-dtype copy forward reads, made in
// the same pass instead of a second one that reads the parameters again.
cudaError_t launch_adamw(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                         void* param_copy, Dtype copy_dtype, int64_t n,
                         const offload::AdamWHyper& hyper, cudaStream_t stream);

}  // namespace dstrain::kernels
