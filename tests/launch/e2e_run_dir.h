#pragma once
// What the end-to-end tests read back from a run: files, metrics.jsonl, the `latest` checkpoint,
// and the pid of a rank (to kill or stop it). DSTRAIN_BINARY is a compile definition of each e2e
// test binary (tests/launch/CMakeLists.txt).
#include <sys/types.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dstrain::e2e {

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Every line of <run_dir>/metrics.jsonl, event lines included.
inline std::vector<nlohmann::json> metrics(const std::filesystem::path& run_dir) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
  }
  return lines;
}

// The losses logged after the last resume event (all of them when there is none).
inline std::vector<double> losses_since_resume(const std::filesystem::path& run_dir) {
  std::vector<double> out;
  for (const auto& j : metrics(run_dir)) {
    if (j.value("event", "") == "resume") out.clear();
    if (j.contains("loss")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

inline std::string latest_of(const std::filesystem::path& run_dir) {
  std::string latest;
  std::ifstream(run_dir / "checkpoints" / "latest") >> latest;
  return latest;
}

// The pid of the dstrain process of `rank` whose command line names `run_dir` (Open MPI tells
// each process its rank through OMPI_COMM_WORLD_RANK); -1 if none.
inline pid_t find_rank(const std::string& run_dir, int rank) {
  const std::string want = "OMPI_COMM_WORLD_RANK=" + std::to_string(rank);
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string pid = entry.path().filename();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline = read_file(entry.path() / "cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (cmdline.find(DSTRAIN_BINARY) != 0 || cmdline.find(run_dir) == std::string::npos) continue;
    std::string environ = read_file(entry.path() / "environ");
    std::replace(environ.begin(), environ.end(), '\0', '\n');
    if (("\n" + environ).find("\n" + want + "\n") != std::string::npos) return std::stoi(pid);
  }
  return -1;
}

}  // namespace dstrain::e2e
