#include "runtime/checkpoint/checksum.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "runtime/checkpoint/crc32_fast.h"

namespace dstrain::runtime::checkpoint {
namespace {

constexpr size_t kReadChunk = size_t{8} << 20;

class ReadFd {
 public:
  explicit ReadFd(int fd) : fd_(fd) {}
  ~ReadFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  ReadFd(const ReadFd&) = delete;
  ReadFd& operator=(const ReadFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

base::Status io_error(const std::string& path, const char* what) {
  return base::Status::IOError(path + ": " + what + ": " + std::strerror(errno));
}

// crc of [offset, offset + size) of an open file.
base::StatusOr<uint32_t> crc_of_range(int fd, const std::string& path, int64_t offset, int64_t size,
                                      std::vector<char>& buf) {
  uint32_t crc = crc32_update(0, nullptr, 0);
  while (size > 0) {
    const size_t want =
        static_cast<size_t>(std::min<int64_t>(size, static_cast<int64_t>(buf.size())));
    const ssize_t got = ::pread(fd, buf.data(), want, offset);
    if (got < 0) return io_error(path, "read");
    if (got == 0)
      return base::Status::BadInput(path + ": file is shorter than expected (truncated)");
    crc = crc32_update(crc, buf.data(), static_cast<size_t>(got));
    offset += got;
    size -= got;
  }
  return crc;
}

}  // namespace

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const Bytef*>(data);
  if (p == nullptr) return static_cast<uint32_t>(::crc32(crc, Z_NULL, 0));
  if (n >= kCrc32FastMinBytes && crc32_fast_available()) return crc32_fast(crc, p, n);
  // zlib takes uInt lengths.
  while (n > 0) {
    const uInt step = static_cast<uInt>(std::min<size_t>(n, std::numeric_limits<uInt>::max()));
    crc = static_cast<uint32_t>(::crc32(crc, p, step));
    p += step;
    n -= step;
  }
  return crc;
}

uint32_t crc32_combine(uint32_t crc_a, uint32_t crc_b, int64_t len_b) {
  return static_cast<uint32_t>(::crc32_combine(crc_a, crc_b, static_cast<z_off_t>(len_b)));
}

void checksum_by_block(int64_t offset, const void* data, int64_t n, int64_t block_bytes,
                       std::vector<ChecksummedRegion>& out) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const int64_t take = std::min(n, (offset / block_bytes + 1) * block_bytes - offset);
    out.push_back(
        {offset, take, crc32_update(crc32_update(0, nullptr, 0), p, static_cast<size_t>(take))});
    offset += take;
    p += take;
    n -= take;
  }
}

base::StatusOr<std::vector<uint32_t>> block_crc32s(const std::string& path, int64_t file_size,
                                                   int64_t block_bytes,
                                                   std::vector<ChecksummedRegion> known) {
  if (block_bytes <= 0) return base::Status::Internal("block_crc32s: block size must be positive");
  std::sort(known.begin(), known.end(), [](const ChecksummedRegion& a, const ChecksummedRegion& b) {
    return a.offset < b.offset;
  });
  ReadFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return io_error(path, "open");
  std::vector<char> buf;
  std::vector<uint32_t> blocks;
  uint32_t crc = crc32_update(0, nullptr, 0);
  int64_t at = 0;  // everything before `at` is in `crc` or in `blocks`
  size_t next = 0;
  // Extends the current block's crc up to `end` (inside the block) by reading the file.
  auto add_gap = [&](int64_t end) -> base::Status {
    if (end <= at) return base::Status::Ok();
    if (buf.empty()) buf.resize(kReadChunk);
    ASSIGN_OR_RETURN(uint32_t gap, crc_of_range(fd.get(), path, at, end - at, buf));
    crc = crc32_combine(crc, gap, end - at);
    at = end;
    return base::Status::Ok();
  };
  for (int64_t begin = 0; begin < file_size; begin += block_bytes) {
    const int64_t end = std::min(file_size, begin + block_bytes);
    for (; next < known.size() && known[next].offset < end; ++next) {
      const ChecksummedRegion& r = known[next];
      if (r.offset < at || r.offset + r.size > end) {
        return base::Status::Internal(
            path + ": overlapping, out-of-file or block-crossing checksum regions");
      }
      RETURN_IF_ERROR(add_gap(r.offset));
      crc = crc32_combine(crc, r.crc, r.size);
      at = r.offset + r.size;
    }
    RETURN_IF_ERROR(add_gap(end));
    blocks.push_back(crc);
    crc = crc32_update(0, nullptr, 0);
  }
  if (next < known.size())
    return base::Status::Internal(path + ": checksum region beyond the end of the file");
  return blocks;
}

uint32_t fold_block_crc32s(const std::vector<uint32_t>& blocks, int64_t block_bytes,
                           int64_t file_size) {
  uint32_t crc = crc32_update(0, nullptr, 0);
  for (size_t b = 0; b < blocks.size(); ++b) {
    const int64_t begin = static_cast<int64_t>(b) * block_bytes;
    crc = crc32_combine(crc, blocks[b], std::min(block_bytes, file_size - begin));
  }
  return crc;
}

base::StatusOr<uint32_t> file_crc32(const std::string& path, int64_t file_size,
                                    std::vector<ChecksummedRegion> known) {
  const int64_t whole = std::max<int64_t>(file_size, 1);
  ASSIGN_OR_RETURN(std::vector<uint32_t> blocks,
                   block_crc32s(path, file_size, whole, std::move(known)));
  return fold_block_crc32s(blocks, whole, file_size);
}

base::StatusOr<FileDigest> file_digest(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return base::Status::BadInput(path + ": file is missing");
    return io_error(path, "stat");
  }
  FileDigest d;
  d.size = static_cast<int64_t>(st.st_size);
  ASSIGN_OR_RETURN(d.crc, file_crc32(path, d.size, {}));
  return d;
}

}  // namespace dstrain::runtime::checkpoint
