#include "runtime/hf/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <tuple>
#include <utility>

#include "runtime/hf/json_file.h"

namespace dstrain::runtime::hf {
namespace {

using nlohmann::json;

constexpr uint64_t kLengthPrefixBytes = 8;
constexpr char kMetadataKey[] = "__metadata__";

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// Bytes a tensor of this shape and dtype occupies; false on overflow of uint64.
bool tensor_bytes(const std::vector<int64_t>& shape, size_t elem_size, uint64_t* out) {
  uint64_t n = elem_size;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  *out = n;
  return true;
}

uint64_t decode_u64_le(const unsigned char* b) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
  return v;
}

void encode_u64_le(uint64_t v, unsigned char* b) {
  for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
}

// Reads exactly n bytes at `offset`; a file shorter than expected is kBadInput (it was truncated
// after open), a failing device kIOError.
base::Status pread_full(int fd, const std::string& path, void* dst, uint64_t n, uint64_t offset) {
  auto* out = static_cast<unsigned char*>(dst);
  while (n > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, 1ull << 30));
    const ssize_t got = ::pread(fd, out, chunk, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      return base::Status::IOError(path + ": read at byte " + std::to_string(offset) + ": " +
                                   std::strerror(errno));
    }
    if (got == 0) {
      return base::Status::BadInput(path + ": file ends at byte " + std::to_string(offset) +
                                    ", before the data it declares");
    }
    out += got;
    offset += static_cast<uint64_t>(got);
    n -= static_cast<uint64_t>(got);
  }
  return base::Status::Ok();
}

base::Status write_full(int fd, const std::string& path, const void* src, uint64_t n) {
  const auto* in = static_cast<const unsigned char*>(src);
  while (n > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, 1ull << 30));
    const ssize_t put = ::write(fd, in, chunk);
    if (put < 0 && errno == EINTR) continue;
    if (put < 0) return base::Status::IOError(path + ": write: " + std::strerror(errno));
    in += put;
    n -= static_cast<uint64_t>(put);
  }
  return base::Status::Ok();
}

base::Status parse_metadata(const json& value, const std::string& where,
                            std::map<std::string, std::string>* out) {
  if (!value.is_object()) {
    return base::Status::BadInput(where + ": \"__metadata__\" is a JSON " + value.type_name() +
                                  ", expected an object of strings");
  }
  for (const auto& [key, v] : value.items()) {
    if (!v.is_string()) {
      return base::Status::BadInput(where + ": \"__metadata__\" entry \"" + key + "\" is a JSON " +
                                    v.type_name() + ", expected a string");
    }
    (*out)[key] = v.get<std::string>();
  }
  return base::Status::Ok();
}

// Parses one header entry; offsets stay relative to the data section (`data_size` bytes).
base::StatusOr<TensorInfo> parse_entry(const std::string& name, const json& value,
                                       const std::string& path, uint64_t data_size) {
  const std::string where = path + ": tensor " + name;
  auto bad = [&](const std::string& what) { return base::Status::BadInput(where + ": " + what); };
  if (!value.is_object()) return bad(std::string("entry is a JSON ") + value.type_name());
  TensorInfo t;
  t.name = name;

  const auto dtype = value.find("dtype");
  if (dtype == value.end() || !dtype->is_string()) return bad("missing string \"dtype\"");
  t.dtype = dtype->get<std::string>();
  const size_t elem_size = dtype_size(t.dtype);
  if (elem_size == 0) return bad("unsupported dtype \"" + t.dtype + "\"");

  const auto shape = value.find("shape");
  if (shape == value.end() || !shape->is_array()) return bad("missing list \"shape\"");
  for (const json& d : *shape) {
    if (!d.is_number_unsigned() ||
        d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      // Names the one entry: the whole list may be megabytes long.
      return bad("shape entry " + std::to_string(t.shape.size()) + " is " +
                 (d.is_number() ? d.dump() : std::string("a JSON ") + d.type_name()) +
                 ", not a non-negative integer");
    }
    t.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
  }

  const auto offsets = value.find("data_offsets");
  if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
    return bad("\"data_offsets\" must be [begin, end] of non-negative integers");
  }
  t.begin = (*offsets)[0].get<uint64_t>();
  t.end = (*offsets)[1].get<uint64_t>();
  if (t.begin > t.end) return bad("data_offsets " + offsets->dump() + " has begin > end");
  if (t.end > data_size) {
    return bad("data_offsets " + offsets->dump() + " run past the data section of " +
               std::to_string(data_size) + " bytes");
  }

  uint64_t need = 0;
  if (!tensor_bytes(t.shape, elem_size, &need)) {
    return bad("shape " + shape_string(t.shape) + " x " + t.dtype + " overflows 64 bits");
  }
  if (need != t.end - t.begin) {
    return bad("shape " + shape_string(t.shape) + " x " + t.dtype + " needs " +
               std::to_string(need) + " bytes, offsets give " + std::to_string(t.end - t.begin));
  }
  return t;
}

// Sorts by offset and checks that the tensors tile [0, data_size) with no gap and no overlap.
base::Status check_tiling(std::vector<TensorInfo>* tensors, const std::string& path,
                          uint64_t data_size) {
  std::sort(tensors->begin(), tensors->end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  uint64_t covered = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : *tensors) {
    if (t.begin < covered) {
      return base::Status::BadInput(path + ": tensor " + t.name + ": data [" +
                                    std::to_string(t.begin) + ", " + std::to_string(t.end) +
                                    ") overlaps tensor " + prev->name + " ending at " +
                                    std::to_string(covered));
    }
    if (t.begin > covered) {
      return base::Status::BadInput(path + ": tensor " + t.name + ": data starts at " +
                                    std::to_string(t.begin) + ", leaving a gap after byte " +
                                    std::to_string(covered));
    }
    covered = t.end;
    prev = &t;
  }
  if (covered != data_size) {
    return base::Status::BadInput(path + ": tensors cover " + std::to_string(covered) +
                                  " bytes of a data section of " + std::to_string(data_size) +
                                  " bytes (file size does not match the header)");
  }
  return base::Status::Ok();
}

}  // namespace

size_t dtype_size(const std::string& dtype) {
  static constexpr std::pair<const char*, size_t> kSizes[] = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},     {"I32", 4},
      {"I16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
  };
  for (const auto& [name, size] : kSizes) {
    if (dtype == name) return size;
  }
  return 0;
}

base::StatusOr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  f.fd_ = UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!f.fd_.valid()) {
    return base::Status::BadInput(path + ": cannot open: " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(f.fd_.get(), &st) != 0) {
    return base::Status::IOError(path + ": fstat: " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) return base::Status::BadInput(path + ": not a regular file");
  f.file_size_ = static_cast<uint64_t>(st.st_size);
  if (f.file_size_ < kLengthPrefixBytes) {
    return base::Status::BadInput(
        path + ": " + std::to_string(f.file_size_) +
        " bytes, too short for a safetensors file (8-byte header length)");
  }

  unsigned char prefix[kLengthPrefixBytes];
  RETURN_IF_ERROR(pread_full(f.fd_.get(), path, prefix, kLengthPrefixBytes, 0));
  const uint64_t header_len = decode_u64_le(prefix);
  if (header_len < 2) {
    return base::Status::BadInput(path + ": header length " + std::to_string(header_len) +
                                  ", too short for a JSON object");
  }
  if (header_len > kMaxHeaderBytes || header_len > f.file_size_ - kLengthPrefixBytes) {
    return base::Status::BadInput(
        path + ": header length " + std::to_string(header_len) + " exceeds " +
        (header_len > kMaxHeaderBytes ? "the limit of " + std::to_string(kMaxHeaderBytes)
                                      : "the file size of " + std::to_string(f.file_size_)) +
        " bytes");
  }
  std::string header(static_cast<size_t>(header_len), '\0');
  RETURN_IF_ERROR(pread_full(f.fd_.get(), path, header.data(), header_len, kLengthPrefixBytes));
  ASSIGN_OR_RETURN(json root, parse_json_strict(header, path + ": header"));
  if (!root.is_object()) {
    return base::Status::BadInput(path + ": header is a JSON " + root.type_name() +
                                  ", expected an object");
  }

  const uint64_t data_start = kLengthPrefixBytes + header_len;
  const uint64_t data_size = f.file_size_ - data_start;
  for (const auto& [key, value] : root.items()) {
    if (key == kMetadataKey) {
      RETURN_IF_ERROR(parse_metadata(value, path, &f.metadata_));
      continue;
    }
    ASSIGN_OR_RETURN(TensorInfo t, parse_entry(key, value, path, data_size));
    f.tensors_.push_back(std::move(t));
  }
  RETURN_IF_ERROR(check_tiling(&f.tensors_, path, data_size));
  for (size_t i = 0; i < f.tensors_.size(); ++i) {
    f.tensors_[i].begin += data_start;
    f.tensors_[i].end += data_start;
    f.index_.emplace(f.tensors_[i].name, i);
  }
  return f;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

base::Status SafetensorsFile::read(const TensorInfo& t, uint64_t offset, uint64_t nbytes,
                                   void* dst) const {
  if (t.begin > t.end || t.end > file_size_ || offset > t.nbytes() ||
      nbytes > t.nbytes() - offset) {
    return base::Status::Internal(
        path_ + ": tensor " + t.name + ": read of " + std::to_string(nbytes) + " bytes at offset " +
        std::to_string(offset) + " is outside its " + std::to_string(t.nbytes()) + " bytes");
  }
  if (nbytes == 0) return base::Status::Ok();
  return pread_full(fd_.get(), path_, dst, nbytes, t.begin + offset)
      .with_context("tensor " + t.name);
}

namespace {

base::Status check_write_request(const std::string& path, const std::vector<TensorData>& tensors) {
  for (const TensorData& t : tensors) {
    const std::string where = path + ": tensor " + t.name;
    if (t.name == kMetadataKey) {
      return base::Status::InvalidArgument(where + ": name is reserved for metadata");
    }
    const size_t elem_size = dtype_size(t.dtype);
    if (elem_size == 0) {
      return base::Status::InvalidArgument(where + ": unsupported dtype \"" + t.dtype + "\"");
    }
    uint64_t need = 0;
    if (!tensor_bytes(t.shape, elem_size, &need)) {
      return base::Status::InvalidArgument(where + ": shape " + shape_string(t.shape) +
                                           " is negative or overflows 64 bits");
    }
    if (need != t.nbytes) {
      return base::Status::InvalidArgument(where + ": shape " + shape_string(t.shape) + " x " +
                                           t.dtype + " needs " + std::to_string(need) +
                                           " bytes, given " + std::to_string(t.nbytes));
    }
    if (t.nbytes > 0 && t.data == nullptr) {
      return base::Status::InvalidArgument(where + ": no data");
    }
  }
  return base::Status::Ok();
}

// Header text padded with spaces so that 8 + its length is a multiple of 8.
base::StatusOr<std::string> build_header(const std::string& path,
                                         const std::vector<const TensorData*>& sorted,
                                         const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  uint64_t offset = 0;
  for (const TensorData* t : sorted) {
    header[t->name] = {
        {"dtype", t->dtype}, {"shape", t->shape}, {"data_offsets", {offset, offset + t->nbytes}}};
    offset += t->nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    return base::Status::InvalidArgument(path + ": cannot encode header: " + e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

base::Status write_file_contents(int fd, const std::string& tmp, const std::string& header,
                                 const std::vector<const TensorData*>& sorted) {
  unsigned char prefix[kLengthPrefixBytes];
  encode_u64_le(header.size(), prefix);
  RETURN_IF_ERROR(write_full(fd, tmp, prefix, sizeof(prefix)));
  RETURN_IF_ERROR(write_full(fd, tmp, header.data(), header.size()));
  for (const TensorData* t : sorted) RETURN_IF_ERROR(write_full(fd, tmp, t->data, t->nbytes));
  if (::fsync(fd) != 0) return base::Status::IOError(tmp + ": fsync: " + std::strerror(errno));
  return base::Status::Ok();
}

// Makes the rename durable; a directory that cannot be opened (permissions) is not an error.
base::Status fsync_parent_dir(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.valid() && ::fsync(fd.get()) != 0 && errno != EINVAL) {
    return base::Status::IOError(dir + ": fsync: " + std::strerror(errno));
  }
  return base::Status::Ok();
}

}  // namespace

base::Status write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  RETURN_IF_ERROR(check_write_request(path, tensors));
  std::vector<const TensorData*> sorted;
  sorted.reserve(tensors.size());
  for (const TensorData& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const TensorData* a, const TensorData* b) { return a->name < b->name; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i]->name == sorted[i - 1]->name) {
      return base::Status::InvalidArgument(path + ": tensor " + sorted[i]->name + " given twice");
    }
  }
  ASSIGN_OR_RETURN(std::string header, build_header(path, sorted, metadata));

  const std::string tmp = path + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return base::Status::IOError(tmp + ": cannot create: " + std::strerror(errno));
  base::Status st = write_file_contents(fd.get(), tmp, header, sorted);
  if (st.ok() && fd.close() != 0) {
    st = base::Status::IOError(tmp + ": close: " + std::strerror(errno));
  }
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    st = base::Status::IOError(tmp + ": rename to " + path + ": " + std::strerror(errno));
  }
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  return fsync_parent_dir(path);
}

}  // namespace dstrain::runtime::hf
