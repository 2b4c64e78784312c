#include "sharding/nccl_communicator.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <thread>
#include <utility>

#include "base/poll.h"
#include "sharding/mpi_communicator.h"  // MPI_CHECK

namespace dstrain::sharding {
namespace {

// LibTorch reports errors by throwing; they become statuses at this boundary.
template <typename Fn>
base::Status torch_guarded(Fn&& fn) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    return base::Status::Internal(std::string("LibTorch: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return base::Status::Internal(std::string("LibTorch: ") + e.what());
  }
}

base::StatusOr<ncclDataType_t> nccl_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return ncclFloat32;
    case at::kBFloat16:
      return ncclBfloat16;
    case at::kHalf:
      return ncclFloat16;
    case at::kDouble:
      return ncclFloat64;
    case at::kLong:
      return ncclInt64;
    case at::kInt:
      return ncclInt32;
    case at::kByte:
      return ncclUint8;
    default:
      return base::Status::InvalidArgument(std::string("NCCL communicator: unsupported dtype ") +
                                           c10::toString(t));
  }
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::kSum ? ncclSum : ncclMax; }

// Non-blocking mode unless the environment sets NCCL_COMM_BLOCKING (NCCL's own variable, then
// NCCL decides): no NCCL call waits for a peer inside NCCL; a call that needs one (initialisation,
// a split, the first operation that connects to a peer, finalisation) finishes in the background
// and settle() waits for it with the communicator's timeout. commName shows in NCCL's logs.
ncclConfig_t nonblocking_config(const char* name) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  if (std::getenv("NCCL_COMM_BLOCKING") == nullptr) config.blocking = 0;
  config.commName = name;
  return config;
}

// The lanes' names, in LaneId order; the split communicators' lanes have the same names.
constexpr const char* kLaneNames[] = {"dstrain.main", "dstrain.gather", "dstrain.scatter"};

// A finished operation: an argument error found before anything was enqueued.
class ReadyWork final : public Work {
 public:
  explicit ReadyWork(base::Status status) : status_(std::move(status)) {}
  base::Status wait() override { return status_; }

 private:
  base::Status status_;
};

// An enqueued operation: `done` is recorded on its lane after the NCCL call. The event is shared
// with the communicator's in-flight list, so a Work may outlive the communicator.
class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<const CudaEvent> done, int device, std::string what,
           std::shared_ptr<NcclCommunicator::WaitLog> log, NcclCommunicator::OpInfo op)
      : done_(std::move(done)),
        device_(device),
        what_(std::move(what)),
        log_(std::move(log)),
        op_(op) {}
  // Orders the caller's current stream (of the communicator's device) after the operation,
  // between two timing events: the time between them is how long the stream stood still.
  base::Status wait() override {
    base::Status st = torch_guarded([this]() -> base::Status {
      const cudaStream_t current =
          at::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_)).stream();
      // A pair that fails to record is dropped (destroyed) rather than returned to the pool.
      ASSIGN_OR_RETURN(auto events, log_->acquire(device_));
      RETURN_IF_ERROR(events.first.record(current));
      RETURN_IF_ERROR(done_->make_wait(current));
      RETURN_IF_ERROR(events.second.record(current));
      std::lock_guard<std::mutex> lock(log_->mu);
      log_->waits.push_back({std::move(events.first), std::move(events.second), op_});
      return base::Status::Ok();
    });
    return st.with_context(what_);
  }
  base::Status synchronize_device() override { return done_->synchronize().with_context(what_); }

 private:
  std::shared_ptr<const CudaEvent> done_;
  int device_;
  std::string what_;
  std::shared_ptr<NcclCommunicator::WaitLog> log_;
  NcclCommunicator::OpInfo op_;
};

}  // namespace

base::Status nccl_status(ncclResult_t rc, const char* call, const char* file, int line) {
  if (rc == ncclSuccess) return base::Status::Ok();
  // ncclGetLastError holds the detailed message of the calling thread's last failure.
  const char* last = ncclGetLastError(nullptr);
  return base::Status::Distributed(
      std::string(file) + ":" + std::to_string(line) + ": " + call + ": " + ncclGetErrorString(rc) +
      (last != nullptr && *last != '\0' ? std::string(": ") + last : std::string()));
}

base::Status nccl_wait_ready(ncclComm_t comm, double timeout_s, const std::string& what) {
  ncclResult_t state = ncclSuccess;
  ASSIGN_OR_RETURN(const bool settled,
                   base::poll_until(
                       [&]() -> base::StatusOr<bool> {
                         RETURN_IF_ERROR(NCCL_CHECK(ncclCommGetAsyncError(comm, &state)));
                         return state != ncclInProgress;
                       },
                       timeout_s));
  if (!settled) {
    return base::Status::Distributed(
        what + " did not finish within " + std::to_string(static_cast<int>(timeout_s)) +
        " s: a peer rank died, stopped or fell far behind (run.collective_timeout_s)");
  }
  if (state != ncclSuccess) {
    return nccl_status(state, "ncclCommGetAsyncError", __FILE__, __LINE__).with_context(what);
  }
  return base::Status::Ok();
}

base::Status nccl_settle(ncclComm_t comm, ncclResult_t rc, double timeout_s,
                         const std::string& what, const char* call, const char* file, int line) {
  if (rc != ncclSuccess && rc != ncclInProgress) {
    return nccl_status(rc, call, file, line).with_context(what);
  }
  // Even ncclSuccess may leave work in the background (a split's), so the state decides.
  return nccl_wait_ready(comm, timeout_s, what);
}

namespace {

// ncclCommSplit of `parent`: the child is written into the slot by NCCL's initialisation thread
// once it exists (non-blocking mode), while the parent stays ncclInProgress. The slot lives on
// the heap and is leaked on purpose when that wait fails, so a late write never lands in freed
// memory. The child is owned as soon as it exists, so a failure later aborts it.
base::StatusOr<NcclComm> split_comm(ncclComm_t parent, int color, int key, const char* name,
                                    double timeout_s, const std::string& what) {
  auto slot = std::make_unique<ncclComm_t>(nullptr);
  ncclConfig_t config = nonblocking_config(name);
  const ncclResult_t rc = ncclCommSplit(parent, color, key, slot.get(), &config);
  base::Status st = nccl_settle(parent, rc, timeout_s, what, "ncclCommSplit", __FILE__, __LINE__);
  if (!st.ok()) {
    (void)slot.release();
    return st;
  }
  const ncclComm_t child = __atomic_load_n(slot.get(), __ATOMIC_ACQUIRE);
  if (child == nullptr) return base::Status::Internal(what + ": NCCL made no communicator");
  NcclComm owned(child, timeout_s);
  RETURN_IF_ERROR(nccl_wait_ready(child, timeout_s, what));
  return owned;
}

}  // namespace

// --- NcclComm ---

NcclComm::NcclComm(NcclComm&& other) noexcept
    : comm_(std::exchange(other.comm_, nullptr)), timeout_s_(other.timeout_s_) {}

NcclComm& NcclComm::operator=(NcclComm&& other) noexcept {
  if (this != &other) {
    reset();
    comm_ = std::exchange(other.comm_, nullptr);
    timeout_s_ = other.timeout_s_;
  }
  return *this;
}

NcclComm::~NcclComm() { reset(); }

void NcclComm::reset() {
  if (comm_ == nullptr) return;
  // Only a communicator in a clean state is finalised: one with an error, or one whose last call
  // never settled, could wait for a dead peer. Finalisation flushes this rank's operations (in
  // the background, non-blocking mode) within the timeout; destroy then only frees local
  // resources. Errors cannot be reported from a destructor; abort frees regardless.
  ncclResult_t state = ncclSuccess;
  bool clean = ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state == ncclSuccess;
  clean = clean && nccl_settle(comm_, ncclCommFinalize(comm_), timeout_s_, "finalize",
                               "ncclCommFinalize", __FILE__, __LINE__)
                       .ok();
  if (clean) {
    const ncclResult_t rc = ncclCommDestroy(comm_);
    clean = rc == ncclSuccess || rc == ncclInProgress;
  }
  if (!clean) ncclCommAbort(comm_);
  comm_ = nullptr;
}

base::Status NcclComm::async_error() const {
  if (comm_ == nullptr) return base::Status::Ok();
  ncclResult_t async = ncclSuccess;
  RETURN_IF_ERROR(NCCL_CHECK(ncclCommGetAsyncError(comm_, &async)));
  if (async == ncclSuccess || async == ncclInProgress) return base::Status::Ok();
  return nccl_status(async, "ncclCommGetAsyncError", __FILE__, __LINE__);
}

void NcclComm::abort() {
  if (comm_ != nullptr) ncclCommAbort(comm_);
  comm_ = nullptr;
}

// --- NcclCommunicator: creation and teardown ---

base::StatusOr<int> NcclCommunicator::nccl_version() {
  int version = 0;
  RETURN_IF_ERROR(NCCL_CHECK(ncclGetVersion(&version)));
  return version;
}

base::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::create(MPI_Comm comm,
                                                                           int device,
                                                                           double timeout_s) {
  CommOptions options;
  options.timeout_s = timeout_s;
  return create(comm, device, std::move(options));
}

base::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::create(MPI_Comm comm,
                                                                           int device,
                                                                           CommOptions options) {
  int rank = 0, size = 0;
  RETURN_IF_ERROR(MPI_CHECK(MPI_Comm_rank(comm, &rank)));
  RETURN_IF_ERROR(MPI_CHECK(MPI_Comm_size(comm, &size)));

  base::Status local = [device]() -> base::Status {
    if (device < 0) {
      return base::Status::InvalidArgument("NCCL communicator: device " + std::to_string(device) +
                                           " is not a CUDA device index");
    }
    int count = 0;
    RETURN_IF_ERROR(CUDA_CHECK(cudaGetDeviceCount(&count)));
    if (device >= count) {
      return base::Status::InvalidArgument("NCCL communicator: device " + std::to_string(device) +
                                           " out of range (" + std::to_string(count) +
                                           " CUDA devices visible)");
    }
    // Kept after return: one process per GPU. Restoring the previous device instead would
    // create a CUDA context on it (device 0, say) for nothing.
    return CUDA_CHECK(c10::cuda::SetDevice(static_cast<c10::DeviceIndex>(device), /*force=*/true));
  }();
  // Every rank learns whether all could use their device before any of them enters NCCL's
  // bootstrap, which would otherwise wait for the failed rank forever.
  int local_ok = local.ok() ? 1 : 0, all_ok = 0;
  RETURN_IF_ERROR(MPI_CHECK(MPI_Allreduce(&local_ok, &all_ok, 1, MPI_INT, MPI_MIN, comm)));
  if (!local.ok()) return local.with_context("rank " + std::to_string(rank));
  if (all_ok == 0) {
    return base::Status::Distributed("rank " + std::to_string(rank) +
                                     ": NCCL communicator: another rank could not use its device");
  }

  ASSIGN_OR_RETURN(const ncclUniqueId id, share_unique_id(comm, rank));
  std::unique_ptr<NcclCommunicator> c(new NcclCommunicator(rank, size, device, std::move(options)));
  RETURN_IF_ERROR(c->init_lanes(id).with_context("rank " + std::to_string(rank)));
  return std::move(c);
}

base::StatusOr<ncclUniqueId> NcclCommunicator::share_unique_id(MPI_Comm comm, int rank) {
  // The id travels with rank 0's success flag, so a failure there fails every rank.
  struct Message {
    int ok = 0;
    ncclUniqueId id;
  } msg{};
  base::Status made = base::Status::Ok();
  if (rank == 0) {
    made = NCCL_CHECK(ncclGetUniqueId(&msg.id));
    msg.ok = made.ok() ? 1 : 0;
  }
  RETURN_IF_ERROR(MPI_CHECK(MPI_Bcast(&msg, sizeof(msg), MPI_BYTE, 0, comm)));
  if (!made.ok()) return made;
  if (msg.ok == 0) {
    return base::Status::Distributed("rank " + std::to_string(rank) +
                                     ": rank 0 could not create the NCCL unique id");
  }
  return msg.id;
}

base::Status NcclCommunicator::init_lanes(const ncclUniqueId& id) {
  Lane& main = lane(LaneId::kMain);
  ncclConfig_t config = nonblocking_config(kLaneNames[0]);
  ncclComm_t raw = nullptr;
  const std::string what = "NCCL communicator " + std::string(kLaneNames[0]) + ": initialisation";
  // The communicator exists at return (its initialisation may go on in the background).
  const ncclResult_t rc = ncclCommInitRankConfig(&raw, size_, id, rank_, &config);
  if (raw != nullptr) main.comm = NcclComm(raw, timeout_s_);
  RETURN_IF_ERROR(
      nccl_settle(raw, rc, timeout_s_, what, "ncclCommInitRankConfig", __FILE__, __LINE__));
  for (int i = 1; i < kLanes; ++i) {
    // Same color on every rank, keyed by rank: the same ranks in the same order as main.
    ASSIGN_OR_RETURN(lanes_[i].comm,
                     split_comm(main.comm.get(), 0, rank_, kLaneNames[i], timeout_s_,
                                "NCCL communicator " + std::string(kLaneNames[i]) + ": split"));
  }
  return finish_lanes();
}

base::Status NcclCommunicator::finish_lanes() {
  for (int i = 0; i < kLanes; ++i) {
    Lane& l = lanes_[i];
    l.name = kLaneNames[i];
    ASSIGN_OR_RETURN(l.stream, CudaStream::create(device_));
    ASSIGN_OR_RETURN(l.inputs_ready, CudaEvent::create(device_));
  }
  if (timeout_s_ > 0) start_watchdog();
  return base::Status::Ok();
}

base::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::split(int color, int key,
                                                                          CommOptions options) {
  if (color < 0) {
    return base::Status::InvalidArgument("NCCL communicator split: color " + std::to_string(color) +
                                         " is negative");
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (aborted_) return failure_;
  ASSIGN_OR_RETURN(CudaDeviceScope scope, CudaDeviceScope::enter(device_));
  std::unique_ptr<NcclCommunicator> c(new NcclCommunicator(0, 1, device_, std::move(options)));
  const std::string what = "rank " + std::to_string(rank_) + ": NCCL communicator split (color " +
                           std::to_string(color) + ")";
  for (int i = 0; i < kLanes; ++i) {
    ASSIGN_OR_RETURN(c->lanes_[i].comm,
                     split_comm(lanes_[i].comm.get(), color, key, kLaneNames[i], timeout_s_, what));
  }
  const ncclComm_t main = c->lane(LaneId::kMain).comm.get();
  RETURN_IF_ERROR(NCCL_CHECK(ncclCommUserRank(main, &c->rank_)));
  RETURN_IF_ERROR(NCCL_CHECK(ncclCommCount(main, &c->size_)));
  RETURN_IF_ERROR(c->finish_lanes());
  return std::move(c);
}

NcclCommunicator::~NcclCommunicator() {
  // Each lane is drained first, with the watchdog still watching: an operation a dead peer never
  // completes is aborted after the timeout (NCCL then cancels its kernel, so the stream drains),
  // and no held tensor is released while the device may still touch it.
  for (Lane& l : lanes_) {
    if (l.stream.get() != nullptr) (void)l.stream.synchronize();
    std::lock_guard<std::mutex> lock(mu_);
    l.in_flight.clear();
  }
  stop_watchdog();
  // Children before the communicator they were split from.
  for (int i = kLanes - 1; i >= 0; --i) lanes_[i].comm = NcclComm();
}

base::Status NcclCommunicator::release_finished() {
  for (Lane& l : lanes_) {
    while (!l.in_flight.empty()) {
      ASSIGN_OR_RETURN(const bool done, l.in_flight.front().done->done());
      if (!done) break;
      l.in_flight.pop_front();
    }
  }
  return base::Status::Ok();
}

void NcclCommunicator::abort(base::Status why) {
  std::lock_guard<std::mutex> lock(mu_);
  abort_locked(std::move(why));
}

void NcclCommunicator::abort_locked(base::Status why) {
  if (aborted_) return;
  failure_ = std::move(why);
  aborted_ = true;
  for (int i = kLanes - 1; i >= 0; --i) lanes_[i].comm.abort();
}

// --- Operations ---

base::Status NcclCommunicator::check_tensors(const std::vector<at::Tensor>& tensors,
                                             at::ScalarType dtype) const {
  for (const at::Tensor& t : tensors) {
    if (!t.defined() || !t.is_cuda() || t.get_device() != device_ || !t.is_contiguous()) {
      return base::Status::InvalidArgument(
          "NCCL communicator: needs contiguous CUDA tensors on "
          "device " +
          std::to_string(device_));
    }
    if (t.scalar_type() != dtype) {
      return base::Status::InvalidArgument(std::string("NCCL communicator: dtype ") +
                                           c10::toString(t.scalar_type()) + " where " +
                                           c10::toString(dtype) + " was expected");
    }
  }
  return base::Status::Ok();
}

template <typename Check, typename Call>
std::unique_ptr<Work> NcclCommunicator::issue(LaneId lane_id, CommOp op,
                                              std::vector<at::Tensor> tensors, Check check,
                                              Call call) {
  Lane& l = lane(lane_id);
  OpInfo info{op, sequence_++, l.name, 0};
  const std::string tag = "rank " + std::to_string(rank_) + ": " + comm_op_name(op) + " #" +
                          std::to_string(info.seq) + " (" + l.name + ")";
  std::unique_ptr<Work> work;
  std::lock_guard<std::mutex> lock(mu_);
  base::Status st = torch_guarded([&]() -> base::Status {
    if (aborted_) return failure_;
    RETURN_IF_ERROR(check());
    if (trace_) {
      // The operation's full buffer: the largest of its tensors.
      for (const at::Tensor& t : tensors) {
        info.bytes = std::max(info.bytes, static_cast<int64_t>(t.nbytes()));
      }
      trace_->count(op, info.bytes);
    }
    ASSIGN_OR_RETURN(CudaDeviceScope scope, CudaDeviceScope::enter(device_));
    RETURN_IF_ERROR(release_finished());
    const auto index = static_cast<c10::DeviceIndex>(device_);
    // Inputs are written by work queued on the caller's current stream: the lane waits for it.
    const cudaStream_t caller = at::cuda::getCurrentCUDAStream(index).stream();
    RETURN_IF_ERROR(l.inputs_ready.record(caller));
    RETURN_IF_ERROR(l.inputs_ready.make_wait(l.stream.get()));
    // The first operation that needs a peer connects to it, in the background: a peer that
    // never answers fails the operation after the timeout and aborts the communicators.
    base::Status enqueued =
        nccl_settle(l.comm.get(), call(l.comm.get(), l.stream.get()), timeout_s_, "enqueueing",
                    comm_op_name(op), __FILE__, __LINE__);
    if (!enqueued.ok()) {
      fault_locked(enqueued.with_context(tag));
      return enqueued;
    }
    ASSIGN_OR_RETURN(CudaEvent event, CudaEvent::create(device_));
    RETURN_IF_ERROR(event.record(l.stream.get()));
    auto done = std::make_shared<const CudaEvent>(std::move(event));
    // Held until the device is done, so the caching allocator cannot reuse the memory early
    // even if the caller drops its references now.
    l.in_flight.push_back({done, std::move(tensors), std::chrono::steady_clock::now(), tag});
    work = std::make_unique<NcclWork>(std::move(done), device_, tag, wait_log_, info);
    return base::Status::Ok();
  });
  if (!st.ok()) return std::make_unique<ReadyWork>(st.with_context(tag));
  return work;
}

std::unique_ptr<Work> NcclCommunicator::all_reduce(at::Tensor t, ReduceOp op) {
  return issue(
      LaneId::kMain, CommOp::kAllReduce, {t},
      [&]() -> base::Status {
        RETURN_IF_ERROR(nccl_type(t.scalar_type()).status());
        return check_tensors({t}, t.scalar_type());
      },
      [&](ncclComm_t comm, cudaStream_t stream) {
        return ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), *nccl_type(t.scalar_type()),
                             nccl_op(op), comm, stream);
      });
}

std::unique_ptr<Work> NcclCommunicator::all_gather(at::Tensor shard, at::Tensor full) {
  return issue(
      LaneId::kGather, CommOp::kAllGather, {shard, full},
      [&]() -> base::Status {
        RETURN_IF_ERROR(check_tensors({shard, full}, shard.scalar_type()));
        if (full.numel() != shard.numel() * size_) {
          return base::Status::InvalidArgument(
              "all_gather: output holds " + std::to_string(full.numel()) + " elements, not " +
              std::to_string(size_) + " shards of " + std::to_string(shard.numel()));
        }
        return base::Status::Ok();
      },
      [&](ncclComm_t comm, cudaStream_t stream) {
        // Gathering moves bytes without arithmetic, so any dtype travels as raw bytes.
        return ncclAllGather(shard.data_ptr(), full.data_ptr(), shard.nbytes(), ncclUint8, comm,
                             stream);
      });
}

std::unique_ptr<Work> NcclCommunicator::reduce_scatter(at::Tensor full, at::Tensor shard,
                                                       ReduceOp op) {
  return issue(
      LaneId::kScatter, CommOp::kReduceScatter, {full, shard},
      [&]() -> base::Status {
        RETURN_IF_ERROR(nccl_type(full.scalar_type()).status());
        RETURN_IF_ERROR(check_tensors({full, shard}, full.scalar_type()));
        if (full.numel() != shard.numel() * size_) {
          return base::Status::InvalidArgument(
              "reduce_scatter: input holds " + std::to_string(full.numel()) + " elements, not " +
              std::to_string(size_) + " shards of " + std::to_string(shard.numel()));
        }
        return base::Status::Ok();
      },
      [&](ncclComm_t comm, cudaStream_t stream) {
        return ncclReduceScatter(full.data_ptr(), shard.data_ptr(), shard.numel(),
                                 *nccl_type(full.scalar_type()), nccl_op(op), comm, stream);
      });
}

std::unique_ptr<Work> NcclCommunicator::broadcast(at::Tensor t, int root) {
  return issue(
      LaneId::kMain, CommOp::kBroadcast, {t},
      [&]() -> base::Status {
        if (root < 0 || root >= size_) {
          return base::Status::InvalidArgument("broadcast: root " + std::to_string(root) +
                                               " outside 0.." + std::to_string(size_ - 1));
        }
        return check_tensors({t}, t.scalar_type());
      },
      [&](ncclComm_t comm, cudaStream_t stream) {
        return ncclBroadcast(t.data_ptr(), t.data_ptr(), t.nbytes(), ncclUint8, root, comm, stream);
      });
}

base::Status NcclCommunicator::barrier() {
  at::Tensor token;
  RETURN_IF_ERROR(torch_guarded([&] {
    token = at::ones({1}, at::TensorOptions().dtype(at::kInt).device(at::kCUDA, device_));
    return base::Status::Ok();
  }));
  RETURN_IF_ERROR(all_reduce(token, ReduceOp::kSum)->wait());
  for (Lane& l : lanes_) {
    RETURN_IF_ERROR(l.stream.synchronize().with_context(std::string("barrier: ") + l.name));
    std::lock_guard<std::mutex> lock(mu_);
    if (aborted_) return failure_;
    l.in_flight.clear();
  }
  return check_async_errors();
}

// --- Factory (sharding/nccl_factory.h) ---

base::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(MPI_Comm comm, int device,
                                                                     double timeout_s) {
  CommOptions options;
  options.timeout_s = timeout_s;
  return make_nccl_communicator(comm, device, std::move(options));
}

base::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(MPI_Comm comm, int device,
                                                                     CommOptions options) {
  ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> c,
                   NcclCommunicator::create(comm, device, std::move(options)));
  return std::unique_ptr<Communicator>(std::move(c));
}

base::StatusOr<std::unique_ptr<Communicator>> split_nccl_communicator(Communicator& parent,
                                                                      int color, int key,
                                                                      CommOptions options) {
  auto* nccl = dynamic_cast<NcclCommunicator*>(&parent);
  if (nccl == nullptr) {
    return base::Status::InvalidArgument(
        "split_nccl_communicator: the parent is not an NCCL "
        "communicator");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> c,
                   nccl->split(color, key, std::move(options)));
  return std::unique_ptr<Communicator>(std::move(c));
}

base::StatusOr<std::string> nccl_version_string() {
  ASSIGN_OR_RETURN(const int code, NcclCommunicator::nccl_version());
  // NCCL_VERSION_CODE is major*10000 + minor*100 + patch since 2.9, major*1000 + ... before.
  const int major = code >= 10000 ? code / 10000 : code / 1000;
  const int minor = code >= 10000 ? code / 100 % 100 : code / 100 % 10;
  const int patch = code % 100;
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

base::StatusOr<std::pair<CudaEvent, CudaEvent>> NcclCommunicator::WaitLog::acquire(int device) {
  {
    std::lock_guard<std::mutex> lock(mu);
    if (!pool.empty()) {
      std::pair<CudaEvent, CudaEvent> events = std::move(pool.back());
      pool.pop_back();
      return events;
    }
  }
  ASSIGN_OR_RETURN(CudaEvent before, CudaEvent::create(device, /*timing=*/true));
  ASSIGN_OR_RETURN(CudaEvent after, CudaEvent::create(device, /*timing=*/true));
  return std::make_pair(std::move(before), std::move(after));
}

void NcclCommunicator::WaitLog::recycle(std::vector<TimedWait> read) {
  std::lock_guard<std::mutex> lock(mu);
  for (TimedWait& w : read) pool.emplace_back(std::move(w.before), std::move(w.after));
}

base::StatusOr<double> NcclCommunicator::take_wait_seconds() {
  std::vector<TimedWait> waits;
  {
    std::lock_guard<std::mutex> lock(wait_log_->mu);
    waits.swap(wait_log_->waits);
  }
  double ms = 0;
  base::Status st = base::Status::Ok();
  for (const TimedWait& w : waits) {
    base::StatusOr<float> span = CudaEvent::elapsed_ms(w.before, w.after);
    if (!span.ok()) {
      st = span.status();
      break;
    }
    ms += *span;
    if (trace_) {
      trace_->record({w.op.op, group_, w.op.lane, w.op.seq, w.op.bytes}, {{"wait_ms", *span}});
      trace_->add_wait(w.op.op, *span * 1e-3);
    }
  }
  // Read or not, every pair goes back: a later record() starts it afresh.
  wait_log_->recycle(std::move(waits));
  RETURN_IF_ERROR(st);
  return ms * 1e-3;
}

base::Status NcclCommunicator::end_step(int64_t step) {
  return trace_ ? trace_->end_step(step) : base::Status::Ok();
}

}  // namespace dstrain::sharding
