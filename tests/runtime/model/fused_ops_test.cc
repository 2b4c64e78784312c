// The fused CUDA kernels against the ATen path they replace. They run on the GPU machine
// (tests/gpu/gpu_checks.sh runs this binary there); without a CUDA device they are skipped.
#include "runtime/kernels/fused_ops.h"

#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <vector>

#include "base/config.h"
#include "runtime/model/init.h"
#include "runtime/model/layers.h"
#include "runtime/model/llama.h"
#include "runtime/model/rope.h"

namespace dstrain::runtime {
namespace {

bool skip_without_cuda() { return !at::hasCUDA() || !kernels::cuda_kernels_built(); }

double max_rel_diff(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kCPU, at::kDouble);
  const at::Tensor y = b.to(at::kCPU, at::kDouble);
  return ((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item<double>();
}

// Gradients of sum(out * probe) with respect to `inputs`.
std::vector<at::Tensor> grads_of(const at::Tensor& out, const std::vector<at::Tensor>& inputs,
                                 const at::Tensor& probe) {
  return torch::autograd::grad({(out.to(at::kFloat) * probe).sum()}, inputs);
}

class FusedOpsTest : public ::testing::TestWithParam<at::ScalarType> {};

// A fused q/k/v projection `offset` elements into a wider tensor: an offset of a whole 16 bytes
// takes the kernel's vectorised path, any other its scalar one. q and k against ATen's rotation
// of their slices, v against its slice, and the projection's gradient, with or without v used.
void check_rope_qkv(at::ScalarType dtype, int64_t offset, int64_t d, bool use_v = true) {
  const double tol = dtype == at::kFloat ? 1e-6 : 1e-2;
  at::manual_seed(3);
  const auto cuda = at::TensorOptions().device(at::kCUDA).dtype(dtype);
  const int64_t b = 2, t = 33, heads = 4, kv_heads = 2;
  const int64_t width = (heads + 2 * kv_heads) * d;
  const at::Tensor wide = at::randn({b, t, width + 16}, cuda);
  base::ModelConfig cfg;
  cfg.num_heads = heads;
  cfg.hidden_size = heads * d;
  const at::Tensor pos = at::arange(t, at::kLong).unsqueeze(0).expand({b, t}).contiguous();
  const base::StepContext ctx = make_step_context(cfg, pos.to(at::kCUDA), dtype);

  at::Tensor x1 = wide.narrow(-1, offset, width).detach().requires_grad_();
  at::Tensor x2 = x1.detach().clone().requires_grad_();
  const auto [q, k, v] = kernels::rope_qkv(x1, heads, kv_heads, ctx.rope_cos, ctx.rope_sin);
  const auto slice = [&](int64_t begin, int64_t n) {
    return x2.narrow(-1, begin * d, n * d).unflatten(-1, {n, d});
  };
  const auto rotated = [&](const at::Tensor& x) {
    return apply_rope(x.transpose(1, 2), ctx.rope_cos, ctx.rope_sin).transpose(1, 2);
  };
  const at::Tensor q_ref = rotated(slice(0, heads));
  const at::Tensor k_ref = rotated(slice(heads, kv_heads));
  const at::Tensor v_ref = slice(heads + kv_heads, kv_heads);
  const std::string where = "offset " + std::to_string(offset) + ", head_dim " + std::to_string(d);
  EXPECT_LT(max_rel_diff(q, q_ref), tol) << where;
  EXPECT_LT(max_rel_diff(k, k_ref), tol) << where;
  EXPECT_EQ(max_rel_diff(v, v_ref), 0.0) << where;
  const at::Tensor pq = at::randn(q.sizes(), cuda.dtype(at::kFloat));
  const at::Tensor pk = at::randn(k.sizes(), cuda.dtype(at::kFloat));
  const at::Tensor pv = at::randn(v.sizes(), cuda.dtype(at::kFloat));
  const auto loss = [&](const at::Tensor& qq, const at::Tensor& kk, const at::Tensor& vv) {
    at::Tensor l = (qq.to(at::kFloat) * pq).sum() + (kk.to(at::kFloat) * pk).sum();
    return use_v ? l + (vv.to(at::kFloat) * pv).sum() : l;
  };
  const at::Tensor g1 = torch::autograd::grad({loss(q, k, v)}, {x1})[0];
  const at::Tensor g2 = torch::autograd::grad({loss(q_ref, k_ref, v_ref)}, {x2})[0];
  EXPECT_LT(max_rel_diff(g1, g2), tol) << where;
  if (!use_v) {
    const at::Tensor v_cols = g1.narrow(-1, (heads + kv_heads) * d, kv_heads * d);
    EXPECT_EQ(v_cols.abs().max().item<double>(), 0.0) << where;
  }
}

TEST_P(FusedOpsTest, RopeQkvMatchesAtenOnAStridedProjection) {
  if (skip_without_cuda()) GTEST_SKIP() << "needs a CUDA device and the CUDA kernels";
  check_rope_qkv(GetParam(), 4, 16);                   // scalar path in bf16 (8-byte offset)
  check_rope_qkv(GetParam(), 8, 16);                   // 16-byte aligned in bf16
  check_rope_qkv(GetParam(), 0, 128);                  // the Llama head size
  check_rope_qkv(GetParam(), 0, 12);                   // half = 6: no whole vector in either dtype
  check_rope_qkv(GetParam(), 0, 16, /*use_v=*/false);  // v unused: its gradient columns are zero
}

void check_swiglu(at::ScalarType dtype, int64_t rows, int64_t width) {
  const double tol = dtype == at::kFloat ? 1e-6 : 1e-2;
  at::manual_seed(4);
  const auto cuda = at::TensorOptions().device(at::kCUDA).dtype(dtype);
  at::Tensor gu1 = (at::randn({rows, 2 * width}, cuda) * 3).requires_grad_();
  at::Tensor gu2 = gu1.detach().clone().requires_grad_();
  const at::Tensor fused = kernels::swiglu(gu1);
  const at::Tensor ref = at::silu(gu2.narrow(-1, 0, width)) * gu2.narrow(-1, width, width);
  EXPECT_LT(max_rel_diff(fused, ref), tol) << rows << " x " << width;
  const at::Tensor probe = at::randn(fused.sizes(), cuda.dtype(at::kFloat));
  EXPECT_LT(max_rel_diff(grads_of(fused, {gu1}, probe)[0], grads_of(ref, {gu2}, probe)[0]), tol)
      << rows << " x " << width;
}

TEST_P(FusedOpsTest, SwiGluMatchesAten) {
  if (skip_without_cuda()) GTEST_SKIP() << "needs a CUDA device and the CUDA kernels";
  check_swiglu(GetParam(), 34, 40);    // whole vectors in both dtypes
  check_swiglu(GetParam(), 34, 37);    // scalar path
  check_swiglu(GetParam(), 70000, 8);  // more rows than one grid dimension holds
}

INSTANTIATE_TEST_SUITE_P(Dtypes, FusedOpsTest, ::testing::Values(at::kFloat, at::kBFloat16));

// The whole model in fp32 on the GPU (fused projections, kernels, ATen's fused RMSNorm, the
// chunked loss) against the same model on the CPU (the ATen path): loss and every gradient.
TEST(FusedModelTest, CudaModelMatchesTheCpuModel) {
  if (skip_without_cuda()) GTEST_SKIP() << "needs a CUDA device and the CUDA kernels";
  base::ModelConfig cfg;
  cfg.vocab_size = 96;
  cfg.hidden_size = 64;
  cfg.intermediate_size = 96;
  cfg.num_layers = 2;
  cfg.num_heads = 4;
  cfg.num_kv_heads = 2;
  cfg.init_std = 0.1;
  const base::UnitList units = build_llama(cfg);
  auto made = make_model_params(units, at::TensorOptions().dtype(at::kFloat), 11);
  ASSERT_TRUE(made.ok()) << made.status().to_string();
  at::manual_seed(5);
  const at::Tensor ids = at::randint(0, cfg.vocab_size, {2, 24}, at::kLong);
  const at::Tensor targets = at::randint(0, cfg.vocab_size, {2, 24}, at::kLong);

  struct Out {
    at::Tensor loss;
    std::vector<at::Tensor> grads;
  };
  auto run = [&](const at::Device& device) {
    std::vector<std::vector<at::Tensor>> params;
    std::vector<at::Tensor> leaves;
    for (const auto& unit_params : *made) {
      params.emplace_back();
      for (const at::Tensor& p : unit_params) {
        params.back().push_back(p.to(device).detach().requires_grad_());
        leaves.push_back(params.back().back());
      }
    }
    const at::Tensor pos = at::arange(24, at::kLong).unsqueeze(0).expand({2, 24}).contiguous();
    base::StepContext ctx = make_step_context(cfg, pos.to(device), at::kFloat);
    ctx.targets = targets.to(device);
    Out out;
    out.loss = forward_all(units, params, ids.to(device), ctx);
    out.grads = torch::autograd::grad({out.loss}, leaves);
    return out;
  };
  const Out gpu = run(at::Device(at::kCUDA, 0));
  const Out cpu = run(at::kCPU);
  EXPECT_LT(max_rel_diff(gpu.loss, cpu.loss), 1e-5);
  for (size_t i = 0; i < cpu.grads.size(); ++i) {
    EXPECT_LT(max_rel_diff(gpu.grads[i], cpu.grads[i]), 1e-4) << "gradient " << i;
  }
}

// The device optimizer's AdamW kernel against torch's fused AdamW: three steps with weight
// decay and a gradient scale, over a size that leaves a tail past the 16-byte packs and, at an
// offset of one element, the scalar path; the compute-dtype copy is the parameters rounded once.
void check_adamw(int64_t n, int64_t offset, at::ScalarType copy_dtype) {
  at::manual_seed(21);
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  auto slice = [&](const at::Tensor& t) { return t.narrow(0, offset, n); };
  const at::Tensor p0 = at::randn({n + offset}, f32);
  at::Tensor p = p0.clone(), m = at::zeros_like(p0), v = at::zeros_like(p0);
  at::Tensor rp = p0.clone(), rm = at::zeros_like(p0), rv = at::zeros_like(p0);
  at::Tensor copy = at::empty({n + offset}, f32.dtype(copy_dtype));
  const double lr = 1e-2, wd = 0.1, scale = 2.5;
  for (int64_t step = 1; step <= 3; ++step) {
    const at::Tensor g = at::randn({n + offset}, f32);
    offload::AdamWHyper h;
    h.lr = lr;
    h.beta1 = 0.9;
    h.beta2 = 0.95;
    h.eps = 1e-8;
    h.weight_decay = wd;
    h.step = step;
    h.grad_scale = scale;
    kernels::adamw_step(slice(p), slice(g), slice(m), slice(v), slice(copy), h);
    at::Tensor steps = at::full({}, static_cast<double>(step), f32);
    at::_fused_adamw_({slice(rp)}, {slice(g)}, {slice(rm)}, {slice(rv)}, {}, {steps}, lr, 0.9, 0.95,
                      wd, 1e-8, false, false, at::full({}, scale, f32), {});
  }
  EXPECT_LT(max_rel_diff(slice(p), slice(rp)), 1e-6) << "parameters, n " << n;
  EXPECT_LT(max_rel_diff(slice(m), slice(rm)), 1e-6) << "first moment, n " << n;
  EXPECT_LT(max_rel_diff(slice(v), slice(rv)), 1e-6) << "second moment, n " << n;
  EXPECT_TRUE(at::equal(slice(copy), slice(p).to(copy_dtype))) << "copy, n " << n;
  EXPECT_TRUE(at::equal(p.narrow(0, 0, offset), p0.narrow(0, 0, offset))) << "outside the range";
}

TEST(FusedAdamw, MatchesTorchsFusedAdamwAndWritesTheCopy) {
  if (skip_without_cuda()) GTEST_SKIP() << "no CUDA device or kernels";
  check_adamw(1 << 20, 0, at::kBFloat16);
  check_adamw((1 << 16) + 3, 0, at::kBFloat16);
  check_adamw(4099, 1, at::kHalf);
  check_adamw(1000, 0, at::kFloat);
}

}  // namespace
}  // namespace dstrain::runtime
