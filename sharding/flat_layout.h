#pragma once
// Flat parameter buffers and their shard layout, as pure functions over a unit's schema.
// A unit's parameters are packed into up to three flat buffers (trainable with weight decay,
// trainable without, frozen); each parameter starts at a multiple of kAlign elements and the
// buffer is padded to a multiple of kAlign * world_size, so rank r owns the contiguous range
// [r * S, (r + 1) * S) with S = padded_numel / world_size.
#include <cstdint>
#include <string>
#include <vector>

#include "base/unit.h"

namespace dstrain::sharding {

inline constexpr int64_t kAlign = 16;

enum class BufferKind { kDecay = 0, kNoDecay = 1, kFrozen = 2 };
inline constexpr int kNumBufferKinds = 3;
const char* buffer_kind_name(BufferKind k);
BufferKind buffer_kind_of(const base::ParamSpec& spec);

struct FlatEntry {
  int schema_index;  // position in the unit's schema
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset;  // element offset in the flat buffer
  int64_t numel;
};

struct FlatLayout {
  BufferKind kind = BufferKind::kDecay;
  std::vector<FlatEntry> entries;
  int64_t padded_numel = 0;  // multiple of kAlign * world_size
  int64_t shard_numel = 0;   // padded_numel / world_size
  bool empty() const { return entries.empty(); }
};

// The range of a flat buffer held by one rank.
struct ShardRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t numel() const { return end - begin; }
};

// Layout of the parameters of `kind` in `schema`, skipping tied parameters (they live in their
// owner's buffer). Deterministic in the schema order.
FlatLayout make_flat_layout(const std::vector<base::ParamSpec>& schema, BufferKind kind,
                            int world_size);

ShardRange shard_range(const FlatLayout& layout, int rank);

// The part of entry `e` inside `shard`, in entry-local element offsets; empty when disjoint.
struct EntrySlice {
  int64_t entry_begin = 0;  // offset within the parameter
  int64_t shard_begin = 0;  // offset within the shard
  int64_t numel = 0;
};
EntrySlice entry_slice(const FlatEntry& e, const ShardRange& shard);

// Split sizes that cover the whole buffer, alternating gaps and parameters, for one
// split_with_sizes call; `param_chunks[i]` is the chunk index of entries[i].
struct SplitPlan {
  std::vector<int64_t> sizes;
  std::vector<int> param_chunks;
};
SplitPlan split_plan(const FlatLayout& layout);

// Whether the ops of unit `unit_index` can write the whole gradient of this buffer into a sink
// (base/grad_sink.h): it trains, every entry declares ParamSpec::grad_sink, and the unit is not
// the first (which reads token ids, so no graph reaches its ops). A buffer another unit ties to
// is excluded by its owner as well.
bool sinks_whole_buffer(const std::vector<base::ParamSpec>& schema, const FlatLayout& layout,
                        size_t unit_index);

}  // namespace dstrain::sharding
