#pragma once
// Command-line parsing (Boost.Program_options). Torch-free: it only turns argv into a Command.
#include <string>
#include <vector>

#include "base/status.h"

namespace dstrain::launch {

enum class CommandKind { kTrain, kPlan, kPrepare, kBench, kInspect, kExport, kHelp, kVersion };

struct Command {
  CommandKind kind = CommandKind::kTrain;
  std::string config_path;
  std::vector<std::string> overrides;  // --set KEY=VALUE
  std::string resume = "auto";         // auto | never | PATH
  // plan
  int world = 0;  // 0: the launcher's world size
  bool json = false;
  double gpu_mem_gib = -1;   // per GPU; < 0: not checked
  double host_mem_gib = -1;  // per node; < 0: this machine's
  double nvme_gib = -1;      // free per node; < 0: free space under offload.nvme_dir
  int ranks_per_node = 0;    // 0: every rank on one node
  std::string hf_dir;        // plan from a Hugging Face model directory's config.json
  // prepare
  std::vector<std::string> inputs;
  std::string output;
  std::string prepare_format = "text";  // text | sft
  std::string tokenizer = "byte";       // tokenizer.json, tokenizer.model, a HF directory, or byte
  std::string chat_template;            // --format chat: llama3 | chatml | deepseek
  int workers = 0;                      // 0: one per hardware thread
  // inspect, export
  std::string checkpoint_dir;
  // export
  std::string export_format;  // hf | peft
  std::string out_dir;
  std::string export_dtype;  // fp32 | bf16 | fp16; empty: hf -> train.dtype, peft -> fp32
  int64_t max_shard_bytes = 5'000'000'000;  // --max-shard-size, transformers' default "5GB"
  bool merge = true;                        // hf of a LoRA run: fold the adapters into the base
  bool force = false;                       // replace a non-empty --out
  // bench
  std::string bench_what;  // comm | aio | adam | kernels
  std::vector<int64_t> bench_sizes_mib;
  int bench_iters = 10;
  std::string bench_device = "auto";  // auto | cpu | cuda, as run.device (launch/device.h)
  // bench aio
  std::string bench_file = "dstrain-bench-aio.dat";  // created, measured, removed
  int64_t bench_file_mib = 1024;
  std::vector<int64_t> bench_block_kib;  // empty: the benchmark's defaults
  std::vector<int64_t> bench_queue_depths;
  // bench adam
  int64_t bench_params = 64'000'000;
  int bench_threads = 0;  // 0: every hardware thread
  std::string help_text;  // filled for kHelp
};

// Parses argv. Usage errors are kInvalidArgument with a message that ends in a hint to --help.
base::StatusOr<Command> parse_command_line(int argc, const char* const* argv);

// "5GB" (10^9), "500MiB" (2^20), "1000000" (bytes): B, KB, MB, GB, TB and KiB, MiB, GiB, TiB,
// case-insensitive. kInvalidArgument unless positive and whole.
base::StatusOr<int64_t> parse_byte_size(const std::string& text);

}  // namespace dstrain::launch
