#pragma once
// One host optimizer step run on its own thread (offload.overlap_step), so that the next step's
// forward overlaps the CPU AdamW: the forward of a unit waits only for that unit's shards
// (wait_for), not for the whole step. The body reports each shard as its updated parameters land
// where the forward reads them; shards finish in order, so one counter tells them apart.
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "base/status.h"

namespace dstrain::sharding {

class AsyncHostStep {
 public:
  // Called by the body, on its thread, once shard `i` is done (in increasing order of i).
  using ShardDone = std::function<void(int)>;
  using Body = std::function<base::Status(const ShardDone&)>;

  // Starts `body` on a new thread at once.
  static std::unique_ptr<AsyncHostStep> start(Body body);
  // Joins the thread: a step never outlives the state it writes.
  ~AsyncHostStep();
  AsyncHostStep(const AsyncHostStep&) = delete;
  AsyncHostStep& operator=(const AsyncHostStep&) = delete;

  // Blocks until shard `i` is done. An error of the step comes back here when it stopped the
  // step before shard `i`; later errors come back from wait_all().
  base::Status wait_for(int i);
  // Blocks until the body has returned; its status.
  base::Status wait_all();

 private:
  AsyncHostStep() = default;
  void shard_done(int i);

  std::mutex mu_;
  std::condition_variable cv_;
  int done_ = 0;           // shards [0, done_) are done
  bool finished_ = false;  // the body has returned
  base::Status status_;    // the body's status, once finished_
  std::thread thread_;
};

}  // namespace dstrain::sharding
