#include "runtime/lr_schedule.h"

#include <gtest/gtest.h>

namespace dstrain::runtime {
namespace {

base::OptimConfig optim(const std::string& schedule, int64_t warmup) {
  base::OptimConfig o;
  o.lr = 1.0;
  o.min_lr_ratio = 0.1;
  o.warmup_steps = warmup;
  o.schedule = schedule;
  return o;
}

TEST(LrSchedule, WarmupRisesLinearlyToPeak) {
  auto o = optim("cosine", 4);
  EXPECT_DOUBLE_EQ(learning_rate(o, 0, 20), 0.25);
  EXPECT_DOUBLE_EQ(learning_rate(o, 1, 20), 0.5);
  EXPECT_DOUBLE_EQ(learning_rate(o, 3, 20), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(o, 4, 20), 1.0);  // first decay step starts at the peak
}

TEST(LrSchedule, CosineAndLinearEndAtTheFloor) {
  for (const char* s : {"cosine", "linear"}) {
    auto o = optim(s, 2);
    EXPECT_DOUBLE_EQ(learning_rate(o, 19, 20), 0.1) << s;
    double prev = 2.0;
    for (int64_t step = 2; step < 20; ++step) {
      const double lr = learning_rate(o, step, 20);
      EXPECT_LE(lr, prev) << s << " step " << step;
      prev = lr;
    }
  }
  // Half way through the decay, cosine sits at the midpoint between peak and floor.
  auto o = optim("cosine", 0);
  EXPECT_NEAR(learning_rate(o, 5, 11), 0.55, 1e-12);
  auto l = optim("linear", 0);
  EXPECT_NEAR(learning_rate(l, 5, 11), 0.55, 1e-12);
}

TEST(LrSchedule, ConstantStaysAtPeakAfterWarmup) {
  auto o = optim("constant", 3);
  EXPECT_DOUBLE_EQ(learning_rate(o, 0, 10), 1.0 / 3);
  EXPECT_DOUBLE_EQ(learning_rate(o, 9, 10), 1.0);
}

}  // namespace
}  // namespace dstrain::runtime
