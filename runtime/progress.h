#pragma once
// Rank 0's console progress: a bar redrawn in place on a terminal, one line per report otherwise.
#include <chrono>
#include <cstdint>
#include <string>

namespace dstrain::runtime {

class Progress {
 public:
  Progress(int64_t first_step, int64_t total_steps, bool bar);
  // Reports step `step` (1-based count of completed steps).
  void update(int64_t step, double loss, double tokens_per_s, double lr);
  // Ends the bar's line before other output.
  void finish();
  void message(const std::string& text);

 private:
  int64_t first_step_;
  int64_t total_steps_;
  bool tty_;
  bool bar_;
  bool open_line_ = false;
  std::chrono::steady_clock::time_point start_;
};

std::string format_duration(double seconds);

}  // namespace dstrain::runtime
