#include "sharding/device_wait.h"

#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <chrono>
#include <thread>

namespace dstrain::sharding {

base::StatusOr<double> read_scalar(const at::Tensor& t, double timeout_s, const std::string& what) {
  if (t.device().is_cpu() || timeout_s <= 0) return t.item<double>();
  const c10::impl::VirtualGuardImpl impl(t.device().type());
  c10::Event done(t.device().type());
  done.record(impl.getStream(t.device()));
  const auto start = std::chrono::steady_clock::now();
  for (int polls = 0; !done.query(); ++polls) {
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (waited > timeout_s) {
      return base::Status::Distributed(
          what + " did not finish on the device within " +
          std::to_string(static_cast<int>(timeout_s)) +
          " s: a kernel, or a collective it waits for, never finished (a peer rank died or "
          "stopped?) (run.collective_timeout_s)");
    }
    // The answer is usually milliseconds away: spin briefly, then poll gently.
    if (polls < 2000) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
  return t.item<double>();
}

}  // namespace dstrain::sharding
