#pragma once
// Command-line parsing (Boost.Program_options). Torch-free: it only turns argv into a Command.
#include <string>
#include <vector>

#include "base/status.h"

namespace dstrain::launch {

enum class CommandKind { kTrain, kPlan, kPrepare, kBench, kInspect, kHelp, kVersion };

struct Command {
  CommandKind kind = CommandKind::kTrain;
  std::string config_path;
  std::vector<std::string> overrides;  // --set KEY=VALUE
  std::string resume = "auto";         // auto | never | PATH
  // plan
  int world = 0;                       // 0: the launcher's world size
  bool json = false;
  // prepare
  std::vector<std::string> inputs;
  std::string output;
  std::string prepare_format = "text";  // text | sft
  // inspect
  std::string checkpoint_dir;
  // bench
  std::string bench_what;              // comm
  std::vector<int64_t> bench_sizes_mib;
  int bench_iters = 10;
  std::string help_text;               // filled for kHelp
};

// Parses argv. Usage errors are kInvalidArgument with a message that ends in a hint to --help.
base::StatusOr<Command> parse_command_line(int argc, const char* const* argv);

}  // namespace dstrain::launch
