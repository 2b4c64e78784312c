#include "runtime/checkpoint/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace dstrain::runtime::checkpoint {
namespace {

base::Status errno_error(const std::string& path, const char* what, int err) {
  return base::Status::IOError(path + ": " + what + ": " + std::strerror(err));
}

class PosixWriter : public FileWriter {
 public:
  PosixWriter(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixWriter() override { ::close(fd_); }
  PosixWriter(const PosixWriter&) = delete;
  PosixWriter& operator=(const PosixWriter&) = delete;

  base::Status write_at(int64_t offset, const void* data, size_t n) override {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::pwrite(fd_, p, n, offset);
      if (w < 0) {
        if (errno == EINTR) continue;
        return errno_error(path_, "write", errno);
      }
      p += w;
      n -= static_cast<size_t>(w);
      offset += w;
    }
    return base::Status::Ok();
  }
  base::Status sync() override {
    if (::fsync(fd_) != 0) return errno_error(path_, "fsync", errno);
    return base::Status::Ok();
  }

 private:
  int fd_;
  std::string path_;
};

}  // namespace

class FaultInjectionWriter : public FileWriter {
 public:
  FaultInjectionWriter(std::unique_ptr<FileWriter> base, FaultInjectionIo& io, std::string path)
      : base_(std::move(base)), io_(io), path_(std::move(path)) {}
  base::Status write_at(int64_t offset, const void* data, size_t n) override {
    if (io_.written_ + static_cast<int64_t>(n) > io_.budget_) {
      // A full disk accepts what fits, then refuses.
      const int64_t fits = std::max<int64_t>(0, io_.budget_ - io_.written_);
      if (fits > 0) RETURN_IF_ERROR(base_->write_at(offset, data, static_cast<size_t>(fits)));
      io_.written_ += fits;
      return errno_error(path_, "write", ENOSPC);
    }
    RETURN_IF_ERROR(base_->write_at(offset, data, n));
    io_.written_ += static_cast<int64_t>(n);
    return base::Status::Ok();
  }
  base::Status sync() override { return base_->sync(); }

 private:
  std::unique_ptr<FileWriter> base_;
  FaultInjectionIo& io_;
  std::string path_;
};

base::StatusOr<std::unique_ptr<FileWriter>> PosixIo::open(const std::string& path, bool truncate) {
  const int flags = O_WRONLY | O_CLOEXEC | (truncate ? O_CREAT | O_TRUNC : 0);
  const int fd = ::open(path.c_str(), flags, 0644);
  if (fd < 0) return errno_error(path, "open", errno);
  return std::unique_ptr<FileWriter>(new PosixWriter(fd, path));
}

base::StatusOr<std::unique_ptr<FileWriter>> FaultInjectionIo::open(const std::string& path,
                                                                   bool truncate) {
  ASSIGN_OR_RETURN(std::unique_ptr<FileWriter> w, base_.open(path, truncate));
  return std::unique_ptr<FileWriter>(new FaultInjectionWriter(std::move(w), *this, path));
}

base::Status write_file(CheckpointIo& io, const std::string& path, const std::string& text) {
  ASSIGN_OR_RETURN(std::unique_ptr<FileWriter> w, io.open(path, /*truncate=*/true));
  RETURN_IF_ERROR(w->write_at(0, text.data(), text.size()));
  return w->sync();
}

base::Status sync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno_error(dir, "open directory", errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return errno_error(dir, "fsync", err);
  return base::Status::Ok();
}

base::Status rename_path(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return errno_error(from, ("rename to " + to).c_str(), errno);
  }
  return base::Status::Ok();
}

base::StatusOr<std::string> read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return base::Status::BadInput(path + ": cannot open: " + std::strerror(errno));
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

}  // namespace dstrain::runtime::checkpoint
