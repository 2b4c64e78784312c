#pragma once
// Saving and loading the engine's state (DESIGN.md, Checkpoints). Every function here is
// collective: all ranks call it in the same order.
//
// Save: each rank writes its owned state slices to its own HDF5 file under step-N.tmp/ (no
// gather, host memory bounded by `buffer_bytes`), the ranks agree on success, and rank 0 writes
// the index, with every file's per-block checksums, and commits. Load: each rank reads, for every
// slice it holds, the blocks of whatever files hold its pieces, once, with direct I/O, checking
// each block before copying from it; so any world size or stage can resume any checkpoint, and at
// an unchanged world size each rank reads its own file. A corrupt checkpoint is therefore found
// while it loads, and `--resume auto` falls back to the previous one from there.
//
// With checkpoint.async the save is split: start_save() hands the owned slices to a background
// thread and returns; that thread copies them to host memory (pinned on CUDA, on a stream of its
// own), then writes the rank file from the copy. The state a save reads changes only at the next
// optimizer step, so the copy overlaps the next forward and backward: whoever is about to change
// the state first calls wait_for_snapshot() (the trainer before each optimizer step; load() and
// finish_pending() do it themselves). The collective half (agreement, index, rename, latest)
// runs on the main thread at the next start_save() or finish_pending(), in the same order on
// every rank. The copy costs host memory equal to the rank's owned state until the write ends.
//
// Test-only: DSTRAIN_TEST_CHECKPOINT_DELAY_MS, when set, makes each rank sleep that long after
// creating its rank file and before writing its data, so tests can act while step-N.tmp/ exists.
// DSTRAIN_TEST_SNAPSHOT_DELAY_MS makes the background thread of an asynchronous save sleep that
// long before it copies the state, so tests can check that nothing changes the state first.
#include <cstdint>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/config.h"
#include "base/status.h"
#include "runtime/checkpoint/file_io.h"
#include "runtime/checkpoint/index.h"
#include "runtime/checkpoint/store.h"
#include "sharding/communicator.h"
#include "sharding/engine.h"

namespace dstrain::runtime::checkpoint {

struct CheckpointOptions {
  std::string run_dir;
  base::CheckpointConfig config;
  std::string config_toml;  // snapshot of the run's config, stored in the index
  std::string dstrain_version;
  std::string dtype;  // train.dtype
  int64_t seed = 0;
  int64_t zero_stage = 0;
  int64_t buffer_bytes = int64_t{64} << 20;  // host staging per rank while saving and loading
  int64_t block_bytes = kDefaultBlockBytes;  // checksummed unit; a multiple of kDirectIoAlignment
};

// A committed checkpoint, and how long training waited for it on this rank: stall_s in all, of
// which commit_s at the commit (for an asynchronous save: waiting for the writer, the agreement,
// the index; for a synchronous one, the whole save).
struct SavedCheckpoint {
  int64_t step = 0;
  std::string dir;
  double stall_s = 0.0;
  double commit_s = 0.0;
};

// The checkpoint a resume loaded.
struct LoadedCheckpoint {
  std::string dir;
  int64_t step = 0;
};

class Checkpointer {
 public:
  // `io` carries every byte written (tests inject faults through it); it must outlive this.
  Checkpointer(CheckpointOptions options, sharding::Communicator& comm, CheckpointIo& io);
  // Waits for a background write but commits nothing: an unfinished save stays step-N.tmp/.
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // Saves the engine's state after optimizer step `step` and commits it; returns its directory.
  // On failure on any rank, nothing committed changes and every rank returns an error.
  // Synchronous whatever checkpoint.async says (a save in flight is finished first).
  base::StatusOr<std::string> save(sharding::Engine& engine, int64_t step);
  // The training loop's entry: with checkpoint.async, finishes the save in flight and starts this
  // one in the background; otherwise save(). Returns the checkpoints this call committed.
  // The engine's state must not change until wait_for_snapshot() has returned.
  base::StatusOr<std::vector<SavedCheckpoint>> start_save(sharding::Engine& engine, int64_t step);
  // Blocks until the save in flight holds its own copy of the state, so the caller may change
  // it; returns at once when there is none. Local, not collective: a failed copy is reported by
  // the commit, on every rank. The time waited counts in that save's stall_s.
  void wait_for_snapshot();
  // Commits the background save in flight, if any; call at the end of training.
  base::StatusOr<std::optional<SavedCheckpoint>> finish_pending();
  // After a commit, rank 0 deletes the checkpoints beyond checkpoint.keep on a thread of its
  // own, so training does not wait for the file system (0.3-0.4 s for a 1.3 GB checkpoint on
  // the machine measured); this waits for it (so does the destructor). A failed deletion is
  // a warning on stderr: the checkpoints themselves are safe.
  void wait_for_pruning();
  // Does what `--resume` (auto | never | PATH) asks: loads a checkpoint into the engine and
  // returns it, or nullopt to start fresh. PATH that is not a sound checkpoint is kBadInput
  // naming the problem (the file, and the block for a checksum mismatch). auto tries the
  // complete checkpoints newest first, skipping corrupt ones with a warning on rank 0, as
  // find_resumable() describes; rank 0 lists them, and every rank then sees the same outcome of
  // each attempt, so all stop at the same one.
  base::StatusOr<std::optional<LoadedCheckpoint>> resume(sharding::Engine& engine,
                                                         const std::string& resume);
  // Loads `dir` into the engine, verifying every block it reads; returns the step it was saved
  // at. Every rank returns the same error, naming what the first failing rank found.
  base::StatusOr<int64_t> load(sharding::Engine& engine, const std::string& dir);

  const std::string& root() const { return root_; }

 private:
  // A save between its local write and its commit.
  struct Pending {
    int64_t step = 0;
    sharding::EngineScalars scalars;
    base::Status status;  // of the local write
    int64_t size = 0;     // of the rank file
    uint32_t crc = 0;
    std::vector<uint32_t> blocks;  // crc32 of each options_.block_bytes block
    double stall_s = 0.0;
  };

  // One collective attempt to load `dir`: the index and the plan (nothing written yet), then,
  // for version 1, the whole-file checksums (each rank a share of the files), then the verified
  // read into the engine. Every rank gets the same outcome; `*step` is set on success.
  ResumeAttempt attempt_load(sharding::Engine& engine, const std::string& dir, int64_t* step);
  // Every rank's outcome made one: the worst kind of failure wins (any failure over corrupt
  // over ok), with the message of the lowest rank that had it; changed_state if any rank's.
  // `counts` are summed over ranks. A failed collective is returned as a plain failure.
  ResumeAttempt agree_attempt(const ResumeAttempt& mine, std::vector<double>* counts);
  // Version 1: each rank checks its share of the files (file i on rank i % size) whole.
  ResumeAttempt verify_whole_files(const std::string& dir, const CheckpointIndex& index);
  // The complete checkpoints under root_, newest first, as rank 0 sees them.
  base::StatusOr<std::vector<std::string>> committed_dirs();
  // Rank 0 empties and creates step-N.tmp/; every rank learns whether it could.
  base::Status prepare_dir(int64_t step);
  // Writes the rank file; fills p's size, crc and blocks.
  base::Status write_rank_file(const std::vector<sharding::StateSlice>& slices,
                               const std::string& path, Pending& p);
  // Agreement on every rank's write, then rank 0 commits; returns the directory.
  base::StatusOr<std::string> commit_all(const Pending& p);
  base::Status commit_on_root(const sharding::EngineScalars& scalars, int64_t step,
                              const std::vector<FileEntry>& files);
  // True on every rank when `ok` holds on every rank (one all-reduce of a failure flag).
  base::StatusOr<bool> agree(bool ok);
  // Rank 0, after a commit: the deletion wait_for_pruning() describes, on pruner_.
  void start_pruning();

  CheckpointOptions options_;
  sharding::Communicator& comm_;
  CheckpointIo& io_;
  std::string root_ = options_.run_dir + "/checkpoints";
  int64_t test_delay_ms_ = 0;
  int64_t test_snapshot_delay_ms_ = 0;
  // The background copy and write, and what they report. The writer sets `pending_`'s status,
  // size, crc and blocks, which are read only after joining it; stall_s is the main thread's.
  std::thread writer_;
  std::optional<Pending> pending_;
  // Ready once the writer holds its copy of the state (valid from start_save() until
  // wait_for_snapshot()).
  std::future<void> snapshot_taken_;
  // The host copy an asynchronous save writes from, kept for the next one (see snapshot()); the
  // writer's while it runs.
  std::vector<at::Tensor> host_copy_;
  // Deletes old complete checkpoints only (never step-N.tmp/, which a save may be writing);
  // `prune_status_` is read only after joining it.
  std::thread pruner_;
  base::Status prune_status_;
};

}  // namespace dstrain::runtime::checkpoint
