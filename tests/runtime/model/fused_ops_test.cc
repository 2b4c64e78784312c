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

// `offset` elements into a wider projection, as attention hands q or k over: an offset of a
// whole 16 bytes takes the kernel's vectorised path, any other its scalar one.
void check_rope(at::ScalarType dtype, int64_t offset, int64_t d) {
  const double tol = dtype == at::kFloat ? 1e-6 : 1e-2;
  at::manual_seed(3);
  const auto cuda = at::TensorOptions().device(at::kCUDA).dtype(dtype);
  const int64_t b = 2, t = 33, heads = 3;
  const at::Tensor wide = at::randn({b, t, heads * d + 16}, cuda);
  base::ModelConfig cfg;
  cfg.num_heads = heads;
  cfg.hidden_size = heads * d;
  const at::Tensor pos = at::arange(t, at::kLong).unsqueeze(0).expand({b, t}).contiguous();
  const base::StepContext ctx = make_step_context(cfg, pos.to(at::kCUDA), dtype);

  at::Tensor x1 = wide.narrow(-1, offset, heads * d).detach().requires_grad_();
  at::Tensor x2 = x1.detach().clone().requires_grad_();
  const at::Tensor fused = kernels::rope(x1, heads, ctx.rope_cos, ctx.rope_sin);
  const at::Tensor ref =
      apply_rope(x2.unflatten(-1, {heads, d}).transpose(1, 2), ctx.rope_cos, ctx.rope_sin)
          .transpose(1, 2);
  EXPECT_LT(max_rel_diff(fused, ref), tol) << "offset " << offset << ", head_dim " << d;
  const at::Tensor probe = at::randn(fused.sizes(), cuda.dtype(at::kFloat));
  EXPECT_LT(max_rel_diff(grads_of(fused, {x1}, probe)[0], grads_of(ref, {x2}, probe)[0]), tol)
      << "offset " << offset << ", head_dim " << d;
}

TEST_P(FusedOpsTest, RopeMatchesAtenOnAStridedSlice) {
  if (skip_without_cuda()) GTEST_SKIP() << "needs a CUDA device and the CUDA kernels";
  check_rope(GetParam(), 4, 16);   // scalar path in bf16 (8-byte offset)
  check_rope(GetParam(), 8, 16);   // 16-byte aligned in bf16
  check_rope(GetParam(), 0, 128);  // the Llama head size
  check_rope(GetParam(), 0, 12);   // half = 6: no whole vector in either dtype
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

}  // namespace
}  // namespace dstrain::runtime
