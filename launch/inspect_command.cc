// dstrain inspect --checkpoint DIR: what a checkpoint holds, and whether its files are intact.
#include <cstdio>
#include <string>

#include "launch/commands.h"
#include "runtime/checkpoint/index.h"

namespace dstrain::launch {
namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

base::Status run_inspect(const Command& cmd) {
  namespace ck = runtime::checkpoint;
  std::string dir = cmd.checkpoint_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  ASSIGN_OR_RETURN(ck::CheckpointIndex index, ck::read_index(dir));
  std::printf("checkpoint %s\n", dir.c_str());
  std::printf("  step %lld, world size %d, zero stage %lld, dtype %s, seed %lld, dstrain %s\n",
              static_cast<long long>(index.step), index.world_size,
              static_cast<long long>(index.zero_stage), index.dtype.c_str(),
              static_cast<long long>(index.seed), index.dstrain_version.c_str());
  std::printf("  optimizer step %.0f, loss scale %g\n", index.adam_step, index.loss_scale);
  int64_t total_bytes = 0;
  for (const auto& [kind, by_name] : index.tensors) {
    int64_t elements = 0;
    for (const auto& [name, t] : by_name) elements += numel(t.shape);
    std::printf("%s: %zu tensors, %lld elements\n", kind.c_str(), by_name.size(),
                static_cast<long long>(elements));
    for (const auto& [name, t] : by_name) {
      const int64_t bytes = numel(t.shape) * ck::dtype_bytes(t.dtype);
      std::printf("  %-48s %-16s %s %lld bytes in %zu piece(s)\n", name.c_str(),
                  shape_text(t.shape).c_str(), t.dtype.c_str(), static_cast<long long>(bytes),
                  t.pieces.size());
    }
  }
  for (const ck::FileEntry& f : index.files) total_bytes += f.size;
  std::printf("files: %zu, %lld bytes\n", index.files.size(), static_cast<long long>(total_bytes));
  RETURN_IF_ERROR(ck::verify_files(dir, index));
  std::printf("checksums: ok\n");
  return base::Status::Ok();
}

}  // namespace dstrain::launch
