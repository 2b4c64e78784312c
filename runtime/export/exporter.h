#pragma once
// `dstrain export`: a committed checkpoint of any world size and stage -> a Hugging Face model
// directory (--format hf) or a PEFT adapter (--format peft), on one host process, one tensor at a
// time (peak host memory: one output shard plus the fp32 copy of the tensor being converted).
//
// The output appears atomically: everything is written under OUT.tmp/ (each file fsynced), which
// is then renamed to OUT. An existing non-empty OUT is replaced only with `force`.
#include <cstdint>
#include <string>
#include <vector>

#include "base/config.h"
#include "base/status.h"
#include "runtime/export/checkpoint_reader.h"

// The namespace is not `export`, a C++ keyword.
namespace dstrain::runtime::exporter {

enum class ExportFormat { kHf, kPeft };

inline constexpr int64_t kDefaultMaxShardBytes = 5'000'000'000;  // transformers' "5GB"

struct ExportOptions {
  ExportFormat format = ExportFormat::kHf;
  std::string out_dir;
  std::string dtype;  // fp32 | bf16 | fp16; empty: train.dtype for hf, fp32 for peft
  int64_t max_shard_bytes = kDefaultMaxShardBytes;
  bool merge = true;   // hf of a LoRA run: fold the adapters in (false: the frozen base alone)
  bool force = false;  // replace a non-empty out_dir
};

struct ExportSummary {
  std::string out_dir;
  std::vector<std::string> files;  // names written into out_dir
  int64_t tensors = 0;
  int64_t tensor_bytes = 0;
  bool merged = false;  // hf: adapters were folded into the base weights
};

// kInvalidArgument when `out_dir` exists and is not an empty directory (unless `force`, which
// still refuses a non-directory).
base::Status check_output_dir(const std::string& out_dir, bool force);

// Exports the checkpoint `reader` opened; `cfg` is its config snapshot (index.json "config",
// parsed). --format peft of a run without LoRA, an out_dir that holds the checkpoint, and a
// model transformers cannot express are kInvalidArgument; a checkpoint that does not match its
// config, or an unreadable model.hf_dir, kBadInput.
base::StatusOr<ExportSummary> export_checkpoint(const CheckpointReader& reader,
                                                const base::Config& cfg,
                                                const ExportOptions& options);

// Contiguous groups of tensor indices, in order, each within `max_bytes` unless one tensor alone
// is larger (it then gets a shard of its own), as transformers shards a state dict.
std::vector<std::vector<size_t>> plan_shards(const std::vector<int64_t>& bytes, int64_t max_bytes);

}  // namespace dstrain::runtime::exporter
