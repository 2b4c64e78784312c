#include <cmath>
#include <type_traits>

#include "runtime/kernels/cross_entropy_cuda.h"
#include "runtime/kernels/float_convert.cuh"

namespace dstrain::kernels {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

// A running maximum and the sum of exp(x - max) over the values seen.
struct MaxSum {
  float max;
  float sum;
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  if (a.sum == 0.0f) return b;
  if (b.sum == 0.0f) return a;
  const float m = fmaxf(a.max, b.max);
  return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

__device__ __forceinline__ void add(MaxSum& acc, float x) {
  if (acc.sum == 0.0f) {
    acc = {x, 1.0f};
  } else if (x > acc.max) {
    acc.sum = acc.sum * expf(acc.max - x) + 1.0f;
    acc.max = x;
  } else {
    acc.sum += expf(x - acc.max);
  }
}

// The warp's combined MaxSum, in lane 0.
__device__ __forceinline__ MaxSum warp_reduce(MaxSum v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const MaxSum other{__shfl_down_sync(0xffffffffu, v.max, offset),
                       __shfl_down_sync(0xffffffffu, v.sum, offset)};
    v = combine(v, other);
  }
  return v;
}

// The block's combined MaxSum, in every thread.
__device__ MaxSum block_reduce(MaxSum v) {
  __shared__ MaxSum warp_part[kWarps];
  __shared__ MaxSum total;
  v = warp_reduce(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_reduce(lane < kWarps ? warp_part[lane] : MaxSum{0.0f, 0.0f});
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

struct alignas(16) F4 {
  float v[4];
};
template <typename G>
struct alignas(sizeof(G) * 4) G4 {
  G v[4];
};

// `G` void: loss only. `vec`: the rows are 16-byte aligned with vocab a multiple of 4.
template <typename G>
__global__ void cross_entropy_rows_kernel(const float* __restrict__ logits,
                                          const int64_t* __restrict__ targets, int64_t vocab,
                                          int64_t ignore_index, float* __restrict__ row_loss,
                                          G* __restrict__ grad, bool vec) {
  const int64_t r = blockIdx.x;
  const float* row = logits + r * vocab;
  const int64_t target = targets[r];
  const bool ignored = target == ignore_index;
  // A target outside the vocabulary gives a NaN loss (the step is then skipped), never a read
  // past the row.
  const bool invalid = !ignored && (target < 0 || target >= vocab);
  const int64_t packs = vec ? vocab / 4 : 0;
  MaxSum acc{0.0f, 0.0f};
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    const F4 x = reinterpret_cast<const F4*>(row)[p];
#pragma unroll
    for (int k = 0; k < 4; ++k) add(acc, x.v[k]);
  }
  for (int64_t j = packs * 4 + threadIdx.x; j < vocab; j += blockDim.x) add(acc, row[j]);
  const MaxSum all = block_reduce(acc);
  const float lse = all.max + logf(all.sum);
  if (threadIdx.x == 0) row_loss[r] = ignored ? 0.0f : invalid ? NAN : lse - row[target];
  if constexpr (!std::is_void_v<G>) {
    G* grow = grad + r * vocab;
    auto value = [&](int64_t j, float x) {
      if (ignored) return 0.0f;
      return expf(x - lse) - (j == target ? 1.0f : 0.0f);
    };
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      const F4 x = reinterpret_cast<const F4*>(row)[p];
      G4<G> g;
#pragma unroll
      for (int k = 0; k < 4; ++k) g.v[k] = from_float<G>(value(p * 4 + k, x.v[k]));
      reinterpret_cast<G4<G>*>(grow)[p] = g;
    }
    for (int64_t j = packs * 4 + threadIdx.x; j < vocab; j += blockDim.x) {
      grow[j] = from_float<G>(value(j, row[j]));
    }
  }
}

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename G>
cudaError_t launch(const float* logits, const int64_t* targets, int64_t rows, int64_t vocab,
                   int64_t ignore_index, float* row_loss, G* grad, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  uintptr_t grad_align = 1;
  if constexpr (!std::is_void_v<G>) grad_align = sizeof(G) * 4;
  const bool vec = vocab % 4 == 0 && aligned(logits, 16) && aligned(grad, grad_align);
  cross_entropy_rows_kernel<G><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      logits, targets, vocab, ignore_index, row_loss, grad, vec);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_cross_entropy_rows(const float* logits, const int64_t* targets, int64_t rows,
                                      int64_t vocab, int64_t ignore_index, float* row_loss,
                                      void* grad, Dtype grad_dtype, cudaStream_t stream) {
  if (rows > 2147483647) return cudaErrorInvalidValue;  // one block per row
  if (grad == nullptr) {
    return launch<void>(logits, targets, rows, vocab, ignore_index, row_loss, nullptr, stream);
  }
  switch (grad_dtype) {
    case Dtype::kBF16:
      return launch(logits, targets, rows, vocab, ignore_index, row_loss,
                    static_cast<__nv_bfloat16*>(grad), stream);
    case Dtype::kF16:
      return launch(logits, targets, rows, vocab, ignore_index, row_loss,
                    static_cast<__half*>(grad), stream);
    case Dtype::kF32:
      return launch(logits, targets, rows, vocab, ignore_index, row_loss, static_cast<float*>(grad),
                    stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace dstrain::kernels
