#pragma once
// The raw CUDA launcher of the loss's per-row cross-entropy and logit gradient. Torch-free, so
// nvcc compiles it without LibTorch's headers; fused_ops_cuda.cc wraps it for ATen tensors.
#include <cuda_runtime.h>

#include <cstdint>

#include "runtime/kernels/elementwise_cuda.h"

namespace dstrain::kernels {

// For each row r of `logits` [rows, vocab] (fp32, contiguous): row_loss[r] = logsumexp(row) -
// row[targets[r]], 0 where targets[r] == ignore_index; and, when `grad` is not null, grad row r
// = softmax(row) - one_hot(targets[r]) in `grad_dtype` (a zero row where ignored). One block per
// row reads the row twice (an online max and sum, then the gradient) and writes the gradient
// once.
cudaError_t launch_cross_entropy_rows(const float* logits, const int64_t* targets, int64_t rows,
                                      int64_t vocab, int64_t ignore_index, float* row_loss,
                                      void* grad, Dtype grad_dtype, cudaStream_t stream);

}  // namespace dstrain::kernels
