#include "sharding/mpi_communicator.h"

#include <chrono>
#include <exception>
#include <future>
#include <limits>

namespace dstrain::sharding {
namespace {

base::StatusOr<MPI_Datatype> mpi_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kLong: return MPI_INT64_T;
    case at::kInt: return MPI_INT32_T;
    case at::kByte: return MPI_UINT8_T;
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

struct MpiCommunicator::Task {
  std::string what;
  std::function<base::Status()> fn;
  std::promise<base::Status> done;
};

namespace {
class FutureWork final : public Work {
 public:
  FutureWork(std::future<base::Status> f, std::shared_ptr<std::atomic<int64_t>> waited_ns)
      : f_(std::move(f)), waited_ns_(std::move(waited_ns)) {}
  base::Status wait() override {
    const auto start = std::chrono::steady_clock::now();
    base::Status st = f_.get();
    *waited_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::steady_clock::now() - start).count();
    return st;
  }

 private:
  std::future<base::Status> f_;
  std::shared_ptr<std::atomic<int64_t>> waited_ns_;
};
}  // namespace

base::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::create(MPI_Comm comm) {
  int provided = 0;
  RETURN_IF_ERROR(MPI_CHECK(MPI_Query_thread(&provided)));
  if (provided < MPI_THREAD_SERIALIZED) {
    return base::Status::Internal("MPI communicator needs MPI_THREAD_SERIALIZED or better");
  }
  MPI_Comm dup;
  RETURN_IF_ERROR(MPI_CHECK(MPI_Comm_dup(comm, &dup)));
  // The duplicate inherits MPI_ERRORS_ARE_FATAL from MPI_COMM_WORLD, which would abort the job
  // inside MPI before MPI_CHECK sees a return code.
  base::Status handler = MPI_CHECK(MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN));
  if (!handler.ok()) {
    MPI_Comm_free(&dup);
    return handler;
  }
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(dup));
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm) : comm_(comm) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  thread_ = std::thread([this] { run(); });
}

MpiCommunicator::~MpiCommunicator() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
  MPI_Comm_free(&comm_);
}

namespace {
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
}  // namespace

void MpiCommunicator::run() {
  for (;;) {
    std::shared_ptr<Task> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    base::Status st = run_guarded(task->fn);
    task->done.set_value(st.ok() ? st : st.with_context(task->what));
  }
}

std::unique_ptr<Work> MpiCommunicator::enqueue(std::string what, std::function<base::Status()> fn) {
  auto task = std::make_shared<Task>();
  std::future<base::Status> f = task->done.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    task->what = "rank " + std::to_string(rank_) + ": " + what + " #" + std::to_string(sequence_++);
    task->fn = std::move(fn);
    queue_.push_back(std::move(task));
  }
  cv_.notify_one();
  return std::make_unique<FutureWork>(std::move(f), waited_ns_);
}

std::unique_ptr<Work> MpiCommunicator::all_reduce(at::Tensor t, ReduceOp op) {
  return enqueue("all_reduce", [this, t, op]() -> base::Status {
    RETURN_IF_ERROR(check_cpu_contiguous(t, "all_reduce"));
    ASSIGN_OR_RETURN(const int count, mpi_count(t.numel(), "all_reduce"));
    Staged s = stage(t);
    ASSIGN_OR_RETURN(MPI_Datatype type, mpi_type(s.wire));
    RETURN_IF_ERROR(MPI_CHECK(
        MPI_Allreduce(MPI_IN_PLACE, s.wire.data_ptr(), count, type, mpi_op(op), comm_)));
    s.finish();
    return base::Status::Ok();
  });
}

std::unique_ptr<Work> MpiCommunicator::all_gather(at::Tensor shard, at::Tensor full) {
  return enqueue("all_gather", [this, shard, full]() -> base::Status {
    RETURN_IF_ERROR(check_cpu_contiguous(shard, "all_gather"));
    RETURN_IF_ERROR(check_cpu_contiguous(full, "all_gather"));
    if (full.numel() != shard.numel() * size_ || full.scalar_type() != shard.scalar_type()) {
      return base::Status::InvalidArgument("all_gather: output must hold world_size shards");
    }
    // Gathering moves bytes without arithmetic, so any dtype travels as raw bytes.
    ASSIGN_OR_RETURN(const int bytes,
                     mpi_count(shard.numel() * shard.element_size(), "all_gather (bytes)"));
    RETURN_IF_ERROR(MPI_CHECK(MPI_Allgather(shard.data_ptr(), bytes, MPI_BYTE, full.data_ptr(),
                                            bytes, MPI_BYTE, comm_)));
    return base::Status::Ok();
  });
}

std::unique_ptr<Work> MpiCommunicator::reduce_scatter(at::Tensor full, at::Tensor shard,
                                                      ReduceOp op) {
  return enqueue("reduce_scatter", [this, full, shard, op]() -> base::Status {
    RETURN_IF_ERROR(check_cpu_contiguous(full, "reduce_scatter"));
    RETURN_IF_ERROR(check_cpu_contiguous(shard, "reduce_scatter"));
    if (full.numel() != shard.numel() * size_ || full.scalar_type() != shard.scalar_type()) {
      return base::Status::InvalidArgument("reduce_scatter: input must hold world_size shards");
    }
    ASSIGN_OR_RETURN(const int count, mpi_count(shard.numel(), "reduce_scatter"));
    Staged in = stage(full);
    Staged out = stage(shard);
    ASSIGN_OR_RETURN(MPI_Datatype type, mpi_type(in.wire));
    RETURN_IF_ERROR(MPI_CHECK(MPI_Reduce_scatter_block(in.wire.data_ptr(), out.wire.data_ptr(),
                                                       count, type, mpi_op(op), comm_)));
    out.finish();
    return base::Status::Ok();
  });
}

std::unique_ptr<Work> MpiCommunicator::broadcast(at::Tensor t, int root) {
  return enqueue("broadcast", [this, t, root]() -> base::Status {
    RETURN_IF_ERROR(check_cpu_contiguous(t, "broadcast"));
    ASSIGN_OR_RETURN(const int bytes,
                     mpi_count(t.numel() * t.element_size(), "broadcast (bytes)"));
    RETURN_IF_ERROR(MPI_CHECK(MPI_Bcast(t.data_ptr(), bytes, MPI_BYTE, root, comm_)));
    return base::Status::Ok();
  });
}

base::Status MpiCommunicator::barrier() {
  return enqueue("barrier", [this]() { return MPI_CHECK(MPI_Barrier(comm_)); })->wait();
}

base::StatusOr<double> MpiCommunicator::take_wait_seconds() {
  return static_cast<double>(waited_ns_->exchange(0)) * 1e-9;
}

}  // namespace dstrain::sharding
