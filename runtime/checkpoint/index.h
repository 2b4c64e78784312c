#pragma once
// index.json: what a committed checkpoint holds and where every named tensor's pieces lie
// (docs/checkpoint-format.md). Written last, by rank 0; readers trust nothing else.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/status.h"

namespace dstrain::runtime::checkpoint {

// Version 2 adds per-block checksums, so a load verifies exactly the bytes it reads; version 1
// (whole-file checksums only) is still read.
inline constexpr int kFormatVersion = 2;
inline constexpr int kOldestFormatVersion = 1;
inline constexpr int kBlockChecksumsSince = 2;
inline constexpr const char* kIndexFile = "index.json";
// The block a version-2 writer checksums: large enough that the list stays short (a 1 GB file
// has 256), small enough that a resharded load reads little beyond the ranges it needs.
inline constexpr int64_t kDefaultBlockBytes = int64_t{4} << 20;

struct FileEntry {
  std::string name;  // relative to the checkpoint directory, e.g. "rank-00001.h5"
  int64_t size = 0;
  uint32_t crc32 = 0;  // zlib crc32 of the whole file
  // Version 2: the crc32 of each `block_bytes` block of the file, the last one possibly shorter.
  // Version 1: block_bytes = 0 and no blocks.
  int64_t block_bytes = 0;
  std::vector<uint32_t> block_crc32;
};

// A contiguous run of a tensor's flattened elements stored in one HDF5 dataset.
struct Piece {
  std::string file;
  std::string dataset;  // e.g. "/param/model.norm.weight"
  int64_t offset = 0;   // first element in the flattened tensor
  int64_t numel = 0;
  int64_t byte_offset = 0;  // where the dataset's raw data starts in the file (contiguous layout)
};

struct TensorEntry {
  std::vector<int64_t> shape;
  std::string dtype;          // fp32 | bf16 | fp16 (16-bit types are stored as raw uint16)
  std::vector<Piece> pieces;  // sorted by offset, covering [0, numel) exactly once
};

struct CheckpointIndex {
  int format_version = kFormatVersion;
  std::string dstrain_version;
  int64_t step = 0;
  int world_size = 0;
  int64_t zero_stage = 0;
  std::string dtype;  // train.dtype of the run that saved it
  int64_t seed = 0;
  double adam_step = 0.0;
  double loss_scale = 1.0;
  int64_t good_steps = 0;
  std::string config_toml;  // the run's full config
  std::vector<FileEntry> files;
  // state kind ("param", "exp_avg", "exp_avg_sq") -> tensor name -> entry
  std::map<std::string, std::map<std::string, TensorEntry>> tensors;
};

int64_t dtype_bytes(const std::string& dtype);  // 0 for an unknown name
std::string index_to_json(const CheckpointIndex& index);
// Parses and validates; errors are kBadInput and start with `source` (the index file's path).
base::StatusOr<CheckpointIndex> parse_index(const std::string& text, const std::string& source);
// Structure: known dtypes, pieces that tile each tensor, files listed with room for their pieces.
base::Status validate_index(const CheckpointIndex& index, const std::string& source);
// Reads <dir>/index.json.
base::StatusOr<CheckpointIndex> read_index(const std::string& dir);
// Number of blocks a file of `size` bytes has (0 for a version-1 entry).
int64_t block_count(const FileEntry& file);
// Every listed file exists with the recorded size and checksums; kBadInput naming the first bad
// file (and, in version 2, the block and its byte range).
base::Status verify_files(const std::string& dir, const CheckpointIndex& index);
// The same for one file of the index: version 2 reads it once with direct I/O, block by block.
base::Status verify_file(const std::string& dir, const FileEntry& file);

}  // namespace dstrain::runtime::checkpoint
