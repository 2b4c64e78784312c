#pragma once
// AdamW on the CPU for offload.optimizer = cpu: fp32 master parameters, m and v in host memory,
// optionally the updated parameters rounded to bf16/fp16 for the upload to the GPU. The
// arithmetic follows PyTorch's fused CPU AdamW (at::_fused_adamw_) operation by operation, so the
// offloaded and the on-device optimizer give the same parameters (see adam_kernel.h).
#include <cstdint>
#include <memory>

#include "base/status.h"

namespace dstrain::offload {

struct AdamWHyper {
  double lr = 0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;
  int64_t step = 1;         // >= 1, already incremented for this update
  double grad_scale = 1.0;  // every gradient is divided by this first (unscale + clip)
};

enum class LowPrecision { kNone, kBFloat16, kFloat16 };

class CpuAdamW {
 public:
  // `threads` workers including the calling thread (0: std::thread::hardware_concurrency()).
  // Should a thread fail to start, every step() returns kInternal saying so.
  explicit CpuAdamW(int threads);
  ~CpuAdamW();  // joins the workers
  CpuAdamW(const CpuAdamW&) = delete;
  CpuAdamW& operator=(const CpuAdamW&) = delete;

  // In-place AdamW (decoupled weight decay) over n elements of param, exp_avg and exp_avg_sq,
  // reading grad (left unchanged). When out != nullptr it also receives the updated parameters
  // rounded to nearest-even in out_type (n 16-bit values, bit-equal to PyTorch's .to(dtype) of
  // param, except that a NaN may carry another payload).
  // Buffers must not overlap. Blocks until done; the calling thread works too.
  // Thread-safe: concurrent calls on one object are serialised (one pool serves one call).
  // kInvalidArgument for n < 0, null buffers, step < 1, betas outside [0, 1), a grad_scale that
  // is not finite and positive, or out and out_type that disagree.
  base::Status step(const AdamWHyper& h, float* param, const float* grad, float* exp_avg,
                    float* exp_avg_sq, int64_t n, void* out = nullptr,
                    LowPrecision out_type = LowPrecision::kNone);

  int threads() const;
  // The instruction set the kernel uses on this CPU: "avx512", "avx2" or "scalar".
  const char* isa() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dstrain::offload
