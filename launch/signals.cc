#include "launch/signals.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

namespace dstrain::launch {
namespace {

// The one global of the signal path, unavoidable: a sigaction handler receives only the signal
// number, so the state it writes must live at namespace scope. Lock-free atomics are the only
// shared objects C++17 lets a signal handler touch.
struct SignalState {
  std::atomic<int> first_signal{0};  // 0: none yet
  std::atomic<bool> owned{false};    // a StopSignals exists
};
SignalState g_signal_state;
static_assert(std::atomic<int>::is_always_lock_free && std::atomic<bool>::is_always_lock_free,
              "the signal handler needs lock-free atomics");

constexpr int kStopSignals[] = {SIGUSR1, SIGTERM};

// Async-signal-safe: atomics, sigaction and raise only.
void on_stop_signal(int sig) {
  int none = 0;
  if (g_signal_state.first_signal.compare_exchange_strong(none, sig)) return;
  // A second signal: die by it now. The signal stays blocked until the handler returns, so the
  // re-raised one is delivered, with the default action, right after.
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
  raise(sig);
}

}  // namespace

struct StopSignals::Saved {
  struct sigaction old[sizeof(kStopSignals) / sizeof(kStopSignals[0])];
};

base::StatusOr<std::unique_ptr<StopSignals>> StopSignals::install() {
  bool expected = false;
  if (!g_signal_state.owned.compare_exchange_strong(expected, true)) {
    return base::Status::Internal("StopSignals::install: the signal handlers are already owned");
  }
  g_signal_state.first_signal.store(0);
  std::unique_ptr<StopSignals> s(new StopSignals());
  s->saved_ = std::make_unique<Saved>();
  struct sigaction act;
  std::memset(&act, 0, sizeof(act));
  act.sa_handler = on_stop_signal;
  sigemptyset(&act.sa_mask);
  // SA_RESTART: the first signal must not fail a blocking read or an MPI progress call with EINTR.
  act.sa_flags = SA_RESTART;
  size_t done = 0;
  for (int sig : kStopSignals) {
    if (sigaction(sig, &act, &s->saved_->old[done]) != 0) {
      const int err = errno;
      while (done > 0) {  // undo the ones installed; the destructor will not run on them
        --done;
        sigaction(kStopSignals[done], &s->saved_->old[done], nullptr);
      }
      s->saved_.reset();
      return base::Status::Internal(std::string("sigaction(") + strsignal(sig) +
                                    "): " + std::strerror(err));
    }
    ++done;
  }
  return s;
}

StopSignals::~StopSignals() {
  if (saved_) {
    for (size_t i = 0; i < sizeof(kStopSignals) / sizeof(kStopSignals[0]); ++i) {
      sigaction(kStopSignals[i], &saved_->old[i], nullptr);
    }
  }
  g_signal_state.owned.store(false);
}

bool StopSignals::requested() const { return g_signal_state.first_signal.load() != 0; }

int StopSignals::signal_number() const { return g_signal_state.first_signal.load(); }

}  // namespace dstrain::launch
