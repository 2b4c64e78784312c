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
// Deletes complete checkpoints beyond the `keep` newest (never the newest) and leftover *.tmp
// directories of writes that never committed.
base::Status apply_retention(const std::string& root, int64_t keep);

// What --resume auto picks: the newest complete checkpoint (what `latest` names) that
// verifies (index valid, file sizes and checksums match). Each checkpoint skipped is reported
// through `warn` naming it and why. nullopt when none is usable.
base::StatusOr<std::optional<std::string>> find_resumable(
    const std::string& root, const std::function<void(const std::string&)>& warn);
// Index + every file checked: kBadInput naming the problem.
base::Status verify_checkpoint(const std::string& dir);

}  // namespace dstrain::runtime::checkpoint
