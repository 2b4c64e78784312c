#include "runtime/data/token_file_format.h"

#include <cstring>

namespace dstrain::runtime {
namespace {

// Header field offsets (docs/data-format.md).
constexpr size_t kVersionAt = 8;
constexpr size_t kTokenBytesAt = 12;
constexpr size_t kVocabSizeAt = 16;
constexpr size_t kNumTokensAt = 24;
constexpr size_t kNumDocsAt = 32;
constexpr size_t kFlagsAt = 40;
constexpr size_t kPaddingAt = 48;

template <typename T>
void put(uint8_t* dst, size_t at, T value) {
  std::memcpy(dst + at, &value, sizeof(T));
}

template <typename T>
T get(const uint8_t* src, size_t at) {
  T value;
  std::memcpy(&value, src + at, sizeof(T));
  return value;
}

// a * b + c, false on overflow.
bool mul_add(uint64_t a, uint64_t b, uint64_t c, uint64_t* out) {
  uint64_t product;
  if (__builtin_mul_overflow(a, b, &product)) return false;
  return !__builtin_add_overflow(product, c, out);
}

}  // namespace

uint32_t token_bytes_for_vocab(uint64_t vocab_size) {
  return vocab_size <= kMaxUint16Vocab ? 2 : 4;
}

std::array<uint8_t, kDstokHeaderBytes> encode_header(const TokenFileHeader& header) {
  std::array<uint8_t, kDstokHeaderBytes> out{};
  std::memcpy(out.data(), kDstokMagic, sizeof(kDstokMagic));
  put(out.data(), kVersionAt, header.version);
  put(out.data(), kTokenBytesAt, header.token_bytes);
  put(out.data(), kVocabSizeAt, header.vocab_size);
  put(out.data(), kNumTokensAt, header.num_tokens);
  put(out.data(), kNumDocsAt, header.num_docs);
  put(out.data(), kFlagsAt, header.flags);
  return out;
}

base::StatusOr<TokenFileHeader> decode_header(const uint8_t* bytes, uint64_t size,
                                              const std::string& name) {
  auto bad = [&](const std::string& what) { return base::Status::BadInput(name + ": " + what); };
  if (size < kDstokHeaderBytes) {
    return bad("file is " + std::to_string(size) + " bytes, shorter than the " +
               std::to_string(kDstokHeaderBytes) + "-byte .dstok header");
  }
  if (std::memcmp(bytes, kDstokMagic, sizeof(kDstokMagic)) != 0) {
    return bad("bad magic: not a .dstok file (expected \"DSTOK001\" in the first 8 bytes)");
  }
  TokenFileHeader h;
  h.version = get<uint32_t>(bytes, kVersionAt);
  h.token_bytes = get<uint32_t>(bytes, kTokenBytesAt);
  h.vocab_size = get<uint64_t>(bytes, kVocabSizeAt);
  h.num_tokens = get<uint64_t>(bytes, kNumTokensAt);
  h.num_docs = get<uint64_t>(bytes, kNumDocsAt);
  h.flags = get<uint64_t>(bytes, kFlagsAt);
  if (h.version != kDstokVersion) {
    return bad("unsupported version " + std::to_string(h.version) + " (this build reads " +
               std::to_string(kDstokVersion) + ")");
  }
  if (h.token_bytes != 2 && h.token_bytes != 4) {
    return bad("token_bytes is " + std::to_string(h.token_bytes) + ", must be 2 or 4");
  }
  if (h.vocab_size == 0) return bad("vocab_size is 0");
  if ((h.flags & ~kDstokKnownFlags) != 0) {
    return bad("flags " + std::to_string(h.flags) + " has unknown bits set (known: bit 0, mask)");
  }
  for (size_t i = kPaddingAt; i < kDstokHeaderBytes; ++i) {
    if (bytes[i] != 0) {
      return bad("header byte " + std::to_string(i) + " is not zero (bytes 48..63 are reserved)");
    }
  }
  return h;
}

base::StatusOr<TokenFileLayout> layout_of(const TokenFileHeader& header, const std::string& name) {
  TokenFileLayout layout;
  uint64_t end;
  uint64_t docs_end;
  uint64_t offsets_count = header.num_docs == 0 ? 0 : header.num_docs + 1;
  bool ok = mul_add(header.num_tokens, header.token_bytes, kDstokHeaderBytes, &end) &&
            offsets_count >= header.num_docs &&
            mul_add(offsets_count, sizeof(uint64_t), end, &docs_end) &&
            (!header.has_mask() || !__builtin_add_overflow(docs_end, header.num_tokens, &end));
  if (!ok) {
    return base::Status::BadInput(name + ": header sizes overflow (num_tokens " +
                                  std::to_string(header.num_tokens) + ", num_docs " +
                                  std::to_string(header.num_docs) + ")");
  }
  layout.doc_offsets_offset = header.num_tokens * header.token_bytes + kDstokHeaderBytes;
  layout.mask_offset = docs_end;
  layout.file_size = header.has_mask() ? end : docs_end;
  return layout;
}

}  // namespace dstrain::runtime
