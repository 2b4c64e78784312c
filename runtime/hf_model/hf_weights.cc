#include "runtime/hf_model/hf_weights.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <vector>

namespace dstrain::runtime::hf_model {
namespace {

// Elements per read: bounds the host staging buffer (64 MiB of fp32) for a large slice.
constexpr int64_t kChunkElements = int64_t{16} << 20;

std::optional<at::ScalarType> scalar_type_of(const std::string& dtype) {
  if (dtype == "F32") return at::kFloat;
  if (dtype == "BF16") return at::kBFloat16;
  if (dtype == "F16") return at::kHalf;
  return std::nullopt;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// LoRA adapters (PEFT's names: "<projection>.lora_A.weight", ".lora_B.weight").
bool is_adapter(const std::string& name) {
  return name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos;
}

base::Status bad_tensor(const hf::TensorRef& ref, const std::string& problem) {
  return base::Status::BadInput(ref.file->path() + ": tensor '" + ref.info->name + "' " + problem);
}

base::Status check_tensor(const hf::TensorRef& ref, const base::ParamSpec& spec) {
  if (!scalar_type_of(ref.info->dtype).has_value()) {
    return bad_tensor(ref, "has dtype " + ref.info->dtype + "; weights must be F32, BF16 or F16");
  }
  if (ref.info->shape != spec.shape) {
    return bad_tensor(ref, "has shape " + shape_string(ref.info->shape) +
                               " but config.json gives " + shape_string(spec.shape));
  }
  return base::Status::Ok();
}

// Reads elements [offset, offset + numel) of `ref` into `dst` (any dtype and device), a chunk at
// a time through a CPU buffer in the file's dtype; copy_ converts.
base::Status read_piece(const hf::TensorRef& ref, int64_t offset, at::Tensor dst) {
  const at::ScalarType file_type = *scalar_type_of(ref.info->dtype);
  const int64_t elem = static_cast<int64_t>(hf::dtype_size(ref.info->dtype));
  const int64_t numel = dst.numel();
  at::Tensor host = at::empty({std::min(numel, kChunkElements)}, at::TensorOptions(file_type));
  for (int64_t done = 0; done < numel; done += kChunkElements) {
    const int64_t count = std::min(kChunkElements, numel - done);
    at::Tensor chunk = host.narrow(0, 0, count);
    RETURN_IF_ERROR(ref.file->read(*ref.info, static_cast<uint64_t>((offset + done) * elem),
                                   static_cast<uint64_t>(count * elem), chunk.data_ptr()));
    dst.narrow(0, done, count).copy_(chunk);
  }
  return base::Status::Ok();
}

}  // namespace

base::Status check_hf_checkpoint(const hf::ShardedCheckpoint& ckpt, const base::UnitList& units) {
  std::set<std::string> known;
  for (const auto& unit : units) {
    for (const base::ParamSpec& spec : unit->schema()) {
      known.insert(spec.name);
      const std::optional<hf::TensorRef> ref = ckpt.find(spec.name);
      if (!ref.has_value()) {
        // HF omits the tied lm_head.weight; a base checkpoint has no adapters.
        if (!spec.tied_to.empty() || is_adapter(spec.name)) continue;
        return ckpt.lookup(spec.name).status();
      }
      RETURN_IF_ERROR(check_tensor(*ref, spec));
    }
  }
  for (const std::string& name : ckpt.names()) {
    if (known.count(name) != 0) continue;
    // Buffers (rotary inv_freq) carry nothing the model needs; an unknown weight means the file
    // describes a different model than config.json does.
    if (ends_with(name, ".weight") || ends_with(name, ".bias")) {
      return bad_tensor(*ckpt.find(name), "is not a parameter of the model config.json describes");
    }
  }
  return base::Status::Ok();
}

base::Status load_hf_weights(const std::string& hf_dir, sharding::Engine& engine) {
  ASSIGN_OR_RETURN(const hf::ShardedCheckpoint ckpt, hf::open_checkpoint_dir(hf_dir));
  RETURN_IF_ERROR(check_hf_checkpoint(ckpt, engine.units()));
  try {
    c10::NoGradGuard no_grad;  // slices are views of engine storage
    for (sharding::StateSlice& slice : engine.state_slices(/*owned_only=*/false)) {
      if (slice.kind != sharding::StateKind::kParam) continue;
      const std::optional<hf::TensorRef> ref = ckpt.find(slice.name);
      if (!ref.has_value()) continue;  // an adapter, checked above: keeps its initialisation
      RETURN_IF_ERROR(read_piece(*ref, slice.offset, slice.data));
    }
  } catch (const std::exception& e) {
    return base::Status::Internal("loading " + hf_dir + ": " + e.what());
  }
  return engine.finish_load();
}

}  // namespace dstrain::runtime::hf_model
