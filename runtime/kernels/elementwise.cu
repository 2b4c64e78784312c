#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "runtime/kernels/elementwise_cuda.h"

namespace dstrain::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ float load(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}
template <>
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
template <>
__device__ __forceinline__ float load(const __half* p, int64_t i) {
  return __half2float(p[i]);
}

template <typename T>
__device__ __forceinline__ void store(T* p, int64_t i, float v) {
  p[i] = static_cast<T>(v);
}
template <>
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) {
  p[i] = __float2bfloat16(v);
}
template <>
__device__ __forceinline__ void store(__half* p, int64_t i, float v) {
  p[i] = __float2half(v);
}

// One thread per (row, head, i < head_dim / 2) pair: both halves of the pair in fp32, rounded
// once. Forward: out_lo = x_lo c_lo - x_hi s_lo, out_hi = x_hi c_hi + x_lo s_hi.
// Inverse (backward): out_lo = x_lo c_lo + x_hi s_hi, out_hi = x_hi c_hi - x_lo s_lo.
template <typename T>
__global__ void rope_kernel(const T* x, RopeStrides stride, const T* cos, const T* sin, T* out,
                            int64_t seq, int64_t rows, int64_t heads, int64_t head_dim,
                            bool inverse) {
  const int64_t half = head_dim / 2;
  const int64_t total = rows * heads * half;
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < total;
       p += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = p % half;
    const int64_t h = (p / half) % heads;
    const int64_t r = p / (half * heads);
    const T* xr = x + (r / seq) * stride.batch + (r % seq) * stride.seq + h * stride.head;
    const T* cr = cos + r * head_dim;
    const T* sr = sin + r * head_dim;
    const float lo = load(xr, i);
    const float hi = load(xr, i + half);
    float out_lo, out_hi;
    if (!inverse) {
      out_lo = lo * load(cr, i) - hi * load(sr, i);
      out_hi = hi * load(cr, i + half) + lo * load(sr, i + half);
    } else {
      out_lo = lo * load(cr, i) + hi * load(sr, i + half);
      out_hi = hi * load(cr, i + half) - lo * load(sr, i);
    }
    T* o = out + (r * heads + h) * head_dim;
    store(o, i, out_lo);
    store(o, i + half, out_hi);
  }
}

__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + __expf(-v)); }

// Element (r, j) of the output: gate at r * 2w + j, up at r * 2w + w + j.
template <typename T>
__global__ void swiglu_forward_kernel(const T* gate_up, T* out, int64_t rows, int64_t width) {
  const int64_t n = rows * width;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t g_at = (i / width) * 2 * width + i % width;
    const float g = load(gate_up, g_at);
    store(out, i, g * sigmoid(g) * load(gate_up, g_at + width));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(const T* grad, const T* gate_up, T* d_gate_up, int64_t rows,
                                       int64_t width) {
  const int64_t n = rows * width;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t g_at = (i / width) * 2 * width + i % width;
    const float g = load(gate_up, g_at);
    const float up = load(gate_up, g_at + width);
    const float go = load(grad, i);
    const float s = sigmoid(g);
    store(d_gate_up, g_at, go * up * s * (1.0f + g * (1.0f - s)));
    store(d_gate_up, g_at + width, go * g * s);
  }
}

unsigned blocks_for(int64_t work) {
  const int64_t b = (work + kThreads - 1) / kThreads;
  // Grid-stride loops cover the rest; this many blocks fill any current GPU.
  return static_cast<unsigned>(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

// Calls `launch` with the element type that `dtype` names.
template <typename Launch>
cudaError_t with_type(Dtype dtype, Launch&& launch) {
  switch (dtype) {
    case Dtype::kF32:
      launch(float{});
      break;
    case Dtype::kBF16:
      launch(__nv_bfloat16{});
      break;
    case Dtype::kF16:
      launch(__half{});
      break;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_rope(const void* x, RopeStrides stride, const void* cos, const void* sin,
                        void* out, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                        bool inverse, Dtype dtype, cudaStream_t stream) {
  const int64_t rows = batch * seq;
  const unsigned blocks = blocks_for(rows * heads * (head_dim / 2));
  return with_type(dtype, [&](auto zero) {
    using T = decltype(zero);
    rope_kernel<T><<<blocks, kThreads, 0, stream>>>(
        static_cast<const T*>(x), stride, static_cast<const T*>(cos),
        static_cast<const T*>(sin), static_cast<T*>(out), seq, rows, heads, head_dim, inverse);
  });
}

cudaError_t launch_swiglu_forward(const void* gate_up, void* out, int64_t rows, int64_t width,
                                  Dtype dtype, cudaStream_t stream) {
  return with_type(dtype, [&](auto zero) {
    using T = decltype(zero);
    swiglu_forward_kernel<T><<<blocks_for(rows * width), kThreads, 0, stream>>>(
        static_cast<const T*>(gate_up), static_cast<T*>(out), rows, width);
  });
}

cudaError_t launch_swiglu_backward(const void* grad, const void* gate_up, void* d_gate_up,
                                   int64_t rows, int64_t width, Dtype dtype, cudaStream_t stream) {
  return with_type(dtype, [&](auto zero) {
    using T = decltype(zero);
    swiglu_backward_kernel<T><<<blocks_for(rows * width), kThreads, 0, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(gate_up), static_cast<T*>(d_gate_up),
        rows, width);
  });
}

}  // namespace dstrain::kernels
