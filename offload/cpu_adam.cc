#include "offload/cpu_adam.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "offload/adam_kernel.h"

namespace dstrain::offload {
namespace {

// 64 KiB of fp32 parameters per task: the four streams of a task (256 KiB) stay within L2 while
// it runs, and there are enough tasks for threads that finish early to take more.
constexpr int64_t kChunkElements = 16384;

}  // namespace

// A fixed set of workers that run one job at a time: job(i) for i in [0, count), indices handed
// out through an atomic counter, the calling thread working alongside.
class CpuAdamW::Impl {
 public:
  explicit Impl(int threads) : kernel_isa_(best_adam_isa()), kernel_(adam_kernel(kernel_isa_)) {
    if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    threads_ = threads;
    workers_.reserve(threads - 1);
    for (int i = 1; i < threads; ++i) {
      try {
        workers_.emplace_back([this] { work(); });
      } catch (const std::system_error& e) {
        start_error_ =
            base::Status::Internal("CpuAdamW: could not start thread " + std::to_string(i) +
                                   " of " + std::to_string(threads) + ": " + e.what());
        break;
      }
    }
  }

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  base::Status run(int64_t count, const std::function<void(int64_t)>& job) {
    RETURN_IF_ERROR(start_error_);
    std::lock_guard<std::mutex> serial(call_mu_);
    if (count <= 1 || workers_.empty()) {
      for (int64_t i = 0; i < count; ++i) job(i);
      return base::Status::Ok();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &job;
      count_ = count;
      next_.store(0, std::memory_order_relaxed);
      busy_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    drain(job, count);
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return busy_ == 0; });
    job_ = nullptr;
    return base::Status::Ok();
  }

  int threads() const { return threads_; }
  AdamKernel kernel() const { return kernel_; }
  AdamIsa isa() const { return kernel_isa_; }

 private:
  void drain(const std::function<void(int64_t)>& job, int64_t count) {
    for (int64_t i = next_.fetch_add(1, std::memory_order_relaxed); i < count;
         i = next_.fetch_add(1, std::memory_order_relaxed)) {
      job(i);
    }
  }

  void work() {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int64_t)>* job;
      int64_t count;
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
        count = count_;
      }
      drain(*job, count);
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (--busy_ == 0) done_.notify_one();
      }
    }
  }

  const AdamIsa kernel_isa_;
  const AdamKernel kernel_;
  int threads_ = 1;
  base::Status start_error_;
  std::mutex call_mu_;  // one job at a time per pool
  std::mutex mu_;       // guards everything below except next_
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t count_ = 0;
  std::atomic<int64_t> next_{0};
  int busy_ = 0;  // workers not yet finished with the current generation
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::vector<std::thread> workers_;  // last: started after every field above exists
};

CpuAdamW::CpuAdamW(int threads) : impl_(std::make_unique<Impl>(threads)) {}
CpuAdamW::~CpuAdamW() = default;

int CpuAdamW::threads() const { return impl_->threads(); }
const char* CpuAdamW::isa() const { return adam_isa_name(impl_->isa()); }

namespace {

base::Status check_arguments(const AdamWHyper& h, const float* param, const float* grad,
                             const float* exp_avg, const float* exp_avg_sq, int64_t n,
                             const void* out, LowPrecision out_type) {
  if (n < 0) return base::Status::InvalidArgument("CpuAdamW: n = " + std::to_string(n) + " < 0");
  if (n > 0 &&
      (param == nullptr || grad == nullptr || exp_avg == nullptr || exp_avg_sq == nullptr)) {
    return base::Status::InvalidArgument("CpuAdamW: null param, grad, exp_avg or exp_avg_sq");
  }
  if (h.step < 1) {
    return base::Status::InvalidArgument("CpuAdamW: step = " + std::to_string(h.step) +
                                         ", must be >= 1 (incremented before the update)");
  }
  if (!(h.beta1 >= 0 && h.beta1 < 1) || !(h.beta2 >= 0 && h.beta2 < 1)) {
    return base::Status::InvalidArgument("CpuAdamW: beta1 = " + std::to_string(h.beta1) +
                                         ", beta2 = " + std::to_string(h.beta2) +
                                         ": each must be in [0, 1)");
  }
  if (!(std::isfinite(h.grad_scale) && h.grad_scale > 0)) {
    return base::Status::InvalidArgument("CpuAdamW: grad_scale = " + std::to_string(h.grad_scale) +
                                         ", must be finite and positive");
  }
  if ((out == nullptr) != (out_type == LowPrecision::kNone)) {
    return base::Status::InvalidArgument(
        out == nullptr ? "CpuAdamW: a low-precision out_type without an out buffer"
                       : "CpuAdamW: an out buffer with out_type kNone");
  }
  return base::Status::Ok();
}

}  // namespace

base::Status CpuAdamW::step(const AdamWHyper& h, float* param, const float* grad, float* exp_avg,
                            float* exp_avg_sq, int64_t n, void* out, LowPrecision out_type) {
  RETURN_IF_ERROR(check_arguments(h, param, grad, exp_avg, exp_avg_sq, n, out, out_type));
  if (n == 0) return base::Status::Ok();
  const AdamScalars s = make_adam_scalars(h);
  const AdamKernel kernel = impl_->kernel();
  auto* out16 = static_cast<uint16_t*>(out);
  const int64_t chunks = (n + kChunkElements - 1) / kChunkElements;
  return impl_->run(chunks, [&](int64_t chunk) {
    const int64_t begin = chunk * kChunkElements;
    const int64_t len = std::min(kChunkElements, n - begin);
    kernel(s, param + begin, grad + begin, exp_avg + begin, exp_avg_sq + begin, len,
           out16 == nullptr ? nullptr : out16 + begin, out_type);
  });
}

}  // namespace dstrain::offload
