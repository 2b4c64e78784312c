#pragma once
// Which samples each rank trains on at each optimizer step: a pure function of (seed, step,
// world size, rank), so any rank, at any world size, after any resume, agrees on the order.
#include <cstdint>
#include <vector>

#include "base/status.h"

namespace dstrain::runtime {

// One draw of the splitmix64 generator (advances `state`).
uint64_t splitmix64_next(uint64_t& state);

// perm_e: a permutation of [0, num_samples) that depends on (seed, epoch) alone. Fisher-Yates
// over splitmix64 with rejection sampling, spelled out in docs/data-format.md, so it is the same
// on every platform and standard library.
std::vector<int64_t> epoch_permutation(int64_t num_samples, uint64_t seed, int64_t epoch);

// Step s covers global sample indices g = s * global_batch + i, i in [0, global_batch); g maps to
// sample perm_{g / num_samples}[g % num_samples]. Rank r takes positions
// [r * G / W, (r + 1) * G / W) of the global batch, cut into micro-batches in order.
class Sampler {
 public:
  // kInvalidArgument unless every count is positive, 0 <= rank < world_size and
  // global_batch % (world_size * micro_batch) == 0.
  static base::StatusOr<Sampler> create(int64_t num_samples, int64_t global_batch,
                                        int64_t micro_batch, int64_t world_size, int64_t rank,
                                        uint64_t seed);

  // This rank's sample ids for `step` (>= 0), one vector per micro-batch. Not const: it keeps
  // the permutation of the epoch it last touched.
  std::vector<std::vector<int64_t>> micro_batches(int64_t step);
  // The global sample index g behind each entry of micro_batches(step), same shape; randomness
  // keyed by sample (dropout) uses it, so it does not depend on the world size.
  std::vector<std::vector<int64_t>> global_indices(int64_t step) const;

  int64_t num_samples() const { return num_samples_; }
  int64_t accumulation_steps() const { return global_batch_ / (world_size_ * micro_batch_); }
  // The epoch the first sample of `step` falls in.
  int64_t epoch_of_step(int64_t step) const { return step * global_batch_ / num_samples_; }

 private:
  Sampler(int64_t num_samples, int64_t global_batch, int64_t micro_batch, int64_t world_size,
          int64_t rank, uint64_t seed)
      : num_samples_(num_samples),
        global_batch_(global_batch),
        micro_batch_(micro_batch),
        world_size_(world_size),
        rank_(rank),
        seed_(seed) {}
  int64_t sample_at(int64_t global_index);

  int64_t num_samples_;
  int64_t global_batch_;
  int64_t micro_batch_;
  int64_t world_size_;
  int64_t rank_;
  uint64_t seed_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> cached_perm_;
};

// Evaluation: the first min(num_samples, batches_per_rank * micro_batch * world_size) samples in
// order, cut down to a multiple of world_size so every rank runs the same number of forwards
// (each one may involve collectives). Rank r takes a contiguous, disjoint block, split into
// micro-batches of micro_batch (the last one may be shorter, equally on every rank).
// kBadInput when there are fewer samples than ranks (the caller adds the file name);
// kInvalidArgument for non-positive counts or a rank outside [0, world_size).
base::StatusOr<std::vector<std::vector<int64_t>>> eval_batches(int64_t num_samples,
                                                               int64_t batches_per_rank,
                                                               int64_t micro_batch,
                                                               int64_t world_size, int64_t rank);

}  // namespace dstrain::runtime
