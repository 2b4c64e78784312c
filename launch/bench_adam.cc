// `dstrain bench adam`: parameters per second of the CPU AdamW of offload.optimizer = cpu
// (offload/cpu_adam.h) over one flat buffer, with and without the bf16 copy for the upload,
// against the memory bandwidth the same threads reach in this process. AdamW reads param, grad,
// exp_avg and exp_avg_sq and writes three of them back: 28 bytes per parameter (30 with the bf16
// copy), so on large buffers it is bound by memory, and the fraction of that bound it reaches is
// the figure of merit. tests/bench/adam_vs_torch.sh compares with torch.optim.AdamW.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <system_error>
#include <thread>
#include <vector>

#include "launch/commands.h"
#include "offload/cpu_adam.h"
#include "offload/host_buffer.h"

namespace dstrain::launch {
namespace {

using Clock = std::chrono::steady_clock;

// Runs fn(begin, end) over `threads` contiguous parts of [0, n) on as many threads (this one
// included): the bandwidth kernels split work statically, as STREAM's OpenMP loops do.
base::Status parallel_parts(int threads, int64_t n,
                            const std::function<void(int64_t, int64_t)>& fn) {
  std::vector<std::thread> workers;
  const int64_t part = (n + threads - 1) / threads;
  base::Status status;
  for (int t = 1; t < threads; ++t) {
    const int64_t begin = std::min(n, t * part), end = std::min(n, begin + part);
    try {
      workers.emplace_back(fn, begin, end);
    } catch (const std::system_error& e) {
      status =
          base::Status::Internal(std::string("bench adam: cannot start a thread: ") + e.what());
      break;
    }
  }
  fn(0, std::min(n, part));
  for (std::thread& w : workers) w.join();
  return status;
}

// The bandwidth kernels, compiled once per CPU kind (the build has no -march flags) and written
// over GCC's generic 64-byte vectors: -O2 would not vectorise the plain loops, and scalar code
// would measure instruction throughput rather than memory.
#define DSTRAIN_BANDWIDTH_KERNEL __attribute__((target_clones("avx512f", "avx2", "default")))
typedef float Floats16 __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;

// STREAM copy: reads a, writes b.
DSTRAIN_BANDWIDTH_KERNEL void copy_kernel(const float* a, float* b, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Floats16 x;
    std::memcpy(&x, a + i, sizeof(x));
    std::memcpy(b + i, &x, sizeof(x));
  }
  for (; i < n; ++i) b[i] = a[i];
}

// STREAM triad: reads b and c, writes a.
DSTRAIN_BANDWIDTH_KERNEL void triad_kernel(float* a, const float* b, const float* c, float s,
                                           int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Floats16 x, y;
    std::memcpy(&x, b + i, sizeof(x));
    std::memcpy(&y, c + i, sizeof(y));
    x += s * y;
    std::memcpy(a + i, &x, sizeof(x));
  }
  for (; i < n; ++i) a[i] = b[i] + s * c[i];
}

// AdamW's own access pattern without its arithmetic: reads four streams, writes three of them in
// place (no write-allocate traffic beyond what is read anyway), 28 bytes per element.
DSTRAIN_BANDWIDTH_KERNEL void adam_pattern_kernel(float* p, const float* g, float* m, float* v,
                                                  float s, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Floats16 gs, x;
    std::memcpy(&gs, g + i, sizeof(gs));
    gs *= s;
    for (float* stream : {p, m, v}) {
      std::memcpy(&x, stream + i, sizeof(x));
      x += gs;
      std::memcpy(stream + i, &x, sizeof(x));
    }
  }
  for (; i < n; ++i) {
    p[i] += s * g[i];
    m[i] += s * g[i];
    v[i] += s * g[i];
  }
}

#undef DSTRAIN_BANDWIDTH_KERNEL

struct Timing {
  double best_s = 1e300;
  double mean_s = 0;
};

struct Measured {
  const char* name;
  bool bandwidth;  // a bandwidth kernel (one candidate for the bound), not an optimizer step
  double bytes_per_elem;
  std::function<base::Status()> run;
  Timing timing;
};

// Times every operation `iters` times, in turns, after one warm-up run each (caches, page
// tables): on a shared machine a burst of load then affects all of them alike.
base::Status time_in_turns(int iters, std::vector<Measured>& ops) {
  for (Measured& op : ops) RETURN_IF_ERROR(op.run());
  for (int i = 0; i < iters; ++i) {
    for (Measured& op : ops) {
      const auto t0 = Clock::now();
      RETURN_IF_ERROR(op.run());
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      op.timing.best_s = std::min(op.timing.best_s, s);
      op.timing.mean_s += s / iters;
    }
  }
  return base::Status::Ok();
}

struct Buffers {
  offload::HostBuffer param, grad, exp_avg, exp_avg_sq, out;
  float* p() const { return static_cast<float*>(param.data()); }
  float* g() const { return static_cast<float*>(grad.data()); }
  float* m() const { return static_cast<float*>(exp_avg.data()); }
  float* v() const { return static_cast<float*>(exp_avg_sq.data()); }
};

base::StatusOr<Buffers> allocate(offload::HostAllocator& allocator, int64_t n) {
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  Buffers b;
  ASSIGN_OR_RETURN(b.param, allocator.allocate(bytes));
  ASSIGN_OR_RETURN(b.grad, allocator.allocate(bytes));
  ASSIGN_OR_RETURN(b.exp_avg, allocator.allocate(bytes));
  ASSIGN_OR_RETURN(b.exp_avg_sq, allocator.allocate(bytes));
  ASSIGN_OR_RETURN(b.out, allocator.allocate(static_cast<size_t>(n) * sizeof(uint16_t)));
  return b;
}

// Parameters and gradients of a plausible size, zero moments; written by the threads that will
// use them, so on a NUMA host the pages lie near them.
base::Status fill(const Buffers& b, int threads, int64_t n) {
  return parallel_parts(threads, n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float x = static_cast<float>((i * 2654435761u) % 2001) / 1000.0f - 1.0f;  // [-1, 1]
      b.p()[i] = 0.02f * x;
      b.g()[i] = 1e-3f * x;
      b.m()[i] = 0;
      b.v()[i] = 0;
    }
  });
}

}  // namespace

base::Status run_bench_adam(const Command& cmd) {
  const int64_t n = cmd.bench_params;
  offload::CpuAdamW adam(cmd.bench_threads);
  const int threads = adam.threads();
  auto allocator = offload::make_aligned_host_allocator();
  ASSIGN_OR_RETURN(Buffers b, allocate(*allocator, n));
  RETURN_IF_ERROR(fill(b, threads, n));

  offload::AdamWHyper h;
  h.lr = 1e-4;
  h.weight_decay = 0.01;
  h.step = 0;
  auto adam_op = [&](void* out, offload::LowPrecision type) {
    return [&, out, type]() {
      ++h.step;
      return adam.step(h, b.p(), b.g(), b.m(), b.v(), n, out, type);
    };
  };
  auto parts = [&](std::function<void(int64_t, int64_t)> fn) {
    return [&, fn]() { return parallel_parts(threads, n, fn); };
  };
  // The bandwidth kernels write only what AdamW tolerates between its runs: any exp_avg, and
  // exp_avg_sq unchanged (s = 0 keeps it non-negative).
  std::vector<Measured> ops = {
      // AdamW without, then with the bf16 copy first
      {"adamw", false, 28, adam_op(nullptr, offload::LowPrecision::kNone), {}},
      {"adamw_bf16", false, 30, adam_op(b.out.data(), offload::LowPrecision::kBFloat16), {}},
      {"copy",
       true,
       8,
       parts([&](int64_t lo, int64_t hi) { copy_kernel(b.g() + lo, b.m() + lo, hi - lo); }),
       {}},
      {"triad",
       true,
       12,
       parts([&](int64_t lo, int64_t hi) {
         triad_kernel(b.m() + lo, b.p() + lo, b.g() + lo, 0.5f, hi - lo);
       }),
       {}},
      {"adam_pattern",
       true,
       28,
       parts([&](int64_t lo, int64_t hi) {
         adam_pattern_kernel(b.p() + lo, b.g() + lo, b.m() + lo, b.v() + lo, 0.0f, hi - lo);
       }),
       {}},
  };
  RETURN_IF_ERROR(time_in_turns(cmd.bench_iters, ops));
  auto gbps = [&](const Measured& op) { return op.bytes_per_elem * n / op.timing.best_s / 1e9; };
  const Measured& plain = ops[0];
  const Measured& bf16 = ops[1];
  // The bound is the best rate any bandwidth kernel reaches (STREAM's byte counts leave out
  // write-allocate reads, so copy and triad understate what memory delivers; the AdamW pattern
  // has none).
  double bound_gbps = 0;
  for (const Measured& op : ops) {
    if (op.bandwidth) bound_gbps = std::max(bound_gbps, gbps(op));
  }

  std::printf("cpu adamw: %lld parameters, %d threads, %s kernel, best of %d\n",
              static_cast<long long>(n), threads, adam.isa(), cmd.bench_iters);
  std::printf("%-14s %6s %10s %12s %10s\n", "kernel", "B/elem", "time_ms", "Melem/s", "GB/s");
  nlohmann::json results = nlohmann::json::array();
  for (const Measured& op : ops) {
    std::printf("%-14s %6.0f %10.3f %12.1f %10.2f\n", op.name, op.bytes_per_elem,
                op.timing.best_s * 1e3, n / op.timing.best_s / 1e6, gbps(op));
    results.push_back({{"kernel", op.name},
                       {"bytes_per_elem", op.bytes_per_elem},
                       {"time_s", op.timing.best_s},
                       {"mean_time_s", op.timing.mean_s},
                       {"elems_per_s", n / op.timing.best_s},
                       {"gbps", gbps(op)}});
  }
  std::printf("memory bound %.2f GB/s: adamw reaches %.0f%%, with the bf16 copy %.0f%%\n",
              bound_gbps, 100 * gbps(plain) / bound_gbps, 100 * gbps(bf16) / bound_gbps);

  nlohmann::json out = {{"bench", "adam"},
                        {"params", n},
                        {"threads", threads},
                        {"isa", adam.isa()},
                        {"iters", cmd.bench_iters},
                        {"params_per_s", n / plain.timing.best_s},
                        {"params_per_s_bf16", n / bf16.timing.best_s},
                        {"gbps", gbps(plain)},
                        {"gbps_bf16", gbps(bf16)},
                        {"bound_gbps", bound_gbps},
                        {"fraction_of_bound", gbps(plain) / bound_gbps},
                        {"fraction_of_bound_bf16", gbps(bf16) / bound_gbps},
                        {"results", results}};
  std::printf("%s\n", out.dump().c_str());
  std::fflush(stdout);
  return base::Status::Ok();
}

}  // namespace dstrain::launch
