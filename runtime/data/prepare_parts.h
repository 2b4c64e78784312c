#pragma once
// The parallel, resumable machinery under prepare.h: inputs cut into pieces on line boundaries,
// worker threads (one tokenizer each) that turn pieces into part files under `<out>.parts/`, and
// the in-order concatenation of the parts into the .dstok file.
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "runtime/data/prepare.h"
#include "runtime/data/tokenizer/tokenizer.h"

namespace dstrain::runtime {

// What one piece produced.
struct PieceOutput {
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> mask;         // empty unless the job has a mask
  std::vector<uint64_t> doc_starts;  // indices into tokens where a document starts
  int64_t targets = 0;               // tokens with mask 1 (all tokens without a mask)
};

// One byte range [begin, end) of one input, cut on line boundaries.
struct Segment {
  const std::string* file;
  uint64_t file_size;
  uint64_t begin;
  uint64_t end;
  // 1-based number of the line at `begin`. Reads the file up to there, so call it on errors only.
  std::function<int64_t()> first_line;
};

// Tokenizes the bytes of one segment into `out` (appending).
using SegmentEncoder = std::function<base::Status(const Tokenizer& tokenizer, const Segment& seg,
                                                  std::string_view bytes, PieceOutput& out)>;

struct PartsJob {
  std::vector<std::string> inputs;
  std::string out;
  std::string format;    // part of the resume key
  uint64_t cut_bytes;    // a file larger than this is cut into pieces of about this size
  uint64_t group_bytes;  // smaller files are grouped into pieces of about this size
  bool mask = false;     // the output carries a loss mask
  SegmentEncoder encode;
};

// Runs the job; `stats` gets documents, tokens, targets and part counts.
base::Status run_parts_job(const PartsJob& job, const PrepareOptions& options, PrepareStats* stats);

// Number of '\n' bytes in [0, offset) of `path`, plus one: the line that starts at `offset`.
int64_t line_number_at(const std::string& path, uint64_t offset);

}  // namespace dstrain::runtime
