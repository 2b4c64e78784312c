#include "runtime/data/tokenizer/merge_table.h"

namespace dstrain::runtime {

MergeTable::MergeTable(size_t expected) {
  size_t cap = 16;
  while (cap < expected * 2) cap *= 2;
  slots_.resize(cap);
  mask_ = cap - 1;
}

bool MergeTable::insert(uint32_t left, uint32_t right, Merge merge) {
  if ((size_ + 1) * 2 > slots_.size()) grow();  // load factor <= 1/2 keeps probes short
  uint64_t key = pack(left, right);
  for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.key == key) {
      s.merge = merge;
      return false;
    }
    if (s.key == kEmpty) {
      s.key = key;
      s.merge = merge;
      ++size_;
      return true;
    }
  }
}

void MergeTable::grow() {
  std::vector<Slot> old;
  old.swap(slots_);
  slots_.resize(old.size() * 2);
  mask_ = slots_.size() - 1;
  size_ = 0;
  for (const Slot& s : old) {
    if (s.key != kEmpty)
      insert(static_cast<uint32_t>(s.key >> 32), static_cast<uint32_t>(s.key), s.merge);
  }
}

}  // namespace dstrain::runtime
