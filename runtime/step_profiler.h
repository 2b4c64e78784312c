#pragma once
// The torch (Kineto) profiler around a window of training steps (run.profile_start,
// run.profile_steps): CPU operators and, on GPUs, every kernel and copy with its stream, written
// as a Chrome trace per rank (run.dir/profile/rank<R>.json) that Perfetto, chrome://tracing or
// tests/bench/profile_summary.py read. Off by default; profiling slows the profiled steps.
#include <cstdint>
#include <string>

#include "base/status.h"

namespace dstrain::runtime {

class StepProfiler {
 public:
  // start: first step (0-based, as the trainer counts) to profile; steps: how many; 0 = off.
  StepProfiler(int64_t start, int64_t steps, bool cuda, std::string trace_path);
  ~StepProfiler();  // stops a window still open, discarding it
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;

  void before_step(int64_t step);
  // Writes the trace after the window's last step.
  base::Status after_step(int64_t step);

 private:
  int64_t start_;
  int64_t end_;
  bool cuda_;
  std::string trace_path_;
  bool active_ = false;
};

}  // namespace dstrain::runtime
