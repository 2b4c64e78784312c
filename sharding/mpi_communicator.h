#pragma once
// Communicator over MPI for CPU tensors. Open MPI's non-blocking collectives progress only inside
// MPI calls, so a dedicated communication thread owns the communicator and runs the queued
// collectives in issue order with blocking calls; the training thread keeps computing meanwhile.
#include <mpi.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "sharding/comm_trace.h"
#include "sharding/communicator.h"

namespace dstrain::sharding {

// Records the MPI error text with file and line; returns it as a distributed-fault status.
base::Status mpi_status(int rc, const char* call, const char* file, int line);
#define MPI_CHECK(call) ::dstrain::sharding::mpi_status((call), #call, __FILE__, __LINE__)

struct MpiCommShared;  // queue and fault state, shared by the thread, the owner and every Work

class MpiCommunicator final : public Communicator {
 public:
  // Duplicates `comm`, so the communicator's traffic never mixes with the caller's. MPI must be
  // initialised with at least MPI_THREAD_SERIALIZED. A Work::wait() that blocks longer than
  // `timeout_s` seconds (0: forever) returns a distributed fault instead of hanging: a stopped or
  // dead peer never completes the collective, and MPI itself cannot be interrupted.
  static base::StatusOr<std::unique_ptr<MpiCommunicator>> create(MPI_Comm comm,
                                                                 double timeout_s = 0);
  // The same with diagnostics: a non-null options.trace gets a line per collective (lane "mpi",
  // group options.group) and the wait time per kind (sharding/comm_trace.h).
  static base::StatusOr<std::unique_ptr<MpiCommunicator>> create(MPI_Comm comm,
                                                                 CommOptions options);
  // A communicator over `comm` (a sub-group of the node or of the replicas, for hybrid sharding)
  // whose collectives run on this one's thread, in one issue order with this one's: under
  // MPI_THREAD_SERIALIZED only one thread may be inside MPI, and one queue also keeps the
  // collectives of several groups in the same order on every rank. Must be destroyed before this.
  // It shares this one's trace; `group` names it on the trace's lines.
  base::StatusOr<std::unique_ptr<MpiCommunicator>> create_sharing_thread(
      MPI_Comm comm, std::string group = "sub") const;
  // After a timed-out wait the communication thread is stuck inside MPI; it is detached rather
  // than joined and the duplicate is leaked, so the caller can go on to MPI_Abort.
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::unique_ptr<Work> all_reduce(at::Tensor t, ReduceOp op) override;
  std::unique_ptr<Work> all_gather(at::Tensor shard, at::Tensor full) override;
  std::unique_ptr<Work> reduce_scatter(at::Tensor full, at::Tensor shard, ReduceOp op) override;
  std::unique_ptr<Work> broadcast(at::Tensor t, int root) override;
  base::Status barrier() override;
  base::StatusOr<double> take_wait_seconds() override;
  base::Status end_step(int64_t step) override;

 private:
  // `shared` null: a new queue and thread of its own; else the queue of the thread's owner.
  MpiCommunicator(MPI_Comm comm, CommOptions options, std::shared_ptr<MpiCommShared> shared);
  // `op` and `detail` (sizes, may be empty) name the collective in error messages; `bytes` (its
  // full buffer) is for the trace.
  std::unique_ptr<Work> enqueue(CommOp op, int64_t bytes, const std::string& detail,
                                std::function<base::Status()> fn);

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  uint64_t sequence_ = 0;  // collectives issued, for error messages; training thread only
  std::shared_ptr<CommTrace> trace_;  // null at log.level = "info": no tracing work at all
  std::string group_;
  std::shared_ptr<MpiCommShared> shared_;
  std::thread thread_;  // not joinable when the queue belongs to another communicator
};

}  // namespace dstrain::sharding
