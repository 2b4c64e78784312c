#pragma once
// The .dstok layout (docs/data-format.md): a 64-byte little-endian header, the tokens, then the
// optional document offsets and loss mask. Shared by the reader, the writer and in-memory files,
// so the layout is written down once.
#include <array>
#include <cstdint>
#include <string>

#include "base/status.h"

namespace dstrain::runtime {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              ".dstok is little-endian and is read in place");

inline constexpr char kDstokMagic[8] = {'D', 'S', 'T', 'O', 'K', '0', '0', '1'};
inline constexpr uint32_t kDstokVersion = 1;
inline constexpr uint64_t kDstokHeaderBytes = 64;
// flags bit 0: a u8 loss mask per token follows the tokens (and the offsets).
inline constexpr uint64_t kDstokFlagMask = 1;
inline constexpr uint64_t kDstokKnownFlags = kDstokFlagMask;
// Token ids at or above this need 4 bytes.
inline constexpr uint64_t kMaxUint16Vocab = 65536;

struct TokenFileHeader {
  uint32_t version = kDstokVersion;
  uint32_t token_bytes = 2;  // 2: uint16 tokens, 4: uint32 tokens
  uint64_t vocab_size = 0;   // every token id is < vocab_size
  uint64_t num_tokens = 0;
  uint64_t num_docs = 0;  // 0: a plain stream without document offsets
  uint64_t flags = 0;

  bool has_mask() const { return (flags & kDstokFlagMask) != 0; }
};

// Where each section starts, and the exact file size the header implies.
struct TokenFileLayout {
  uint64_t tokens_offset = kDstokHeaderBytes;
  uint64_t doc_offsets_offset = 0;  // valid when num_docs > 0
  uint64_t mask_offset = 0;         // valid when the mask flag is set
  uint64_t file_size = 0;
};

// 2 when every id below vocab_size fits in uint16, else 4.
uint32_t token_bytes_for_vocab(uint64_t vocab_size);

std::array<uint8_t, kDstokHeaderBytes> encode_header(const TokenFileHeader& header);

// Parses and checks the header fields on their own (magic, version, token width, flags, padding).
// `name` prefixes every message; errors are kBadInput.
base::StatusOr<TokenFileHeader> decode_header(const uint8_t* bytes, uint64_t size,
                                              const std::string& name);

// Section offsets and total size; kBadInput when the sizes overflow 64 bits.
base::StatusOr<TokenFileLayout> layout_of(const TokenFileHeader& header, const std::string& name);

}  // namespace dstrain::runtime
