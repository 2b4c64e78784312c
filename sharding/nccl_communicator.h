#pragma once
// Communicator over NCCL for CUDA tensors on one device per rank (DESIGN.md, "GPU ordering").
//
// Three NCCL communicators over the same ranks, each with its own non-blocking stream ("lane"),
// because NCCL runs one communicator's operations strictly in issue order:
//   main    all_reduce, broadcast, barrier (the communicator made by ncclCommInitRank)
//   gather  all_gather                     (ncclCommSplit of main)
//   scatter reduce_scatter                 (ncclCommSplit of main)
// so a stage-3 prefetch all-gather overlaps the previous unit's gradient reduce-scatter.
// Operations complete in issue order within a lane; across lanes they overlap.
//
// Stream semantics, never a host synchronisation on the hot path: an operation first makes its
// lane wait for the work queued so far on the caller's current stream of `device()` (so inputs
// written by compute are ready), then enqueues the NCCL call on the lane. Work::wait() makes the
// caller's current stream wait for the operation and returns at once; it does not block the host
// (reading the result on the host, e.g. .cpu(), synchronises that stream as usual). A collective
// that consumes another lane's output must be issued after wait() on the producer's Work.
//
// The communicator holds a reference to every tensor of an operation until the device has
// finished it (checked, without blocking, at each later operation, at barrier and at
// destruction), so the caller may drop tensors and Work at any time (a Work may also outlive the
// communicator) and the caching allocator never hands their memory out early; no recordStream,
// so no stream must outlive the tensors.
//
// Every rank issues the same operations in the same order, as NCCL requires; argument errors
// (wrong device, dtype, size) are found before anything is enqueued and reported by wait().
// Not thread-safe: one thread issues all operations.
//
// A dead or stopped peer never hangs the job:
//  - the communicators are non-blocking: a call that needs a peer (initialisation, a split, the
//    first operation that connects) settles in the background and is waited for with the
//    timeout, so no NCCL call can wait for a missing peer forever;
//  - a watchdog thread polls every communicator's asynchronous error and the oldest unfinished
//    operation of each lane; when one has not completed within `timeout_s`
//    (run.collective_timeout_s) of being issued, or NCCL reports an error, it aborts every
//    communicator (ncclCommAbort) and every later operation fails with a kDistributed status
//    naming this rank, the operation, its sequence number and lane;
//  - a monitor thread that makes no CUDA or NCCL call ends the process (MPI_Abort, then _exit)
//    when the watchdog itself is blocked in a CUDA call past the timeout, or when the process
//    still runs a few seconds after a reported fault: a host synchronisation on a stream that
//    waits for an aborted operation can stay blocked (measured on an H100).
#include <mpi.h>
#include <nccl.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "sharding/comm_trace.h"
#include "sharding/communicator.h"
#include "sharding/cuda_handles.h"
#include "sharding/nccl_factory.h"

namespace dstrain::sharding {

// Records NCCL's error string and its last detailed message with file and line; returns it as a
// distributed-fault status.
base::Status nccl_status(ncclResult_t rc, const char* call, const char* file, int line);
#define NCCL_CHECK(call) ::dstrain::sharding::nccl_status((call), #call, __FILE__, __LINE__)

// The communicators are non-blocking: a call may return ncclInProgress while NCCL completes it in
// the background (initialising, splitting, connecting to a peer, finalising), and nothing else
// may be issued on that communicator until its state leaves ncclInProgress. nccl_wait_ready()
// polls the state until then, for at most `timeout_s` (0: forever), and returns the outcome or a
// timeout fault that begins with `what`; nccl_settle() does so for a call that returned `rc`.
base::Status nccl_wait_ready(ncclComm_t comm, double timeout_s, const std::string& what);
base::Status nccl_settle(ncclComm_t comm, ncclResult_t rc, double timeout_s,
                         const std::string& what, const char* call, const char* file, int line);

// One NCCL communicator handle. Destruction finalises and destroys it (finalisation waiting at
// most `timeout_s`, 0: forever), or aborts it when NCCL reports an asynchronous error, its last
// call never settled or finalisation did not finish (all of which could wait for a dead peer).
class NcclComm {
 public:
  NcclComm() = default;
  NcclComm(ncclComm_t comm, double timeout_s) : comm_(comm), timeout_s_(timeout_s) {}
  ~NcclComm();
  NcclComm(NcclComm&& other) noexcept;
  NcclComm& operator=(NcclComm&& other) noexcept;
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  ncclComm_t get() const { return comm_; }
  // The communicator's asynchronous error (a failed kernel, a lost peer); Ok when none.
  base::Status async_error() const;
  // Releases the communicator at once, cancelling its pending operations.
  void abort();

 private:
  void reset();
  ncclComm_t comm_ = nullptr;
  double timeout_s_ = 0;
};

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `comm`: every rank checks and selects `device`, the ranks agree that all of
  // them could (so a bad device on one rank fails every rank instead of hanging the others),
  // rank 0 creates the NCCL unique id and broadcasts it over `comm`, and each rank creates the
  // main communicator (non-blocking mode: each call settles within `timeout_s`, else every rank
  // fails instead of waiting for a missing peer) and splits the gather and scatter ones off it.
  // `device`
  // becomes the calling thread's current device and stays so (one process per GPU); operations
  // select it themselves when called with another device current.
  // timeout_s: how long an operation may stay unfinished before the watchdog aborts; 0: never.
  static base::StatusOr<std::unique_ptr<NcclCommunicator>> create(MPI_Comm comm, int device,
                                                                  double timeout_s);
  // The same with diagnostics: a non-null options.trace gets, at each take_wait_seconds(), a
  // line per waited operation with its wait time (group options.group; sharding/comm_trace.h).
  static base::StatusOr<std::unique_ptr<NcclCommunicator>> create(MPI_Comm comm, int device,
                                                                  CommOptions options);
  // NCCL_VERSION_CODE of the loaded library (e.g. 22809 for 2.28.9).
  static base::StatusOr<int> nccl_version();
  // Collective over this communicator's ranks: the ranks that pass the same `color` (>= 0) form
  // a new communicator on the same device, ranked by `key` (ncclCommSplit of every lane, no
  // bootstrap over MPI), with its own watchdog over options.timeout_s.
  base::StatusOr<std::unique_ptr<NcclCommunicator>> split(int color, int key, CommOptions options);

  // Waits for each lane's queued work, releases the tensors it held, then finalises and destroys
  // the communicators. Must run before MPI_Finalize (the launch World owns this order).
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int device() const { return device_; }

  std::unique_ptr<Work> all_reduce(at::Tensor t, ReduceOp op) override;
  std::unique_ptr<Work> all_gather(at::Tensor shard, at::Tensor full) override;
  std::unique_ptr<Work> reduce_scatter(at::Tensor full, at::Tensor shard, ReduceOp op) override;
  std::unique_ptr<Work> broadcast(at::Tensor t, int root) override;
  // An all-reduce of one element on the main lane (after the caller's queued compute), then a
  // host synchronisation of every lane: when it returns, all collectives this rank issued so far
  // are complete.
  base::Status barrier() override;
  base::StatusOr<double> take_wait_seconds() override;
  base::Status end_step(int64_t step) override;

  // What an operation was, for the diagnostics; `lane` is a string literal.
  struct OpInfo {
    CommOp op = CommOp::kAllReduce;
    uint64_t seq = 0;
    const char* lane = "";
    int64_t bytes = 0;
  };
  // The two timing events around one Work::wait() on the caller's stream.
  struct TimedWait {
    CudaEvent before;
    CudaEvent after;
    OpInfo op;
  };
  // Waits recorded and not yet read, and a pool of event pairs already read: a wait takes a pair
  // from the pool (creating one only when it is empty) and take_wait_seconds() returns them, so
  // the steady state creates no events (about a hundred waits a step). The pool holds at most
  // as many pairs as the most waits between two reads. Shared with the Works, which may outlive
  // the communicator; the events are destroyed with the last owner.
  struct WaitLog {
    std::mutex mu;
    std::vector<TimedWait> waits;
    std::vector<std::pair<CudaEvent, CudaEvent>> pool;
    // A pair of timing events on `device`: from the pool, or new.
    base::StatusOr<std::pair<CudaEvent, CudaEvent>> acquire(int device);
    // Back into the pool, once their timing has been read.
    void recycle(std::vector<TimedWait> read);
  };

  // Polls every communicator for an asynchronous error; host-only and non-blocking, so a
  // watchdog can call it between steps and abort() on an error or a timeout.
  base::Status check_async_errors() const;
  // Aborts every communicator (pending operations are cancelled); later operations fail with
  // `why`.
  void abort(base::Status why = base::Status::Distributed("NCCL communicator was aborted"));

 private:
  enum class LaneId { kMain = 0, kGather = 1, kScatter = 2 };
  static constexpr int kLanes = 3;
  // An operation the device may still be running, and the tensors it reads or writes.
  struct InFlight {
    std::shared_ptr<const CudaEvent> done;
    std::vector<at::Tensor> tensors;
    std::chrono::steady_clock::time_point issued;
    std::string tag;  // "rank R: op #N (lane)"
  };
  struct Lane {
    const char* name = "";
    NcclComm comm;
    CudaStream stream;
    CudaEvent inputs_ready;          // recorded on the caller's stream, waited on by the lane
    std::deque<InFlight> in_flight;  // issue order, which is completion order on one stream
  };

  NcclCommunicator(int rank, int size, int device, CommOptions options)
      : rank_(rank),
        size_(size),
        device_(device),
        timeout_s_(options.timeout_s),
        trace_(std::move(options.trace)),
        group_(std::move(options.group)) {}
  static base::StatusOr<ncclUniqueId> share_unique_id(MPI_Comm comm, int rank);
  base::Status init_lanes(const ncclUniqueId& id);
  // Names the lanes, creates their streams and events and starts the watchdog (when timeout_s_
  // > 0); the lanes' communicators exist.
  base::Status finish_lanes();
  // abort() with mu_ held by the caller.
  void abort_locked(base::Status why);
  Lane& lane(LaneId id) { return lanes_[static_cast<int>(id)]; }
  // Drops the references of every operation the device has finished, on every lane. Caller
  // holds mu_.
  base::Status release_finished();
  // The watchdog thread's loop, and one look at the lanes: a fault, or Ok.
  void watch();
  base::Status find_fault();
  // The monitor thread's loop (see watch_round_ns_). start_watchdog() starts both threads;
  // stop_watchdog() stops them, the watchdog first (sharding/nccl_watchdog.cc).
  void monitor();
  void start_watchdog();
  void stop_watchdog();
  // A fault found (an operation overdue, an NCCL error): marks its moment for the monitor, says
  // it on stderr and aborts the communicators. Caller holds mu_.
  void fault_locked(base::Status fault);
  // check_async_errors() with mu_ held by the caller.
  base::Status async_errors_locked() const;

  // Checks that each tensor is a contiguous CUDA tensor on device() with `dtype`.
  base::Status check_tensors(const std::vector<at::Tensor>& tensors, at::ScalarType dtype) const;
  // Orders `lane` after the caller's current stream, enqueues `call` on it, keeps `tensors` alive
  // until it is done and returns a Work for its completion; `check` runs first and, when it fails,
  // nothing is enqueued and the Work reports its error.
  template <typename Check, typename Call>
  std::unique_ptr<Work> issue(LaneId lane_id, CommOp op, std::vector<at::Tensor> tensors,
                              Check check, Call call);

  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;
  double timeout_s_ = 0;
  std::shared_ptr<CommTrace> trace_;  // null at log.level = "info": no tracing work at all
  std::string group_;
  uint64_t sequence_ = 0;  // operations issued, for error messages
  // Guards the lanes' communicators and in-flight lists between the issuing thread and the
  // watchdog, and failure_.
  mutable std::mutex mu_;
  std::atomic<bool> aborted_{false};
  base::Status failure_;  // why the communicators were aborted
  std::array<Lane, kLanes> lanes_;
  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  bool stopping_ = false;  // guarded by watch_mu_
  std::thread watchdog_;
  // The watchdog's own watchdog, which makes no CUDA or NCCL call (a CUDA call can block behind
  // another thread's device-wide synchronisation on a kernel that waits for a dead peer): it ends
  // the process when the watchdog has not finished a round for timeout_s_ + a grace period, or
  // when the process still runs a grace period after a fault was declared (the main thread stuck
  // in CUDA). Steady-clock nanoseconds; 0: never.
  std::atomic<int64_t> watch_round_ns_{0};
  std::atomic<int64_t> fault_ns_{0};
  std::mutex oldest_mu_;
  std::string oldest_;  // the oldest unfinished operation the watchdog last saw; oldest_mu_
  std::mutex monitor_mu_;
  std::condition_variable monitor_cv_;
  bool monitor_stopping_ = false;  // guarded by monitor_mu_
  std::thread monitor_;
  std::shared_ptr<WaitLog> wait_log_ = std::make_shared<WaitLog>();  // shared with Works
};

}  // namespace dstrain::sharding
