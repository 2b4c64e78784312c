#include "runtime/data/token_file_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

namespace dstrain::runtime {
namespace {

constexpr size_t kFlushBytes = size_t{1} << 20;

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

base::StatusOr<TokenFileWriter> TokenFileWriter::create(const std::string& path, Options options) {
  if (options.vocab_size == 0) {
    return base::Status::InvalidArgument(path + ": vocab_size must be positive");
  }
  std::string tmp = path + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return errno_status(tmp, "cannot create", errno);
  TokenFileWriter writer(path, options, std::move(fd), token_bytes_for_vocab(options.vocab_size));
  // The header is written last, once the counts are known; reserve its bytes now.
  writer.buffer_.assign(kDstokHeaderBytes, 0);
  return writer;
}

TokenFileWriter::TokenFileWriter(std::string path, Options options, UniqueFd fd,
                                 uint32_t token_bytes)
    : path_(std::move(path)),
      tmp_path_(path_ + ".tmp"),
      options_(options),
      fd_(std::move(fd)),
      token_bytes_(token_bytes) {}

TokenFileWriter::TokenFileWriter(TokenFileWriter&& other) noexcept
    : path_(std::move(other.path_)),
      tmp_path_(std::exchange(other.tmp_path_, std::string())),
      options_(other.options_),
      fd_(std::move(other.fd_)),
      token_bytes_(other.token_bytes_),
      num_tokens_(other.num_tokens_),
      num_docs_(other.num_docs_),
      buffer_(std::move(other.buffer_)),
      doc_offsets_(std::move(other.doc_offsets_)),
      mask_(std::move(other.mask_)),
      spent_(std::exchange(other.spent_, true)) {}

TokenFileWriter::~TokenFileWriter() {
  if (!tmp_path_.empty()) {
    fd_ = UniqueFd();
    ::unlink(tmp_path_.c_str());
  }
}

base::Status TokenFileWriter::fail_if_spent() const {
  if (spent_) return base::Status::Internal(path_ + ": writer used after finish() or a failure");
  return base::Status::Ok();
}

base::Status TokenFileWriter::start_document() {
  RETURN_IF_ERROR(fail_if_spent());
  if (!options_.documents) {
    return base::Status::InvalidArgument(path_ +
                                         ": start_document() on a writer without documents");
  }
  doc_offsets_.push_back(num_tokens_);
  ++num_docs_;
  return base::Status::Ok();
}

base::Status TokenFileWriter::append(const std::vector<uint32_t>& tokens,
                                     const std::vector<uint8_t>& mask) {
  RETURN_IF_ERROR(fail_if_spent());
  if (options_.documents && doc_offsets_.empty()) {
    return base::Status::InvalidArgument(path_ + ": append() before start_document()");
  }
  size_t want_mask = options_.mask ? tokens.size() : 0;
  if (mask.size() != want_mask) {
    return base::Status::InvalidArgument(path_ + ": append() got " + std::to_string(mask.size()) +
                                         " mask bytes for " + std::to_string(tokens.size()) +
                                         " tokens (mask " + (options_.mask ? "on" : "off") + ")");
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] >= options_.vocab_size) {
      return base::Status::InvalidArgument(path_ + ": token " + std::to_string(tokens[i]) +
                                           " at index " + std::to_string(num_tokens_ + i) +
                                           " >= vocab_size " + std::to_string(options_.vocab_size));
    }
    if (!mask.empty() && mask[i] > 1) {
      return base::Status::InvalidArgument(path_ + ": mask byte " + std::to_string(mask[i]) +
                                           " is not 0 or 1");
    }
  }
  for (uint32_t t : tokens) {
    uint8_t bytes[4];
    if (token_bytes_ == 2) {
      uint16_t narrow = static_cast<uint16_t>(t);
      std::memcpy(bytes, &narrow, 2);
    } else {
      std::memcpy(bytes, &t, 4);
    }
    buffer_.insert(buffer_.end(), bytes, bytes + token_bytes_);
  }
  mask_.insert(mask_.end(), mask.begin(), mask.end());
  num_tokens_ += tokens.size();
  if (buffer_.size() >= kFlushBytes) return flush();
  return base::Status::Ok();
}

base::Status TokenFileWriter::flush() {
  base::Status st = write_all(fd_.get(), buffer_.data(), buffer_.size(), tmp_path_);
  buffer_.clear();
  if (!st.ok()) spent_ = true;
  return st;
}

base::Status TokenFileWriter::finish() {
  RETURN_IF_ERROR(fail_if_spent());
  spent_ = true;
  TokenFileHeader header;
  header.token_bytes = token_bytes_;
  header.vocab_size = options_.vocab_size;
  header.num_tokens = num_tokens_;
  header.num_docs = doc_offsets_.size();
  header.flags = options_.mask ? kDstokFlagMask : 0;
  if (!doc_offsets_.empty()) doc_offsets_.push_back(num_tokens_);

  RETURN_IF_ERROR(write_all(fd_.get(), buffer_.data(), buffer_.size(), tmp_path_));
  buffer_.clear();
  RETURN_IF_ERROR(
      write_all(fd_.get(), doc_offsets_.data(), doc_offsets_.size() * sizeof(uint64_t), tmp_path_));
  RETURN_IF_ERROR(write_all(fd_.get(), mask_.data(), mask_.size(), tmp_path_));
  auto encoded = encode_header(header);
  RETURN_IF_ERROR(pwrite_all(fd_.get(), encoded.data(), encoded.size(), 0, tmp_path_));
  if (::fsync(fd_.get()) != 0) return errno_status(tmp_path_, "fsync", errno);
  RETURN_IF_ERROR(fd_.close(tmp_path_));
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    return errno_status(path_, "rename from " + tmp_path_, errno);
  }
  tmp_path_.clear();
  // Make the rename itself durable.
  std::string dir = parent_dir(path_);
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd.valid()) return errno_status(dir, "open directory", errno);
  if (::fsync(dir_fd.get()) != 0) return errno_status(dir, "fsync directory", errno);
  return base::Status::Ok();
}

}  // namespace dstrain::runtime
