#include "sharding/device_wait.h"

#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "base/poll.h"

namespace dstrain::sharding {

base::StatusOr<double> read_scalar(const at::Tensor& t, double timeout_s, const std::string& what) {
  if (t.device().is_cpu() || timeout_s <= 0) return t.item<double>();
  const c10::impl::VirtualGuardImpl impl(t.device().type());
  c10::Event done_event(t.device().type());
  done_event.record(impl.getStream(t.device()));
  ASSIGN_OR_RETURN(
      const bool done,
      base::poll_until([&]() -> base::StatusOr<bool> { return done_event.query(); }, timeout_s));
  if (!done) {
    return base::Status::Distributed(
        what + " did not finish on the device within " +
        std::to_string(static_cast<int>(timeout_s)) +
        " s: a kernel, or a collective it waits for, never finished (a peer rank died or "
        "stopped?) (run.collective_timeout_s)");
  }
  return t.item<double>();
}

}  // namespace dstrain::sharding
