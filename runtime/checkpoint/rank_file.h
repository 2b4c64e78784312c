#pragma once
// One rank's HDF5 file: one contiguous 1-D dataset per state slice, "/<kind>/<tensor name>",
// with attributes `offset` (first element in the flattened tensor), `full_shape` and `dtype`.
// HDF5 lays out the file and allocates every dataset up front; the data bytes are then written
// at their file offsets through CheckpointIo (bounded buffers, fault injection, fsync).
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace dstrain::runtime::checkpoint {

struct DatasetSpec {
  std::string kind;   // "param" | "exp_avg" | "exp_avg_sq"
  std::string name;   // tensor name
  std::string dtype;  // fp32 | bf16 | fp16
  int64_t numel = 0;
  int64_t offset = 0;
  std::vector<int64_t> full_shape;
  int64_t byte_offset = 0;  // filled by create_rank_file / read_rank_file
};

std::string dataset_path(const std::string& kind, const std::string& name);
std::string rank_file_name(int rank);  // "rank-00003.h5"

// Creates `path` with every dataset allocated (no fill) and sets each spec's byte_offset.
base::Status create_rank_file(const std::string& path, std::vector<DatasetSpec>& specs);
// The datasets of a rank file, with their byte offsets (metadata reads only).
base::StatusOr<std::vector<DatasetSpec>> read_rank_file(const std::string& path);

}  // namespace dstrain::runtime::checkpoint
