#include "runtime/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace dstrain::runtime {

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof(buf), "%lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  }
  return buf;
}

Progress::Progress(int64_t first_step, int64_t total_steps, bool bar)
    : first_step_(first_step),
      total_steps_(total_steps),
      tty_(isatty(STDOUT_FILENO) != 0),
      bar_(bar),
      start_(std::chrono::steady_clock::now()) {}

void Progress::update(int64_t step, double loss, double tokens_per_s, double lr) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t done = step - first_step_;
  const double eta = done > 0 ? elapsed / done * (total_steps_ - step) : 0.0;
  char stats[160];
  std::snprintf(stats, sizeof(stats), "step %lld/%lld | loss %.4f | lr %.2e | %.0f tok/s | ETA %s",
                static_cast<long long>(step), static_cast<long long>(total_steps_), loss, lr,
                tokens_per_s, format_duration(eta).c_str());
  if (tty_ && bar_) {
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(kWidth * step / std::max<int64_t>(1, total_steps_));
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::printf("\r[%s] %s", bar.c_str(), stats);
    open_line_ = true;
  } else {
    std::printf("%s\n", stats);
  }
  std::fflush(stdout);
}

void Progress::finish() {
  if (open_line_) std::printf("\n");
  open_line_ = false;
  std::fflush(stdout);
}

void Progress::message(const std::string& text) {
  finish();
  std::printf("%s\n", text.c_str());
  std::fflush(stdout);
}

}  // namespace dstrain::runtime
