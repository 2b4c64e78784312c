#pragma once
// BPE merges as an open-addressing hash table keyed by the pair of ids: the lookup on the hot path
// of every merge step, so one probe sequence in a flat array, no nodes.
#include <cstdint>
#include <optional>
#include <vector>

namespace dstrain::runtime {

struct Merge {
  uint32_t rank;    // position in the merges list: lower merges first
  uint32_t result;  // id of the merged token
};

class MergeTable {
 public:
  explicit MergeTable(size_t expected = 0);
  // False when the pair was already present; the later entry replaces it, as in `tokenizers`.
  bool insert(uint32_t left, uint32_t right, Merge merge);
  const Merge* find(uint32_t left, uint32_t right) const {
    uint64_t key = pack(left, right);
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key == key) return &s.merge;
      if (s.key == kEmpty) return nullptr;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are < 2^32 - 1, so no pair packs to it
  struct Slot {
    uint64_t key = kEmpty;
    Merge merge{};
  };
  static uint64_t pack(uint32_t l, uint32_t r) { return (uint64_t{l} << 32) | r; }
  static uint64_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
  }
  void grow();

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace dstrain::runtime
