#include "launch/cli.h"

#include <boost/program_options.hpp>

#include <cctype>
#include <cstdint>
#include <sstream>
#include <utility>

namespace dstrain::launch {
namespace po = boost::program_options;
namespace {

constexpr const char* kUsage =
    "usage: dstrain [train] --config FILE [--set KEY=VALUE]... [--resume auto|never|PATH]\n"
    "       dstrain plan    --config FILE | --hf-dir DIR [--world N] [--gpu-mem GiB] [--host-mem "
    "GiB]\n"
    "                       [--nvme GiB] [--ranks-per-node N] [--json] [--set KEY=VALUE]...\n"
    "       dstrain prepare --input FILE... --output FILE [--format text|sft|chat] [--tokenizer "
    "PATH|byte]\n"
    "                       [--chat-template llama3|chatml|deepseek]\n"
    "                       [--workers N]\n"
    "       dstrain inspect --checkpoint DIR\n"
    "       dstrain export  --checkpoint DIR --format hf|peft --out DIR [--dtype fp32|bf16|fp16]\n"
    "                       [--max-shard-size 5GB] [--merge true|false] [--force]\n"
    "       dstrain bench   comm [--device auto|cpu|cuda] [--sizes-mib N...] [--iters N]\n"
    "       dstrain bench   aio [--file PATH] [--file-mib N] [--block-kib N...] [--queue-depth "
    "N...]\n"
    "       dstrain bench   adam [--params N] [--threads N] [--iters N]\n"
    "       dstrain bench   kernels [--params N] [--iters N]\n"
    "       dstrain --help | --version\n"
    "Run under MPI for several ranks: mpirun -np 32 dstrain --config lora.toml\n";

po::options_description config_options() {
  po::options_description d("train and plan");
  d.add_options()("config,c", po::value<std::string>(), "TOML config file (docs/config.md)")(
      "set", po::value<std::vector<std::string>>()->composing(),
      "override a config key: KEY=VALUE")(
      "resume", po::value<std::string>()->default_value("auto"),
      "auto: continue from the newest complete checkpoint if any; never; or a checkpoint PATH");
  return d;
}

po::options_description plan_options() {
  po::options_description d("plan");
  d.add_options()("world", po::value<int>()->default_value(0), "ranks to plan for (default: 1)")(
      "gpu-mem", po::value<double>(),
      "GiB of memory per GPU to check against (default: not checked)")(
      "host-mem", po::value<double>(), "GiB of host memory per node (default: this machine's)")(
      "nvme", po::value<double>(),
      "GiB free for offload.nvme_dir per node (default: free there now)")(
      "ranks-per-node", po::value<int>(), "ranks (GPUs) per node (default: all on one node)")(
      "hf-dir", po::value<std::string>(),
      "plan for a Hugging Face model directory (its config.json)")("json", po::bool_switch(),
                                                                   "print JSON instead of a table");
  return d;
}

po::options_description prepare_options() {
  po::options_description d("prepare");
  d.add_options()("input,i", po::value<std::vector<std::string>>()->multitoken(),
                  "text or JSONL files")("output,o", po::value<std::string>(),
                                         "token file to write (.dstok)")(
      "format", po::value<std::string>()->default_value("text"),
      "text: one document per file; sft: JSONL with prompt and completion; chat: JSONL "
      "conversations rendered with --chat-template")("chat-template", po::value<std::string>(),
                                                     "chat: llama3, chatml or deepseek")(
      "tokenizer", po::value<std::string>()->default_value("byte"),
      "tokenizer.json, tokenizer.model, a Hugging Face model directory, or byte (built-in)")(
      "workers", po::value<int>()->default_value(0),
      "worker threads, each with its own tokenizer (0: one per hardware thread)");
  return d;
}

po::options_description inspect_options() {
  po::options_description d("inspect and export");
  d.add_options()("checkpoint", po::value<std::string>(),
                  "checkpoint directory (<run.dir>/checkpoints/step-NNNNNNNN); export also takes a "
                  "run or checkpoints directory (its `latest`)");
  return d;
}

po::options_description export_options() {
  po::options_description d("export");
  d.add_options()("format", po::value<std::string>(),
                  "hf: a transformers model directory (LoRA merged in); peft: the LoRA adapter")(
      "out", po::value<std::string>(), "directory to write (written as DIR.tmp, then renamed)")(
      "dtype", po::value<std::string>(),
      "fp32 | bf16 | fp16 (default: train.dtype for hf, fp32 for peft)")(
      "max-shard-size", po::value<std::string>()->default_value("5GB"),
      "largest safetensors file of --format hf (5GB, 500MB, 2GiB, bytes)")(
      "merge", po::value<bool>()->default_value(true, "true"),
      "hf of a LoRA run: fold the adapters in; false writes the frozen base alone")(
      "force", po::bool_switch(), "replace a non-empty --out");
  return d;
}

po::options_description bench_options() {
  po::options_description d("bench");
  d.add_options()("device", po::value<std::string>()->default_value("auto"),
                  "auto: NCCL on GPUs when visible, else MPI on the CPU; cpu; cuda")(
      "sizes-mib", po::value<std::vector<int64_t>>()->multitoken(),
      "message sizes in MiB (default 1 4 16 64 on the CPU, 1 4 ... 1024 on GPUs)")(
      "iters", po::value<int>()->default_value(10), "timed iterations per size")(
      "file", po::value<std::string>(), "aio: the file to measure (created, then removed)")(
      "file-mib", po::value<int64_t>(), "aio: its size in MiB (default 1024)")(
      "block-kib", po::value<std::vector<int64_t>>()->multitoken(), "aio: block sizes in KiB")(
      "queue-depth", po::value<std::vector<int64_t>>()->multitoken(), "aio: queue depths")(
      "params", po::value<int64_t>(),
      "adam, kernels: parameters updated per iteration (default 64000000)")(
      "threads", po::value<int>(), "adam: threads of dstrain's CPU AdamW (default: all)");
  return d;
}

std::string help_text() {
  std::ostringstream os;
  po::options_description all;
  all.add(config_options())
      .add(plan_options())
      .add(prepare_options())
      .add(inspect_options())
      .add(export_options())
      .add(bench_options());
  os << kUsage << "\n" << all;
  return os.str();
}

base::Status usage_error(const std::string& what) {
  return base::Status::InvalidArgument(what + " (dstrain --help shows the usage)");
}

}  // namespace

base::StatusOr<Command> parse_command_line(int argc, const char* const* argv) {
  Command cmd;
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h" || args[0] == "help")) {
    cmd.kind = CommandKind::kHelp;
    cmd.help_text = help_text();
    return cmd;
  }
  if (!args.empty() && args[0] == "--version") {
    cmd.kind = CommandKind::kVersion;
    return cmd;
  }
  if (!args.empty() && args[0].rfind("-", 0) != 0) {
    const std::string sub = args[0];
    if (sub == "train")
      cmd.kind = CommandKind::kTrain;
    else if (sub == "plan")
      cmd.kind = CommandKind::kPlan;
    else if (sub == "prepare")
      cmd.kind = CommandKind::kPrepare;
    else if (sub == "bench")
      cmd.kind = CommandKind::kBench;
    else if (sub == "inspect")
      cmd.kind = CommandKind::kInspect;
    else if (sub == "export")
      cmd.kind = CommandKind::kExport;
    else
      return usage_error("unknown command '" + sub + "'");
    args.erase(args.begin());
  }
  if (cmd.kind == CommandKind::kBench) {
    if (args.empty() || args[0].rfind("-", 0) == 0)
      return usage_error("bench: name what to measure (comm, aio, adam, kernels)");
    cmd.bench_what = args[0];
    args.erase(args.begin());
    if (cmd.bench_what != "comm" && cmd.bench_what != "aio" && cmd.bench_what != "adam" &&
        cmd.bench_what != "kernels")
      return usage_error("bench: unknown benchmark '" + cmd.bench_what + "'");
  }

  po::options_description desc;
  desc.add_options()("help,h", "show usage");
  switch (cmd.kind) {
    case CommandKind::kTrain:
      desc.add(config_options());
      break;
    case CommandKind::kPlan:
      desc.add(config_options()).add(plan_options());
      break;
    case CommandKind::kPrepare:
      desc.add(prepare_options());
      break;
    case CommandKind::kBench:
      desc.add(bench_options());
      break;
    case CommandKind::kInspect:
      desc.add(inspect_options());
      break;
    case CommandKind::kExport:
      desc.add(inspect_options()).add(export_options());
      break;
    default:
      break;
  }
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(desc).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    return usage_error(e.what());
  }
  if (vm.count("help")) {
    cmd.kind = CommandKind::kHelp;
    cmd.help_text = help_text();
    return cmd;
  }
  if (vm.count("config")) cmd.config_path = vm["config"].as<std::string>();
  if (vm.count("set")) cmd.overrides = vm["set"].as<std::vector<std::string>>();
  if (vm.count("resume")) cmd.resume = vm["resume"].as<std::string>();
  if (vm.count("world")) cmd.world = vm["world"].as<int>();
  if (vm.count("json")) cmd.json = vm["json"].as<bool>();
  if (vm.count("gpu-mem")) cmd.gpu_mem_gib = vm["gpu-mem"].as<double>();
  if (vm.count("host-mem")) cmd.host_mem_gib = vm["host-mem"].as<double>();
  if (vm.count("nvme")) cmd.nvme_gib = vm["nvme"].as<double>();
  if (vm.count("ranks-per-node")) cmd.ranks_per_node = vm["ranks-per-node"].as<int>();
  if (vm.count("hf-dir")) cmd.hf_dir = vm["hf-dir"].as<std::string>();
  if (vm.count("input")) cmd.inputs = vm["input"].as<std::vector<std::string>>();
  if (vm.count("output")) cmd.output = vm["output"].as<std::string>();
  if (vm.count("tokenizer")) cmd.tokenizer = vm["tokenizer"].as<std::string>();
  if (vm.count("chat-template")) cmd.chat_template = vm["chat-template"].as<std::string>();
  if (vm.count("workers")) cmd.workers = vm["workers"].as<int>();
  if (vm.count("format")) {
    (cmd.kind == CommandKind::kExport ? cmd.export_format : cmd.prepare_format) =
        vm["format"].as<std::string>();
  }
  if (vm.count("sizes-mib")) cmd.bench_sizes_mib = vm["sizes-mib"].as<std::vector<int64_t>>();
  if (vm.count("iters")) cmd.bench_iters = vm["iters"].as<int>();
  if (vm.count("device")) cmd.bench_device = vm["device"].as<std::string>();
  if (vm.count("file")) cmd.bench_file = vm["file"].as<std::string>();
  if (vm.count("file-mib")) cmd.bench_file_mib = vm["file-mib"].as<int64_t>();
  if (vm.count("block-kib")) cmd.bench_block_kib = vm["block-kib"].as<std::vector<int64_t>>();
  if (vm.count("queue-depth"))
    cmd.bench_queue_depths = vm["queue-depth"].as<std::vector<int64_t>>();
  if (vm.count("params")) cmd.bench_params = vm["params"].as<int64_t>();
  if (vm.count("threads")) cmd.bench_threads = vm["threads"].as<int>();
  if (vm.count("checkpoint")) cmd.checkpoint_dir = vm["checkpoint"].as<std::string>();
  if (vm.count("out")) cmd.out_dir = vm["out"].as<std::string>();
  if (vm.count("dtype")) cmd.export_dtype = vm["dtype"].as<std::string>();
  if (vm.count("merge")) cmd.merge = vm["merge"].as<bool>();
  if (vm.count("force")) cmd.force = vm["force"].as<bool>();
  if (vm.count("max-shard-size")) {
    auto bytes = parse_byte_size(vm["max-shard-size"].as<std::string>());
    if (!bytes.ok()) return usage_error("--max-shard-size: " + bytes.status().message());
    cmd.max_shard_bytes = *bytes;
  }

  if ((cmd.kind == CommandKind::kTrain || cmd.kind == CommandKind::kPlan) &&
      cmd.config_path.empty() && !(cmd.kind == CommandKind::kPlan && !cmd.hf_dir.empty())) {
    return usage_error(cmd.kind == CommandKind::kPlan
                           ? "plan: --config FILE or --hf-dir DIR is required"
                           : "--config FILE is required");
  }
  if (cmd.kind == CommandKind::kPlan) {
    const std::pair<const char*, double> sizes[] = {
        {"gpu-mem", cmd.gpu_mem_gib}, {"host-mem", cmd.host_mem_gib}, {"nvme", cmd.nvme_gib}};
    for (const auto& [name, gib] : sizes) {
      if (vm.count(name) && !(gib >= 0))
        return usage_error(std::string("plan: --") + name + " must be >= 0 GiB");
    }
    if (cmd.ranks_per_node < 0) return usage_error("plan: --ranks-per-node must be >= 1");
  }
  if (cmd.kind == CommandKind::kPrepare) {
    if (cmd.inputs.empty() || cmd.output.empty())
      return usage_error("prepare: --input and --output are required");
    if (cmd.workers < 0)
      return usage_error("prepare: --workers must be >= 0, got " + std::to_string(cmd.workers));
    if (cmd.prepare_format != "text" && cmd.prepare_format != "sft" &&
        cmd.prepare_format != "chat") {
      return usage_error("prepare: --format must be text, sft or chat, got '" + cmd.prepare_format +
                         "'");
    }
    if ((cmd.prepare_format == "chat") != !cmd.chat_template.empty()) {
      return usage_error(
          "prepare: --chat-template is required with --format chat and only "
          "allowed with it, got --format " +
          cmd.prepare_format +
          (cmd.chat_template.empty() ? "" : " --chat-template " + cmd.chat_template));
    }
  }
  if (cmd.kind == CommandKind::kInspect && cmd.checkpoint_dir.empty()) {
    return usage_error("inspect: --checkpoint DIR is required");
  }
  if (cmd.kind == CommandKind::kExport) {
    if (cmd.checkpoint_dir.empty() || cmd.out_dir.empty()) {
      return usage_error("export: --checkpoint DIR and --out DIR are required");
    }
    if (cmd.export_format.empty()) return usage_error("export: --format hf|peft is required");
    if (cmd.export_format != "hf" && cmd.export_format != "peft") {
      return usage_error("export: --format must be hf or peft, got '" + cmd.export_format + "'");
    }
    if (!cmd.export_dtype.empty() && cmd.export_dtype != "fp32" && cmd.export_dtype != "bf16" &&
        cmd.export_dtype != "fp16") {
      return usage_error("export: --dtype must be fp32, bf16 or fp16, got '" + cmd.export_dtype +
                         "'");
    }
  }
  if (cmd.world < 0) return usage_error("--world must be >= 1");
  if (cmd.bench_iters < 1) return usage_error("--iters must be >= 1");
  if (cmd.bench_device != "auto" && cmd.bench_device != "cpu" && cmd.bench_device != "cuda") {
    return usage_error("bench: --device must be auto, cpu or cuda, got '" + cmd.bench_device + "'");
  }
  for (int64_t mib : cmd.bench_sizes_mib) {
    if (mib < 1 || mib > (int64_t{1} << 20)) {
      return usage_error("bench: --sizes-mib takes sizes from 1 to 1048576, got " +
                         std::to_string(mib));
    }
  }
  if (cmd.bench_file_mib < 1) return usage_error("bench aio: --file-mib must be >= 1");
  for (int64_t kib : cmd.bench_block_kib) {
    if (kib < 4 || kib % 4 != 0 || kib > 65536) {
      return usage_error("bench aio: --block-kib takes multiples of 4 from 4 to 65536, got " +
                         std::to_string(kib));
    }
  }
  for (int64_t qd : cmd.bench_queue_depths) {
    if (qd < 1 || qd > 4096) {
      return usage_error("bench aio: --queue-depth takes 1 to 4096, got " + std::to_string(qd));
    }
  }
  if (cmd.bench_params < 1) return usage_error("bench adam: --params must be >= 1");
  if (cmd.bench_threads < 0) return usage_error("bench adam: --threads must be >= 0");
  return cmd;
}

base::StatusOr<int64_t> parse_byte_size(const std::string& text) {
  struct Unit {
    const char* suffix;
    int64_t scale;
  };
  // Longest suffixes first, so "MiB" is not read as "B".
  constexpr Unit kUnits[] = {{"kib", int64_t{1} << 10},
                             {"mib", int64_t{1} << 20},
                             {"gib", int64_t{1} << 30},
                             {"tib", int64_t{1} << 40},
                             {"kb", 1000},
                             {"mb", 1000 * 1000},
                             {"gb", 1000 * 1000 * 1000},
                             {"tb", int64_t{1000} * 1000 * 1000 * 1000},
                             {"b", 1}};
  std::string lower;
  for (char c : text) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  int64_t scale = 1;
  for (const Unit& u : kUnits) {
    const std::string suffix = u.suffix;
    if (lower.size() > suffix.size() &&
        lower.compare(lower.size() - suffix.size(), suffix.size(), suffix) == 0) {
      lower.resize(lower.size() - suffix.size());
      scale = u.scale;
      break;
    }
  }
  const auto bad = [&] {
    return base::Status::InvalidArgument("'" + text +
                                         "' is not a size (5GB, 500MB, 2GiB or bytes)");
  };
  if (lower.empty() || lower.size() > 15 ||
      lower.find_first_not_of("0123456789") != std::string::npos) {
    return bad();
  }
  const int64_t n = std::stoll(lower);
  if (n < 1 || n > INT64_MAX / scale) return bad();
  return n * scale;
}

}  // namespace dstrain::launch
