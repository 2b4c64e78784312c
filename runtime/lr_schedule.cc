#include "runtime/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace dstrain::runtime {

double learning_rate(const base::OptimConfig& optim, int64_t step, int64_t total_steps) {
  const double peak = optim.lr;
  if (step < optim.warmup_steps) return peak * static_cast<double>(step + 1) / optim.warmup_steps;
  if (optim.schedule == "constant") return peak;
  const double floor = peak * optim.min_lr_ratio;
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - optim.warmup_steps - 1);
  const double progress =
      std::clamp(static_cast<double>(step - optim.warmup_steps) / decay_steps, 0.0, 1.0);
  if (optim.schedule == "linear") return peak - (peak - floor) * progress;
  return floor + 0.5 * (peak - floor) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace dstrain::runtime
