#pragma once
// Communicator over MPI for CPU tensors. Open MPI's non-blocking collectives progress only inside
// MPI calls, so a dedicated communication thread owns the communicator and runs the queued
// collectives in issue order with blocking calls; the training thread keeps computing meanwhile.
#include <mpi.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "sharding/communicator.h"

namespace dstrain::sharding {

// Records the MPI error text with file and line; returns it as a distributed-fault status.
base::Status mpi_status(int rc, const char* call, const char* file, int line);
#define MPI_CHECK(call) ::dstrain::sharding::mpi_status((call), #call, __FILE__, __LINE__)

class MpiCommunicator final : public Communicator {
 public:
  // Duplicates `comm`, so the communicator's traffic never mixes with the caller's. MPI must be
  // initialised with at least MPI_THREAD_SERIALIZED.
  static base::StatusOr<std::unique_ptr<MpiCommunicator>> create(MPI_Comm comm);
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

 private:
  struct Task;
  explicit MpiCommunicator(MPI_Comm comm);
  std::unique_ptr<Work> enqueue(std::string what, std::function<base::Status()> fn);
  void run();  // the communication thread

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  uint64_t sequence_ = 0;  // collectives issued, for error messages
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Task>> queue_;
  bool stopping_ = false;
  std::thread thread_;
  // Nanoseconds callers spent blocked in wait(); shared with Works that may outlive us.
  std::shared_ptr<std::atomic<int64_t>> waited_ns_ = std::make_shared<std::atomic<int64_t>>(0);
};

}  // namespace dstrain::sharding
