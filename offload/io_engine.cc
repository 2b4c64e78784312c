#include "offload/io_engine.h"

#include <cerrno>
#include <cstring>

#include "offload/host_buffer.h"

namespace dstrain::offload {
namespace {

// The symbolic name next to strerror's text, so logs and tests can match ENOSPC whatever the
// locale; only the errors an I/O request is expected to meet.
const char* errno_name(int err) {
  switch (err) {
    case EIO:
      return "EIO";
    case ENOSPC:
      return "ENOSPC";
    case EDQUOT:
      return "EDQUOT";
    case EFBIG:
      return "EFBIG";
    case EINVAL:
      return "EINVAL";
    case EBADF:
      return "EBADF";
    case EFAULT:
      return "EFAULT";
    case EROFS:
      return "EROFS";
    case ENODATA:
      return "ENODATA";
    default:
      return nullptr;
  }
}

}  // namespace

const char* io_op_name(IoOp op) { return op == IoOp::kRead ? "read" : "write"; }

std::string errno_text(int err) {
  std::string text = std::strerror(err);
  if (const char* name = errno_name(err)) text += std::string(" (") + name + ")";
  return text;
}

namespace {

std::string describe_request(IoOp op, const std::string& path, int64_t offset, size_t bytes) {
  return std::string(io_op_name(op)) + " of " + path + " at offset " + std::to_string(offset) +
         " (" + std::to_string(bytes) + " bytes)";
}

}  // namespace

base::Status io_request_error(IoOp op, const std::string& path, int64_t offset, size_t bytes,
                              int err) {
  return base::Status::IOError(describe_request(op, path, offset, bytes) + ": " + errno_text(err));
}

base::Status io_short_error(IoOp op, const std::string& path, int64_t offset, size_t bytes,
                            size_t got) {
  const std::string what = op == IoOp::kRead ? ": end of file after " : ": only ";
  const std::string tail = op == IoOp::kRead ? " bytes" : " bytes written";
  return base::Status::IOError(describe_request(op, path, offset, bytes) + what +
                               std::to_string(got) + tail);
}

base::Status check_transfer(const void* buf, int64_t offset, size_t bytes, bool direct) {
  if (offset < 0 || (buf == nullptr && bytes > 0)) {
    return base::Status::InvalidArgument(
        "io engine: a transfer needs a buffer and an offset >= 0, got offset " +
        std::to_string(offset));
  }
  const auto address = reinterpret_cast<uintptr_t>(buf);
  if (direct &&
      (address % kHostAlignment != 0 || offset % static_cast<int64_t>(kHostAlignment) != 0 ||
       bytes % kHostAlignment != 0)) {
    return base::Status::InvalidArgument(
        "direct I/O needs buffer, offset and size aligned to " + std::to_string(kHostAlignment) +
        " bytes, got buffer " + std::to_string(address) + ", offset " + std::to_string(offset) +
        ", size " + std::to_string(bytes));
  }
  return base::Status::Ok();
}

}  // namespace dstrain::offload
