#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "runtime/kernels/elementwise_cuda.h"
#include "runtime/kernels/float_convert.cuh"

namespace dstrain::kernels {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxGridY = 65535;

// V consecutive elements moved as one access: 16 bytes when V = 16 / sizeof(T), which the
// launchers pick only when every address involved is 16-byte aligned; V = 1 otherwise.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};
template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}
template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& v) {
  *reinterpret_cast<Pack<T, V>*>(p) = v;
}

template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Rows go along the grid's y dimension (striding past 65535), the work inside a row along x, so
// the per-element index arithmetic is 32-bit and division-free across rows.
dim3 row_grid(int64_t rows, int64_t per_row, int threads) {
  const int64_t x = (per_row + threads - 1) / threads;
  return dim3(static_cast<unsigned>(x < 65535 ? (x > 0 ? x : 1) : 65535),
              static_cast<unsigned>(rows < kMaxGridY ? (rows > 0 ? rows : 1) : kMaxGridY));
}

// Threads per block for `per_row` items in a row: a whole number of warps, at most kThreads.
int row_threads(int64_t per_row) {
  const int64_t warps = (per_row + 31) / 32;
  return static_cast<int>(warps < kThreads / 32 ? (warps > 0 ? warps : 1) * 32 : kThreads);
}

// One thread per (row, head, V-element chunk of the first half of head_dim): both halves of each
// pair in fp32, rounded once. Forward: out_lo = x_lo c_lo - x_hi s_lo,
// out_hi = x_hi c_hi + x_lo s_hi. Inverse (backward): out_lo = x_lo c_lo + x_hi s_hi,
// out_hi = x_hi c_hi - x_lo s_lo.
template <typename T, int V>
__global__ void rope_kernel(const T* x, RopeStrides stride, const T* cos, const T* sin, T* out,
                            RopeStrides out_stride, int64_t seq, int64_t rows, int heads,
                            int head_dim, bool inverse) {
  const int half = head_dim / 2;
  const int chunks = half / V;
  const int per_row = heads * chunks;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* xr = x + (r / seq) * stride.batch + (r % seq) * stride.seq;
    const T* cr = cos + r * head_dim;
    const T* sr = sin + r * head_dim;
    T* orow = out + (r / seq) * out_stride.batch + (r % seq) * out_stride.seq;
    for (int q = blockIdx.x * blockDim.x + threadIdx.x; q < per_row; q += gridDim.x * blockDim.x) {
      const int h = q / chunks;
      const int i = (q - h * chunks) * V;
      const T* xh = xr + h * stride.head;
      const Pack<T, V> lo = load_pack<T, V>(xh + i), hi = load_pack<T, V>(xh + i + half);
      const Pack<T, V> c_lo = load_pack<T, V>(cr + i), c_hi = load_pack<T, V>(cr + i + half);
      const Pack<T, V> s_lo = load_pack<T, V>(sr + i), s_hi = load_pack<T, V>(sr + i + half);
      Pack<T, V> o_lo, o_hi;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float l = to_float(lo.v[k]), u = to_float(hi.v[k]);
        const float cl = to_float(c_lo.v[k]), ch = to_float(c_hi.v[k]);
        const float sl = to_float(s_lo.v[k]), sh = to_float(s_hi.v[k]);
        o_lo.v[k] = from_float<T>(inverse ? l * cl + u * sh : l * cl - u * sl);
        o_hi.v[k] = from_float<T>(inverse ? u * ch - l * sl : u * ch + l * sh);
      }
      T* o = orow + h * out_stride.head + i;
      store_pack<T, V>(o, o_lo);
      store_pack<T, V>(o + half, o_hi);
    }
  }
}

__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + __expf(-v)); }

// Calls f(r, c) for every V-element chunk c (an element offset) of every row r of `width`
// elements: one thread per chunk over all rows' chunks in one flat index, striding past the grid.
// (A grid of rows along y with a few blocks per row ran the SwiGLU backward at half the device's
// copy bandwidth; flat, both SwiGLU kernels run near it: docs/performance.md.)
template <int V, typename F>
__device__ __forceinline__ void for_each_chunk(int64_t rows, int width, F&& f) {
  const int chunks = width / V;
  const int64_t total = rows * chunks;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += step) {
    const int64_t r = i / chunks;
    f(r, static_cast<int>(i - r * chunks) * V);
  }
}

// Row r of gate_up: the gate at r * 2w, up at r * 2w + w.
template <typename T, int V>
__global__ void swiglu_forward_kernel(const T* gate_up, T* out, int64_t rows, int width) {
  for_each_chunk<V>(rows, width, [&](int64_t r, int c) {
    const T* gate = gate_up + r * 2 * width;
    const Pack<T, V> g = load_pack<T, V>(gate + c);
    const Pack<T, V> u = load_pack<T, V>(gate + width + c);
    Pack<T, V> y;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float gv = to_float(g.v[k]);
      y.v[k] = from_float<T>(gv * sigmoid(gv) * to_float(u.v[k]));
    }
    store_pack<T, V>(out + r * width + c, y);
  });
}

template <typename T, int V>
__global__ void swiglu_backward_kernel(const T* grad, const T* gate_up, T* d_gate_up, int64_t rows,
                                       int width) {
  for_each_chunk<V>(rows, width, [&](int64_t r, int c) {
    const T* gate = gate_up + r * 2 * width;
    T* d_gate = d_gate_up + r * 2 * width;
    const Pack<T, V> g = load_pack<T, V>(gate + c);
    const Pack<T, V> u = load_pack<T, V>(gate + width + c);
    const Pack<T, V> go = load_pack<T, V>(grad + r * width + c);
    Pack<T, V> dg, du;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float gv = to_float(g.v[k]), uv = to_float(u.v[k]), gov = to_float(go.v[k]);
      const float s = sigmoid(gv);
      dg.v[k] = from_float<T>(gov * uv * s * (1.0f + gv * (1.0f - s)));
      du.v[k] = from_float<T>(gov * gv * s);
    }
    store_pack<T, V>(d_gate + c, dg);
    store_pack<T, V>(d_gate + width + c, du);
  });
}

// One thread per item, as many blocks as that takes (within the grid's x limit; the kernels
// stride past it).
dim3 flat_grid(int64_t items) {
  const int64_t blocks = (items + kThreads - 1) / kThreads;
  return dim3(static_cast<unsigned>(blocks < INT32_MAX ? (blocks > 0 ? blocks : 1) : INT32_MAX));
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

// The index arithmetic inside a row is 32-bit.
bool fits_int(int64_t v) { return v >= 0 && v <= INT32_MAX / 2; }

}  // namespace

cudaError_t launch_rope(const void* x, RopeStrides stride, const void* cos, const void* sin,
                        void* out, RopeStrides out_stride, int64_t batch, int64_t seq,
                        int64_t heads, int64_t head_dim, bool inverse, Dtype dtype,
                        cudaStream_t stream) {
  if (!fits_int(heads * head_dim)) return cudaErrorInvalidValue;
  const int64_t rows = batch * seq;
  return with_type(dtype, [&](auto zero) {
    using T = decltype(zero);
    constexpr int V = kVec<T>;
    const auto whole = [](RopeStrides st) {
      return st.batch % V == 0 && st.seq % V == 0 && st.head % V == 0;
    };
    const bool vec = (head_dim / 2) % V == 0 && whole(stride) && whole(out_stride) &&
                     aligned16(x) && aligned16(cos) && aligned16(sin) && aligned16(out);
    const int64_t per_row = heads * (head_dim / 2) / (vec ? V : 1);
    const int threads = row_threads(per_row);
    const dim3 grid = row_grid(rows, per_row, threads);
    auto* kernel = vec ? rope_kernel<T, V> : rope_kernel<T, 1>;
    kernel<<<grid, threads, 0, stream>>>(
        static_cast<const T*>(x), stride, static_cast<const T*>(cos), static_cast<const T*>(sin),
        static_cast<T*>(out), out_stride, seq, rows, static_cast<int>(heads),
        static_cast<int>(head_dim), inverse);
  });
}

cudaError_t launch_swiglu_forward(const void* gate_up, void* out, int64_t rows, int64_t width,
                                  Dtype dtype, cudaStream_t stream) {
  if (!fits_int(2 * width)) return cudaErrorInvalidValue;
  return with_type(dtype, [&](auto zero) {
    using T = decltype(zero);
    constexpr int V = kVec<T>;
    const bool vec = width % V == 0 && aligned16(gate_up) && aligned16(out);
    auto* kernel = vec ? swiglu_forward_kernel<T, V> : swiglu_forward_kernel<T, 1>;
    kernel<<<flat_grid(rows * (width / (vec ? V : 1))), kThreads, 0, stream>>>(
        static_cast<const T*>(gate_up), static_cast<T*>(out), rows, static_cast<int>(width));
  });
}

cudaError_t launch_swiglu_backward(const void* grad, const void* gate_up, void* d_gate_up,
                                   int64_t rows, int64_t width, Dtype dtype, cudaStream_t stream) {
  if (!fits_int(2 * width)) return cudaErrorInvalidValue;
  return with_type(dtype, [&](auto zero) {
    using T = decltype(zero);
    constexpr int V = kVec<T>;
    const bool vec =
        width % V == 0 && aligned16(grad) && aligned16(gate_up) && aligned16(d_gate_up);
    auto* kernel = vec ? swiglu_backward_kernel<T, V> : swiglu_backward_kernel<T, 1>;
    kernel<<<flat_grid(rows * (width / (vec ? V : 1))), kThreads, 0, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(gate_up), static_cast<T*>(d_gate_up),
        rows, static_cast<int>(width));
  });
}

}  // namespace dstrain::kernels
