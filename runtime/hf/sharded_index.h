#pragma once
// A Hugging Face checkpoint made of one model.safetensors or of shards listed in
// model.safetensors.index.json ({"metadata": {"total_size": N}, "weight_map": {name: shard}}).
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "runtime/hf/safetensors.h"

namespace dstrain::runtime::hf {

inline constexpr char kSingleFileName[] = "model.safetensors";
inline constexpr char kIndexFileName[] = "model.safetensors.index.json";

// Where a tensor lives: the open shard and its entry there. Both point into the
// ShardedCheckpoint they came from and live as long as it does.
struct TensorRef {
  const SafetensorsFile* file = nullptr;
  const TensorInfo* info = nullptr;
};

// The open shards of a checkpoint and a name -> shard lookup. Move-only (owns the files).
class ShardedCheckpoint {
 public:
  // Reads the index, checks that each shard name is a plain "*.safetensors" file name in the
  // index's directory and that each tensor is named once, opens (and so validates) every shard,
  // and checks that each tensor is in the shard the index names. Errors are kBadInput naming the
  // index or the shard file.
  static base::StatusOr<ShardedCheckpoint> open_index(const std::string& index_path);
  // A checkpoint of one file; every tensor in it is listed.
  static base::StatusOr<ShardedCheckpoint> open_single(const std::string& safetensors_path);

  ShardedCheckpoint(ShardedCheckpoint&&) = default;
  ShardedCheckpoint& operator=(ShardedCheckpoint&&) = default;
  ShardedCheckpoint(const ShardedCheckpoint&) = delete;
  ShardedCheckpoint& operator=(const ShardedCheckpoint&) = delete;

  // The index file, or the single safetensors file.
  const std::string& source() const { return source_; }
  // Tensor names in sorted order.
  std::vector<std::string> names() const;
  size_t size() const { return refs_.size(); }
  // nullopt when the checkpoint has no such tensor.
  std::optional<TensorRef> find(const std::string& name) const;
  // Like find(), but a missing tensor is kBadInput naming the checkpoint and the tensor.
  base::StatusOr<TensorRef> lookup(const std::string& name) const;
  const std::vector<SafetensorsFile>& shards() const { return shards_; }
  // "metadata.total_size" of the index when present.
  std::optional<uint64_t> total_size() const { return total_size_; }

 private:
  ShardedCheckpoint() = default;

  std::string source_;
  // Never resized after construction, so TensorRef pointers into it stay valid across moves.
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, std::pair<size_t, size_t>> refs_;  // name -> (shard, tensor in shard)
  std::optional<uint64_t> total_size_;
};

// Checks a shard name from an index: a plain file name ending ".safetensors" (no '/', no "..",
// no NUL, not empty). Returns an error message, empty when the name is fine.
std::string check_shard_name(const std::string& name);

// Opens `<dir>/model.safetensors` when present, else `<dir>/model.safetensors.index.json`;
// kBadInput naming `dir` when neither exists.
base::StatusOr<ShardedCheckpoint> open_checkpoint_dir(const std::string& dir);

}  // namespace dstrain::runtime::hf
