#include "runtime/data/tokenizer/word_cache.h"

#include <cstring>

namespace dstrain::runtime {

WordCache::WordCache(size_t capacity) : capacity_(capacity) {
  size_t n = 16;
  while (n < capacity * 2) n *= 2;  // load factor <= 1/2
  slots_.resize(n);
  mask_ = n - 1;
}

uint64_t WordCache::hash(std::string_view word) {
  // FNV-1a over the bytes, then a final mix so the low bits (the slot index) depend on them all.
  uint64_t h = 1469598103934665603ull;
  for (char c : word) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  h ^= h >> 32;
  h *= 0xd6e8feb86659fd93ull;
  h ^= h >> 32;
  return h;
}

size_t WordCache::probe(std::string_view word, uint64_t h) const {
  for (size_t i = h & mask_;; i = (i + 1) & mask_) {
    const Slot& s = slots_[i];
    if (s.word_len == 0) return i;
    if (s.hash == h && s.word_len == word.size() &&
        std::memcmp(words_.data() + s.word_at, word.data(), word.size()) == 0) {
      return i;
    }
  }
}

bool WordCache::find(std::string_view word, std::vector<uint32_t>& out) const {
  if (word.empty()) return false;
  const Slot& s = slots_[probe(word, hash(word))];
  if (s.word_len == 0) return false;
  out.insert(out.end(), ids_.begin() + s.ids_at, ids_.begin() + s.ids_at + s.ids_len);
  return true;
}

void WordCache::insert(std::string_view word, const uint32_t* ids, size_t n) {
  if (word.empty() || size_ >= capacity_) return;
  const uint64_t h = hash(word);
  Slot& s = slots_[probe(word, h)];
  if (s.word_len != 0) return;
  s.hash = h;
  s.word_at = static_cast<uint32_t>(words_.size());
  s.word_len = static_cast<uint32_t>(word.size());
  s.ids_at = static_cast<uint32_t>(ids_.size());
  s.ids_len = static_cast<uint32_t>(n);
  words_.append(word);
  ids_.insert(ids_.end(), ids, ids + n);
  ++size_;
}

}  // namespace dstrain::runtime
