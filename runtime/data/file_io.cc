#include "runtime/data/file_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace dstrain::runtime {

base::Status errno_status(const std::string& path, const std::string& what, int err) {
  return base::Status::IOError(path + ": " + what + ": " + std::strerror(err));
}

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.release();
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

int UniqueFd::release() {
  int fd = fd_;
  fd_ = -1;
  return fd;
}

base::Status UniqueFd::close(const std::string& path) {
  if (fd_ < 0) return base::Status::Ok();
  int fd = release();
  // POSIX leaves the descriptor state unspecified after EINTR from close; Linux has closed it,
  // so retrying could close a descriptor another thread just opened.
  if (::close(fd) != 0 && errno != EINTR) return errno_status(path, "close", errno);
  return base::Status::Ok();
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    unmap();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() { unmap(); }

void MappedFile::unmap() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

base::StatusOr<MappedFile> MappedFile::open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return base::Status::BadInput(path + ": cannot open: " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return base::Status::BadInput(path + ": cannot stat: " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) return base::Status::BadInput(path + ": not a regular file");
  MappedFile mapped;
  if (st.st_size == 0) return mapped;
  void* p = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) {
    return base::Status::BadInput(path + ": cannot map: " + std::strerror(errno));
  }
  // The mapping stays valid after the descriptor closes.
  mapped.data_ = static_cast<const uint8_t*>(p);
  mapped.size_ = static_cast<uint64_t>(st.st_size);
  return mapped;
}

base::Status write_all(int fd, const void* data, size_t size, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status(path, "write", errno);
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return base::Status::Ok();
}

base::Status pwrite_all(int fd, const void* data, size_t size, uint64_t offset,
                        const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    ssize_t n = ::pwrite(fd, p, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status(path, "write", errno);
    }
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return base::Status::Ok();
}

}  // namespace dstrain::runtime
