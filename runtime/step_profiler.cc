#include "runtime/step_profiler.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <filesystem>
#include <set>
#include <utility>

namespace dstrain::runtime {
namespace {

namespace prof = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;
using torch::profiler::impl::ProfilerConfig;
using torch::profiler::impl::ProfilerState;

std::set<ActivityType> activities(bool cuda) {
  std::set<ActivityType> out{ActivityType::CPU};
  if (cuda) out.insert(ActivityType::CUDA);
  return out;
}

}  // namespace

StepProfiler::StepProfiler(int64_t start, int64_t steps, bool cuda, std::string trace_path)
    : start_(start),
      end_(steps > 0 ? start + steps : start),
      cuda_(cuda),
      trace_path_(std::move(trace_path)) {}

StepProfiler::~StepProfiler() {
  if (active_) (void)prof::disableProfiler();
}

void StepProfiler::before_step(int64_t step) {
  if (step != start_ || end_ <= start_ || active_) return;
  const ProfilerConfig config(ProfilerState::KINETO);
  prof::prepareProfiler(config, activities(cuda_));
  prof::enableProfiler(config, activities(cuda_));
  active_ = true;
}

base::Status StepProfiler::after_step(int64_t step) {
  if (!active_ || step + 1 != end_) return base::Status::Ok();
  active_ = false;
  std::unique_ptr<prof::ProfilerResult> result = prof::disableProfiler();
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(trace_path_).parent_path(), ec);
  if (ec) return base::Status::IOError(trace_path_ + ": " + ec.message());
  try {
    result->save(trace_path_);
  } catch (const std::exception& e) {
    return base::Status::IOError(trace_path_ + ": writing the profile failed: " + e.what());
  }
  return base::Status::Ok();
}

}  // namespace dstrain::runtime
