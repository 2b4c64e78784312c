#include "runtime/data/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

namespace dstrain::runtime {
namespace {

using base::StatusCode;
using Batches = std::vector<std::vector<int64_t>>;

std::vector<int64_t> flatten(const Batches& batches) {
  std::vector<int64_t> out;
  for (const auto& b : batches) out.insert(out.end(), b.begin(), b.end());
  return out;
}

Sampler make(int64_t n, int64_t g, int64_t mb, int64_t w, int64_t r, uint64_t seed) {
  auto s = Sampler::create(n, g, mb, w, r, seed);
  EXPECT_TRUE(s.ok()) << s.status().to_string();
  return std::move(s).value();
}

TEST(Permutation, IsAPermutationFixedBySeedAndEpoch) {
  auto p = epoch_permutation(1000, 42, 0);
  auto sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_EQ(p, epoch_permutation(1000, 42, 0));
  EXPECT_NE(p, epoch_permutation(1000, 42, 1));
  EXPECT_NE(p, epoch_permutation(1000, 43, 0));
  EXPECT_TRUE(epoch_permutation(0, 1, 0).empty());
  EXPECT_EQ(epoch_permutation(1, 1, 5), std::vector<int64_t>{0});
}

// Pins the documented algorithm (docs/data-format.md); the values come from an independent
// Python transcription of it. A change here reorders every resumed run.
TEST(Permutation, GoldenValues) {
  uint64_t state = 0;
  EXPECT_EQ(splitmix64_next(state), 0xe220a8397b1dcdafULL);
  EXPECT_EQ(splitmix64_next(state), 0x6e789e6aa1b965f4ULL);
  EXPECT_EQ(epoch_permutation(10, 1234, 0), (std::vector<int64_t>{1, 2, 8, 3, 6, 9, 4, 0, 7, 5}));
  EXPECT_EQ(epoch_permutation(10, 1234, 3), (std::vector<int64_t>{7, 4, 9, 0, 2, 8, 3, 1, 5, 6}));
}

TEST(Sampler, SameSeedSameBatchesOtherSeedOthers) {
  Sampler a = make(100, 8, 2, 2, 1, 7);
  Sampler b = make(100, 8, 2, 2, 1, 7);
  Sampler c = make(100, 8, 2, 2, 1, 8);
  bool any_difference = false;
  for (int64_t step = 0; step < 40; ++step) {
    auto mb = a.micro_batches(step);
    EXPECT_EQ(mb, b.micro_batches(step)) << step;
    any_difference |= mb != c.micro_batches(step);
    ASSERT_EQ(mb.size(), 2u);
    for (const auto& m : mb) ASSERT_EQ(m.size(), 2u);
  }
  EXPECT_TRUE(any_difference);
  EXPECT_EQ(a.accumulation_steps(), 2);
}

TEST(Sampler, OrderOfQueriesDoesNotMatter) {
  Sampler forward = make(30, 12, 1, 3, 2, 5);
  Sampler jumping = make(30, 12, 1, 3, 2, 5);
  std::vector<Batches> expected;
  for (int64_t s = 0; s < 8; ++s) expected.push_back(forward.micro_batches(s));
  for (int64_t s : {7, 0, 3, 2, 6, 1, 5, 4}) EXPECT_EQ(jumping.micro_batches(s), expected[s]) << s;
}

TEST(Sampler, EachEpochVisitsEverySampleOnce) {
  Sampler s = make(24, 12, 2, 1, 0, 3);
  EXPECT_EQ(s.epoch_of_step(1), 0);
  EXPECT_EQ(s.epoch_of_step(2), 1);
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> seen;
    for (int64_t step = 2 * epoch; step < 2 * epoch + 2; ++step) {
      auto ids = flatten(s.micro_batches(step));
      seen.insert(seen.end(), ids.begin(), ids.end());
    }
    std::sort(seen.begin(), seen.end());
    for (int64_t i = 0; i < 24; ++i) ASSERT_EQ(seen[i], i) << "epoch " << epoch;
  }
}

// For every world size that divides the batch: ranks take disjoint positions whose union is the
// global batch, and the samples equal the one-rank run's as a multiset, including the steps
// that straddle an epoch boundary (30 samples, 12 per step).
TEST(Sampler, RanksPartitionTheGlobalBatch) {
  const int64_t n = 30;
  const int64_t g = 12;
  const uint64_t seed = 99;
  for (int64_t mb : {1, 2}) {
    Sampler single = make(n, g, mb, 1, 0, seed);
    for (int64_t w : {1, 2, 3, 4}) {
      if (g % (w * mb) != 0) {
        EXPECT_FALSE(Sampler::create(n, g, mb, w, 0, seed).ok()) << "w=" << w << " mb=" << mb;
        continue;
      }
      std::vector<Sampler> ranks;
      for (int64_t r = 0; r < w; ++r) ranks.push_back(make(n, g, mb, w, r, seed));
      for (int64_t step = 0; step < 8; ++step) {
        std::multiset<int64_t> from_ranks;
        std::set<int64_t> positions;
        for (auto& rank : ranks) {
          auto ids = rank.micro_batches(step);
          auto globals = rank.global_indices(step);
          ASSERT_EQ(ids.size(), static_cast<size_t>(g / w / mb));
          for (size_t m = 0; m < ids.size(); ++m) {
            ASSERT_EQ(ids[m].size(), static_cast<size_t>(mb));
            ASSERT_EQ(globals[m].size(), static_cast<size_t>(mb));
          }
          for (int64_t id : flatten(ids)) from_ranks.insert(id);
          for (int64_t gi : flatten(globals)) EXPECT_TRUE(positions.insert(gi).second) << gi;
        }
        EXPECT_EQ(positions.size(), static_cast<size_t>(g));
        EXPECT_EQ(*positions.begin(), step * g);
        EXPECT_EQ(*positions.rbegin(), step * g + g - 1);
        auto reference = flatten(single.micro_batches(step));
        EXPECT_EQ(from_ranks, std::multiset<int64_t>(reference.begin(), reference.end()))
            << "w=" << w << " mb=" << mb << " step=" << step;
      }
    }
  }
}

TEST(Sampler, GlobalIndexMapsThroughTheEpochPermutation) {
  Sampler s = make(30, 12, 2, 2, 1, 11);
  auto ids = s.micro_batches(2);  // positions 30..35 of step 2: epoch 1, positions 0..5
  auto globals = s.global_indices(2);
  auto perm1 = epoch_permutation(30, 11, 1);
  for (size_t m = 0; m < ids.size(); ++m) {
    for (size_t j = 0; j < ids[m].size(); ++j) {
      EXPECT_EQ(ids[m][j], perm1[globals[m][j] % 30]);
    }
  }
  EXPECT_EQ(globals.front().front(), 30);
}

TEST(Sampler, RejectsBadShapesNamingTheKeys) {
  auto s = Sampler::create(100, 10, 2, 3, 0, 1);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  for (const char* key : {"train.global_batch (10)", "train.micro_batch (2)", "world size (3)"}) {
    EXPECT_NE(s.status().message().find(key), std::string::npos) << s.status().message();
  }
  EXPECT_EQ(Sampler::create(0, 4, 1, 1, 0, 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Sampler::create(10, 0, 1, 1, 0, 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Sampler::create(10, 4, 1, 2, 2, 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Sampler::create(10, 4, 1, 2, -1, 1).status().code(), StatusCode::kInvalidArgument);
}

TEST(EvalBatches, FirstSamplesInOrderDisjointAcrossRanks) {
  for (int64_t w : {1, 2, 3, 4}) {
    std::vector<int64_t> all;
    size_t num_micro = 0;
    for (int64_t r = 0; r < w; ++r) {
      auto b = eval_batches(/*num_samples=*/23, /*batches_per_rank=*/2, /*micro_batch=*/3, w, r);
      ASSERT_TRUE(b.ok()) << b.status().to_string();
      if (r == 0) num_micro = b->size();
      EXPECT_EQ(b->size(), num_micro) << "every rank runs the same number of forwards";
      for (const auto& m : *b) {
        EXPECT_FALSE(m.empty());
        EXPECT_LE(m.size(), 3u);
      }
      auto ids = flatten(*b);
      all.insert(all.end(), ids.begin(), ids.end());
    }
    // Requested 2 x 3 per rank, capped by 23 / w per rank: the first samples, each once.
    int64_t per_rank = std::min<int64_t>(6, 23 / w);
    ASSERT_EQ(all.size(), static_cast<size_t>(per_rank * w)) << "w=" << w;
    for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i], static_cast<int64_t>(i));
  }
  // 5 samples over 2 ranks: 2 each, the fifth dropped so both run equal work.
  auto r1 = eval_batches(5, 10, 4, 2, 1);
  ASSERT_TRUE(r1.ok());
  EXPECT_EQ(*r1, (Batches{{2, 3}}));
}

TEST(EvalBatches, Errors) {
  auto few = eval_batches(2, 4, 1, 3, 0);
  EXPECT_EQ(few.status().code(), StatusCode::kBadInput);
  EXPECT_EQ(eval_batches(10, 0, 1, 1, 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(eval_batches(10, 1, 1, 2, 2).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dstrain::runtime
