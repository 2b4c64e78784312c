// `dstrain bench kernels`: dstrain's CUDA kernels against the ATen paths they replace, timed with
// CUDA events on the current GPU, as one JSON line per kernel and a summary line:
//   adamw          the device AdamW writing the compute-dtype copy in the same pass, against
//                  torch's fused AdamW followed by the cast (stages 0 and 3 need both), over one
//                  flat buffer; bytes moved and the fraction of a device copy's bandwidth
//   cross_entropy  the loss kernel (loss and bf16 logit gradient from fp32 logits) against the
//                  ATen chain it replaces, over one chunk of the 128,256-token vocabulary
//   rope           rotary embedding of q and k read from the fused q/k/v projection, forward and
//                  backward, against the rotate-half ATen path (Llama-3-8B's heads, seq 4096)
//   swiglu         silu(gate) * up over the fused gate/up projection, forward and backward,
//                  against the ATen ops (Llama-3-8B's ffn width, 4096 rows)
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>

#include <torch/csrc/autograd/autograd.h>
#include <algorithm>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "launch/commands.h"
#include "runtime/kernels/fused_ops.h"
#include "runtime/model/fused_cross_entropy.h"
#include "runtime/model/layers.h"

namespace dstrain::launch {
namespace {

// The best of `iters` timings of fn (after one warm-up), in seconds.
double best_seconds(int iters, const std::function<void()>& fn) {
  fn();
  double best = 1e300;
  for (int i = 0; i < iters; ++i) {
    at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
    start.record();
    fn();
    stop.record();
    stop.synchronize();
    best = std::min(best, static_cast<double>(start.elapsed_time(stop)) / 1e3);
  }
  return best;
}

nlohmann::json compare(const char* kernel, double ours_s, double aten_s, double bytes) {
  return {{"kernel", kernel},
          {"dstrain_ms", ours_s * 1e3},
          {"aten_ms", aten_s * 1e3},
          {"speedup", aten_s / ours_s},
          {"dstrain_gb_per_s", bytes / ours_s / 1e9}};
}

nlohmann::json bench_adamw(int iters, int64_t n) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  at::Tensor p = at::randn({n}, f32) * 0.02, g = at::randn({n}, f32) * 1e-3;
  at::Tensor m = at::zeros({n}, f32), v = at::zeros({n}, f32);
  at::Tensor copy = at::empty({n}, f32.dtype(at::kBFloat16));
  offload::AdamWHyper h;
  h.lr = 1e-4;
  h.weight_decay = 0.01;
  const double ours = best_seconds(iters, [&] {
    ++h.step;
    kernels::adamw_step(p, g, m, v, copy, h);
  });
  at::Tensor steps = at::zeros({}, f32);
  const at::Tensor scale = at::ones({}, f32);
  const double aten = best_seconds(iters, [&] {
    steps += 1;
    at::_fused_adamw_({p}, {g}, {m}, {v}, {}, {steps}, h.lr, h.beta1, h.beta2, h.weight_decay,
                      h.eps, false, false, scale, {});
    copy.copy_(p);
  });
  // A device copy of the same size: the bandwidth a streaming kernel can reach here.
  const double copy_s = best_seconds(iters, [&] { m.copy_(g); });
  const double bytes = 30.0 * static_cast<double>(n);  // 4 read, 3 written, + the bf16 copy
  nlohmann::json out = compare("adamw", ours, aten, bytes);
  out["params"] = n;
  out["copy_gb_per_s"] = 8.0 * static_cast<double>(n) / copy_s / 1e9;
  out["fraction_of_copy_bandwidth"] = (bytes / ours) / (8.0 * static_cast<double>(n) / copy_s);
  return out;
}

nlohmann::json bench_cross_entropy(int iters, int64_t rows, int64_t vocab) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  const at::Tensor logits = at::randn({rows, vocab}, f32) * 3;
  at::Tensor targets = at::randint(0, vocab, {rows}, f32.dtype(at::kLong));
  const double ours = best_seconds(
      iters, [&] { (void)kernels::cross_entropy_rows(logits, targets, -100, at::kBFloat16); });
  // The ATen path overwrites its logits: each run gets a fresh copy, timed apart and subtracted.
  at::Tensor scratch = logits.clone();
  const double refill = best_seconds(iters, [&] { scratch.copy_(logits); });
  const double aten =
      best_seconds(iters,
                   [&] {
                     scratch.copy_(logits);
                     (void)runtime::cross_entropy_rows_aten(scratch, targets, at::kBFloat16);
                   }) -
      refill;
  const double bytes = static_cast<double>(rows * vocab) * (4 + 4 + 2);  // read twice, write bf16
  nlohmann::json out = compare("cross_entropy", ours, aten, bytes);
  out["rows"] = rows;
  out["vocab"] = vocab;
  return out;
}

// The backward of outputs `outs` made from `x` (which requires grad), given their gradients.
at::Tensor backward(const at::Tensor& x, const std::vector<at::Tensor>& outs,
                    const std::vector<at::Tensor>& grads) {
  return torch::autograd::grad(outs, {x}, grads)[0];
}

nlohmann::json bench_rope(int iters) {
  const int64_t t = 4096, heads = 32, kv_heads = 8, d = 128;
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const at::Tensor qkv = at::randn({1, t, (heads + 2 * kv_heads) * d}, bf16).requires_grad_();
  const at::Tensor angle =
      at::arange(t, bf16.dtype(at::kFloat)).unsqueeze(1) * at::rand({1, d}, bf16.dtype(at::kFloat));
  const at::Tensor cos = angle.cos().to(at::kBFloat16).unsqueeze(0);
  const at::Tensor sin = angle.sin().to(at::kBFloat16).unsqueeze(0);
  const std::vector<at::Tensor> probes = {at::randn({1, t, heads, d}, bf16),
                                          at::randn({1, t, kv_heads, d}, bf16),
                                          at::randn({1, t, kv_heads, d}, bf16)};
  const double ours = best_seconds(iters, [&] {
    const auto [q, k, v] = kernels::rope_qkv(qkv, heads, kv_heads, cos, sin);
    (void)backward(qkv, {q, k, v}, probes);
  });
  const auto slice = [&](int64_t begin, int64_t n) {
    return qkv.narrow(-1, begin * d, n * d).unflatten(-1, {n, d});
  };
  const auto rotated = [&](const at::Tensor& x) {
    return runtime::apply_rope(x.transpose(1, 2), cos, sin).transpose(1, 2).contiguous();
  };
  const double aten = best_seconds(iters, [&] {
    const at::Tensor q = rotated(slice(0, heads)), k = rotated(slice(heads, kv_heads));
    const at::Tensor v = slice(heads + kv_heads, kv_heads).contiguous();
    (void)backward(qkv, {q, k, v}, probes);
  });
  // Forward reads q/k/v once and writes them; backward reads their gradients and writes qkv's.
  const double bytes = 4.0 * static_cast<double>(qkv.numel()) * 2;
  nlohmann::json out = compare("rope", ours, aten, bytes);
  out["shape"] = {1, t, heads, kv_heads, d};
  return out;
}

nlohmann::json bench_swiglu(int iters) {
  const int64_t rows = 4096, width = 14336;
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const at::Tensor gate_up = at::randn({rows, 2 * width}, bf16).requires_grad_();
  const std::vector<at::Tensor> probe = {at::randn({rows, width}, bf16)};
  const double ours =
      best_seconds(iters, [&] { (void)backward(gate_up, {kernels::swiglu(gate_up)}, probe); });
  const double aten = best_seconds(iters, [&] {
    const at::Tensor out =
        at::silu(gate_up.narrow(-1, 0, width)) * gate_up.narrow(-1, width, width);
    (void)backward(gate_up, {out}, probe);
  });
  // Forward reads gate/up and writes the product; backward reads gate/up and the gradient, and
  // writes gate/up's gradient.
  const double bytes = 2.0 * static_cast<double>(rows * width) * (2 + 1 + 2 + 1 + 2);
  nlohmann::json out = compare("swiglu", ours, aten, bytes);
  out["shape"] = {rows, width};
  return out;
}

}  // namespace

base::Status run_bench_kernels(const Command& cmd) {
  if (!at::hasCUDA() || !kernels::cuda_kernels_built()) {
    return base::Status::InvalidArgument(
        "bench kernels: needs a CUDA device and a build with the CUDA kernels");
  }
  const int iters = cmd.bench_iters;
  const nlohmann::json adamw = bench_adamw(iters, cmd.bench_params);
  // One chunk of the fused loss at the Llama-3 vocabulary (about 256 MiB of fp32 logits).
  const nlohmann::json ce = bench_cross_entropy(iters, 523, 128256);
  const nlohmann::json rope = bench_rope(iters);
  const nlohmann::json swiglu = bench_swiglu(iters);
  for (const auto* line : {&adamw, &ce, &rope, &swiglu}) std::printf("%s\n", line->dump().c_str());
  const nlohmann::json summary = {{"bench", "kernels"},
                                  {"device", at::cuda::getCurrentDeviceProperties()->name},
                                  {"iters", iters},
                                  {"adamw_speedup", adamw["speedup"]},
                                  {"cross_entropy_speedup", ce["speedup"]},
                                  {"rope_speedup", rope["speedup"]},
                                  {"swiglu_speedup", swiglu["speedup"]}};
  std::printf("%s\n", summary.dump().c_str());
  return base::Status::Ok();
}

}  // namespace dstrain::launch
