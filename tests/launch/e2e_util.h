#pragma once
// Helpers of the end-to-end tests: run a shell command and collect its output and exit code;
// the dstrain binary under the test mpirun line (DSTRAIN_MPIRUN and DSTRAIN_BINARY are compile
// definitions of each e2e test binary, tests/launch/CMakeLists.txt).
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace dstrain::e2e {

struct RunResult {
  int exit_code = -1;
  std::string output;  // stdout, and stderr too unless run() was told otherwise
};

inline RunResult run(const std::string& command, bool with_stderr = true) {
  RunResult r;
  FILE* pipe = popen((with_stderr ? command + " 2>&1" : command).c_str(), "r");
  if (pipe == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The small CPU model most end-to-end tests train (a config's [run] and [model] sections; more
// [model] keys may follow): 2 layers, hidden 32, grouped-query attention, the byte vocabulary.
inline constexpr char kSmallModelToml[] = R"([run]
device = "cpu"
[model]
vocab_size = 259
hidden_size = 32
intermediate_size = 64
num_layers = 2
num_heads = 4
num_kv_heads = 2
)";

// `mpirun -np RANKS dstrain ARGS` as the tests start it.
inline std::string dstrain(int ranks, const std::string& args) {
  return std::string(DSTRAIN_MPIRUN) + " -np " + std::to_string(ranks) + " " + DSTRAIN_BINARY +
         " " + args;
}

}  // namespace dstrain::e2e
