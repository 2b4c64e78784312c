// CpuAdamW against PyTorch's fused CPU AdamW (at::_fused_adamw_), the optimizer dstrain uses
// without offload: the two must give the same parameters so that offloading does not change
// training. Every instruction-set variant this CPU supports is checked, directly and through the
// thread pool.
#include "offload/cpu_adam.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "offload/adam_kernel.h"

namespace dstrain::offload {
namespace {

// Sizes around the vector widths (8, 16), the 16384-element chunk of the pool, and below the
// thread counts used.
const std::vector<int64_t> kSizes = {1, 3, 7, 8, 15, 16, 17, 100, 1029, 16384, 3 * 16384 + 5};

// Tolerance: none. Both sides perform the same correctly rounded float operations in the same
// order with the same fused multiply-adds (adam_kernel.h), so every element agrees bit for bit;
// the engine relies on that to train identically with and without offload. The ulp distance is
// still computed so that a failure says how far apart the two are: 1-2 ulps in exp_avg_sq means
// a multiply-add fused differently (a new PyTorch build), more means different arithmetic.
constexpr int64_t kMaxUlps = 0;

int64_t ordered(float x) {
  int32_t i;
  std::memcpy(&i, &x, sizeof(i));
  return i < 0 ? static_cast<int64_t>(std::numeric_limits<int32_t>::min()) - i : i;
}

int64_t ulps_apart(float a, float b) { return std::llabs(ordered(a) - ordered(b)); }

// The largest ulp distance between two float buffers; NaN against NaN counts as equal.
int64_t max_ulps(const float* a, const at::Tensor& b) {
  const float* pb = b.data_ptr<float>();
  int64_t worst = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    if (std::isnan(a[i]) && std::isnan(pb[i])) continue;
    if (std::isnan(a[i]) || std::isnan(pb[i])) return std::numeric_limits<int64_t>::max();
    worst = std::max(worst, ulps_apart(a[i], pb[i]));
  }
  return worst;
}

struct Case {
  int64_t n;
  double weight_decay;
  double grad_scale;
  double beta1;  // 0.3 takes the other lerp formula (weight 0.7 >= 0.5)
  std::string name() const {
    return "n=" + std::to_string(n) + " wd=" + std::to_string(weight_decay) +
           " scale=" + std::to_string(grad_scale) + " beta1=" + std::to_string(beta1);
  }
};

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (int64_t n : kSizes) {
    for (double wd : {0.0, 0.1}) {
      for (double scale : {1.0, 3.7}) {
        for (double beta1 : {0.9, 0.3}) cases.push_back({n, wd, scale, beta1});
      }
    }
  }
  return cases;
}

// One parameter buffer with its state, updated by PyTorch (tensors) and by the code under test
// (the std::vectors), from the same start and the same gradients.
class Pair {
 public:
  Pair(int64_t n, uint64_t seed) : gen_(at::detail::createCPUGenerator(seed)) {
    ref_param_ = at::randn({n}, gen_);
    ref_m_ = at::zeros({n});
    ref_v_ = at::zeros({n});
    param_ = to_vector(ref_param_);
    m_.assign(n, 0.0f);
    v_.assign(n, 0.0f);
  }

  // Draws a gradient, updates the reference with at::_fused_adamw_ and returns the gradient for
  // the code under test (PyTorch divides its copy by grad_scale in place).
  std::vector<float> reference_step(const AdamWHyper& h) {
    at::Tensor grad = at::randn({ref_param_.numel()}, gen_) * 0.05;
    std::vector<float> g = to_vector(grad);
    at::Tensor step = at::full({}, static_cast<float>(h.step));
    std::optional<at::Tensor> scale;
    if (h.grad_scale != 1.0) scale = at::full({}, static_cast<float>(h.grad_scale));
    at::_fused_adamw_({ref_param_}, {grad}, {ref_m_}, {ref_v_}, {}, {step}, h.lr, h.beta1, h.beta2,
                      h.weight_decay, h.eps, /*amsgrad=*/false, /*maximize=*/false, scale,
                      std::nullopt);
    return g;
  }

  void expect_close(int step) const {
    EXPECT_LE(max_ulps(param_.data(), ref_param_), kMaxUlps) << "param after step " << step;
    EXPECT_LE(max_ulps(m_.data(), ref_m_), kMaxUlps) << "exp_avg after step " << step;
    EXPECT_LE(max_ulps(v_.data(), ref_v_), kMaxUlps) << "exp_avg_sq after step " << step;
  }

  float* param() { return param_.data(); }
  float* m() { return m_.data(); }
  float* v() { return v_.data(); }
  int64_t n() const { return static_cast<int64_t>(param_.size()); }

 private:
  static std::vector<float> to_vector(const at::Tensor& t) {
    return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
  }
  at::Generator gen_;
  at::Tensor ref_param_, ref_m_, ref_v_;
  std::vector<float> param_, m_, v_;
};

AdamWHyper hyper(const Case& c, int64_t step) {
  AdamWHyper h;
  h.lr = 1e-2;
  h.beta1 = c.beta1;
  h.beta2 = 0.999;
  h.eps = 1e-8;
  h.weight_decay = c.weight_decay;
  h.step = step;
  h.grad_scale = c.grad_scale;
  return h;
}

std::vector<AdamIsa> supported_isas() {
  std::vector<AdamIsa> isas;
  for (AdamIsa isa : {AdamIsa::kScalar, AdamIsa::kAvx2, AdamIsa::kAvx512}) {
    if (adam_kernel(isa) != nullptr) isas.push_back(isa);
  }
  return isas;
}

TEST(CpuAdamKernel, EveryIsaMatchesFusedAdamWOverFiveSteps) {
  for (AdamIsa isa : supported_isas()) {
    const AdamKernel kernel = adam_kernel(isa);
    for (const Case& c : all_cases()) {
      SCOPED_TRACE(std::string(adam_isa_name(isa)) + " " + c.name());
      Pair pair(c.n, 1234 + c.n);
      for (int64_t step = 1; step <= 5; ++step) {
        const AdamWHyper h = hyper(c, step);
        std::vector<float> grad = pair.reference_step(h);
        const std::vector<float> grad_before = grad;
        kernel(make_adam_scalars(h), pair.param(), grad.data(), pair.m(), pair.v(), c.n, nullptr,
               LowPrecision::kNone);
        ASSERT_EQ(grad, grad_before) << "the gradient is input only";
        pair.expect_close(static_cast<int>(step));
      }
    }
  }
}

TEST(CpuAdamW, ThreadPoolMatchesFusedAdamW) {
  for (int threads = 1; threads <= 4; ++threads) {
    CpuAdamW adam(threads);
    ASSERT_EQ(adam.threads(), threads);
    for (const Case& c : all_cases()) {
      SCOPED_TRACE("threads=" + std::to_string(threads) + " " + c.name());
      Pair pair(c.n, 99 + c.n);
      for (int64_t step = 1; step <= 5; ++step) {
        const AdamWHyper h = hyper(c, step);
        const std::vector<float> grad = pair.reference_step(h);
        ASSERT_TRUE(adam.step(h, pair.param(), grad.data(), pair.m(), pair.v(), c.n).ok());
        pair.expect_close(static_cast<int>(step));
      }
    }
  }
}

TEST(CpuAdamW, ThreadCountDoesNotChangeResults) {
  const int64_t n = 5 * 16384 + 11;
  std::vector<std::vector<float>> results;
  for (int threads : {1, 2, 3, 4}) {
    CpuAdamW adam(threads);
    Pair pair(n, 7);
    for (int64_t step = 1; step <= 3; ++step) {
      const AdamWHyper h = hyper({n, 0.1, 2.0, 0.9}, step);
      const std::vector<float> grad = pair.reference_step(h);
      ASSERT_TRUE(adam.step(h, pair.param(), grad.data(), pair.m(), pair.v(), n).ok());
    }
    results.emplace_back(pair.param(), pair.param() + n);
  }
  for (size_t i = 1; i < results.size(); ++i)
    EXPECT_EQ(results[i], results[0]) << i + 1 << " threads";
}

// The low-precision copy must be exactly what the engine would get from param.to(dtype).
void expect_out_equals_to(LowPrecision type, at::ScalarType dtype) {
  for (AdamIsa isa : supported_isas()) {
    for (int64_t n : kSizes) {
      SCOPED_TRACE(std::string(adam_isa_name(isa)) + " n=" + std::to_string(n));
      Pair pair(n, 5 + n);
      std::vector<uint16_t> out(n, 0xdead);
      for (int64_t step = 1; step <= 2; ++step) {
        const AdamWHyper h = hyper({n, 0.1, 1.0, 0.9}, step);
        const std::vector<float> grad = pair.reference_step(h);
        adam_kernel(isa)(make_adam_scalars(h), pair.param(), grad.data(), pair.m(), pair.v(), n,
                         out.data(), type);
      }
      const at::Tensor expected = at::from_blob(pair.param(), {n}).to(dtype);
      ASSERT_EQ(std::memcmp(out.data(), expected.data_ptr(), n * sizeof(uint16_t)), 0);
    }
  }
}

TEST(CpuAdamKernel, BFloat16CopyEqualsToBFloat16) {
  expect_out_equals_to(LowPrecision::kBFloat16, at::kBFloat16);
}
TEST(CpuAdamKernel, Float16CopyEqualsToFloat16) {
  expect_out_equals_to(LowPrecision::kFloat16, at::kHalf);
}

// Parameters of every kind (ties, fp16 subnormals, overflow, infinities, NaN) through the vector
// conversions: lr = 0 leaves the parameters as they are, so the copy must equal .to(dtype).
TEST(CpuAdamKernel, LowPrecisionCopyRoundsLikeTorchOnEdgeValues) {
  std::vector<float> values = {0.0f,
                               -0.0f,
                               1.0f,
                               -1.0f,
                               65504.0f,
                               65519.9f,
                               65520.0f,
                               1e30f,
                               -1e30f,
                               6.1e-5f,
                               6.0e-8f,
                               3.0e-8f,
                               2.9e-8f,
                               1e-40f,
                               std::numeric_limits<float>::infinity(),
                               -std::numeric_limits<float>::infinity(),
                               std::numeric_limits<float>::quiet_NaN(),
                               std::numeric_limits<float>::max(),
                               std::numeric_limits<float>::denorm_min()};
  std::mt19937 rng(42);
  for (int i = 0; i < 20000; ++i) {
    uint32_t bits = rng();
    if (i % 3 == 0) bits = (bits & 0xffff0000u) | 0x8000u;  // a bf16 tie
    if (i % 3 == 1) {  // an fp16 tie, from its subnormals to past its largest value
      const uint32_t exponent = 100 + rng() % 46;
      bits = (bits & 0x807fe000u) | (exponent << 23) | 0x1000u;
    }
    float x;
    std::memcpy(&x, &bits, sizeof(x));
    values.push_back(x);
  }
  const int64_t n = static_cast<int64_t>(values.size());
  const std::vector<float> zeros(n, 0.0f);
  AdamWHyper h;
  h.lr = 0;
  for (AdamIsa isa : supported_isas()) {
    for (auto [type, dtype] : {std::pair{LowPrecision::kBFloat16, at::kBFloat16},
                               std::pair{LowPrecision::kFloat16, at::kHalf}}) {
      SCOPED_TRACE(std::string(adam_isa_name(isa)) +
                   (type == LowPrecision::kFloat16 ? " fp16" : " bf16"));
      const uint16_t infinity = type == LowPrecision::kFloat16 ? 0x7c00 : 0x7f80;
      std::vector<float> param = values, m = zeros, v = zeros;
      std::vector<uint16_t> out(n);
      adam_kernel(isa)(make_adam_scalars(h), param.data(), zeros.data(), m.data(), v.data(), n,
                       out.data(), type);
      for (int64_t i = 0; i < n; ++i) {
        // A signalling NaN comes out quiet; everything else must come out as it went in.
        if (std::isnan(values[i])) continue;
        ASSERT_EQ(ordered(param[i]), ordered(values[i])) << "lr = 0 changed " << values[i];
      }
      const at::Tensor expected = at::from_blob(values.data(), {n}).to(dtype);
      const auto* e = static_cast<const uint16_t*>(expected.data_ptr());
      for (int64_t i = 0; i < n; ++i) {
        if (std::isnan(values[i])) {
          EXPECT_GT(out[i] & 0x7fff, infinity) << "NaN must stay NaN";
        } else {
          EXPECT_EQ(out[i], e[i]) << "input " << values[i];
        }
      }
    }
  }
}

TEST(CpuAdamKernel, ScalarConversionsMatchTorch) {
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    uint32_t bits = rng();
    float x;
    std::memcpy(&x, &bits, sizeof(x));
    if (std::isnan(x)) {
      EXPECT_EQ(float_to_bf16(x), 0x7fc0);
      EXPECT_EQ(float_to_fp16(x) & 0x7fff, 0x7e00);
      continue;
    }
    const at::Tensor t = at::full({}, x);
    EXPECT_EQ(float_to_bf16(x), t.to(at::kBFloat16).view(at::kShort).item<int16_t>() & 0xffff) << x;
    EXPECT_EQ(float_to_fp16(x), t.to(at::kHalf).view(at::kShort).item<int16_t>() & 0xffff) << x;
  }
}

TEST(CpuAdamW, RejectsBadArguments) {
  CpuAdamW adam(2);
  std::vector<float> p(4), g(4), m(4), v(4);
  std::vector<uint16_t> out(4);
  AdamWHyper h;
  h.lr = 1e-3;
  EXPECT_TRUE(adam.step(h, p.data(), g.data(), m.data(), v.data(), 4).ok());
  EXPECT_TRUE(adam.step(h, nullptr, nullptr, nullptr, nullptr, 0).ok());
  auto code = [&](const AdamWHyper& hh, int64_t n, void* o, LowPrecision t, float* param) {
    return adam.step(hh, param, g.data(), m.data(), v.data(), n, o, t).code();
  };
  constexpr auto kInvalid = base::StatusCode::kInvalidArgument;
  EXPECT_EQ(code(h, -1, nullptr, LowPrecision::kNone, p.data()), kInvalid);
  EXPECT_EQ(code(h, 4, nullptr, LowPrecision::kNone, nullptr), kInvalid);
  EXPECT_EQ(code(h, 4, nullptr, LowPrecision::kBFloat16, p.data()), kInvalid);
  EXPECT_EQ(code(h, 4, out.data(), LowPrecision::kNone, p.data()), kInvalid);
  AdamWHyper bad = h;
  bad.step = 0;
  EXPECT_EQ(code(bad, 4, nullptr, LowPrecision::kNone, p.data()), kInvalid);
  bad = h;
  bad.grad_scale = 0;
  EXPECT_EQ(code(bad, 4, nullptr, LowPrecision::kNone, p.data()), kInvalid);
  bad.grad_scale = std::numeric_limits<double>::infinity();
  EXPECT_EQ(code(bad, 4, nullptr, LowPrecision::kNone, p.data()), kInvalid);
  bad = h;
  bad.beta2 = 1.0;
  EXPECT_EQ(code(bad, 4, nullptr, LowPrecision::kNone, p.data()), kInvalid);
}

TEST(CpuAdamW, ZeroThreadsMeansEveryHardwareThread) {
  CpuAdamW adam(0);
  EXPECT_EQ(adam.threads(), static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  EXPECT_STREQ(adam.isa(), adam_isa_name(best_adam_isa()));
}

}  // namespace
}  // namespace dstrain::offload
