#pragma once
// Learning rate for an optimizer step: linear warmup, then cosine or linear decay to
// lr * min_lr_ratio at the last step, or constant.
#include <cstdint>

#include "base/config.h"

namespace dstrain::runtime {

// `step` counts from 0 (the first optimizer step); `total_steps` is train.steps.
double learning_rate(const base::OptimConfig& optim, int64_t step, int64_t total_steps);

}  // namespace dstrain::runtime
