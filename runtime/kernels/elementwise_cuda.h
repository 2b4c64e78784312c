#pragma once
// Raw CUDA launchers for the decoder's fused elementwise kernels. Torch-free, so nvcc compiles
// them without LibTorch's headers; fused_ops_cuda.cc wraps them for ATen tensors. Every launcher
// enqueues on `stream` and returns the launch status.
#include <cuda_runtime.h>

#include <cstdint>

namespace dstrain::kernels {

enum class Dtype { kF32, kBF16, kF16 };

// Rotary embedding, rotate-half convention, for `batch` x `seq` rows of `heads` x `head_dim`
// values. x: element (b, t, h, i) at x + b * stride.batch + t * stride.seq + h * stride.head + i
// (head_dim contiguous, any layout otherwise); out: the same with out_stride (a contiguous
// [batch, seq, heads, head_dim] tensor, or columns of a wider one); cos/sin: contiguous
// [batch, seq, head_dim]. `inverse` applies the transposed rotation (the gradient through the
// rotation, for backward).
struct RopeStrides {
  int64_t batch = 0;
  int64_t seq = 0;
  int64_t head = 0;
};
cudaError_t launch_rope(const void* x, RopeStrides stride, const void* cos, const void* sin,
                        void* out, RopeStrides out_stride, int64_t batch, int64_t seq,
                        int64_t heads, int64_t head_dim, bool inverse, Dtype dtype,
                        cudaStream_t stream);

// The SwiGLU of a fused gate/up projection: gate_up is contiguous [rows, 2 * width] with the
// gate in the first half of each row and up in the second; out [rows, width] =
// silu(gate) * up.
cudaError_t launch_swiglu_forward(const void* gate_up, void* out, int64_t rows, int64_t width,
                                  Dtype dtype, cudaStream_t stream);

// d_gate_up [rows, 2 * width] from grad [rows, width]: d_gate = grad * up * silu'(gate) and
// d_up = grad * silu(gate), recomputing silu from the saved input.
cudaError_t launch_swiglu_backward(const void* grad, const void* gate_up, void* d_gate_up,
                                   int64_t rows, int64_t width, Dtype dtype, cudaStream_t stream);

}  // namespace dstrain::kernels
