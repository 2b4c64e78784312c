#include "runtime/model/fused_cross_entropy.h"

#include <gtest/gtest.h>

#include <torch/csrc/autograd/autograd.h>
#include <cmath>

#include "runtime/kernels/fused_ops.h"
#include "tests/runtime/model/expect_close.h"
#include "tests/sharding/counting_cpu_allocator.h"

namespace dstrain::runtime {
namespace {

struct Case {
  at::Tensor hidden;   // [B, T, H]
  at::Tensor weight;   // [V, H]
  at::Tensor targets;  // [B, T], some -100
};

Case make_case(at::ScalarType dtype, const at::Device& device, int64_t vocab) {
  at::manual_seed(7);
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  Case c;
  c.hidden = at::randn({2, 13, 24}, opts).to(device, dtype);
  c.weight = (at::randn({vocab, 24}, opts) * 0.2).to(device, dtype);
  c.targets = at::randint(0, vocab, {2, 13}, at::TensorOptions().dtype(at::kLong));
  c.targets.index_put_({0, at::indexing::Slice(0, 4)}, -100);
  c.targets = c.targets.to(device);
  return c;
}

// The unfused reference: full logits, fp32 cross-entropy summed over targets.
at::Tensor reference_loss(const at::Tensor& hidden, const at::Tensor& weight,
                          const at::Tensor& targets) {
  const at::Tensor logits = at::linear(hidden, weight).to(at::kFloat);
  return at::cross_entropy_loss(logits.reshape({-1, weight.size(0)}), targets.reshape({-1}), {},
                                at::Reduction::Sum, -100);
}

struct Grads {
  at::Tensor loss, dh, dw;
};

// Loss and gradients of 3.5 * loss (a non-unit incoming gradient, as the engine's loss weight).
template <typename LossFn>
Grads run(const Case& c, bool train_weight, LossFn fn) {
  at::Tensor h = c.hidden.detach().requires_grad_();
  at::Tensor w = c.weight.detach().requires_grad_(train_weight);
  at::Tensor loss = fn(h, w, c.targets);
  std::vector<at::Tensor> inputs{h};
  if (train_weight) inputs.push_back(w);
  auto grads = torch::autograd::grad({loss * 3.5}, inputs);
  return {loss.detach(), grads[0], train_weight ? grads[1] : at::Tensor()};
}

void check_against_reference(at::ScalarType dtype, const at::Device& device, double rtol,
                             double atol) {
  const Case c = make_case(dtype, device, 37);
  for (int64_t chunk : {1, 5, 26, 1000}) {  // uneven chunks, one chunk per token, one for all
    for (bool train_weight : {true, false}) {
      SCOPED_TRACE("chunk " + std::to_string(chunk) + (train_weight ? " trained" : " frozen"));
      const Grads want = run(c, train_weight, reference_loss);
      const Grads got = run(c, train_weight, [chunk](auto& h, auto& w, auto& t) {
        return fused_linear_cross_entropy(h, w, t, chunk);
      });
      EXPECT_EQ(got.loss.scalar_type(), at::kFloat);
      expect_close(got.loss, want.loss, rtol, atol, "loss");
      expect_close(got.dh, want.dh, rtol, atol, "d hidden");
      EXPECT_EQ(got.dh.scalar_type(), dtype);
      if (train_weight) {
        expect_close(got.dw, want.dw, rtol, atol, "d weight");
        EXPECT_EQ(got.dw.scalar_type(), dtype);
      }
    }
  }
}

TEST(FusedCrossEntropyTest, EqualsTheUnfusedLossAndGradientsInFp32) {
  check_against_reference(at::kFloat, at::kCPU, 1e-5, 1e-6);
}

TEST(FusedCrossEntropyTest, WithoutGradientsGivesTheSameLoss) {
  const Case c = make_case(at::kFloat, at::kCPU, 37);
  const at::Tensor got = fused_linear_cross_entropy(c.hidden, c.weight, c.targets, 7);
  EXPECT_FALSE(got.requires_grad());
  expect_close(got, reference_loss(c.hidden, c.weight, c.targets), 1e-5, 1e-6, "loss");
}

TEST(FusedCrossEntropyTest, EveryTargetIgnoredGivesZeroLossAndGradients) {
  Case c = make_case(at::kFloat, at::kCPU, 11);
  c.targets.fill_(-100);
  const Grads got = run(
      c, true, [](auto& h, auto& w, auto& t) { return fused_linear_cross_entropy(h, w, t, 4); });
  EXPECT_EQ(got.loss.item<double>(), 0.0);
  EXPECT_EQ(got.dh.abs().max().item<double>(), 0.0);
  EXPECT_EQ(got.dw.abs().max().item<double>(), 0.0);
}

// The engine keeps the loss (and with it this node) alive through the whole backward walk: the
// node must not keep its fp32 weight gradient, the size of the head, after its backward ran.
TEST(FusedCrossEntropyTest, BackwardReleasesTheSavedGradientsWhileTheLossLives) {
  static sharding::testing::CountingCpuAllocator* counting =
      new sharding::testing::CountingCpuAllocator();
  sharding::testing::AllocatorScope scope(counting);
  const Case c = make_case(at::kFloat, at::kCPU, 4000);
  at::Tensor h = c.hidden.detach().requires_grad_();
  at::Tensor w = c.weight.detach().requires_grad_();
  const at::Tensor loss = fused_linear_cross_entropy(h, w, c.targets, 8);
  const int64_t after_forward = counting->live();
  {
    auto grads = torch::autograd::grad({loss}, {h, w});
    ASSERT_TRUE(grads[1].defined());
  }
  const int64_t dw_bytes = w.numel() * 4;
  EXPECT_LE(counting->live(), after_forward - dw_bytes)
      << "the fp32 weight gradient is still held by the loss's node";
}

TEST(FusedCrossEntropyTest, ChunkSizeKeepsOneChunkNearTheBudget) {
  EXPECT_EQ(cross_entropy_chunk_tokens(32000, int64_t{256} << 20), 2097);
  EXPECT_EQ(cross_entropy_chunk_tokens(1 << 30, 16), 1);
}

// On the GPU machine: bf16 operands, fp32 accumulation of the weight gradient through cuBLAS.
TEST(FusedCrossEntropyTest, CudaBf16MatchesTheUnfusedPath) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device here; runs on the GPU machine";
  check_against_reference(at::kBFloat16, at::Device(at::kCUDA, 0), 2e-2, 2e-2);
}

// The loss kernel (fp32 logits straight from the product) in fp32 on the GPU: as tight as the
// CPU, every target ignored included.
TEST(FusedCrossEntropyTest, CudaFp32MatchesTheUnfusedPath) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device here; runs on the GPU machine";
  check_against_reference(at::kFloat, at::Device(at::kCUDA, 0), 1e-5, 1e-6);
  Case c = make_case(at::kFloat, at::Device(at::kCUDA, 0), 11);
  c.targets.fill_(-100);
  const Grads got = run(
      c, true, [](auto& h, auto& w, auto& t) { return fused_linear_cross_entropy(h, w, t, 4); });
  EXPECT_EQ(got.loss.item<double>(), 0.0);
  EXPECT_EQ(got.dh.abs().max().item<double>(), 0.0);
}

// The kernel itself against ATen, rows of a real vocabulary size (16-byte packs) and of an odd
// one (one element at a time), with a target outside the vocabulary giving a NaN row.
TEST(FusedCrossEntropyTest, CudaLossKernelMatchesAten) {
  if (!at::hasCUDA() || !kernels::cuda_kernels_built()) GTEST_SKIP() << "no CUDA device here";
  for (int64_t vocab : {int64_t{128256}, int64_t{50257}}) {
    SCOPED_TRACE("vocab " + std::to_string(vocab));
    at::manual_seed(9);
    const auto cuda = at::TensorOptions().device(at::kCUDA);
    const at::Tensor logits = at::randn({6, vocab}, cuda) * 4;
    at::Tensor targets = at::randint(0, vocab, {6}, cuda.dtype(at::kLong));
    targets[2] = -100;
    const kernels::CrossEntropyRows got =
        kernels::cross_entropy_rows(logits, targets, -100, at::kBFloat16);
    const at::Tensor keep = targets.ne(-100);
    const at::Tensor want = at::cross_entropy_loss(logits, targets, {}, at::Reduction::Sum, -100);
    expect_close(got.loss, want, 1e-5, 1e-5, "loss");
    at::Tensor want_grad =
        at::softmax(logits, -1) - at::one_hot(targets.clamp_min(0), vocab).to(at::kFloat);
    want_grad = want_grad * keep.unsqueeze(1).to(at::kFloat);
    EXPECT_EQ(got.grad.scalar_type(), at::kBFloat16);
    expect_close(got.grad, want_grad, 1e-2, 1e-3, "gradient");
    targets[0] = vocab;  // outside the vocabulary
    EXPECT_TRUE(std::isnan(
        kernels::cross_entropy_rows(logits, targets, -100, std::nullopt).loss.item<double>()));
  }
}

}  // namespace
}  // namespace dstrain::runtime
