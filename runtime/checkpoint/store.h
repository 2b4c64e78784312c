#pragma once
// The checkpoints directory of a run (interface.md): complete checkpoints are
// step-NNNNNNNN/ (8 digits), one being written is step-NNNNNNNN.tmp/, and `latest` holds the
// name of the newest complete one. Only rank 0 calls the functions that change it.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "runtime/checkpoint/file_io.h"

namespace dstrain::runtime::checkpoint {

inline constexpr const char* kLatestFile = "latest";

std::string checkpoints_dir(const std::string& run_dir);
std::string step_dir_name(int64_t step);  // "step-00000012"
// Steps of the complete checkpoints under `root`, newest first (a missing root has none).
base::StatusOr<std::vector<int64_t>> committed_steps(const std::string& root);
// The name `latest` holds, or nullopt when there is no such file.
base::StatusOr<std::optional<std::string>> read_latest(const std::string& root);

// Makes <root>/step-N.tmp/ durable as <root>/step-N/: fsyncs the index written into it,
// renames the directory, fsyncs root, then replaces `latest` by write-temp + rename.
base::Status commit(CheckpointIo& io, const std::string& root, int64_t step,
                    const std::string& index_json);
// Deletes complete checkpoints beyond the `keep` newest (never the newest).
base::Status delete_old_checkpoints(const std::string& root, int64_t keep);
// Deletes leftover *.tmp directories of writes that never committed.
base::Status delete_unfinished(const std::string& root);
// Both.
base::Status apply_retention(const std::string& root, int64_t keep);

// Index + every file checked: kBadInput naming the problem.
base::Status verify_checkpoint(const std::string& dir);

// What one attempt to resume from a checkpoint came to; the same on every rank when the attempt
// is collective.
struct ResumeAttempt {
  base::Status status;         // Ok: the run continues from this checkpoint
  bool corrupt = false;        // damaged (bad index, missing or truncated file, bad checksum)
  bool changed_state = false;  // the attempt had written into the state before it failed
};

// What --resume auto picks: the first of `dirs` (complete checkpoints, newest first) that
// `attempt` loads. Each corrupt one is skipped with a warning through `warn` naming it and why;
// any other failure stops the walk. nullopt when none is usable and no attempt changed the
// state (the run starts afresh); kBadInput when none is usable after one did, since the state is
// then neither a checkpoint's nor a fresh one (checkpoints are verified while they load).
base::StatusOr<std::optional<std::string>> find_resumable(
    const std::vector<std::string>& dirs, const std::function<void(const std::string&)>& warn,
    const std::function<ResumeAttempt(const std::string&)>& attempt);

}  // namespace dstrain::runtime::checkpoint
