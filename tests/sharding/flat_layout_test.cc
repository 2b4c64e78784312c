// The flat layout and shard layout as pure functions: random schemas with odd shapes (seeded) over
// world sizes 1..64, most of which divide none of the parameter counts.
#include "sharding/flat_layout.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <array>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace dstrain::sharding {
namespace {

constexpr int kMaxWorld = 64;
constexpr int kNumSeeds = 12;
constexpr std::array<BufferKind, kNumBufferKinds> kAllKinds = {
    BufferKind::kDecay, BufferKind::kNoDecay, BufferKind::kFrozen};

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

base::ParamSpec spec(std::string name, std::vector<int64_t> shape, bool decay = true,
                     bool trainable = true, std::string tied_to = "") {
  base::ParamSpec p;
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.decay = decay;
  p.trainable = trainable;
  p.tied_to = std::move(tied_to);
  return p;
}

// Odd extents (primes, 1, a few larger) so parameters rarely end on an alignment boundary.
std::vector<int64_t> random_shape(std::mt19937& rng) {
  static constexpr std::array<int64_t, 10> kExtents = {1, 2, 3, 5, 7, 11, 13, 17, 31, 97};
  std::uniform_int_distribution<int> rank_dist(0, 3);
  std::uniform_int_distribution<int> extent_dist(0, kExtents.size() - 1);
  std::vector<int64_t> shape(rank_dist(rng));  // rank 0: a scalar, one element
  for (int64_t& d : shape) d = kExtents[extent_dist(rng)];
  return shape;
}

// A schema mixing all three buffer kinds and tied parameters that refer to earlier ones.
std::vector<base::ParamSpec> random_schema(uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> count_dist(1, 40);
  std::uniform_int_distribution<int> pct(0, 99);
  std::vector<base::ParamSpec> schema(count_dist(rng));
  for (int i = 0; i < static_cast<int>(schema.size()); ++i) {
    base::ParamSpec& p = schema[i];
    p.name = "model.layers." + std::to_string(seed) + ".p" + std::to_string(i) + ".weight";
    p.shape = random_shape(rng);
    p.decay = pct(rng) < 60;
    p.trainable = pct(rng) < 75;
    if (i > 0 && pct(rng) < 10) p.tied_to = schema[i / 2].name;
  }
  return schema;
}

std::vector<std::vector<base::ParamSpec>> test_schemas() {
  std::vector<std::vector<base::ParamSpec>> out;
  for (uint32_t seed = 0; seed < kNumSeeds; ++seed) out.push_back(random_schema(seed));
  return out;
}

TEST(FlatLayout, EntriesAlignedDisjointInSchemaOrderAndMatchSchema) {
  for (const auto& schema : test_schemas()) {
    for (BufferKind kind : kAllKinds) {
      for (int world = 1; world <= kMaxWorld; ++world) {
        SCOPED_TRACE(std::string(buffer_kind_name(kind)) + " world " + std::to_string(world));
        const FlatLayout layout = make_flat_layout(schema, kind, world);
        EXPECT_EQ(layout.kind, kind);
        int64_t prev_end = 0;
        int prev_index = -1;
        for (const FlatEntry& e : layout.entries) {
          ASSERT_GE(e.schema_index, 0);
          ASSERT_LT(e.schema_index, static_cast<int>(schema.size()));
          const base::ParamSpec& spec = schema[e.schema_index];
          EXPECT_GT(e.schema_index, prev_index);
          EXPECT_EQ(e.name, spec.name);
          EXPECT_EQ(e.shape, spec.shape);
          EXPECT_EQ(e.numel, spec.numel());
          EXPECT_EQ(buffer_kind_of(spec), kind);
          EXPECT_TRUE(spec.tied_to.empty());
          EXPECT_EQ(e.offset % kAlign, 0) << e.name;
          EXPECT_GE(e.offset, prev_end) << e.name;
          // Packed tightly: the gap before an entry is alignment padding only.
          EXPECT_LT(e.offset - prev_end, kAlign) << e.name;
          prev_end = e.offset + e.numel;
          prev_index = e.schema_index;
        }
        EXPECT_LE(prev_end, layout.padded_numel);
        EXPECT_EQ(layout.padded_numel % (kAlign * world), 0);
        // Padded no further than the next multiple of kAlign * world.
        EXPECT_LT(layout.padded_numel - prev_end, kAlign * world);
        EXPECT_EQ(layout.shard_numel * world, layout.padded_numel);
      }
    }
  }
}

TEST(FlatLayout, EntryOffsetsDoNotDependOnWorldSize) {
  // Checkpoints are resharded across world sizes, so only the padding may change with the world.
  for (const auto& schema : test_schemas()) {
    for (BufferKind kind : kAllKinds) {
      const FlatLayout one = make_flat_layout(schema, kind, 1);
      for (int world = 2; world <= kMaxWorld; ++world) {
        const FlatLayout many = make_flat_layout(schema, kind, world);
        ASSERT_EQ(many.entries.size(), one.entries.size());
        for (size_t i = 0; i < one.entries.size(); ++i) {
          EXPECT_EQ(many.entries[i].schema_index, one.entries[i].schema_index);
          EXPECT_EQ(many.entries[i].offset, one.entries[i].offset);
          EXPECT_EQ(many.entries[i].numel, one.entries[i].numel);
        }
        EXPECT_EQ(many.padded_numel, round_up(one.padded_numel, kAlign * world));
      }
    }
  }
}

TEST(FlatLayout, HandComputedExample) {
  std::vector<base::ParamSpec> schema(5);
  schema[0] = spec("a", {3});
  schema[1] = spec("norm", {5}, /*decay=*/false);
  schema[2] = spec("b", {5, 4});
  schema[3] = spec("tied", {3}, /*decay=*/true, /*trainable=*/true, "a");
  schema[4] = spec("c", {});
  const FlatLayout layout = make_flat_layout(schema, BufferKind::kDecay, 3);
  ASSERT_EQ(layout.entries.size(), 3u);
  EXPECT_EQ(layout.entries[0].offset, 0);
  EXPECT_EQ(layout.entries[1].schema_index, 2);
  EXPECT_EQ(layout.entries[1].offset, 16);
  EXPECT_EQ(layout.entries[1].numel, 20);
  EXPECT_EQ(layout.entries[2].schema_index, 4);
  EXPECT_EQ(layout.entries[2].offset, 48);
  EXPECT_EQ(layout.entries[2].numel, 1);
  EXPECT_EQ(layout.padded_numel, 96);  // 49 rounded up to 16 * 3
  EXPECT_EQ(layout.shard_numel, 32);
  const ShardRange r1 = shard_range(layout, 1);
  EXPECT_EQ(r1.begin, 32);
  EXPECT_EQ(r1.end, 64);
  // Entry b = [16, 36) straddles shards 0 and 1.
  const EntrySlice s0 = entry_slice(layout.entries[1], shard_range(layout, 0));
  EXPECT_EQ(s0.entry_begin, 0);
  EXPECT_EQ(s0.shard_begin, 16);
  EXPECT_EQ(s0.numel, 16);
  const EntrySlice s1 = entry_slice(layout.entries[1], r1);
  EXPECT_EQ(s1.entry_begin, 16);
  EXPECT_EQ(s1.shard_begin, 0);
  EXPECT_EQ(s1.numel, 4);
  EXPECT_EQ(entry_slice(layout.entries[1], shard_range(layout, 2)).numel, 0);
  const SplitPlan plan = split_plan(layout);
  EXPECT_EQ(plan.sizes, (std::vector<int64_t>{3, 13, 20, 12, 1, 47}));
  EXPECT_EQ(plan.param_chunks, (std::vector<int>{0, 2, 4}));

  // Already a multiple of kAlign * world: no padding, and no trailing gap chunk.
  const FlatLayout exact = make_flat_layout({spec("w", {4, 16})}, BufferKind::kDecay, 2);
  EXPECT_EQ(exact.padded_numel, 64);
  EXPECT_EQ(exact.shard_numel, 32);
  EXPECT_EQ(split_plan(exact).sizes, (std::vector<int64_t>{64}));
}

TEST(ShardLayout, ShardsTileThePaddedBufferWithEqualSizes) {
  for (const auto& schema : test_schemas()) {
    for (BufferKind kind : kAllKinds) {
      for (int world = 1; world <= kMaxWorld; ++world) {
        SCOPED_TRACE(std::string(buffer_kind_name(kind)) + " world " + std::to_string(world));
        const FlatLayout layout = make_flat_layout(schema, kind, world);
        int64_t cursor = 0;
        for (int r = 0; r < world; ++r) {
          const ShardRange s = shard_range(layout, r);
          EXPECT_EQ(s.begin, cursor) << "rank " << r;
          EXPECT_EQ(s.numel(), layout.shard_numel) << "rank " << r;
          cursor = s.end;
        }
        EXPECT_EQ(cursor, layout.padded_numel);
        if (!layout.empty()) {
          EXPECT_GT(layout.shard_numel, 0);
          EXPECT_EQ(layout.shard_numel % kAlign, 0);
        }
      }
    }
  }
}

TEST(ShardLayout, EntrySlicesOverAllRanksReassembleEachParameterOnce) {
  for (const auto& schema : test_schemas()) {
    for (BufferKind kind : kAllKinds) {
      for (int world = 1; world <= kMaxWorld; ++world) {
        SCOPED_TRACE(std::string(buffer_kind_name(kind)) + " world " + std::to_string(world));
        const FlatLayout layout = make_flat_layout(schema, kind, world);
        for (const FlatEntry& e : layout.entries) {
          std::vector<int> hits(e.numel, 0);
          for (int r = 0; r < world; ++r) {
            const ShardRange shard = shard_range(layout, r);
            const EntrySlice s = entry_slice(e, shard);
            if (s.numel == 0) continue;
            ASSERT_GT(s.numel, 0);
            ASSERT_GE(s.entry_begin, 0);
            ASSERT_LE(s.entry_begin + s.numel, e.numel);
            ASSERT_GE(s.shard_begin, 0);
            ASSERT_LE(s.shard_begin + s.numel, shard.numel());
            // Both offsets name the same flat position.
            EXPECT_EQ(shard.begin + s.shard_begin, e.offset + s.entry_begin);
            for (int64_t i = s.entry_begin; i < s.entry_begin + s.numel; ++i) ++hits[i];
          }
          for (int64_t i = 0; i < e.numel; ++i) {
            ASSERT_EQ(hits[i], 1) << e.name << " element " << i;
          }
        }
      }
    }
  }
}

TEST(ShardLayout, ShardedCopyRoundTripsThroughSlices) {
  // Scatter a full buffer into per-rank shards via entry slices and gather it back by the same
  // slices: the parameters come back element for element.
  int checked = 0;
  for (const auto& schema : test_schemas()) {
    for (BufferKind kind : kAllKinds) {
      for (int world : {5, 64}) {
        const FlatLayout layout = make_flat_layout(schema, kind, world);
        if (layout.empty()) continue;
        ++checked;
        const at::Tensor full = at::arange(layout.padded_numel, at::kLong);
        at::Tensor rebuilt = at::full({layout.padded_numel}, -1, at::kLong);
        for (int r = 0; r < world; ++r) {
          const ShardRange range = shard_range(layout, r);
          const at::Tensor shard = full.slice(0, range.begin, range.end).clone();
          for (const FlatEntry& e : layout.entries) {
            const EntrySlice s = entry_slice(e, range);
            if (s.numel == 0) continue;
            rebuilt.slice(0, e.offset + s.entry_begin, e.offset + s.entry_begin + s.numel)
                .copy_(shard.slice(0, s.shard_begin, s.shard_begin + s.numel));
          }
        }
        for (const FlatEntry& e : layout.entries) {
          EXPECT_TRUE(at::equal(rebuilt.slice(0, e.offset, e.offset + e.numel),
                                full.slice(0, e.offset, e.offset + e.numel)))
              << e.name;
        }
      }
    }
  }
  EXPECT_GT(checked, kNumSeeds);
}

TEST(SplitPlan, SizesCoverTheBufferAndChunksMatchEntries) {
  for (const auto& schema : test_schemas()) {
    for (BufferKind kind : kAllKinds) {
      for (int world = 1; world <= kMaxWorld; ++world) {
        SCOPED_TRACE(std::string(buffer_kind_name(kind)) + " world " + std::to_string(world));
        const FlatLayout layout = make_flat_layout(schema, kind, world);
        const SplitPlan plan = split_plan(layout);
        EXPECT_EQ(std::accumulate(plan.sizes.begin(), plan.sizes.end(), int64_t{0}),
                  layout.padded_numel);
        ASSERT_EQ(plan.param_chunks.size(), layout.entries.size());
        std::vector<int64_t> starts(plan.sizes.size(), 0);
        for (size_t c = 1; c < plan.sizes.size(); ++c) {
          starts[c] = starts[c - 1] + plan.sizes[c - 1];
        }
        int prev_chunk = -1;
        for (size_t i = 0; i < layout.entries.size(); ++i) {
          const int c = plan.param_chunks[i];
          ASSERT_GE(c, 0);
          ASSERT_LT(c, static_cast<int>(plan.sizes.size()));
          EXPECT_GT(c, prev_chunk);
          EXPECT_EQ(plan.sizes[c], layout.entries[i].numel);
          EXPECT_EQ(starts[c], layout.entries[i].offset);
          prev_chunk = c;
        }
        // Gaps are never empty chunks.
        std::set<int> param_chunks(plan.param_chunks.begin(), plan.param_chunks.end());
        for (int c = 0; c < static_cast<int>(plan.sizes.size()); ++c) {
          if (!param_chunks.count(c)) EXPECT_GT(plan.sizes[c], 0) << "chunk " << c;
        }
      }
    }
  }
}

TEST(SplitPlan, SplitWithSizesGivesParameterViews) {
  const auto schema = random_schema(3);
  for (BufferKind kind : kAllKinds) {
    const FlatLayout layout = make_flat_layout(schema, kind, 4);
    if (layout.empty()) continue;
    const at::Tensor flat = at::arange(layout.padded_numel, at::kFloat);
    const SplitPlan plan = split_plan(layout);
    const std::vector<at::Tensor> chunks = flat.split_with_sizes(plan.sizes);
    for (size_t i = 0; i < layout.entries.size(); ++i) {
      const FlatEntry& e = layout.entries[i];
      const at::Tensor p = chunks[plan.param_chunks[i]].view(e.shape);
      EXPECT_EQ(p.data_ptr<float>(), flat.data_ptr<float>() + e.offset) << e.name;
      EXPECT_EQ(p.sizes().vec(), e.shape);
      EXPECT_EQ(p.reshape({-1})[0].item<float>(), static_cast<float>(e.offset));
    }
  }
}

TEST(BufferKinds, PartitionTheUntiedSchemaAndSkipTiedParameters) {
  for (const auto& schema : test_schemas()) {
    for (int world : {1, 3, 8, 64}) {
      std::vector<int> owner(schema.size(), 0);
      for (BufferKind kind : kAllKinds) {
        for (const FlatEntry& e : make_flat_layout(schema, kind, world).entries) {
          ++owner[e.schema_index];
        }
      }
      for (size_t i = 0; i < schema.size(); ++i) {
        EXPECT_EQ(owner[i], schema[i].tied_to.empty() ? 1 : 0) << schema[i].name;
      }
    }
  }
}

TEST(BufferKinds, KindOfSpec) {
  base::ParamSpec p;
  EXPECT_EQ(buffer_kind_of(p), BufferKind::kDecay);
  p.decay = false;
  EXPECT_EQ(buffer_kind_of(p), BufferKind::kNoDecay);
  p.trainable = false;
  EXPECT_EQ(buffer_kind_of(p), BufferKind::kFrozen);
  p.decay = true;  // a frozen parameter is never decayed
  EXPECT_EQ(buffer_kind_of(p), BufferKind::kFrozen);
  std::set<std::string> names;
  for (BufferKind kind : kAllKinds) names.insert(buffer_kind_name(kind));
  EXPECT_EQ(names.size(), static_cast<size_t>(kNumBufferKinds));
}

TEST(BufferKinds, EmptyKindsGiveEmptyLayouts) {
  std::vector<base::ParamSpec> schema(3);
  schema[0] = spec("w", {7, 3});
  schema[1] = spec("v", {9});
  schema[2] = spec("tied_frozen", {9}, /*decay=*/true, /*trainable=*/false, "v");
  for (int world : {1, 2, 7, 64}) {
    EXPECT_FALSE(make_flat_layout(schema, BufferKind::kDecay, world).empty());
    for (BufferKind kind : {BufferKind::kNoDecay, BufferKind::kFrozen}) {
      const FlatLayout layout = make_flat_layout(schema, kind, world);
      EXPECT_TRUE(layout.empty());
      EXPECT_EQ(layout.padded_numel, 0);
      EXPECT_EQ(layout.shard_numel, 0);
      for (int r = 0; r < world; ++r) EXPECT_EQ(shard_range(layout, r).numel(), 0);
      const SplitPlan plan = split_plan(layout);
      EXPECT_TRUE(plan.sizes.empty());
      EXPECT_TRUE(plan.param_chunks.empty());
    }
  }
  for (BufferKind kind : kAllKinds) {
    const FlatLayout layout = make_flat_layout({}, kind, 4);
    EXPECT_TRUE(layout.empty());
    EXPECT_EQ(layout.padded_numel, 0);
  }
}

}  // namespace
}  // namespace dstrain::sharding
