#include "runtime/export/exporter.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "base/fs.h"
#include "runtime/checkpoint/file_io.h"
#include "runtime/export/export_json.h"
#include "runtime/export/lora_merge.h"
#include "runtime/export/model_plan.h"
#include "runtime/hf/float16.h"
#include "runtime/hf/json_file.h"
#include "runtime/hf/safetensors.h"

namespace dstrain::runtime::exporter {
namespace {

using nlohmann::json;

// Tokenizer and generation files of a Hugging Face model directory, copied from model.hf_dir
// when present so the export loads with AutoTokenizer as the base did.
constexpr const char* kCopiedBaseFiles[] = {
    "tokenizer.json",  "tokenizer_config.json",  "special_tokens_map.json",
    "tokenizer.model", "generation_config.json", "vocab.json",
    "merges.txt",      "added_tokens.json",      "chat_template.jinja"};

std::string safetensors_dtype(const std::string& dtype) {
  if (dtype == "bf16") return "BF16";
  if (dtype == "fp16") return "F16";
  return "F32";
}

// One output tensor, encoded in the export dtype; owns its bytes until its shard is written.
struct EncodedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<char> bytes;
};

EncodedTensor encode(const PlannedTensor& t, const std::string& name, const std::vector<float>& v,
                     const std::string& dtype) {
  EncodedTensor e{name, t.shape, {}};
  if (dtype == "fp32") {
    e.bytes.resize(v.size() * sizeof(float));
    std::memcpy(e.bytes.data(), v.data(), e.bytes.size());
    return e;
  }
  e.bytes.resize(v.size() * sizeof(uint16_t));
  auto* dst = reinterpret_cast<uint16_t*>(e.bytes.data());
  if (dtype == "bf16") {
    hf::fp32_to_bf16(v.data(), dst, v.size());
  } else {
    hf::fp32_to_fp16(v.data(), dst, v.size());
  }
  return e;
}

base::Status write_tensors(const std::string& path, const std::vector<EncodedTensor>& tensors,
                           const std::string& dtype) {
  std::vector<hf::TensorData> data;
  data.reserve(tensors.size());
  for (const EncodedTensor& e : tensors) {
    data.push_back({e.name, safetensors_dtype(dtype), e.shape, e.bytes.data(), e.bytes.size()});
  }
  // transformers checks this metadata when it loads a safetensors file.
  return hf::write_safetensors(path, data, {{"format", "pt"}});
}

base::Status write_json(const std::string& path, const json& j) {
  checkpoint::PosixIo io;
  return checkpoint::write_file(io, path, j.dump(2) + "\n");
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

// The real path of `path`, or of its nearest existing ancestor with the rest appended, so a
// directory yet to be created compares correctly with one that exists.
std::string canonical(const std::string& path) {
  char buf[PATH_MAX];
  if (::realpath(path.c_str(), buf) != nullptr) return buf;
  const size_t slash = path.find_last_of('/');
  if (path == "." || slash == 0) return path;
  if (slash == std::string::npos) return canonical(".") + "/" + path;
  return canonical(path.substr(0, slash)) + path.substr(slash);
}

bool is_within(const std::string& inner, const std::string& outer) {
  return inner == outer ||
         (inner.size() > outer.size() && inner.compare(0, outer.size(), outer) == 0 &&
          inner[outer.size()] == '/');
}

// Copies the base's tokenizer and generation files that exist into `dir`.
base::Status copy_base_files(const std::string& hf_dir, const std::string& dir,
                             ExportSummary& summary) {
  if (hf_dir.empty()) return base::Status::Ok();
  checkpoint::PosixIo io;
  for (const char* name : kCopiedBaseFiles) {
    const std::string src = hf::join_path(hf_dir, name);
    if (!exists(src)) continue;
    ASSIGN_OR_RETURN(const std::string bytes, checkpoint::read_text_file(src));
    RETURN_IF_ERROR(checkpoint::write_file(io, dir + "/" + name, bytes));
    summary.files.push_back(name);
  }
  return base::Status::Ok();
}

// The export's base weights, with the adapters folded in when `merge`.
class WeightSource {
 public:
  WeightSource(const CheckpointReader& reader, const ModelPlan& plan, bool merge)
      : reader_(reader), plan_(plan) {
    if (!merge) return;
    for (const PlannedAdapter& a : plan.adapters) adapters_[a.base] = &a;
  }

  base::StatusOr<std::vector<float>> read(const PlannedTensor& t) const {
    ASSIGN_OR_RETURN(std::vector<float> w, reader_.read_fp32(t.name));
    const auto it = adapters_.find(t.name);
    if (it == adapters_.end()) return w;
    const PlannedAdapter& a = *it->second;
    ASSIGN_OR_RETURN(const std::vector<float> la, reader_.read_fp32(a.a.name));
    ASSIGN_OR_RETURN(const std::vector<float> lb, reader_.read_fp32(a.b.name));
    RETURN_IF_ERROR(merge_lora(w.data(), la.data(), lb.data(), t.shape[0], t.shape[1], a.a.shape[0],
                               plan_.lora_scale));
    return w;
  }

 private:
  const CheckpointReader& reader_;
  const ModelPlan& plan_;
  std::map<std::string, const PlannedAdapter*> adapters_;  // base weight name -> its adapter
};

base::Status write_hf(const CheckpointReader& reader, const base::Config& cfg,
                      const ModelPlan& plan, const ExportOptions& options, const std::string& dtype,
                      const std::string& dir, ExportSummary& summary) {
  json base_config;  // null unless the run started from a Hugging Face checkpoint
  if (!plan.model.hf_dir.empty()) {
    ASSIGN_OR_RETURN(base_config, hf::read_config_json(plan.model.hf_dir));
  }
  ASSIGN_OR_RETURN(const json config, hf_config_json(plan.model, base_config, dtype));

  summary.merged = options.merge && !plan.adapters.empty();
  const WeightSource source(reader, plan, summary.merged);
  const int64_t elem = checkpoint::dtype_bytes(dtype);
  std::vector<int64_t> bytes;
  for (const PlannedTensor& t : plan.weights) bytes.push_back(t.numel() * elem);
  const std::vector<std::vector<size_t>> shards = plan_shards(bytes, options.max_shard_bytes);

  json weight_map = json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    const std::string file = shards.size() == 1 ? "model.safetensors" : name;
    std::vector<EncodedTensor> encoded;
    for (size_t i : shards[s]) {
      const PlannedTensor& t = plan.weights[i];
      ASSIGN_OR_RETURN(const std::vector<float> w, source.read(t));
      encoded.push_back(encode(t, t.name, w, dtype));
      weight_map[t.name] = file;
      summary.tensor_bytes += bytes[i];
      ++summary.tensors;
    }
    RETURN_IF_ERROR(write_tensors(dir + "/" + file, encoded, dtype));
    summary.files.push_back(file);
  }
  if (shards.size() > 1) {
    const json index = {{"metadata", {{"total_size", summary.tensor_bytes}}},
                        {"weight_map", weight_map}};
    RETURN_IF_ERROR(write_json(dir + "/model.safetensors.index.json", index));
    summary.files.push_back("model.safetensors.index.json");
  }
  RETURN_IF_ERROR(write_json(dir + "/config.json", config));
  summary.files.push_back("config.json");
  return copy_base_files(cfg.model.hf_dir, dir, summary);
}

base::Status write_peft(const CheckpointReader& reader, const base::Config& cfg,
                        const ModelPlan& plan, const std::string& dtype, const std::string& dir,
                        ExportSummary& summary) {
  std::vector<EncodedTensor> encoded;
  std::vector<std::string> modules;
  for (const PlannedAdapter& a : plan.adapters) {
    for (const PlannedTensor* t : {&a.a, &a.b}) {
      ASSIGN_OR_RETURN(const std::vector<float> v, reader.read_fp32(t->name));
      // PEFT's saved layout: the wrapped model's path under base_model.model., no adapter name.
      encoded.push_back(encode(*t, "base_model.model." + t->name, v, dtype));
      summary.tensor_bytes += static_cast<int64_t>(encoded.back().bytes.size());
      ++summary.tensors;
    }
    if (std::find(modules.begin(), modules.end(), a.module) == modules.end()) {
      modules.push_back(a.module);
    }
  }
  RETURN_IF_ERROR(write_tensors(dir + "/adapter_model.safetensors", encoded, dtype));
  summary.files.push_back("adapter_model.safetensors");
  RETURN_IF_ERROR(write_json(dir + "/adapter_config.json",
                             adapter_config_json(cfg.lora, modules, cfg.model.hf_dir)));
  summary.files.push_back("adapter_config.json");
  return copy_base_files(cfg.model.hf_dir, dir, summary);
}

}  // namespace

std::vector<std::vector<size_t>> plan_shards(const std::vector<int64_t>& bytes, int64_t max_bytes) {
  std::vector<std::vector<size_t>> shards;
  int64_t current = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (shards.empty() || (current > 0 && current + bytes[i] > max_bytes)) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(i);
    current += bytes[i];
  }
  return shards;
}

base::Status check_output_dir(const std::string& out_dir, bool force) {
  struct stat st {};
  if (::stat(out_dir.c_str(), &st) != 0) return base::Status::Ok();
  if (!S_ISDIR(st.st_mode)) {
    return base::Status::InvalidArgument("--out " + out_dir + " exists and is not a directory");
  }
  DIR* d = ::opendir(out_dir.c_str());
  if (d == nullptr) {
    return base::Status::InvalidArgument("--out " + out_dir +
                                         ": cannot list: " + std::strerror(errno));
  }
  bool empty = true;
  while (const dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) empty = false;
  }
  ::closedir(d);
  if (!empty && !force) {
    return base::Status::InvalidArgument("--out " + out_dir +
                                         " exists and is not empty (--force replaces it)");
  }
  return base::Status::Ok();
}

base::StatusOr<ExportSummary> export_checkpoint(const CheckpointReader& reader,
                                                const base::Config& cfg,
                                                const ExportOptions& options) {
  std::string out = options.out_dir;
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  RETURN_IF_ERROR(check_output_dir(out, options.force));
  const std::string ckpt = canonical(reader.dir());
  const std::string target = canonical(out);
  if (is_within(ckpt, target) || is_within(target, ckpt)) {
    return base::Status::InvalidArgument("--out " + out + " overlaps the checkpoint " +
                                         reader.dir());
  }
  if (options.format == ExportFormat::kPeft && !cfg.lora.enabled) {
    return base::Status::InvalidArgument(
        "export --format peft needs a LoRA run, and " + reader.dir() +
        " was trained with lora.enabled = false (export it with --format hf)");
  }
  const std::string dtype = !options.dtype.empty()                  ? options.dtype
                            : options.format == ExportFormat::kPeft ? std::string("fp32")
                                                                    : cfg.train.dtype;
  if (checkpoint::dtype_bytes(dtype) == 0) {
    return base::Status::InvalidArgument("--dtype must be fp32, bf16 or fp16, got '" + dtype + "'");
  }
  if (options.max_shard_bytes < 1) {
    return base::Status::InvalidArgument("--max-shard-size must be positive");
  }
  ASSIGN_OR_RETURN(const ModelPlan plan, plan_model(cfg, reader.index(), reader.dir()));

  const std::string tmp = out + ".tmp";
  RETURN_IF_ERROR(base::remove_tree(tmp));
  RETURN_IF_ERROR(base::make_dirs(tmp));
  ExportSummary summary;
  summary.out_dir = out;
  base::Status st = options.format == ExportFormat::kPeft
                        ? write_peft(reader, cfg, plan, dtype, tmp, summary)
                        : write_hf(reader, cfg, plan, options, dtype, tmp, summary);
  if (st.ok()) st = checkpoint::sync_dir(tmp);
  // check_output_dir allowed replacing whatever is at `out`: nothing, an empty dir, or --force.
  if (st.ok()) st = base::remove_tree(out);
  if (st.ok()) st = checkpoint::rename_path(tmp, out);
  if (st.ok()) st = checkpoint::sync_dir(base::parent_dir(out));
  if (!st.ok()) {
    (void)base::remove_tree(tmp);
    return st;
  }
  return summary;
}

}  // namespace dstrain::runtime::exporter
