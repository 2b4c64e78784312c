#include "sharding/flat_layout.h"

#include <algorithm>

namespace dstrain::sharding {

const char* buffer_kind_name(BufferKind k) {
  switch (k) {
    case BufferKind::kDecay:
      return "decay";
    case BufferKind::kNoDecay:
      return "no_decay";
    case BufferKind::kFrozen:
      return "frozen";
  }
  return "?";
}

BufferKind buffer_kind_of(const base::ParamSpec& spec) {
  if (!spec.trainable) return BufferKind::kFrozen;
  return spec.decay ? BufferKind::kDecay : BufferKind::kNoDecay;
}

namespace {
int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
}  // namespace

FlatLayout make_flat_layout(const std::vector<base::ParamSpec>& schema, BufferKind kind,
                            int world_size) {
  FlatLayout layout;
  layout.kind = kind;
  int64_t offset = 0;
  for (int i = 0; i < static_cast<int>(schema.size()); ++i) {
    const base::ParamSpec& spec = schema[i];
    if (!spec.tied_to.empty() || buffer_kind_of(spec) != kind) continue;
    offset = round_up(offset, kAlign);
    layout.entries.push_back({i, spec.name, spec.shape, offset, spec.numel()});
    offset += spec.numel();
  }
  if (layout.entries.empty()) return layout;
  layout.padded_numel = round_up(offset, kAlign * world_size);
  layout.shard_numel = layout.padded_numel / world_size;
  return layout;
}

ShardRange shard_range(const FlatLayout& layout, int rank) {
  return {rank * layout.shard_numel, (rank + 1) * layout.shard_numel};
}

EntrySlice entry_slice(const FlatEntry& e, const ShardRange& shard) {
  const int64_t begin = std::max(e.offset, shard.begin);
  const int64_t end = std::min(e.offset + e.numel, shard.end);
  if (end <= begin) return {};
  return {begin - e.offset, begin - shard.begin, end - begin};
}

SplitPlan split_plan(const FlatLayout& layout) {
  SplitPlan plan;
  int64_t cursor = 0;
  for (const FlatEntry& e : layout.entries) {
    if (e.offset > cursor) plan.sizes.push_back(e.offset - cursor);
    plan.param_chunks.push_back(static_cast<int>(plan.sizes.size()));
    plan.sizes.push_back(e.numel);
    cursor = e.offset + e.numel;
  }
  if (layout.padded_numel > cursor) plan.sizes.push_back(layout.padded_numel - cursor);
  return plan;
}

bool sinks_whole_buffer(const std::vector<base::ParamSpec>& schema, const FlatLayout& layout,
                        size_t unit_index) {
  if (unit_index == 0 || layout.empty() || layout.kind == BufferKind::kFrozen) return false;
  for (const FlatEntry& e : layout.entries) {
    if (!schema[e.schema_index].grad_sink) return false;
  }
  return true;
}

}  // namespace dstrain::sharding
