#pragma once
// Reading checkpoint files once, verified. The blocks that cover the wanted byte ranges are read
// with direct I/O into two caller-owned buffers (one is read into while the caller consumes the
// other), and every block is checked against its crc32 in the index before any of its bytes are
// handed on. A resume therefore costs one pass over the disk, not a verification pass through the
// page cache followed by a load.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "runtime/checkpoint/index.h"

namespace dstrain::runtime::checkpoint {

// Bytes [offset, offset + size) of files[file].
struct ByteRange {
  int file = 0;
  int64_t offset = 0;
  int64_t size = 0;
};

// Verified bytes of one file: [offset, offset + size), whole blocks (the file's last one may be
// short). `data` lives in one of the caller's slots until the sink returns.
struct ReadWindow {
  int file = 0;
  int64_t offset = 0;
  const char* data = nullptr;
  int64_t size = 0;
};

// Two buffers of `bytes` each, kDirectIoAlignment-aligned, owned by the caller (pinned memory
// when the bytes go on to a GPU); read_slot_bytes() says how large.
struct ReadSlots {
  char* data[2] = {nullptr, nullptr};
  int64_t bytes = 0;
};

struct ReadStats {
  int64_t bytes = 0;         // read from the files (whole blocks)
  int64_t direct_bytes = 0;  // of which with direct I/O
  int64_t blocks_verified = 0;
};

// Called on the caller's thread once per window, files in index order, offsets ascending.
using WindowSink = std::function<base::Status(const ReadWindow&)>;

// The slot size for reading `files` within a host budget of `budget_bytes` (both slots
// together): at least one block (or the whole file, when smaller), at most the largest file.
int64_t read_slot_bytes(const std::vector<FileEntry>& files, int64_t budget_bytes);

class BlockInput;    // an open file (block_reader.cc)
struct BlockWindow;  // whole blocks of one file read as one request (block_reader.cc)

// Reads each block of `files` (in `dir`) that overlaps one of `ranges` once, in windows of whole
// blocks that fit a slot, and passes every window to a sink after checking its blocks against
// the index. Version-1 entries (no blocks) are read the same way, unverified. Opening comes
// first and touches no data: every file with a range is opened and its size checked, so a
// missing or short file is found before any byte is handed on.
class BlockReader {
 public:
  // kBadInput naming the file when one is missing or its size is not the index's.
  static base::StatusOr<std::unique_ptr<BlockReader>> open(const std::string& dir,
                                                           std::vector<FileEntry> files,
                                                           std::vector<ByteRange> ranges,
                                                           int64_t slot_bytes);
  ~BlockReader();
  BlockReader(const BlockReader&) = delete;
  BlockReader& operator=(const BlockReader&) = delete;

  // Reads into `slots` (of the slot_bytes given to open()). Errors: kBadInput naming the file for
  // one cut short while it is read, and for a block whose crc32 differs from the index (naming
  // the block and its byte range); kIOError for what the OS refuses; the sink's errors
  // unchanged. The sink is not called after an error.
  base::StatusOr<ReadStats> read(const ReadSlots& slots, const WindowSink& sink);

 private:
  BlockReader();

  std::vector<FileEntry> files_;
  std::vector<BlockWindow> windows_;
  std::vector<std::unique_ptr<BlockInput>> inputs_;  // by file; null for files not read
  int64_t slot_bytes_ = 0;
};

// open() and read() in one.
base::StatusOr<ReadStats> read_blocks(const std::string& dir, const std::vector<FileEntry>& files,
                                      std::vector<ByteRange> ranges, const ReadSlots& slots,
                                      const WindowSink& sink);

}  // namespace dstrain::runtime::checkpoint
