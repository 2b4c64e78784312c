#include "sharding/mpi_communicator.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <future>
#include <limits>
#include <mutex>

namespace dstrain::sharding {
namespace {

base::StatusOr<MPI_Datatype> mpi_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return MPI_FLOAT;
    case at::kDouble:
      return MPI_DOUBLE;
    case at::kLong:
      return MPI_INT64_T;
    case at::kInt:
      return MPI_INT32_T;
    case at::kByte:
      return MPI_UINT8_T;
    default:
      return base::Status::InvalidArgument(std::string("MPI communicator: unsupported dtype ") +
                                           c10::toString(t.scalar_type()));
  }
}

// MPI counts are int: a larger count would wrap and move only part of the message, silently.
base::StatusOr<int> mpi_count(int64_t n, const char* what) {
  if (n > std::numeric_limits<int>::max()) {
    return base::Status::InvalidArgument(std::string("MPI communicator: ") + what + " of " +
                                         std::to_string(n) + " elements exceeds MPI's int count");
  }
  return static_cast<int>(n);
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::kSum ? MPI_SUM : MPI_MAX; }

base::Status check_cpu_contiguous(const at::Tensor& t, const char* what) {
  if (!t.is_cpu() || !t.is_contiguous()) {
    return base::Status::InvalidArgument(std::string("MPI communicator: ") + what +
                                         " needs a contiguous CPU tensor");
  }
  return base::Status::Ok();
}

// Reduced-precision tensors travel as fp32 (MPI has no bf16 type); the result is cast back.
struct Staged {
  at::Tensor wire;
  at::Tensor user;
  void finish() {
    if (!wire.is_same(user)) user.copy_(wire);
  }
};
Staged stage(const at::Tensor& t) {
  if (t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf) {
    return {t.to(at::kFloat), t};
  }
  return {t, t};
}

}  // namespace

base::Status mpi_status(int rc, const char* call, const char* file, int line) {
  if (rc == MPI_SUCCESS) return base::Status::Ok();
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  return base::Status::Distributed(std::string(file) + ":" + std::to_string(line) + ": " + call +
                                   ": " + std::string(text, len));
}

namespace {
struct Task {
  std::string what;  // "rank R: op #N (detail)", for error messages
  std::function<base::Status()> fn;
  std::promise<base::Status> done;
  // Diagnostics, only with a trace (the group is copied: the thread may outlive its issuer).
  std::shared_ptr<CommTrace> trace;
  CommOp op = CommOp::kBarrier;
  uint64_t seq = 0;
  int64_t bytes = 0;
  std::string group;
  std::chrono::steady_clock::time_point issued;
};

double ms_between(std::chrono::steady_clock::time_point a,
                  std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}
}  // namespace

struct MpiCommShared {
  double timeout_s = 0;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::shared_ptr<Task>> queue;  // guarded by mu
  bool stopping = false;                    // guarded by mu
  std::string in_flight;                    // the task inside MPI now; guarded by mu
  // Set once a wait gave up: the thread is (or was) stuck in MPI and the peers are out of step,
  // so later tasks fail instead of running and the owner detaches the thread.
  std::atomic<bool> timed_out{false};
  // Nanoseconds callers spent blocked in wait().
  std::atomic<int64_t> waited_ns{0};
};

namespace {

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

class FutureWork final : public Work {
 public:
  FutureWork(std::future<base::Status> f, std::string what, std::shared_ptr<MpiCommShared> shared,
             CommOp op, std::shared_ptr<CommTrace> trace)
      : f_(std::move(f)),
        what_(std::move(what)),
        shared_(std::move(shared)),
        op_(op),
        trace_(std::move(trace)) {}
  base::Status wait() override {
    const auto start = std::chrono::steady_clock::now();
    base::Status st = wait_bounded();
    const int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::steady_clock::now() - start)
                           .count();
    shared_->waited_ns += ns;
    if (trace_) trace_->add_wait(op_, static_cast<double>(ns) * 1e-9);
    return st;
  }

 private:
  base::Status wait_bounded() {
    const double timeout = shared_->timeout_s;
    if (timeout <= 0 && !shared_->timed_out) return f_.get();
    // After an earlier timeout nothing queued behind the stuck collective can finish: fail fast.
    const auto limit = shared_->timed_out ? std::chrono::duration<double>(0)
                                          : std::chrono::duration<double>(timeout);
    if (f_.wait_for(limit) == std::future_status::ready) return f_.get();
    const bool first = !shared_->timed_out.exchange(true);
    std::string in_flight;
    {
      std::lock_guard<std::mutex> lock(shared_->mu);
      in_flight = shared_->in_flight;
    }
    if (!first) {
      return base::Status::Distributed(what_ + ": abandoned after an earlier collective timed out");
    }
    std::string msg = what_ + " did not complete in " + seconds_text(timeout) +
                      " s (run.collective_timeout_s): a peer died or stopped";
    if (!in_flight.empty() && in_flight != what_) msg += "; stuck in " + in_flight;
    return base::Status::Distributed(msg);
  }

  std::future<base::Status> f_;
  std::string what_;
  std::shared_ptr<MpiCommShared> shared_;
  CommOp op_;
  std::shared_ptr<CommTrace> trace_;  // null: no diagnostics
};

// LibTorch reports errors by throwing; on this thread an escaping exception would terminate the
// process, so it becomes the task's status.
base::Status run_guarded(const std::function<base::Status()>& fn) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    return base::Status::Internal(std::string("LibTorch: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return base::Status::Internal(std::string("LibTorch: ") + e.what());
  }
}

// The communication thread. It holds its own reference to the shared state so that a detached
// thread (see ~MpiCommunicator) never touches freed memory; tasks capture only values.
void run_queue(std::shared_ptr<MpiCommShared> shared) {
  MpiCommShared& s = *shared;
  for (;;) {
    std::shared_ptr<Task> task;
    {
      std::unique_lock<std::mutex> lock(s.mu);
      s.in_flight.clear();
      s.cv.wait(lock, [&s] { return s.stopping || !s.queue.empty(); });
      if (s.queue.empty()) return;
      task = std::move(s.queue.front());
      s.queue.pop_front();
      s.in_flight = task->what;
    }
    const auto started = std::chrono::steady_clock::now();
    base::Status st =
        s.timed_out ? base::Status::Distributed("abandoned after an earlier collective timed out")
                    : run_guarded(task->fn);
    if (task->trace) {
      task->trace->record({task->op, task->group, "mpi", task->seq, task->bytes},
                          {{"queue_ms", ms_between(task->issued, started)},
                           {"run_ms", ms_between(started, std::chrono::steady_clock::now())}},
                          st.ok());
    }
    task->done.set_value(st.ok() ? st : st.with_context(task->what));
  }
}

// Runs `fn` on the communication thread of `shared` and waits for it: the one thread allowed
// inside MPI while that thread exists.
base::Status run_on_queue(MpiCommShared& shared, const std::string& what,
                          std::function<base::Status()> fn) {
  auto task = std::make_shared<Task>();
  std::future<base::Status> f = task->done.get_future();
  task->what = what;
  task->fn = std::move(fn);
  {
    std::lock_guard<std::mutex> lock(shared.mu);
    shared.queue.push_back(std::move(task));
  }
  shared.cv.notify_one();
  return f.get();
}

// A duplicate of `comm` whose errors come back as codes: the duplicate would otherwise inherit
// MPI_ERRORS_ARE_FATAL from MPI_COMM_WORLD and abort the job inside MPI before MPI_CHECK sees it.
base::StatusOr<MPI_Comm> duplicate(MPI_Comm comm) {
  MPI_Comm dup;
  RETURN_IF_ERROR(MPI_CHECK(MPI_Comm_dup(comm, &dup)));
  base::Status handler = MPI_CHECK(MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN));
  if (!handler.ok()) {
    MPI_Comm_free(&dup);
    return handler;
  }
  return dup;
}

std::string describe(const at::Tensor& t) {
  return std::to_string(t.numel()) + " x " + c10::toString(t.scalar_type());
}

// Undefined tensors are reported by the task; here they count as empty.
int64_t nbytes(const at::Tensor& t) { return t.defined() ? static_cast<int64_t>(t.nbytes()) : 0; }

}  // namespace

base::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::create(MPI_Comm comm,
                                                                         double timeout_s) {
  CommOptions options;
  options.timeout_s = timeout_s;
  return create(comm, std::move(options));
}

base::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::create(MPI_Comm comm,
                                                                         CommOptions options) {
  if (!(options.timeout_s >= 0)) {
    return base::Status::InvalidArgument("MPI communicator: timeout must be >= 0 seconds, got " +
                                         seconds_text(options.timeout_s));
  }
  int provided = 0;
  RETURN_IF_ERROR(MPI_CHECK(MPI_Query_thread(&provided)));
  if (provided < MPI_THREAD_SERIALIZED) {
    return base::Status::Internal("MPI communicator needs MPI_THREAD_SERIALIZED or better");
  }
  ASSIGN_OR_RETURN(MPI_Comm dup, duplicate(comm));
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(dup, std::move(options), nullptr));
}

base::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::create_sharing_thread(
    MPI_Comm comm, std::string group) const {
  MPI_Comm dup = MPI_COMM_NULL;
  RETURN_IF_ERROR(run_on_queue(*shared_, "duplicating a communicator", [comm, &dup]() {
    ASSIGN_OR_RETURN(dup, duplicate(comm));
    return base::Status::Ok();
  }));
  CommOptions options;
  options.timeout_s = shared_->timeout_s;
  options.trace = trace_;
  options.group = std::move(group);
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(dup, std::move(options), shared_));
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, CommOptions options,
                                 std::shared_ptr<MpiCommShared> shared)
    : comm_(comm),
      trace_(std::move(options.trace)),
      group_(std::move(options.group)),
      shared_(std::move(shared)) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  if (!shared_) {
    shared_ = std::make_shared<MpiCommShared>();
    shared_->timeout_s = options.timeout_s;
    thread_ = std::thread(run_queue, shared_);
  }
}

MpiCommunicator::~MpiCommunicator() {
  if (!thread_.joinable()) {
    // The owner's thread may still run collectives we queued: freeing the duplicate behind them
    // on that thread keeps MPI single-threaded and the communicator alive until they are done.
    if (!shared_->timed_out) {
      (void)run_on_queue(*shared_, "freeing a communicator",
                         [comm = comm_]() mutable { return MPI_CHECK(MPI_Comm_free(&comm)); });
    }
    return;
  }
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    shared_->stopping = true;
  }
  shared_->cv.notify_all();
  if (shared_->timed_out) {
    // Joining would wait forever on a collective a dead peer never finishes, and freeing the
    // communicator under it is not allowed; the process is about to MPI_Abort anyway.
    thread_.detach();
    return;
  }
  thread_.join();
  MPI_Comm_free(&comm_);
}

std::unique_ptr<Work> MpiCommunicator::enqueue(CommOp op, int64_t bytes, const std::string& detail,
                                               std::function<base::Status()> fn) {
  auto task = std::make_shared<Task>();
  std::future<base::Status> f = task->done.get_future();
  const uint64_t seq = sequence_++;
  task->what = "rank " + std::to_string(rank_) + ": " + comm_op_name(op) + " #" +
               std::to_string(seq) + (detail.empty() ? "" : " (" + detail + ")");
  task->fn = std::move(fn);
  if (trace_) {
    trace_->count(op, bytes);
    task->trace = trace_;
    task->op = op;
    task->seq = seq;
    task->bytes = bytes;
    task->group = group_;
    task->issued = std::chrono::steady_clock::now();
  }
  std::string name = task->what;
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    shared_->queue.push_back(std::move(task));
  }
  shared_->cv.notify_one();
  return std::make_unique<FutureWork>(std::move(f), std::move(name), shared_, op, trace_);
}

std::unique_ptr<Work> MpiCommunicator::all_reduce(at::Tensor t, ReduceOp op) {
  return enqueue(
      CommOp::kAllReduce, nbytes(t), describe(t), [comm = comm_, t, op]() -> base::Status {
        RETURN_IF_ERROR(check_cpu_contiguous(t, "all_reduce"));
        ASSIGN_OR_RETURN(const int count, mpi_count(t.numel(), "all_reduce"));
        Staged s = stage(t);
        ASSIGN_OR_RETURN(MPI_Datatype type, mpi_type(s.wire));
        RETURN_IF_ERROR(MPI_CHECK(
            MPI_Allreduce(MPI_IN_PLACE, s.wire.data_ptr(), count, type, mpi_op(op), comm)));
        s.finish();
        return base::Status::Ok();
      });
}

std::unique_ptr<Work> MpiCommunicator::all_gather(at::Tensor shard, at::Tensor full) {
  return enqueue(
      CommOp::kAllGather, nbytes(full), describe(full),
      [comm = comm_, size = size_, shard, full]() -> base::Status {
        RETURN_IF_ERROR(check_cpu_contiguous(shard, "all_gather"));
        RETURN_IF_ERROR(check_cpu_contiguous(full, "all_gather"));
        if (full.numel() != shard.numel() * size || full.scalar_type() != shard.scalar_type()) {
          return base::Status::InvalidArgument("all_gather: output must hold world_size shards");
        }
        // Gathering moves bytes without arithmetic, so any dtype travels as raw bytes.
        ASSIGN_OR_RETURN(const int bytes,
                         mpi_count(shard.numel() * shard.element_size(), "all_gather (bytes)"));
        RETURN_IF_ERROR(MPI_CHECK(MPI_Allgather(shard.data_ptr(), bytes, MPI_BYTE, full.data_ptr(),
                                                bytes, MPI_BYTE, comm)));
        return base::Status::Ok();
      });
}

std::unique_ptr<Work> MpiCommunicator::reduce_scatter(at::Tensor full, at::Tensor shard,
                                                      ReduceOp op) {
  return enqueue(
      CommOp::kReduceScatter, nbytes(full), describe(full),
      [comm = comm_, size = size_, full, shard, op]() -> base::Status {
        RETURN_IF_ERROR(check_cpu_contiguous(full, "reduce_scatter"));
        RETURN_IF_ERROR(check_cpu_contiguous(shard, "reduce_scatter"));
        if (full.numel() != shard.numel() * size || full.scalar_type() != shard.scalar_type()) {
          return base::Status::InvalidArgument("reduce_scatter: input must hold world_size shards");
        }
        ASSIGN_OR_RETURN(const int count, mpi_count(shard.numel(), "reduce_scatter"));
        Staged in = stage(full);
        Staged out = stage(shard);
        ASSIGN_OR_RETURN(MPI_Datatype type, mpi_type(in.wire));
        RETURN_IF_ERROR(MPI_CHECK(MPI_Reduce_scatter_block(in.wire.data_ptr(), out.wire.data_ptr(),
                                                           count, type, mpi_op(op), comm)));
        out.finish();
        return base::Status::Ok();
      });
}

std::unique_ptr<Work> MpiCommunicator::broadcast(at::Tensor t, int root) {
  return enqueue(CommOp::kBroadcast, nbytes(t), describe(t),
                 [comm = comm_, t, root]() -> base::Status {
                   RETURN_IF_ERROR(check_cpu_contiguous(t, "broadcast"));
                   ASSIGN_OR_RETURN(const int bytes,
                                    mpi_count(t.numel() * t.element_size(), "broadcast (bytes)"));
                   RETURN_IF_ERROR(MPI_CHECK(MPI_Bcast(t.data_ptr(), bytes, MPI_BYTE, root, comm)));
                   return base::Status::Ok();
                 });
}

base::Status MpiCommunicator::barrier() {
  return enqueue(CommOp::kBarrier, 0, "", [comm = comm_]() { return MPI_CHECK(MPI_Barrier(comm)); })
      ->wait();
}

base::StatusOr<double> MpiCommunicator::take_wait_seconds() {
  return static_cast<double>(shared_->waited_ns.exchange(0)) * 1e-9;
}

base::Status MpiCommunicator::end_step(int64_t step) {
  return trace_ ? trace_->end_step(step) : base::Status::Ok();
}

}  // namespace dstrain::sharding
