#pragma once
// The pre-token -> ids cache of the BPE tokenizer: a flat open-addressing table over two arenas
// (word bytes, ids), so a lookup is one hash, a probe or two and a memcmp, with no allocation.
// It stops taking new words when full; by then the frequent ones are in. Not synchronized: the
// owner locks.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dstrain::runtime {

class WordCache {
 public:
  // Room for `capacity` words (a power of two is not required).
  explicit WordCache(size_t capacity);

  // Appends the cached ids of `word` to `out` and returns true, or returns false.
  bool find(std::string_view word, std::vector<uint32_t>& out) const;
  // Remembers `ids` for `word` unless full or present.
  void insert(std::string_view word, const uint32_t* ids, size_t n);

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t word_at = 0;
    uint32_t word_len = 0;  // 0: empty (empty words are never cached)
    uint32_t ids_at = 0;
    uint32_t ids_len = 0;
  };
  static uint64_t hash(std::string_view word);
  size_t probe(std::string_view word,
               uint64_t h) const;  // the slot holding `word`, or an empty one

  std::vector<Slot> slots_;
  size_t mask_;
  size_t size_ = 0;
  size_t capacity_;
  std::string words_;
  std::vector<uint32_t> ids_;
};

}  // namespace dstrain::runtime
