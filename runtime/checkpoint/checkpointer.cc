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
#include <map>

#include "base/fs.h"
#include "runtime/checkpoint/checksum.h"
#include "runtime/checkpoint/index.h"
#include "runtime/checkpoint/rank_file.h"
#include "runtime/checkpoint/store.h"

namespace dstrain::runtime::checkpoint {
namespace {

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "fp32";
    case at::kBFloat16: return "bf16";
    case at::kHalf: return "fp16";
    default: return "";
  }
}

at::ScalarType scalar_type(const std::string& dtype) {
  if (dtype == "bf16") return at::kBFloat16;
  if (dtype == "fp16") return at::kHalf;
  return at::kFloat;
}

base::Status torch_error(const std::exception& e, const std::string& what) {
  return base::Status::Internal(what + ": " + e.what());
}

// Read-only descriptors of the files a load touches, closed together.
class ReadFiles {
 public:
  explicit ReadFiles(std::string dir) : dir_(std::move(dir)) {}
  ~ReadFiles() {
    for (auto& [name, fd] : fds_) ::close(fd);
  }
  ReadFiles(const ReadFiles&) = delete;
  ReadFiles& operator=(const ReadFiles&) = delete;

  // Fills `n` bytes at `offset` of file `name`.
  base::Status read(const std::string& name, int64_t offset, void* out, size_t n) {
    const std::string path = dir_ + "/" + name;
    auto it = fds_.find(name);
    if (it == fds_.end()) {
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return base::Status::BadInput(path + ": cannot open: " + std::strerror(errno));
      it = fds_.emplace(name, fd).first;
    }
    char* p = static_cast<char*>(out);
    while (n > 0) {
      const ssize_t got = ::pread(it->second, p, n, offset);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) return base::Status::IOError(path + ": read: " + std::strerror(errno));
      if (got == 0) return base::Status::BadInput(path + ": truncated (read past its end)");
      p += got;
      n -= static_cast<size_t>(got);
      offset += got;
    }
    return base::Status::Ok();
  }

 private:
  std::string dir_;
  std::map<std::string, int> fds_;
};

// Copies the elements [lo, lo + dst.numel()) of `t` from the pieces that hold them into `dst`.
base::Status read_slice(ReadFiles& files, const TensorEntry& t, int64_t lo, at::Tensor dst,
                        int64_t buffer_bytes) {
  const int64_t hi = lo + dst.numel();
  const int64_t elem = dtype_bytes(t.dtype);
  const int64_t chunk = std::max<int64_t>(1, buffer_bytes / elem);
  for (const Piece& p : t.pieces) {
    const int64_t a = std::max(lo, p.offset);
    const int64_t b = std::min(hi, p.offset + p.numel);
    for (int64_t c = a; c < b; c += chunk) {
      const int64_t n = std::min(chunk, b - c);
      at::Tensor buf = at::empty({n}, at::TensorOptions().dtype(scalar_type(t.dtype)));
      RETURN_IF_ERROR(files.read(p.file, p.byte_offset + (c - p.offset) * elem, buf.data_ptr(),
                                 static_cast<size_t>(n * elem)));
      dst.narrow(0, c - lo, n).copy_(buf);
    }
  }
  return base::Status::Ok();
}

const TensorEntry* find_tensor(const CheckpointIndex& index, const std::string& kind,
                               const std::string& name) {
  auto k = index.tensors.find(kind);
  if (k == index.tensors.end()) return nullptr;
  auto t = k->second.find(name);
  return t == k->second.end() ? nullptr : &t->second;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Host copies of the owned slices, so training can change the originals while they are written.
// `buffers` keeps the copies' memory from one save to the next: allocating and faulting in fresh
// pages costs about twice the copy itself.
std::vector<sharding::StateSlice> snapshot(std::vector<sharding::StateSlice> slices,
                                           std::vector<at::Tensor>& buffers) {
  bool reuse = buffers.size() == slices.size();
  for (size_t i = 0; reuse && i < slices.size(); ++i) {
    reuse = buffers[i].numel() == slices[i].data.numel() &&
            buffers[i].scalar_type() == slices[i].data.scalar_type();
  }
  if (!reuse) buffers.clear();
  for (size_t i = 0; i < slices.size(); ++i) {
    sharding::StateSlice& s = slices[i];
    if (!reuse) {
      at::TensorOptions opts = at::TensorOptions().dtype(s.data.scalar_type());
      // Pinned memory makes the device-to-host copy a DMA; plain memory is all a CPU run needs.
      if (s.data.is_cuda()) opts = opts.pinned_memory(true);
      buffers.push_back(at::empty({s.data.numel()}, opts));
    }
    buffers[i].copy_(s.data.reshape({-1}));
    s.data = buffers[i];
  }
  return slices;
}

}  // namespace

Checkpointer::Checkpointer(CheckpointOptions options, sharding::Communicator& comm, CheckpointIo& io)
    : options_(std::move(options)), comm_(comm), io_(io) {
  if (const char* delay = std::getenv("DSTRAIN_TEST_CHECKPOINT_DELAY_MS")) {
    test_delay_ms_ = std::atoll(delay);
  }
}

Checkpointer::~Checkpointer() {
  if (writer_.joinable()) writer_.join();
}

base::StatusOr<bool> Checkpointer::agree(bool ok) {
  at::Tensor flag = at::tensor({ok ? 0.0 : 1.0}, at::kDouble);
  RETURN_IF_ERROR(sharding::all_reduce_now(comm_, flag, sharding::ReduceOp::kMax));
  return flag.item<double>() == 0.0;
}

base::Status Checkpointer::write_rank_file(const std::vector<sharding::StateSlice>& slices,
                                           const std::string& path, int64_t* size, uint32_t* crc) {
  std::vector<DatasetSpec> specs;
  for (const sharding::StateSlice& s : slices) {
    const std::string dtype = dtype_name(s.data.scalar_type());
    if (dtype.empty()) return base::Status::Internal(s.name + ": no checkpoint dtype for its storage");
    specs.push_back({sharding::state_kind_name(s.kind), s.name, dtype, s.data.numel(), s.offset,
                     s.full_shape, 0});
  }
  RETURN_IF_ERROR(create_rank_file(path, specs));
  if (test_delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(test_delay_ms_));
  ASSIGN_OR_RETURN(std::unique_ptr<FileWriter> w, io_.open(path, /*truncate=*/false));
  std::vector<ChecksummedRegion> regions;
  for (size_t i = 0; i < slices.size(); ++i) {
    const int64_t elem = dtype_bytes(specs[i].dtype);
    const int64_t chunk = std::max<int64_t>(1, options_.buffer_bytes / elem);
    const at::Tensor& data = slices[i].data;
    ChecksummedRegion r{specs[i].byte_offset, data.numel() * elem, crc32_update(0, nullptr, 0)};
    for (int64_t c = 0; c < data.numel(); c += chunk) {
      const int64_t n = std::min(chunk, data.numel() - c);
      // On CPU this is the engine's own memory (no copy); a device tensor is staged in `chunk`.
      const at::Tensor host = data.narrow(0, c, n).to(at::kCPU).contiguous();
      r.crc = crc32_update(r.crc, host.data_ptr(), static_cast<size_t>(n * elem));
      RETURN_IF_ERROR(w->write_at(r.offset + c * elem, host.data_ptr(), static_cast<size_t>(n * elem)));
    }
    regions.push_back(r);
  }
  RETURN_IF_ERROR(w->sync());
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return base::Status::IOError(path + ": stat: " + std::strerror(errno));
  *size = static_cast<int64_t>(st.st_size);
  ASSIGN_OR_RETURN(*crc, file_crc32(path, *size, std::move(regions)));
  return base::Status::Ok();
}

base::Status Checkpointer::commit_on_root(const sharding::EngineScalars& sc, int64_t step,
                                          const std::vector<double>& digests) {
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
  for (int r = 0; r < comm_.size(); ++r) {
    const std::string name = rank_file_name(r);
    index.files.push_back({name, static_cast<int64_t>(digests[3 * r + 1]),
                           static_cast<uint32_t>(digests[3 * r + 2])});
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
  return apply_retention(root_, options_.config.keep);
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
  at::Tensor mine = at::tensor({local.ok() ? 0.0 : 1.0, static_cast<double>(p.size),
                                static_cast<double>(p.crc)}, at::kDouble);
  at::Tensor all = at::empty({3 * comm_.size()}, at::kDouble);
  RETURN_IF_ERROR(comm_.all_gather(mine, all)->wait());
  const std::vector<double> digests(all.data_ptr<double>(), all.data_ptr<double>() + all.numel());
  std::string failed;
  for (int r = 0; r < comm_.size(); ++r) {
    if (digests[3 * r] != 0.0) failed += (failed.empty() ? "" : ", ") + std::to_string(r);
  }
  if (!failed.empty()) {
    // Nothing was committed: only this attempt's directory goes.
    if (root) (void)base::remove_tree(tmp);
    const std::string what = "checkpoint at step " + std::to_string(p.step) + " not written (rank(s) " +
                             failed + " failed; earlier checkpoints are intact)";
    return local.ok() ? base::Status::IOError(what) : local.with_context(what);
  }

  if (root) {
    try {
      local = commit_on_root(p.scalars, p.step, digests);
    } catch (const std::exception& e) {
      local = torch_error(e, "committing checkpoint " + tmp);
    }
    if (!local.ok()) (void)base::remove_tree(tmp);
  }
  // Rank 0's verdict doubles as the final barrier: no rank trains on before the commit.
  at::Tensor verdict = at::tensor({local.ok() ? 0.0 : 1.0}, at::kDouble);
  RETURN_IF_ERROR(comm_.broadcast(verdict, 0)->wait());
  if (verdict.item<double>() != 0.0) {
    return root ? local : base::Status::IOError("checkpoint " + dir + ": rank 0 could not commit it");
  }
  return dir;
}

base::StatusOr<std::string> Checkpointer::save(sharding::Engine& engine, int64_t step) {
  RETURN_IF_ERROR(finish_pending().status());
  RETURN_IF_ERROR(prepare_dir(step));
  Pending p;
  p.step = step;
  p.scalars = engine.scalars();
  try {
    p.status = write_rank_file(engine.state_slices(/*owned_only=*/true),
                               root_ + "/" + step_dir_name(step) + ".tmp/" + rank_file_name(comm_.rank()),
                               &p.size, &p.crc);
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
    committed.push_back({step, std::move(dir), seconds_since(t0)});
    return committed;
  }
  ASSIGN_OR_RETURN(std::optional<SavedCheckpoint> previous, finish_pending());
  if (previous) committed.push_back(std::move(*previous));
  const auto t1 = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(prepare_dir(step));
  Pending p;
  p.step = step;
  p.scalars = engine.scalars();
  std::vector<sharding::StateSlice> copy;
  try {
    copy = snapshot(engine.state_slices(/*owned_only=*/true), host_copy_);
  } catch (const std::exception& e) {
    p.status = torch_error(e, "copying state for checkpoint at step " + std::to_string(step));
  }
  p.stall_s = seconds_since(t1);
  pending_ = std::move(p);
  if (!pending_->status.ok()) return committed;  // reported by the agreement in finish_pending()
  const std::string path =
      root_ + "/" + step_dir_name(step) + ".tmp/" + rank_file_name(comm_.rank());
  // The thread owns `copy`; it touches only files under step-N.tmp/, no collectives.
  writer_ = std::thread([this, path, copy = std::move(copy)]() {
    Pending& out = *pending_;
    try {
      out.status = write_rank_file(copy, path, &out.size, &out.crc);
    } catch (const std::exception& e) {
      out.status = torch_error(e, "writing checkpoint " + path);
    }
  });
  return committed;
}

base::StatusOr<std::optional<SavedCheckpoint>> Checkpointer::finish_pending() {
  if (!pending_) return std::optional<SavedCheckpoint>();
  const auto t0 = std::chrono::steady_clock::now();
  if (writer_.joinable()) writer_.join();
  Pending p = std::move(*pending_);
  pending_.reset();
  ASSIGN_OR_RETURN(std::string dir, commit_all(p));
  return std::optional<SavedCheckpoint>(SavedCheckpoint{p.step, std::move(dir), p.stall_s + seconds_since(t0)});
}

base::StatusOr<std::optional<std::string>> Checkpointer::resolve_resume(const std::string& resume) {
  if (resume == "never") return std::optional<std::string>();
  const bool automatic = resume == "auto";
  std::string explicit_dir = resume;
  while (explicit_dir.size() > 1 && explicit_dir.back() == '/') explicit_dir.pop_back();

  // Rank 0 decides: {0 start fresh, 1 resume, 2 error}, and the step for auto.
  base::Status st;
  double decision[2] = {0.0, 0.0};
  if (comm_.rank() == 0) {
    if (automatic) {
      auto found = find_resumable(root_, [](const std::string& w) {
        std::fprintf(stderr, "warning: %s\n", w.c_str());
      });
      if (!found.ok()) {
        st = found.status();
      } else if (found->has_value()) {
        ASSIGN_OR_RETURN(CheckpointIndex index, read_index(**found));
        decision[0] = 1.0;
        decision[1] = static_cast<double>(index.step);
      }
    } else {
      st = verify_checkpoint(explicit_dir);
      if (st.ok()) decision[0] = 1.0;
      else st = st.with_context("--resume " + resume);
    }
    if (!st.ok()) decision[0] = 2.0;
  }
  at::Tensor t = at::tensor({decision[0], decision[1]}, at::kDouble);
  RETURN_IF_ERROR(comm_.broadcast(t, 0)->wait());
  const double verdict = t[0].item<double>();
  if (verdict == 2.0) {
    return comm_.rank() == 0 ? st : base::Status::BadInput("--resume " + resume + ": rejected by rank 0");
  }
  if (verdict == 0.0) return std::optional<std::string>();
  if (!automatic) return std::optional<std::string>(explicit_dir);
  return std::optional<std::string>(root_ + "/" + step_dir_name(static_cast<int64_t>(t[1].item<double>())));
}

base::StatusOr<int64_t> Checkpointer::load(sharding::Engine& engine, const std::string& dir) {
  base::Status local;
  CheckpointIndex index;
  {
    auto parsed = read_index(dir);
    if (parsed.ok()) index = std::move(parsed).value();
    else local = parsed.status();
  }
  if (local.ok()) {
    try {
      ReadFiles files(dir);
      for (sharding::StateSlice& s : engine.state_slices(/*owned_only=*/false)) {
        const std::string kind = sharding::state_kind_name(s.kind);
        const TensorEntry* t = find_tensor(index, kind, s.name);
        if (t == nullptr) {
          local = base::Status::BadInput(dir + ": has no " + kind + " of " + s.name +
                                         " (saved from a different model?)");
          break;
        }
        if (t->shape != s.full_shape) {
          local = base::Status::BadInput(dir + ": " + kind + "/" + s.name + " has shape " +
                                         c10::str(at::IntArrayRef(t->shape)) + ", the model needs " +
                                         c10::str(at::IntArrayRef(s.full_shape)));
          break;
        }
        local = read_slice(files, *t, s.offset, s.data, options_.buffer_bytes);
        if (!local.ok()) break;
      }
    } catch (const std::exception& e) {
      local = torch_error(e, "loading checkpoint " + dir);
    }
  }
  ASSIGN_OR_RETURN(bool all_ok, agree(local.ok()));
  if (!all_ok) {
    return local.ok() ? base::Status::BadInput("loading checkpoint " + dir + " failed on another rank")
                      : local;
  }
  engine.set_scalars({index.adam_step, index.loss_scale, index.good_steps});
  RETURN_IF_ERROR(engine.finish_load());
  return index.step;
}

}  // namespace dstrain::runtime::checkpoint
