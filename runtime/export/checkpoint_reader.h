#pragma once
// Whole named tensors out of a committed checkpoint, without LibTorch and without the engine:
// index.json says which byte ranges of which rank files hold each piece, and those are read with
// pread. Host memory is the one tensor asked for, whatever world size and stage saved it.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/status.h"
#include "runtime/checkpoint/index.h"
#include "runtime/hf/unique_fd.h"

namespace dstrain::runtime::exporter {

// `path` may name a checkpoint (a directory with index.json), a checkpoints directory, or a run
// directory (both with a `latest` file, the latter under checkpoints/); returns the checkpoint
// directory. kBadInput naming `path` when it is none of these.
base::StatusOr<std::string> resolve_checkpoint_dir(const std::string& path);

class CheckpointReader {
 public:
  // Reads and validates index.json and verifies every file's size and CRC-32 before any tensor
  // is read: a damaged checkpoint is kBadInput naming the file and the problem.
  static base::StatusOr<CheckpointReader> open(const std::string& dir);

  CheckpointReader(CheckpointReader&&) = default;
  CheckpointReader& operator=(CheckpointReader&&) = default;

  const std::string& dir() const { return dir_; }
  const checkpoint::CheckpointIndex& index() const { return index_; }
  // nullptr when the checkpoint holds no such tensor.
  const checkpoint::TensorEntry* find(const std::string& name,
                                      const std::string& kind = "param") const;
  // The whole tensor, row-major, widened to fp32 (exact for bf16 and fp16).
  base::StatusOr<std::vector<float>> read_fp32(const std::string& name,
                                               const std::string& kind = "param") const;

 private:
  CheckpointReader() = default;
  base::Status read_bytes(const std::string& file, int64_t offset, void* dst, int64_t n) const;

  std::string dir_;
  checkpoint::CheckpointIndex index_;
  std::map<std::string, hf::UniqueFd> files_;  // every file of the index, opened read-only
};

}  // namespace dstrain::runtime::exporter
