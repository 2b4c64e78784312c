// Weight gradients written by the ops into GradSinks (base/grad_sink.h): the buffer's write
// bookkeeping, and sink_linear / the fused loss against autograd's gradients, on the CPU in fp32
// and (where a GPU exists) in bf16 against an fp32 reference.
#include "runtime/model/sink_linear.h"

#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/cuda.h>

#include "runtime/model/fused_cross_entropy.h"
#include "tests/runtime/model/expect_close.h"

namespace dstrain::runtime {
namespace {

c10::intrusive_ptr<base::GradSinkBuffer> sink_buffer(int64_t numel, bool accumulate,
                                                     at::Tensor start = at::Tensor(),
                                                     const at::Device& device = at::kCPU) {
  if (!start.defined()) start = at::full({numel}, 7.0, at::TensorOptions().device(device));
  return c10::make_intrusive<base::GradSinkBuffer>([start]() { return start; }, accumulate);
}

TEST(GradSinkBuffer, FirstWriteStoresLaterOnesAddFinishZeroesTheRest) {
  at::Tensor flat = at::full({10}, 7.0);
  auto buffer = sink_buffer(10, /*accumulate=*/false, flat);
  base::GradSinkBuffer::Slot a = buffer->take(2, {2, 2});  // [2, 6)
  EXPECT_FALSE(a.add);
  a.view.fill_(1.0);
  EXPECT_TRUE(buffer->take(2, {4}).add);  // the same range again: add
  // [4, 8): half written before, so the other half is zeroed first and the write adds.
  base::GradSinkBuffer::Slot b = buffer->take(4, {4});
  EXPECT_TRUE(b.add);
  EXPECT_EQ(flat[6].item<float>(), 0.0f);
  EXPECT_EQ(flat[7].item<float>(), 0.0f);
  const at::Tensor done = buffer->finish();
  EXPECT_TRUE(done.is_same(flat));
  // Never written: [0, 2) and [8, 10), zero now; written values kept.
  const at::Tensor expected = at::tensor({0.f, 0.f, 1.f, 1.f, 1.f, 1.f, 0.f, 0.f, 0.f, 0.f});
  EXPECT_TRUE(at::equal(done, expected)) << done;
}

TEST(GradSinkBuffer, FinishHandsTheMemoryOver) {
  auto buffer = c10::make_intrusive<base::GradSinkBuffer>([]() { return at::zeros({4}); }, false);
  buffer->take(0, {4});
  const at::Tensor done = buffer->finish();
  EXPECT_EQ(done.use_count(), 1) << "the buffer still references the finished tensor";
  EXPECT_THROW(buffer->take(0, {1}), c10::Error);
}

TEST(GradSinkBuffer, AnAccumulatorIsAddedToAndNeverCleared) {
  at::Tensor flat = at::full({6}, 2.0);
  auto buffer = sink_buffer(6, /*accumulate=*/true, flat);
  EXPECT_TRUE(buffer->take(0, {3}).add);
  EXPECT_TRUE(at::equal(buffer->finish(), at::full({6}, 2.0)));
}

TEST(GradSinkBuffer, MemoryIsMadeOnFirstUse) {
  int made = 0;
  auto buffer = c10::make_intrusive<base::GradSinkBuffer>(
      [&made]() {
        ++made;
        return at::zeros({4});
      },
      false);
  EXPECT_EQ(made, 0);
  buffer->take(0, {2});
  buffer->take(2, {2});
  EXPECT_EQ(made, 1);
}

struct LinearGrads {
  at::Tensor dx, dbias, dweight;
};

// Gradients of sum(y * g) for y = linear(x, weight, bias): through autograd, or with the
// weight's into a sink starting at offset 3 of a larger buffer (twice when `twice`: the second
// use adds).
LinearGrads linear_grads(const at::Tensor& x0, const at::Tensor& w0, const at::Tensor& b0,
                         const at::Tensor& g, bool sink, bool twice = false) {
  at::Tensor x = x0.detach().requires_grad_();
  at::Tensor b = b0.detach().requires_grad_();
  LinearGrads out;
  if (!sink) {
    at::Tensor w = w0.detach().requires_grad_();
    at::Tensor y = at::linear(x, w, b);
    if (twice) y = y + at::linear(x, w, b);
    auto grads = torch::autograd::grad({(y * g).sum()}, {x, b, w});
    return {grads[0], grads[1], grads[2].to(at::kFloat)};
  }
  const int64_t offset = 3;
  at::Tensor flat = at::full({w0.numel() + 5}, 99.0, x0.options().dtype(at::kFloat));
  auto buffer = sink_buffer(flat.numel(), false, flat);
  const base::GradSink s{buffer, offset};
  at::Tensor y = sink_linear(x, w0, b, s);
  if (twice) y = y + sink_linear(x, w0, b, s);
  auto grads = torch::autograd::grad({(y * g).sum()}, {x, b});
  buffer->finish();
  EXPECT_EQ(flat[0].item<float>(), 0.0f) << "unwritten elements must be zero after finish";
  return {grads[0], grads[1], flat.narrow(0, offset, w0.numel()).view(w0.sizes())};
}

TEST(FusedWeightGrad, SinkLinearMatchesAutogradInFp32) {
  at::manual_seed(11);
  const at::Tensor x = at::randn({2, 5, 8});
  const at::Tensor w = at::randn({6, 8});
  const at::Tensor b = at::randn({6});
  const at::Tensor g = at::randn({2, 5, 6});
  for (bool twice : {false, true}) {
    const LinearGrads ref = linear_grads(x, w, b, g, false, twice);
    const LinearGrads got = linear_grads(x, w, b, g, true, twice);
    expect_close(got.dx, ref.dx, 1e-6, 1e-6, "input gradient");
    expect_close(got.dbias, ref.dbias, 1e-6, 1e-6, "bias gradient");
    expect_close(got.dweight, ref.dweight, 1e-6, 1e-6, "weight gradient");
  }
}

TEST(FusedWeightGrad, SinkLinearRefusesAWeightThatRequiresGrad) {
  auto buffer = sink_buffer(12, false);
  const at::Tensor w = at::randn({3, 4}).requires_grad_();
  EXPECT_THROW(sink_linear(at::randn({2, 4}).requires_grad_(), w, {}, {buffer, 0}), c10::Error);
  // No input needs a gradient: no backward would ever write the sink.
  EXPECT_THROW(sink_linear(at::randn({2, 4}), w.detach(), {}, {buffer, 0}), c10::Error);
}

// bf16 on the GPU: the sink holds the fp32 product (one rounding fewer than autograd's bf16
// gradient), so it is at least as close to the fp32 reference.
TEST(FusedWeightGrad, SinkLinearOnTheGpuInBf16) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(12);
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  const at::Tensor x = at::randn({4, 256, 512}, cuda);
  const at::Tensor w = at::randn({384, 512}, cuda) * 0.05;
  const at::Tensor b = at::randn({384}, cuda);
  const at::Tensor g = at::randn({4, 256, 384}, cuda);
  const LinearGrads ref = linear_grads(x, w, b, g, false);
  auto bf = [](const at::Tensor& t) { return t.to(at::kBFloat16); };
  const LinearGrads autograd = linear_grads(bf(x), bf(w), bf(b), bf(g), false);
  const LinearGrads sink = linear_grads(bf(x), bf(w), bf(b), bf(g), true);
  const double err_autograd = (autograd.dweight - ref.dweight).abs().max().item<double>();
  const double err_sink = (sink.dweight - ref.dweight).abs().max().item<double>();
  EXPECT_LE(err_sink, err_autograd * 1.01 + 1e-6);
  expect_close(sink.dweight, autograd.dweight, 1e-2, 0.25, "weight gradient vs autograd's bf16");
  expect_close(sink.dx, autograd.dx, 1e-2, 1e-2, "input gradient");
  std::printf(
      "[fused weight grad] bf16 weight gradient max error vs fp32: autograd %.4g, sink %.4g\n",
      err_autograd, err_sink);
}

TEST(FusedWeightGrad, FusedLossWritesTheHeadGradientIntoItsSink) {
  at::manual_seed(13);
  const at::Tensor h0 = at::randn({2, 9, 16});
  const at::Tensor w = at::randn({40, 16}) * 0.3;
  const at::Tensor t = at::randint(0, 40, {2, 9}, at::TensorOptions().dtype(at::kLong));
  at::Tensor expected;
  {
    at::Tensor h = h0.detach().requires_grad_();
    at::Tensor wr = w.detach().requires_grad_();
    const at::Tensor loss = fused_linear_cross_entropy(h, wr, t, /*chunk_tokens=*/5);
    expected = torch::autograd::grad({loss * 2.5}, {wr})[0];
  }
  at::Tensor flat = at::full({w.numel()}, 5.0);
  auto buffer = sink_buffer(flat.numel(), false, flat);
  at::Tensor h = h0.detach().requires_grad_();
  const at::Tensor loss = fused_linear_cross_entropy(h, w, t, 5, base::GradSink{buffer, 0});
  torch::autograd::grad({loss * 2.5}, {h});
  expect_close(flat.view(w.sizes()), expected, 1e-6, 1e-6, "head weight gradient");
}

}  // namespace
}  // namespace dstrain::runtime
