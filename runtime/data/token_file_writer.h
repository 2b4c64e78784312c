#pragma once
// Streams a .dstok file to `path.tmp` and renames it to `path` on finish(), so a reader never
// sees a half-written file. Tokens are written as they come (uint16 when vocab_size <= 65536,
// else uint32); document offsets and the mask (1 byte per token) are held in memory until
// finish(), because they follow all the tokens in the file.
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "runtime/data/file_io.h"
#include "runtime/data/token_file_format.h"

namespace dstrain::runtime {

class TokenFileWriter {
 public:
  struct Options {
    uint64_t vocab_size = 0;
    bool documents = false;  // record document offsets (start_document)
    bool mask = false;       // every append() carries a 0/1 loss-mask byte per token
  };

  static base::StatusOr<TokenFileWriter> create(const std::string& path, Options options);

  TokenFileWriter(const TokenFileWriter&) = delete;
  TokenFileWriter& operator=(const TokenFileWriter&) = delete;
  TokenFileWriter& operator=(TokenFileWriter&&) = delete;
  TokenFileWriter(TokenFileWriter&& other) noexcept;
  // Removes path.tmp unless finish() succeeded.
  ~TokenFileWriter();

  // Begins a document at the current token count; with documents, append() needs one first.
  base::Status start_document();
  // `mask` is empty without Options::mask, else one 0/1 byte per token. Errors about the values
  // are kInvalidArgument (the caller produced them); failed writes are kIOError.
  base::Status append(const std::vector<uint32_t>& tokens, const std::vector<uint8_t>& mask = {});
  // Writes offsets, mask and header, fsyncs, renames to `path`. The writer is spent afterwards.
  base::Status finish();

  int64_t num_tokens() const { return static_cast<int64_t>(num_tokens_); }
  int64_t num_docs() const { return num_docs_; }

 private:
  TokenFileWriter(std::string path, Options options, UniqueFd fd, uint32_t token_bytes);
  base::Status flush();
  base::Status fail_if_spent() const;

  std::string path_;
  std::string tmp_path_;  // empty once renamed or moved from: nothing to remove
  Options options_;
  UniqueFd fd_;
  uint32_t token_bytes_;
  uint64_t num_tokens_ = 0;
  int64_t num_docs_ = 0;
  std::vector<uint8_t> buffer_;        // pending token bytes, flushed when large
  std::vector<uint64_t> doc_offsets_;  // start of each document, then the end at finish()
  std::vector<uint8_t> mask_;
  bool spent_ = false;
};

}  // namespace dstrain::runtime
