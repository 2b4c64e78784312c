#include "runtime/export/checkpoint_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "runtime/checkpoint/store.h"
#include "runtime/hf/float16.h"

namespace dstrain::runtime::exporter {
namespace {

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

int64_t shape_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

base::StatusOr<std::string> resolve_checkpoint_dir(const std::string& path) {
  std::string dir = path;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (is_file(dir + "/" + checkpoint::kIndexFile)) return dir;
  for (const std::string& root : {dir, dir + "/checkpoints"}) {
    ASSIGN_OR_RETURN(std::optional<std::string> latest, checkpoint::read_latest(root));
    if (latest.has_value()) return root + "/" + *latest;
  }
  return base::Status::BadInput(path +
                                ": not a checkpoint (no index.json) nor a run or "
                                "checkpoints directory with a `latest` file");
}

base::StatusOr<CheckpointReader> CheckpointReader::open(const std::string& dir) {
  CheckpointReader r;
  r.dir_ = dir;
  ASSIGN_OR_RETURN(r.index_, checkpoint::read_index(dir));
  RETURN_IF_ERROR(checkpoint::verify_files(dir, r.index_));
  for (const checkpoint::FileEntry& f : r.index_.files) {
    const std::string path = dir + "/" + f.name;
    hf::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return base::Status::BadInput(path + ": cannot open: " + std::strerror(errno));
    r.files_.emplace(f.name, std::move(fd));
  }
  return r;
}

const checkpoint::TensorEntry* CheckpointReader::find(const std::string& name,
                                                      const std::string& kind) const {
  const auto k = index_.tensors.find(kind);
  if (k == index_.tensors.end()) return nullptr;
  const auto t = k->second.find(name);
  return t == k->second.end() ? nullptr : &t->second;
}

base::Status CheckpointReader::read_bytes(const std::string& file, int64_t offset, void* dst,
                                          int64_t n) const {
  const std::string path = dir_ + "/" + file;
  const auto it = files_.find(file);
  if (it == files_.end()) return base::Status::BadInput(path + ": not listed in index.json");
  char* p = static_cast<char*>(dst);
  while (n > 0) {
    const ssize_t got = ::pread(it->second.get(), p, static_cast<size_t>(n), offset);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return base::Status::IOError(path + ": read: " + std::strerror(errno));
    if (got == 0) return base::Status::BadInput(path + ": truncated (read past its end)");
    p += got;
    n -= got;
    offset += got;
  }
  return base::Status::Ok();
}

base::StatusOr<std::vector<float>> CheckpointReader::read_fp32(const std::string& name,
                                                               const std::string& kind) const {
  const checkpoint::TensorEntry* t = find(name, kind);
  if (t == nullptr) {
    return base::Status::BadInput(dir_ + "/" + checkpoint::kIndexFile + ": has no " + kind + " " +
                                  name);
  }
  std::vector<float> out(static_cast<size_t>(shape_numel(t->shape)));
  std::vector<uint16_t> narrow;
  // validate_index guarantees the pieces tile [0, numel) and lie inside their files.
  for (const checkpoint::Piece& p : t->pieces) {
    float* dst = out.data() + p.offset;
    if (t->dtype == "fp32") {
      RETURN_IF_ERROR(read_bytes(p.file, p.byte_offset, dst, p.numel * 4));
      continue;
    }
    narrow.resize(static_cast<size_t>(p.numel));
    RETURN_IF_ERROR(read_bytes(p.file, p.byte_offset, narrow.data(), p.numel * 2));
    if (t->dtype == "bf16") {
      hf::bf16_to_fp32(narrow.data(), dst, narrow.size());
    } else {
      hf::fp16_to_fp32(narrow.data(), dst, narrow.size());
    }
  }
  return out;
}

}  // namespace dstrain::runtime::exporter
