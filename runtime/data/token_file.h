#pragma once
// A validated .dstok token file, memory-mapped or built in memory. Everything the header claims
// is checked once in open()/from_tokens(), so the accessors below never read out of bounds.
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "runtime/data/file_io.h"
#include "runtime/data/token_file_format.h"

namespace dstrain::runtime {

class TokenFile {
 public:
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;
  TokenFile(TokenFile&&) = default;
  TokenFile& operator=(TokenFile&&) = default;

  // Maps `path` and validates it completely (header, exact size, offsets, every token id and
  // mask byte). Errors are kBadInput and start with the path.
  static base::StatusOr<TokenFile> open(const std::string& path);

  // The same file built in memory (e.g. the demo corpus), validated the same way; `name` stands
  // in for the path in messages. `doc_offsets` empty: a plain stream; else num_docs + 1 entries.
  // `mask` empty: no mask; else one byte (0 or 1) per token.
  static base::StatusOr<TokenFile> from_tokens(const std::vector<uint32_t>& tokens,
                                               uint64_t vocab_size, std::string name,
                                               const std::vector<uint64_t>& doc_offsets = {},
                                               const std::vector<uint8_t>& mask = {});

  const std::string& name() const { return name_; }
  uint64_t vocab_size() const { return header_.vocab_size; }
  uint32_t token_bytes() const { return header_.token_bytes; }
  int64_t num_tokens() const { return static_cast<int64_t>(header_.num_tokens); }
  int64_t num_docs() const { return static_cast<int64_t>(header_.num_docs); }
  bool has_mask() const { return header_.has_mask(); }

  // Preconditions: 0 <= i < num_tokens(), 0 <= d < num_docs().
  uint32_t token(int64_t i) const;
  // Whether token i is a prediction target; true for every token when there is no mask.
  bool predict(int64_t i) const;
  int64_t doc_begin(int64_t d) const { return doc_offset(d); }
  int64_t doc_end(int64_t d) const { return doc_offset(d + 1); }

 private:
  TokenFile() = default;
  static base::StatusOr<TokenFile> validate(TokenFile file);
  const uint8_t* bytes() const { return image_.empty() ? mapping_.data() : image_.data(); }
  int64_t doc_offset(int64_t k) const;

  std::string name_;
  TokenFileHeader header_;
  TokenFileLayout layout_;
  // Exactly one of the two holds the file's bytes.
  MappedFile mapping_;
  std::vector<uint8_t> image_;
};

}  // namespace dstrain::runtime
