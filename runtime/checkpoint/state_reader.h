#pragma once
// Loading engine state slices from a checkpoint in one verified pass: each slice's elements are
// mapped to the byte ranges of the pieces that hold them, the blocks covering those ranges are
// read once with direct I/O and checked (block_reader.h), and the verified bytes are copied,
// converted or uploaded into the slices. Any world size and stage: a slice may draw on several
// files, a file may feed several slices.
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "runtime/checkpoint/block_reader.h"
#include "runtime/checkpoint/index.h"
#include "sharding/engine.h"

namespace dstrain::runtime::checkpoint {

// The tensor dtype of a checkpoint dtype name (fp32 | bf16 | fp16).
at::ScalarType stored_scalar_type(const std::string& dtype);

// Part of one piece going to part of one slice.
struct SliceCopy {
  int file = 0;             // index into CheckpointIndex::files
  int64_t byte_offset = 0;  // in the file
  int64_t bytes = 0;
  at::ScalarType stored = at::kFloat;
  at::Tensor dst;  // 1-D: the elements these bytes become
};

// The copies that fill `slices` from the checkpoint `index` describes (read from `dir`);
// kBadInput naming the tensor when the checkpoint lacks one or has another shape (a different
// model). Touches no file.
base::StatusOr<std::vector<SliceCopy>> plan_state_reads(
    const std::string& dir, const CheckpointIndex& index,
    const std::vector<sharding::StateSlice>& slices);

class Destination;  // a copy in progress (state_reader.cc)
class ReadBuffers;  // the two read slots (state_reader.cc)

// The read of planned copies, in two steps so that callers can agree across ranks in between:
// open() touches no destination, read() does.
class StateReader {
 public:
  // Opens the files the copies need and checks their sizes (kBadInput naming a missing or short
  // one), and allocates `budget_bytes` of read buffers (pinned when a destination is on CUDA).
  static base::StatusOr<std::unique_ptr<StateReader>> open(const std::string& dir,
                                                           const CheckpointIndex& index,
                                                           std::vector<SliceCopy> copies,
                                                           int64_t budget_bytes);
  ~StateReader();
  StateReader(const StateReader&) = delete;
  StateReader& operator=(const StateReader&) = delete;

  // Reads, verifies and copies: afterwards every destination holds its bytes. `*touched` becomes
  // true when the first destination is written, so a caller knows whether a failure left the
  // slices as they were. Errors as BlockReader::read().
  base::StatusOr<ReadStats> read(bool* touched);

 private:
  StateReader();
  std::vector<Destination> dests_;  // sorted by file and offset
  std::unique_ptr<ReadBuffers> buffers_;
  std::unique_ptr<BlockReader> reader_;
};

}  // namespace dstrain::runtime::checkpoint
