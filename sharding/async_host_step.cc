#include "sharding/async_host_step.h"

#include <exception>

namespace dstrain::sharding {

std::unique_ptr<AsyncHostStep> AsyncHostStep::start(Body body) {
  std::unique_ptr<AsyncHostStep> step(new AsyncHostStep());
  AsyncHostStep* self = step.get();
  self->thread_ = std::thread([self, body = std::move(body)]() {
    base::Status st;
    try {
      st = body([self](int i) { self->shard_done(i); });
    } catch (const std::exception& e) {
      st = base::Status::Internal(std::string("host optimizer step: ") + e.what());
    }
    std::lock_guard<std::mutex> lock(self->mu_);
    self->status_ = st;
    self->finished_ = true;
    self->cv_.notify_all();
  });
  return step;
}

AsyncHostStep::~AsyncHostStep() {
  if (thread_.joinable()) thread_.join();
}

void AsyncHostStep::shard_done(int i) {
  std::lock_guard<std::mutex> lock(mu_);
  if (i + 1 > done_) done_ = i + 1;
  cv_.notify_all();
}

base::Status AsyncHostStep::wait_for(int i) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return done_ > i || finished_; });
  if (done_ > i) return base::Status::Ok();
  return status_.ok()
             ? base::Status::Internal("host optimizer step ended before shard " + std::to_string(i))
             : status_;
}

base::Status AsyncHostStep::wait_all() {
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

}  // namespace dstrain::sharding
