#pragma once
// Saving and loading the engine's state (DESIGN.md, Checkpoints). Every function here is
// collective: all ranks call it in the same order.
//
// Save: each rank writes its owned state slices to its own HDF5 file under step-N.tmp/ (no
// gather, host memory bounded by `buffer_bytes`), the ranks agree on success, and rank 0 writes
// the index and commits. Load: each rank reads, for every slice it holds, the overlapping pieces
// of whatever files hold them, so any world size or stage can resume any checkpoint.
#include <cstdint>
#include <optional>
#include <string>

#include "base/config.h"
#include "base/status.h"
#include "runtime/checkpoint/file_io.h"
#include "sharding/communicator.h"
#include "sharding/engine.h"

namespace dstrain::runtime::checkpoint {

struct CheckpointOptions {
  std::string run_dir;
  base::CheckpointConfig config;
  std::string config_toml;      // snapshot of the run's config, stored in the index
  std::string dstrain_version;
  std::string dtype;            // train.dtype
  int64_t seed = 0;
  int64_t zero_stage = 0;
  int64_t buffer_bytes = int64_t{64} << 20;  // host staging per rank while saving and loading
};

class Checkpointer {
 public:
  // `io` carries every byte written (tests inject faults through it); it must outlive this.
  Checkpointer(CheckpointOptions options, sharding::Communicator& comm, CheckpointIo& io)
      : options_(std::move(options)), comm_(comm), io_(io) {}

  // Saves the engine's state after optimizer step `step` and commits it; returns its directory.
  // On failure on any rank, nothing committed changes and every rank returns an error.
  base::StatusOr<std::string> save(sharding::Engine& engine, int64_t step);
  // Decides what `--resume` (auto | never | PATH) means: the checkpoint directory to load, or
  // nullopt to start fresh. Rank 0 verifies checksums and tells the others. PATH that is not a
  // sound checkpoint is kBadInput naming the problem; auto skips corrupt ones with a warning.
  base::StatusOr<std::optional<std::string>> resolve_resume(const std::string& resume);
  // Loads `dir` into the engine; returns the step it was saved at.
  base::StatusOr<int64_t> load(sharding::Engine& engine, const std::string& dir);

  const std::string& root() const { return root_; }

 private:
  base::Status write_rank_file(sharding::Engine& engine, const std::string& path, int64_t* size,
                               uint32_t* crc);
  base::Status commit_on_root(sharding::Engine& engine, int64_t step, const std::vector<double>& digests);
  // True on every rank when `ok` holds on every rank (one all-reduce of a failure flag).
  base::StatusOr<bool> agree(bool ok);

  CheckpointOptions options_;
  sharding::Communicator& comm_;
  CheckpointIo& io_;
  std::string root_ = options_.run_dir + "/checkpoints";
};

}  // namespace dstrain::runtime::checkpoint
