#pragma once
// Collective communication over the data-parallel group. One interface, two implementations:
// MpiCommunicator for CPU tensors (here) and an NCCL one for CUDA tensors. Every operation is
// asynchronous: it returns a Work handle and completes in issue order; callers issue collectives
// in the same order on every rank.
#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "base/status.h"

namespace dstrain::sharding {

enum class ReduceOp { kSum, kMax };

// Completion handle of one collective. wait() blocks the calling thread until the operation is
// done and reports its status; the tensors it touched must stay alive until then.
class Work {
 public:
  virtual ~Work() = default;
  virtual base::Status wait() = 0;
  // Blocks the calling thread until the device has finished the operation, without completing
  // it (wait() still must be called). Where wait() blocks the thread anyway (MPI) there is no
  // device to wait for, and this returns at once.
  virtual base::Status synchronize_device() { return base::Status::Ok(); }
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place over `t` (contiguous).
  virtual std::unique_ptr<Work> all_reduce(at::Tensor t, ReduceOp op) = 0;
  // `full` (numel = size() * shard.numel()) receives every rank's `shard` in rank order.
  virtual std::unique_ptr<Work> all_gather(at::Tensor shard, at::Tensor full) = 0;
  // `shard` receives the reduction of block rank() of every rank's `full`.
  virtual std::unique_ptr<Work> reduce_scatter(at::Tensor full, at::Tensor shard, ReduceOp op) = 0;
  virtual std::unique_ptr<Work> broadcast(at::Tensor t, int root) = 0;
  virtual base::Status barrier() = 0;
  // Seconds the caller's compute spent held by Work::wait() since the last call: host time
  // blocked in wait() (MPI), or GPU time during which the caller's stream stood still at a wait
  // (NCCL, timed with CUDA events; the call blocks until those waits are over). What
  // communication failed to hide behind compute.
  virtual base::StatusOr<double> take_wait_seconds() = 0;
  // End of training step `step` (1-based) for the communication diagnostics (log.level =
  // "debug", sharding/comm_trace.h): writes the step's summary line. Communicators sharing one
  // trace share its summary, so one call per step on any of them covers all. Ok and nothing
  // written when the communicator has no trace.
  virtual base::Status end_step(int64_t step) = 0;
};

// Blocking convenience: issue and wait.
inline base::Status all_reduce_now(Communicator& c, at::Tensor t, ReduceOp op) {
  return c.all_reduce(std::move(t), op)->wait();
}

}  // namespace dstrain::sharding
