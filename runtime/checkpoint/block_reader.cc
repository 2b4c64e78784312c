#include "runtime/checkpoint/block_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>
#include <memory>

#include "runtime/checkpoint/checksum.h"
#include "runtime/checkpoint/file_io.h"

namespace dstrain::runtime::checkpoint {
namespace {

int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

// Version-1 files have no blocks; they are read in windows of this many bytes all the same.
int64_t block_of(const FileEntry& f) {
  return f.block_bytes > 0 ? f.block_bytes : kDefaultBlockBytes;
}

base::Status os_error(const std::string& path, const char* what, int err) {
  return base::Status::IOError(path + ": " + what + ": " + std::strerror(err));
}

}  // namespace

// One file open for reading: `direct_` (O_DIRECT) while the file system takes it, `buffered_`
// for the rest. Used by one thread at a time (the read of one window).
class BlockInput {
 public:
  BlockInput(std::string path, int buffered, int direct)
      : path_(std::move(path)), buffered_(buffered), direct_(direct) {}
  ~BlockInput() {
    if (direct_ >= 0) ::close(direct_);
    ::close(buffered_);
  }
  BlockInput(const BlockInput&) = delete;
  BlockInput& operator=(const BlockInput&) = delete;

  // Opens `path` and checks that it has `size` bytes.
  static base::StatusOr<std::unique_ptr<BlockInput>> open(const std::string& path, int64_t size) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) return base::Status::BadInput(path + ": file is missing");
      return os_error(path, "open", errno);
    }
    // tmpfs and some network file systems refuse O_DIRECT: everything goes through `fd` then.
    auto file = std::make_unique<BlockInput>(path, fd,
                                             ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT));
    struct stat st {};
    if (::fstat(fd, &st) != 0) return os_error(path, "stat", errno);
    if (static_cast<int64_t>(st.st_size) != size) {
      return base::Status::BadInput(path + ": size " + std::to_string(st.st_size) +
                                    " bytes, index says " + std::to_string(size) +
                                    " (truncated or overwritten)");
    }
    return file;
  }

  // Fills `out` with `want` bytes from `offset` (aligned), asking for whole pages so that direct
  // I/O applies; `out` must hold `want` rounded up to kDirectIoAlignment. Adds to `stats`.
  base::Status read(int64_t offset, int64_t want, char* out, ReadStats& stats) {
    const int64_t request = round_up(want, kDirectIoAlignment);
    int64_t done = 0;
    while (done < want) {
      const bool direct = direct_ >= 0;
      const ssize_t got = ::pread(direct ? direct_ : buffered_, out + done,
                                  static_cast<size_t>(request - done), offset + done);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0 && errno == EINVAL && direct) {
        // The file system refuses this request after all: the page cache serves the rest.
        ::close(direct_);
        direct_ = -1;
        continue;
      }
      if (got < 0) return os_error(path_, "read", errno);
      if (direct) stats.direct_bytes += std::min<int64_t>(got, want - done);
      done += got;
      // A short direct read ends at the end of the file (an unaligned retry would be refused).
      if (got == 0 || (direct && got % kDirectIoAlignment != 0 && done < want)) {
        return base::Status::BadInput(
            path_ + ": truncated: it ends at byte " + std::to_string(offset + done) +
            ", the index says it has at least " + std::to_string(offset + want));
      }
    }
    stats.bytes += want;
    return base::Status::Ok();
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int buffered_;
  int direct_;
};

// Whole blocks [first, first + count) of files[file].
struct BlockWindow {
  int file = 0;
  int64_t first = 0;
  int64_t count = 0;
};

namespace {

// The runs of blocks that cover `ranges`, in file then offset order, cut to fit a slot.
base::StatusOr<std::vector<BlockWindow>> plan_windows(const std::vector<FileEntry>& files,
                                                      std::vector<ByteRange> ranges,
                                                      int64_t slot_bytes) {
  std::sort(ranges.begin(), ranges.end(), [](const ByteRange& a, const ByteRange& b) {
    return a.file != b.file ? a.file < b.file : a.offset < b.offset;
  });
  std::vector<BlockWindow> out;
  auto add_run = [&](int file, int64_t first, int64_t last) {
    const int64_t per_window =
        std::max<int64_t>(1, slot_bytes / block_of(files[static_cast<size_t>(file)]));
    for (int64_t b = first; b <= last; b += per_window) {
      out.push_back({file, b, std::min(per_window, last + 1 - b)});
    }
  };
  int run_file = -1;
  int64_t run_first = 0, run_last = -1;
  for (const ByteRange& r : ranges) {
    if (r.size <= 0) continue;
    if (r.file < 0 || static_cast<size_t>(r.file) >= files.size() || r.offset < 0 ||
        r.offset + r.size > files[static_cast<size_t>(r.file)].size) {
      return base::Status::Internal("read_blocks: range outside its file");
    }
    const int64_t bb = block_of(files[static_cast<size_t>(r.file)]);
    const int64_t first = r.offset / bb, last = (r.offset + r.size - 1) / bb;
    if (r.file == run_file && first <= run_last + 1) {
      run_last = std::max(run_last, last);
      continue;
    }
    if (run_file >= 0) add_run(run_file, run_first, run_last);
    run_file = r.file;
    run_first = first;
    run_last = last;
  }
  if (run_file >= 0) add_run(run_file, run_first, run_last);
  return out;
}

// Checks the blocks of `w` (read into `data`) against the index.
base::Status verify_window(const FileEntry& f, const std::string& path, const BlockWindow& w,
                           const char* data, ReadStats& stats) {
  if (f.block_bytes <= 0) return base::Status::Ok();
  for (int64_t b = w.first; b < w.first + w.count; ++b) {
    const int64_t begin = b * f.block_bytes;
    const int64_t end = std::min(f.size, begin + f.block_bytes);
    const uint32_t crc =
        crc32_update(crc32_update(0, nullptr, 0), data + (begin - w.first * f.block_bytes),
                     static_cast<size_t>(end - begin));
    const uint32_t want = f.block_crc32[static_cast<size_t>(b)];
    if (crc != want) {
      return base::Status::BadInput(path + ": checksum mismatch in block " + std::to_string(b) +
                                    " (bytes " + std::to_string(begin) + ".." +
                                    std::to_string(end) + "): crc32 " + std::to_string(crc) +
                                    ", index says " + std::to_string(want));
    }
    ++stats.blocks_verified;
  }
  return base::Status::Ok();
}

}  // namespace

int64_t read_slot_bytes(const std::vector<FileEntry>& files, int64_t budget_bytes) {
  int64_t need = kDirectIoAlignment, most = kDirectIoAlignment;
  for (const FileEntry& f : files) {
    const int64_t whole = round_up(std::max<int64_t>(f.size, 1), kDirectIoAlignment);
    need = std::max(need, std::min(block_of(f), whole));
    most = std::max(most, whole);
  }
  const int64_t half = budget_bytes / 2 / kDirectIoAlignment * kDirectIoAlignment;
  return std::min(most, std::max(need, half));
}

BlockReader::BlockReader() = default;
BlockReader::~BlockReader() = default;

base::StatusOr<std::unique_ptr<BlockReader>> BlockReader::open(const std::string& dir,
                                                               std::vector<FileEntry> files,
                                                               std::vector<ByteRange> ranges,
                                                               int64_t slot_bytes) {
  std::unique_ptr<BlockReader> r(new BlockReader());
  ASSIGN_OR_RETURN(r->windows_, plan_windows(files, std::move(ranges), slot_bytes));
  r->inputs_.resize(files.size());
  for (const BlockWindow& w : r->windows_) {
    const FileEntry& f = files[static_cast<size_t>(w.file)];
    const int64_t begin = w.first * block_of(f);
    if (round_up(std::min(f.size, begin + w.count * block_of(f)) - begin, kDirectIoAlignment) >
        slot_bytes) {
      return base::Status::Internal("BlockReader: slots of " + std::to_string(slot_bytes) +
                                    " bytes cannot hold a block of " + f.name);
    }
    auto& input = r->inputs_[static_cast<size_t>(w.file)];
    if (input == nullptr) {
      ASSIGN_OR_RETURN(input, BlockInput::open(dir + "/" + f.name, f.size));
    }
  }
  r->files_ = std::move(files);
  r->slot_bytes_ = slot_bytes;
  return r;
}

base::StatusOr<ReadStats> BlockReader::read(const ReadSlots& slots, const WindowSink& sink) {
  if (slots.bytes < slot_bytes_)
    return base::Status::Internal("BlockReader: slots smaller than planned");
  // The file range of window k.
  auto span = [this](size_t k) {
    const BlockWindow& w = windows_[k];
    const FileEntry& f = files_[static_cast<size_t>(w.file)];
    const int64_t begin = w.first * block_of(f);
    return std::make_pair(begin, std::min(f.size, begin + w.count * block_of(f)));
  };
  ReadStats stats;
  ReadStats io_stats;  // touched by the reading task only; read after its get()
  auto read_window = [&](size_t k) {
    const auto [begin, end] = span(k);
    return inputs_[static_cast<size_t>(windows_[k].file)]->read(begin, end - begin,
                                                                slots.data[k % 2], io_stats);
  };
  // Declared after everything the task touches, so it is waited for before they go.
  std::future<base::Status> in_flight;
  if (!windows_.empty()) in_flight = std::async(std::launch::async, read_window, 0);
  for (size_t k = 0; k < windows_.size(); ++k) {
    RETURN_IF_ERROR(in_flight.get());
    if (k + 1 < windows_.size()) in_flight = std::async(std::launch::async, read_window, k + 1);
    const BlockWindow& w = windows_[k];
    const auto [begin, end] = span(k);
    RETURN_IF_ERROR(verify_window(files_[static_cast<size_t>(w.file)],
                                  inputs_[static_cast<size_t>(w.file)]->path(), w,
                                  slots.data[k % 2], stats));
    RETURN_IF_ERROR(sink({w.file, begin, slots.data[k % 2], end - begin}));
  }
  stats.bytes = io_stats.bytes;
  stats.direct_bytes = io_stats.direct_bytes;
  return stats;
}

base::StatusOr<ReadStats> read_blocks(const std::string& dir, const std::vector<FileEntry>& files,
                                      std::vector<ByteRange> ranges, const ReadSlots& slots,
                                      const WindowSink& sink) {
  ASSIGN_OR_RETURN(std::unique_ptr<BlockReader> r,
                   BlockReader::open(dir, files, std::move(ranges), slots.bytes));
  return r->read(slots, sink);
}

}  // namespace dstrain::runtime::checkpoint
