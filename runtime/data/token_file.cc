#include "runtime/data/token_file.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace dstrain::runtime {
namespace {

// Scans in blocks so the common case (no bad value) is a vectorisable max; only a block with a
// bad value is searched for the first offender, whose index goes in the message.
constexpr uint64_t kScanBlock = 4096;

template <typename T>
int64_t first_at_or_above(const uint8_t* data, uint64_t count, uint64_t limit) {
  T block[kScanBlock];
  for (uint64_t start = 0; start < count; start += kScanBlock) {
    uint64_t n = std::min(kScanBlock, count - start);
    // memcpy: sections after the header need not be aligned for T.
    std::memcpy(block, data + start * sizeof(T), n * sizeof(T));
    T max_value = 0;
    for (uint64_t i = 0; i < n; ++i) max_value = std::max(max_value, block[i]);
    if (max_value < limit) continue;
    for (uint64_t i = 0; i < n; ++i) {
      if (block[i] >= limit) return static_cast<int64_t>(start + i);
    }
  }
  return -1;
}

uint64_t read_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

}  // namespace

base::StatusOr<TokenFile> TokenFile::open(const std::string& path) {
  TokenFile file;
  file.name_ = path;
  ASSIGN_OR_RETURN(file.mapping_, MappedFile::open(path));
  return validate(std::move(file));
}

base::StatusOr<TokenFile> TokenFile::from_tokens(const std::vector<uint32_t>& tokens,
                                                 uint64_t vocab_size, std::string name,
                                                 const std::vector<uint64_t>& doc_offsets,
                                                 const std::vector<uint8_t>& mask) {
  if (!doc_offsets.empty() && doc_offsets.size() < 2) {
    return base::Status::BadInput(name + ": doc_offsets needs num_docs + 1 >= 2 entries");
  }
  if (!mask.empty() && mask.size() != tokens.size()) {
    return base::Status::BadInput(name + ": mask has " + std::to_string(mask.size()) +
                                  " entries for " + std::to_string(tokens.size()) + " tokens");
  }
  // Checked here as well as in validate(): narrowing to uint16 below would hide a bad id.
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] >= vocab_size) {
      return base::Status::BadInput(name + ": token " + std::to_string(tokens[i]) + " at index " +
                                    std::to_string(i) + " >= vocab_size " +
                                    std::to_string(vocab_size));
    }
  }
  TokenFileHeader header;
  header.token_bytes = token_bytes_for_vocab(vocab_size);
  header.vocab_size = vocab_size;
  header.num_tokens = tokens.size();
  header.num_docs = doc_offsets.empty() ? 0 : doc_offsets.size() - 1;
  header.flags = mask.empty() ? 0 : kDstokFlagMask;
  ASSIGN_OR_RETURN(TokenFileLayout layout, layout_of(header, name));

  TokenFile file;
  file.name_ = std::move(name);
  file.image_.resize(layout.file_size);
  uint8_t* out = file.image_.data();
  auto encoded = encode_header(header);
  std::memcpy(out, encoded.data(), encoded.size());
  if (header.token_bytes == 2) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      uint16_t t = static_cast<uint16_t>(tokens[i]);
      std::memcpy(out + layout.tokens_offset + 2 * i, &t, 2);
    }
  } else if (!tokens.empty()) {
    std::memcpy(out + layout.tokens_offset, tokens.data(), tokens.size() * 4);
  }
  if (!doc_offsets.empty()) {
    std::memcpy(out + layout.doc_offsets_offset, doc_offsets.data(), doc_offsets.size() * 8);
  }
  if (!mask.empty()) std::memcpy(out + layout.mask_offset, mask.data(), mask.size());
  return validate(std::move(file));
}

base::StatusOr<TokenFile> TokenFile::validate(TokenFile file) {
  const std::string& name = file.name_;
  const uint8_t* data = file.bytes();
  uint64_t size = file.image_.empty() ? file.mapping_.size() : file.image_.size();
  auto bad = [&](const std::string& what) { return base::Status::BadInput(name + ": " + what); };

  ASSIGN_OR_RETURN(file.header_, decode_header(data, size, name));
  const TokenFileHeader& h = file.header_;
  ASSIGN_OR_RETURN(file.layout_, layout_of(h, name));
  if (size != file.layout_.file_size) {
    return bad("file is " + std::to_string(size) + " bytes but its header implies " +
               std::to_string(file.layout_.file_size) + " (num_tokens " +
               std::to_string(h.num_tokens) + " x " + std::to_string(h.token_bytes) +
               " bytes, num_docs " + std::to_string(h.num_docs) + ", mask " +
               (h.has_mask() ? "yes" : "no") + ")");
  }

  const uint8_t* tokens = data + file.layout_.tokens_offset;
  int64_t bad_index = h.token_bytes == 2
                          ? first_at_or_above<uint16_t>(tokens, h.num_tokens, h.vocab_size)
                          : first_at_or_above<uint32_t>(tokens, h.num_tokens, h.vocab_size);
  if (bad_index >= 0) {
    return bad("token " + std::to_string(file.token(bad_index)) + " at index " +
               std::to_string(bad_index) + " >= vocab_size " + std::to_string(h.vocab_size));
  }

  if (h.num_docs > 0) {
    const uint8_t* offsets = data + file.layout_.doc_offsets_offset;
    uint64_t first = read_u64(offsets);
    uint64_t last = read_u64(offsets + 8 * h.num_docs);
    if (first != 0) return bad("doc_offsets[0] is " + std::to_string(first) + ", must be 0");
    if (last != h.num_tokens) {
      return bad("doc_offsets[" + std::to_string(h.num_docs) + "] is " + std::to_string(last) +
                 ", must equal num_tokens " + std::to_string(h.num_tokens));
    }
    uint64_t prev = 0;
    for (uint64_t d = 1; d <= h.num_docs; ++d) {
      uint64_t cur = read_u64(offsets + 8 * d);
      if (cur < prev || cur > h.num_tokens) {
        return bad("doc_offsets[" + std::to_string(d) + "] = " + std::to_string(cur) +
                   " is out of order or range (previous " + std::to_string(prev) + ", num_tokens " +
                   std::to_string(h.num_tokens) + ")");
      }
      prev = cur;
    }
  }

  if (h.has_mask()) {
    int64_t bad_mask = first_at_or_above<uint8_t>(data + file.layout_.mask_offset, h.num_tokens, 2);
    if (bad_mask >= 0) {
      return bad("mask byte " + std::to_string(data[file.layout_.mask_offset + bad_mask]) +
                 " at index " + std::to_string(bad_mask) + " is not 0 or 1");
    }
  }
  return file;
}

uint32_t TokenFile::token(int64_t i) const {
  const uint8_t* p =
      bytes() + layout_.tokens_offset + static_cast<uint64_t>(i) * header_.token_bytes;
  if (header_.token_bytes == 2) {
    uint16_t t;
    std::memcpy(&t, p, 2);
    return t;
  }
  uint32_t t;
  std::memcpy(&t, p, 4);
  return t;
}

bool TokenFile::predict(int64_t i) const {
  return !has_mask() || bytes()[layout_.mask_offset + static_cast<uint64_t>(i)] != 0;
}

int64_t TokenFile::doc_offset(int64_t k) const {
  const uint8_t* p = bytes() + layout_.doc_offsets_offset + 8 * static_cast<uint64_t>(k);
  return static_cast<int64_t>(read_u64(p));
}

}  // namespace dstrain::runtime
