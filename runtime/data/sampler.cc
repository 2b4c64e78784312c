#include "runtime/data/sampler.h"

#include <algorithm>
#include <string>
#include <utility>

namespace dstrain::runtime {
namespace {

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

// The splitmix64 output function on its own, used to derive a stream's start from (seed, epoch).
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Uniform in [0, bound) without modulo bias: reject the low 2^64 mod bound draws.
uint64_t uniform_below(uint64_t& state, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;
  for (;;) {
    uint64_t r = splitmix64_next(state);
    if (r >= threshold) return r % bound;
  }
}

// `count_key` names the config key behind `count` in the message.
base::Status check_shape(const char* count_key, int64_t count, int64_t micro_batch,
                         int64_t world_size, int64_t rank) {
  if (count < 1 || micro_batch < 1) {
    return base::Status::InvalidArgument(std::string(count_key) + " (" + std::to_string(count) +
                                         ") and train.micro_batch (" + std::to_string(micro_batch) +
                                         ") must be positive");
  }
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return base::Status::InvalidArgument("rank " + std::to_string(rank) +
                                         " is outside world size " + std::to_string(world_size));
  }
  return base::Status::Ok();
}

}  // namespace

uint64_t splitmix64_next(uint64_t& state) {
  state += kGolden;
  return mix64(state);
}

std::vector<int64_t> epoch_permutation(int64_t num_samples, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> perm(static_cast<size_t>(num_samples));
  for (int64_t i = 0; i < num_samples; ++i) perm[static_cast<size_t>(i)] = i;
  uint64_t state = mix64(seed + kGolden) ^ mix64(static_cast<uint64_t>(epoch) * kGolden + 1);
  for (int64_t i = num_samples - 1; i > 0; --i) {
    auto j = static_cast<int64_t>(uniform_below(state, static_cast<uint64_t>(i) + 1));
    std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(j)]);
  }
  return perm;
}

base::StatusOr<Sampler> Sampler::create(int64_t num_samples, int64_t global_batch,
                                        int64_t micro_batch, int64_t world_size, int64_t rank,
                                        uint64_t seed) {
  if (num_samples < 1) {
    return base::Status::InvalidArgument("the data set has no samples (" +
                                         std::to_string(num_samples) + ")");
  }
  RETURN_IF_ERROR(check_shape("train.global_batch", global_batch, micro_batch, world_size, rank));
  if (global_batch % (world_size * micro_batch) != 0) {
    return base::Status::InvalidArgument(
        "train.global_batch (" + std::to_string(global_batch) +
        ") is not a multiple of train.micro_batch (" + std::to_string(micro_batch) +
        ") x world size (" + std::to_string(world_size) +
        ") = " + std::to_string(world_size * micro_batch) +
        ": gradient accumulation must be a whole number of micro-batches");
  }
  return Sampler(num_samples, global_batch, micro_batch, world_size, rank, seed);
}

std::vector<std::vector<int64_t>> Sampler::global_indices(int64_t step) const {
  const int64_t per_rank = global_batch_ / world_size_;
  const int64_t first = step * global_batch_ + rank_ * per_rank;
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(per_rank / micro_batch_));
  for (size_t m = 0; m < out.size(); ++m) {
    out[m].resize(static_cast<size_t>(micro_batch_));
    for (int64_t j = 0; j < micro_batch_; ++j) {
      out[m][static_cast<size_t>(j)] = first + static_cast<int64_t>(m) * micro_batch_ + j;
    }
  }
  return out;
}

std::vector<std::vector<int64_t>> Sampler::micro_batches(int64_t step) {
  std::vector<std::vector<int64_t>> out = global_indices(step);
  for (auto& micro : out) {
    for (int64_t& g : micro) g = sample_at(g);
  }
  return out;
}

int64_t Sampler::sample_at(int64_t global_index) {
  int64_t epoch = global_index / num_samples_;
  if (epoch != cached_epoch_) {
    cached_perm_ = epoch_permutation(num_samples_, seed_, epoch);
    cached_epoch_ = epoch;
  }
  return cached_perm_[static_cast<size_t>(global_index % num_samples_)];
}

base::StatusOr<std::vector<std::vector<int64_t>>> eval_batches(int64_t num_samples,
                                                               int64_t batches_per_rank,
                                                               int64_t micro_batch,
                                                               int64_t world_size, int64_t rank) {
  RETURN_IF_ERROR(
      check_shape("data.eval_batches", batches_per_rank, micro_batch, world_size, rank));
  if (num_samples < world_size) {
    return base::Status::BadInput("evaluation data has " + std::to_string(num_samples) +
                                  " samples, fewer than the world size " +
                                  std::to_string(world_size));
  }
  // Clamped first so the product cannot overflow for a huge data.eval_batches.
  const int64_t wanted = std::min(batches_per_rank, num_samples) * micro_batch;
  const int64_t per_rank = std::min(num_samples / world_size, wanted);
  std::vector<std::vector<int64_t>> out;
  for (int64_t begin = 0; begin < per_rank; begin += micro_batch) {
    std::vector<int64_t> micro;
    for (int64_t i = begin; i < std::min(per_rank, begin + micro_batch); ++i) {
      micro.push_back(rank * per_rank + i);
    }
    out.push_back(std::move(micro));
  }
  return out;
}

}  // namespace dstrain::runtime
