#pragma once
// Preemption signals of a training run (interface.md, exit code 75). The first SIGUSR1 or SIGTERM
// only sets a flag; the trainer polls it at each step boundary, the ranks agree, commit a
// checkpoint and exit 75. A second signal to the same process ends it at once: the handler
// restores the default action and re-raises, so the process dies by that signal (mpirun then
// reports a rank killed by a signal and exits non-zero, which a batch script does not mistake
// for "checkpoint committed": the last committed checkpoint stays what --resume auto finds).
//
// Under Open MPI's mpirun send SIGUSR1: mpirun forwards SIGUSR1/SIGUSR2 to every rank and keeps
// waiting. A SIGTERM sent to mpirun is forwarded too, but followed by SIGKILL a few seconds later,
// usually before a checkpoint can commit; SIGTERM is caught for launchers that signal the ranks
// directly (srun, a container runtime's stop).
#include <memory>

#include "base/status.h"

namespace dstrain::launch {

class StopSignals {
 public:
  // Installs the SIGUSR1 and SIGTERM handlers; at most one owner at a time in a process.
  static base::StatusOr<std::unique_ptr<StopSignals>> install();
  // Restores the handlers found at install().
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // True once a first signal arrived (any thread may call it).
  bool requested() const;
  // The first signal received; 0 while none.
  int signal_number() const;

 private:
  StopSignals() = default;
  struct Saved;
  std::unique_ptr<Saved> saved_;
};

}  // namespace dstrain::launch
