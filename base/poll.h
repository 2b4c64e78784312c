#pragma once
// Waiting for what only a poll can see (a device event, NCCL's state of a communicator): look,
// yield for the first looks, then sleep briefly between them, and give up after a time.
#include <chrono>
#include <thread>

#include "base/status.h"

namespace dstrain::base {

// Calls `ready` (returning StatusOr<bool>) until it answers true or fails; false when
// `timeout_s` seconds (0: no limit) passed first.
template <typename Ready>
StatusOr<bool> poll_until(Ready&& ready, double timeout_s) {
  const auto start = std::chrono::steady_clock::now();
  for (int looks = 0;; ++looks) {
    ASSIGN_OR_RETURN(const bool done, ready());
    if (done) return true;
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (timeout_s > 0 && waited > timeout_s) return false;
    // Most answers come within microseconds; a peer still starting can take seconds.
    if (looks < 1000) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
}

}  // namespace dstrain::base
