#include "runtime/checkpoint/checkpointer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <map>

#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "base/fs.h"
#include "runtime/checkpoint/checksum.h"
#include "runtime/checkpoint/index.h"
#include "runtime/checkpoint/rank_file.h"
#include "runtime/checkpoint/state_reader.h"
#include "runtime/checkpoint/store.h"

namespace dstrain::runtime::checkpoint {
namespace {

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "fp32";
    case at::kBFloat16:
      return "bf16";
    case at::kHalf:
      return "fp16";
    default:
      return "";
  }
}

base::Status torch_error(const std::exception& e, const std::string& what) {
  return base::Status::Internal(what + ": " + e.what());
}

// Writes every slice's elements at its dataset's byte offset through `w` and returns the crcs of
// what it wrote, one region per `block_bytes` block each buffer touches. Double-buffered: this
// thread fills one aligned buffer (a device-to-host copy or a memcpy) and checksums it while a
// std::async task writes the other, so the copy, the crc and the disk overlap. One write is in
// flight at a time, so `w` is called by one thread at a time.
// Buffers are aligned and each write starts at an aligned offset of an aligned dataset, which
// lets a direct-I/O writer skip the page cache.
base::StatusOr<std::vector<ChecksummedRegion>> write_datasets(
    FileWriter& w, const std::vector<sharding::StateSlice>& slices,
    const std::vector<DatasetSpec>& specs, int64_t buffer_bytes, int64_t block_bytes) {
  const int64_t slot_bytes = std::max<int64_t>(
      kDirectIoAlignment, buffer_bytes / 2 / kDirectIoAlignment * kDirectIoAlignment);
  AlignedBuffer slots[2];
  for (AlignedBuffer& b : slots) {
    ASSIGN_OR_RETURN(b, AlignedBuffer::allocate(static_cast<size_t>(slot_bytes)));
  }
  // Declared after the buffers it reads, so it is waited for before they are freed.
  std::future<base::Status> in_flight;
  int next = 0;
  std::vector<ChecksummedRegion> regions;
  for (size_t i = 0; i < slices.size(); ++i) {
    const int64_t elem = dtype_bytes(specs[i].dtype);
    const int64_t chunk = slot_bytes / elem;
    const at::Tensor data = slices[i].data.reshape({-1});
    for (int64_t c = 0; c < data.numel(); c += chunk) {
      const int64_t n = std::min(chunk, data.numel() - c);
      char* buf = slots[next].data();
      next ^= 1;
      at::from_blob(buf, {n}, at::TensorOptions().dtype(data.scalar_type()))
          .copy_(data.narrow(0, c, n));
      const auto bytes = static_cast<size_t>(n * elem);
      const int64_t offset = specs[i].byte_offset + c * elem;
      checksum_by_block(offset, buf, n * elem, block_bytes, regions);
      if (in_flight.valid()) RETURN_IF_ERROR(in_flight.get());
      in_flight = std::async(std::launch::async,
                             [&w, buf, bytes, offset] { return w.write_at(offset, buf, bytes); });
    }
  }
  if (in_flight.valid()) RETURN_IF_ERROR(in_flight.get());
  return regions;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Where the state is final for a save: an event on the device's current stream, behind the
// optimizer step's kernels, for CUDA slices; none for host slices (their writes are done when
// the training thread gets here).
std::optional<c10::Event> mark_state_ready(const std::vector<sharding::StateSlice>& slices) {
  for (const sharding::StateSlice& s : slices) {
    if (!s.data.is_cuda()) continue;
    const c10::Device device = s.data.device();
    c10::Event ready(device.type());
    ready.record(c10::impl::VirtualGuardImpl(device.type()).getStream(device));
    return ready;
  }
  return std::nullopt;
}

// Host copies of the owned slices, so training can change the originals while they are written.
// Runs on the writer thread. `buffers` keeps the copies' memory from one save to the next:
// allocating and faulting in fresh pages costs about twice the copy itself. CUDA slices are
// copied on a pool stream that first waits for `ready`, so the copy overlaps the training
// thread's kernels on the compute stream instead of queueing among them; this returns once the
// bytes have landed.
std::vector<sharding::StateSlice> snapshot(std::vector<sharding::StateSlice> slices,
                                           std::vector<at::Tensor>& buffers,
                                           const std::optional<c10::Event>& ready) {
  bool reuse = buffers.size() == slices.size();
  for (size_t i = 0; reuse && i < slices.size(); ++i) {
    reuse = buffers[i].numel() == slices[i].data.numel() &&
            buffers[i].scalar_type() == slices[i].data.scalar_type();
  }
  if (!reuse) buffers.clear();
  std::optional<c10::Stream> side;
  std::optional<c10::StreamGuard> on_side;
  if (ready) {
    const c10::Device device(ready->device_type(), ready->device_index());
    side = c10::impl::VirtualGuardImpl(device.type()).getStreamFromGlobalPool(device);
    ready->block(*side);
    on_side.emplace(*side);
  }
  for (size_t i = 0; i < slices.size(); ++i) {
    sharding::StateSlice& s = slices[i];
    if (!reuse) {
      at::TensorOptions opts = at::TensorOptions().dtype(s.data.scalar_type());
      // Pinned memory makes the device-to-host copy a DMA; plain memory is all a CPU run needs.
      if (s.data.is_cuda()) opts = opts.pinned_memory(true);
      buffers.push_back(at::empty({s.data.numel()}, opts));
    }
    buffers[i].copy_(s.data.reshape({-1}), /*non_blocking=*/s.data.is_cuda());
    s.data = buffers[i];
  }
  if (side) side->synchronize();
  return slices;
}

}  // namespace

Checkpointer::Checkpointer(CheckpointOptions options, sharding::Communicator& comm,
                           CheckpointIo& io)
    : options_(std::move(options)), comm_(comm), io_(io) {
  if (const char* delay = std::getenv("DSTRAIN_TEST_CHECKPOINT_DELAY_MS")) {
    test_delay_ms_ = std::atoll(delay);
  }
  if (const char* delay = std::getenv("DSTRAIN_TEST_SNAPSHOT_DELAY_MS")) {
    test_snapshot_delay_ms_ = std::atoll(delay);
  }
}

Checkpointer::~Checkpointer() {
  if (writer_.joinable()) writer_.join();  // the copy too: the engine outlives this
  wait_for_pruning();
}

base::StatusOr<bool> Checkpointer::agree(bool ok) {
  at::Tensor flag = at::tensor({ok ? 0.0 : 1.0}, at::kDouble);
  RETURN_IF_ERROR(sharding::all_reduce_now(comm_, flag, sharding::ReduceOp::kMax));
  return flag.item<double>() == 0.0;
}

base::Status Checkpointer::write_rank_file(const std::vector<sharding::StateSlice>& slices,
                                           const std::string& path, Pending& p) {
  std::vector<DatasetSpec> specs;
  for (const sharding::StateSlice& s : slices) {
    const std::string dtype = dtype_name(s.data.scalar_type());
    if (dtype.empty())
      return base::Status::Internal(s.name + ": no checkpoint dtype for its storage");
    specs.push_back({sharding::state_kind_name(s.kind), s.name, dtype, s.data.numel(), s.offset,
                     s.full_shape, 0});
  }
  RETURN_IF_ERROR(create_rank_file(path, specs));
  if (test_delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(test_delay_ms_));
  ASSIGN_OR_RETURN(std::unique_ptr<FileWriter> w, io_.open_direct(path));
  ASSIGN_OR_RETURN(std::vector<ChecksummedRegion> regions,
                   write_datasets(*w, slices, specs, options_.buffer_bytes, options_.block_bytes));
  RETURN_IF_ERROR(w->sync());
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return base::Status::IOError(path + ": stat: " + std::strerror(errno));
  p.size = static_cast<int64_t>(st.st_size);
  ASSIGN_OR_RETURN(p.blocks, block_crc32s(path, p.size, options_.block_bytes, std::move(regions)));
  p.crc = fold_block_crc32s(p.blocks, options_.block_bytes, p.size);
  return base::Status::Ok();
}

base::Status Checkpointer::commit_on_root(const sharding::EngineScalars& sc, int64_t step,
                                          const std::vector<FileEntry>& files) {
  const std::string tmp = root_ + "/" + step_dir_name(step) + ".tmp";
  CheckpointIndex index;
  index.dstrain_version = options_.dstrain_version;
  index.step = step;
  index.world_size = comm_.size();
  index.zero_stage = options_.zero_stage;
  index.dtype = options_.dtype;
  index.seed = options_.seed;
  index.adam_step = sc.adam_step;
  index.loss_scale = sc.loss_scale;
  index.good_steps = sc.good_steps;
  index.config_toml = options_.config_toml;
  index.files = files;
  for (const FileEntry& f : files) {
    const std::string& name = f.name;
    ASSIGN_OR_RETURN(std::vector<DatasetSpec> specs, read_rank_file(tmp + "/" + name));
    for (const DatasetSpec& s : specs) {
      TensorEntry& t = index.tensors[s.kind][s.name];
      t.shape = s.full_shape;
      t.dtype = s.dtype;
      t.pieces.push_back({name, dataset_path(s.kind, s.name), s.offset, s.numel, s.byte_offset});
    }
  }
  for (auto& [kind, by_name] : index.tensors) {
    for (auto& [name, t] : by_name) {
      std::sort(t.pieces.begin(), t.pieces.end(),
                [](const Piece& a, const Piece& b) { return a.offset < b.offset; });
    }
  }
  // The union over ranks must tile every tensor: a gap here is a bug, not a checkpoint.
  RETURN_IF_ERROR(validate_index(index, tmp + "/" + kIndexFile));
  RETURN_IF_ERROR(commit(io_, root_, step, index_to_json(index)));
  // Leftovers of writes that never committed are rare (a crash): deleted here, before any
  // later save can create its own step-N.tmp/. Old complete ones go in the background.
  return delete_unfinished(root_);
}

void Checkpointer::start_pruning() {
  wait_for_pruning();
  pruner_ =
      std::thread([this] { prune_status_ = delete_old_checkpoints(root_, options_.config.keep); });
}

void Checkpointer::wait_for_pruning() {
  if (pruner_.joinable()) pruner_.join();
  if (!prune_status_.ok()) {
    std::fprintf(stderr, "warning: deleting old checkpoints: %s\n",
                 prune_status_.message().c_str());
    prune_status_ = base::Status::Ok();
  }
}

base::Status Checkpointer::prepare_dir(int64_t step) {
  const std::string tmp = root_ + "/" + step_dir_name(step) + ".tmp";
  base::Status local;
  if (comm_.rank() == 0) {
    local = base::remove_tree(tmp);
    if (local.ok()) local = base::make_dirs(tmp);
  }
  ASSIGN_OR_RETURN(bool created, agree(local.ok()));
  if (!created) {
    return local.ok() ? base::Status::IOError("checkpoint " + tmp + ": rank 0 could not create it")
                      : local;
  }
  return base::Status::Ok();
}

base::StatusOr<std::string> Checkpointer::commit_all(const Pending& p) {
  const bool root = comm_.rank() == 0;
  const std::string dir = root_ + "/" + step_dir_name(p.step);
  const std::string tmp = dir + ".tmp";
  base::Status local = p.status;
  constexpr int kFields = 4;  // failed, size, crc, number of blocks
  at::Tensor mine = at::tensor({local.ok() ? 0.0 : 1.0, static_cast<double>(p.size),
                                static_cast<double>(p.crc), static_cast<double>(p.blocks.size())},
                               at::kDouble);
  at::Tensor all = at::empty({kFields * comm_.size()}, at::kDouble);
  RETURN_IF_ERROR(comm_.all_gather(mine, all)->wait());
  const std::vector<double> digests(all.data_ptr<double>(), all.data_ptr<double>() + all.numel());
  std::string failed;
  int64_t most_blocks = 0;
  for (int r = 0; r < comm_.size(); ++r) {
    if (digests[kFields * r] != 0.0) failed += (failed.empty() ? "" : ", ") + std::to_string(r);
    most_blocks = std::max(most_blocks, static_cast<int64_t>(digests[kFields * r + 3]));
  }
  if (!failed.empty()) {
    // Nothing was committed: only this attempt's directory goes.
    if (root) (void)base::remove_tree(tmp);
    const std::string what = "checkpoint at step " + std::to_string(p.step) +
                             " not written (rank(s) " + failed +
                             " failed; earlier checkpoints are intact)";
    return local.ok() ? base::Status::IOError(what) : local.with_context(what);
  }

  // Every rank's block checksums, padded to the longest list (crc32s are exact in a double).
  at::Tensor my_blocks = at::zeros({std::max<int64_t>(most_blocks, 1)}, at::kDouble);
  std::copy(p.blocks.begin(), p.blocks.end(), my_blocks.data_ptr<double>());
  at::Tensor all_blocks = at::empty({my_blocks.numel() * comm_.size()}, at::kDouble);
  RETURN_IF_ERROR(comm_.all_gather(my_blocks, all_blocks)->wait());
  if (root) {
    std::vector<FileEntry> files;
    const double* blocks = all_blocks.data_ptr<double>();
    for (int r = 0; r < comm_.size(); ++r) {
      FileEntry f{rank_file_name(r),
                  static_cast<int64_t>(digests[kFields * r + 1]),
                  static_cast<uint32_t>(digests[kFields * r + 2]),
                  options_.block_bytes,
                  {}};
      const double* mine_at = blocks + r * my_blocks.numel();
      for (int64_t b = 0; b < static_cast<int64_t>(digests[kFields * r + 3]); ++b) {
        f.block_crc32.push_back(static_cast<uint32_t>(mine_at[b]));
      }
      files.push_back(std::move(f));
    }
    try {
      local = commit_on_root(p.scalars, p.step, files);
    } catch (const std::exception& e) {
      local = torch_error(e, "committing checkpoint " + tmp);
    }
    if (!local.ok()) (void)base::remove_tree(tmp);
  }
  // Rank 0's verdict doubles as the final barrier: no rank trains on before the commit.
  at::Tensor verdict = at::tensor({local.ok() ? 0.0 : 1.0}, at::kDouble);
  RETURN_IF_ERROR(comm_.broadcast(verdict, 0)->wait());
  if (verdict.item<double>() != 0.0) {
    return root ? local
                : base::Status::IOError("checkpoint " + dir + ": rank 0 could not commit it");
  }
  if (root) start_pruning();
  return dir;
}

base::StatusOr<std::string> Checkpointer::save(sharding::Engine& engine, int64_t step) {
  RETURN_IF_ERROR(finish_pending().status());
  RETURN_IF_ERROR(prepare_dir(step));
  Pending p;
  p.step = step;
  p.scalars = engine.scalars();
  try {
    p.status = write_rank_file(
        engine.state_slices(/*owned_only=*/true),
        root_ + "/" + step_dir_name(step) + ".tmp/" + rank_file_name(comm_.rank()), p);
  } catch (const std::exception& e) {
    p.status = torch_error(e, "writing checkpoint " + root_ + "/" + step_dir_name(step) + ".tmp");
  }
  return commit_all(p);
}

base::StatusOr<std::vector<SavedCheckpoint>> Checkpointer::start_save(sharding::Engine& engine,
                                                                      int64_t step) {
  std::vector<SavedCheckpoint> committed;
  const auto t0 = std::chrono::steady_clock::now();
  if (!options_.config.async) {
    ASSIGN_OR_RETURN(std::string dir, save(engine, step));
    const double save_s = seconds_since(t0);
    committed.push_back({step, std::move(dir), save_s, save_s});
    return committed;
  }
  ASSIGN_OR_RETURN(std::optional<SavedCheckpoint> previous, finish_pending());
  if (previous) committed.push_back(std::move(*previous));
  const auto t1 = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(prepare_dir(step));
  Pending p;
  p.step = step;
  p.scalars = engine.scalars();
  std::vector<sharding::StateSlice> slices;
  std::optional<c10::Event> ready;
  try {
    // Through the engine's API, which finishes any deferred write of its own first.
    slices = engine.state_slices(/*owned_only=*/true);
    ready = mark_state_ready(slices);
  } catch (const std::exception& e) {
    p.status = torch_error(e, "reading state for checkpoint at step " + std::to_string(step));
  }
  pending_ = std::move(p);
  if (pending_->status.ok()) {
    const std::string path =
        root_ + "/" + step_dir_name(step) + ".tmp/" + rank_file_name(comm_.rank());
    std::promise<void> copied;
    snapshot_taken_ = copied.get_future();
    // The thread owns `slices` (views of the engine's state until the copy replaces them) and
    // host_copy_ until joined; it touches only files under step-N.tmp/, no collectives. It sets
    // `copied` on every path, so wait_for_snapshot() cannot hang.
    writer_ = std::thread([this, path, slices = std::move(slices), ready = std::move(ready),
                           copied = std::move(copied)]() mutable {
      Pending& out = *pending_;
      std::vector<sharding::StateSlice> copy;
      try {
        if (test_snapshot_delay_ms_ > 0) {
          std::this_thread::sleep_for(std::chrono::milliseconds(test_snapshot_delay_ms_));
        }
        copy = snapshot(std::move(slices), host_copy_, ready);
      } catch (const std::exception& e) {
        out.status = torch_error(e, "copying state for checkpoint " + path);
      }
      slices.clear();
      copied.set_value();
      if (!out.status.ok()) return;  // reported by the agreement in finish_pending()
      try {
        out.status = write_rank_file(copy, path, out);
      } catch (const std::exception& e) {
        out.status = torch_error(e, "writing checkpoint " + path);
      }
    });
  }
  pending_->stall_s = seconds_since(t1);
  return committed;
}

void Checkpointer::wait_for_snapshot() {
  if (!snapshot_taken_.valid()) return;
  const auto t0 = std::chrono::steady_clock::now();
  snapshot_taken_.wait();
  snapshot_taken_ = {};
  if (pending_) pending_->stall_s += seconds_since(t0);
}

base::StatusOr<std::optional<SavedCheckpoint>> Checkpointer::finish_pending() {
  wait_for_snapshot();
  if (!pending_) return std::optional<SavedCheckpoint>();
  const auto t0 = std::chrono::steady_clock::now();
  if (writer_.joinable()) writer_.join();
  Pending p = std::move(*pending_);
  pending_.reset();
  ASSIGN_OR_RETURN(std::string dir, commit_all(p));
  const double commit_s = seconds_since(t0);
  return std::optional<SavedCheckpoint>(
      SavedCheckpoint{p.step, std::move(dir), p.stall_s + commit_s, commit_s});
}

base::StatusOr<std::vector<std::string>> Checkpointer::committed_dirs() {
  const bool root = comm_.rank() == 0;
  std::vector<int64_t> steps;
  base::Status local;
  if (root) {
    auto listed = committed_steps(root_);
    if (listed.ok())
      steps = std::move(listed).value();
    else
      local = listed.status();
  }
  at::Tensor count =
      at::tensor({local.ok() ? static_cast<double>(steps.size()) : -1.0}, at::kDouble);
  RETURN_IF_ERROR(comm_.broadcast(count, 0)->wait());
  const auto n = static_cast<int64_t>(count.item<double>());
  if (n < 0)
    return root ? local : base::Status::IOError(root_ + ": rank 0 could not list the checkpoints");
  std::vector<std::string> dirs;
  if (n == 0) return dirs;
  at::Tensor t = at::zeros({n}, at::kDouble);
  if (root) std::copy(steps.begin(), steps.end(), t.data_ptr<double>());
  RETURN_IF_ERROR(comm_.broadcast(t, 0)->wait());
  for (int64_t i = 0; i < n; ++i) {
    dirs.push_back(root_ + "/" + step_dir_name(static_cast<int64_t>(t.data_ptr<double>()[i])));
  }
  return dirs;
}

ResumeAttempt Checkpointer::agree_attempt(const ResumeAttempt& mine, std::vector<double>* counts) {
  enum Severity { kFine = 0, kCorrupt = 1, kFailed = 2 };
  const double severity = mine.status.ok() ? kFine : mine.corrupt ? kCorrupt : kFailed;
  std::vector<double> fields = {severity, static_cast<double>(mine.status.code()),
                                mine.changed_state ? 1.0 : 0.0};
  const size_t n_counts = counts != nullptr ? counts->size() : 0;
  if (counts != nullptr) fields.insert(fields.end(), counts->begin(), counts->end());
  const auto width = static_cast<int64_t>(fields.size());
  at::Tensor all = at::empty({width * comm_.size()}, at::kDouble);
  base::Status st = comm_.all_gather(at::tensor(fields, at::kDouble), all)->wait();
  if (!st.ok()) return {st, false, true};
  const double* a = all.data_ptr<double>();
  double worst = kFine;
  int first = -1;
  bool changed = false;
  for (int r = 0; r < comm_.size(); ++r) {
    const double* f = a + r * width;
    if (f[0] > worst) {
      worst = f[0];
      first = r;
    }
    changed = changed || f[2] != 0.0;
  }
  if (counts != nullptr) {
    for (size_t i = 0; i < n_counts; ++i) {
      (*counts)[i] = 0.0;
      for (int r = 0; r < comm_.size(); ++r)
        (*counts)[i] += a[r * width + 3 + static_cast<int64_t>(i)];
    }
  }
  if (worst == kFine) return {base::Status::Ok(), false, changed};
  // The first rank that failed worst tells every rank what it found.
  const std::string& text = mine.status.message();
  at::Tensor length =
      at::tensor({comm_.rank() == first ? static_cast<double>(text.size()) : 0.0}, at::kDouble);
  st = comm_.broadcast(length, first)->wait();
  if (!st.ok()) return {st, false, true};
  at::Tensor bytes =
      at::zeros({std::max<int64_t>(1, static_cast<int64_t>(length.item<double>()))}, at::kByte);
  if (comm_.rank() == first) std::copy(text.begin(), text.end(), bytes.data_ptr<uint8_t>());
  st = comm_.broadcast(bytes, first)->wait();
  if (!st.ok()) return {st, false, true};
  const std::string message(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()),
                            static_cast<size_t>(length.item<double>()));
  base::Status agreed;
  switch (static_cast<base::StatusCode>(static_cast<int>(a[first * width + 1]))) {
    case base::StatusCode::kBadInput:
      agreed = base::Status::BadInput(message);
      break;
    case base::StatusCode::kIOError:
      agreed = base::Status::IOError(message);
      break;
    case base::StatusCode::kInvalidArgument:
      agreed = base::Status::InvalidArgument(message);
      break;
    case base::StatusCode::kDistributed:
      agreed = base::Status::Distributed(message);
      break;
    default:
      agreed = base::Status::Internal(message);
      break;
  }
  return {agreed, worst == kCorrupt, changed};
}

ResumeAttempt Checkpointer::verify_whole_files(const std::string& dir,
                                               const CheckpointIndex& index) {
  const auto t0 = std::chrono::steady_clock::now();
  base::Status local;
  std::vector<double> bytes = {0.0};
  for (size_t i = static_cast<size_t>(comm_.rank()); local.ok() && i < index.files.size();
       i += static_cast<size_t>(comm_.size())) {
    local = verify_file(dir, index.files[i]);
    bytes[0] += static_cast<double>(index.files[i].size);
  }
  ResumeAttempt agreed =
      agree_attempt({local, local.code() == base::StatusCode::kBadInput, false}, &bytes);
  if (agreed.status.ok() && comm_.rank() == 0) {
    std::fprintf(stderr,
                 "checkpoint %s: %.3f GB verified in %.3f s by %d rank(s) (format version 1)\n",
                 dir.c_str(), bytes[0] / 1e9, seconds_since(t0), comm_.size());
  }
  return agreed;
}

ResumeAttempt Checkpointer::attempt_load(sharding::Engine& engine, const std::string& dir,
                                         int64_t* step) {
  wait_for_snapshot();  // the load writes the state a save in flight may still be copying
  const auto t0 = std::chrono::steady_clock::now();
  // Nothing is written into the engine until every rank has a sound index, a plan for it and
  // the files it needs open at their recorded sizes.
  ResumeAttempt local;
  CheckpointIndex index;
  std::unique_ptr<StateReader> reader;
  auto parsed = read_index(dir);
  if (!parsed.ok()) {
    local = {parsed.status(), parsed.status().code() == base::StatusCode::kBadInput, false};
  } else {
    index = std::move(parsed).value();
    try {
      // offload.optimizer = nvme: the state has to be in host memory to show in the slices.
      local.status = engine.page_in_state();
      std::vector<SliceCopy> copies;
      if (local.status.ok()) {
        auto planned = plan_state_reads(dir, index, engine.state_slices(/*owned_only=*/false));
        if (planned.ok())
          copies = std::move(planned).value();
        else
          local.status = planned.status();  // another model: not damage, the walk stops
      }
      if (local.status.ok()) {
        auto opened = StateReader::open(dir, index, std::move(copies), options_.buffer_bytes);
        if (opened.ok())
          reader = std::move(opened).value();
        else
          local = {opened.status(), opened.status().code() == base::StatusCode::kBadInput, false};
      }
    } catch (const std::exception& e) {
      local.status = torch_error(e, "planning the load of checkpoint " + dir);
    }
  }
  ResumeAttempt agreed = agree_attempt(local, nullptr);
  if (!agreed.status.ok()) return agreed;
  if (index.format_version < kBlockChecksumsSince) {
    agreed = verify_whole_files(dir, index);
    if (!agreed.status.ok()) return agreed;
  }

  const auto t1 = std::chrono::steady_clock::now();
  local = {};
  std::vector<double> counts = {0.0, 0.0, 0.0};  // bytes read, of which direct, blocks verified
  try {
    auto read = reader->read(&local.changed_state);
    if (read.ok()) {
      counts = {static_cast<double>(read->bytes), static_cast<double>(read->direct_bytes),
                static_cast<double>(read->blocks_verified)};
    } else {
      local.status = read.status();
    }
  } catch (const std::exception& e) {
    local.status = torch_error(e, "loading checkpoint " + dir);
  }
  // A block that fails its checksum, or a file cut short, is damage; an I/O error is not.
  local.corrupt = local.status.code() == base::StatusCode::kBadInput;
  agreed = agree_attempt(local, &counts);
  if (!agreed.status.ok()) return agreed;
  if (comm_.rank() == 0) {
    std::fprintf(
        stderr,
        "checkpoint %s: %.3f GB read and %s in %.3f s by %d rank(s), %.0f%% with direct I/O "
        "(%.3f s in all)\n",
        dir.c_str(), counts[0] / 1e9,
        index.format_version < kBlockChecksumsSince ? "loaded" : "verified", seconds_since(t1),
        comm_.size(), counts[0] > 0 ? 100.0 * counts[1] / counts[0] : 0.0, seconds_since(t0));
  }
  engine.set_scalars({index.adam_step, index.loss_scale, index.good_steps});
  base::Status finished = engine.finish_load();
  if (!finished.ok()) return {finished, false, true};
  *step = index.step;
  return {base::Status::Ok(), false, true};
}

base::StatusOr<int64_t> Checkpointer::load(sharding::Engine& engine, const std::string& dir) {
  int64_t step = 0;
  RETURN_IF_ERROR(attempt_load(engine, dir, &step).status);
  return step;
}

base::StatusOr<std::optional<LoadedCheckpoint>> Checkpointer::resume(sharding::Engine& engine,
                                                                     const std::string& resume) {
  if (resume == "never") return std::optional<LoadedCheckpoint>();
  int64_t step = 0;
  if (resume != "auto") {
    std::string dir = resume;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    RETURN_IF_ERROR(attempt_load(engine, dir, &step).status.with_context("--resume " + resume));
    return std::optional<LoadedCheckpoint>(LoadedCheckpoint{dir, step});
  }
  ASSIGN_OR_RETURN(std::vector<std::string> dirs, committed_dirs());
  const bool root = comm_.rank() == 0;
  ASSIGN_OR_RETURN(std::optional<std::string> dir,
                   find_resumable(
                       dirs,
                       [root](const std::string& w) {
                         if (root) std::fprintf(stderr, "warning: %s\n", w.c_str());
                       },
                       [&](const std::string& d) { return attempt_load(engine, d, &step); }));
  if (!dir) {
    // A fresh start: give back what an attempt paged in (offload.optimizer = nvme).
    RETURN_IF_ERROR(engine.page_out_state(/*write_back=*/false));
    return std::optional<LoadedCheckpoint>();
  }
  return std::optional<LoadedCheckpoint>(LoadedCheckpoint{*dir, step});
}

}  // namespace dstrain::runtime::checkpoint
