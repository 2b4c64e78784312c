// `dstrain bench comm` end to end on the CPU: two ranks under mpirun measure the MPI
// communicator; the last line of rank 0's output is JSON with every collective at every size.
// `dstrain bench aio` on a small file, judged the same way.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>
#include "tests/launch/e2e_util.h"

#include <array>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

namespace {

using dstrain::e2e::run;
using dstrain::e2e::RunResult;

using nlohmann::json;

// stdout only: the benchmark's last line there is its JSON; stderr goes to the test's log.
RunResult dstrain(int ranks, const std::string& args) {
  return run(dstrain::e2e::dstrain(ranks, args), /*with_stderr=*/false);
}

std::string last_line(const std::string& text) {
  std::istringstream in(text);
  std::string last;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) last = line;
  }
  return last;
}

TEST(BenchComm, CpuReportsEveryCollectiveAtEverySize) {
  const RunResult r = dstrain(2, "bench comm --device cpu --sizes-mib 1 4 --iters 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json out = json::parse(last_line(r.output), nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(out.is_discarded()) << "last line is not JSON:\n" << r.output;
  EXPECT_EQ(out["bench"], "comm");
  EXPECT_EQ(out["backend"], "mpi");
  EXPECT_EQ(out["device"], "cpu");
  EXPECT_EQ(out["world_size"], 2);
  ASSERT_TRUE(out["results"].is_array());
  std::map<std::string, std::set<int64_t>> seen;  // op -> sizes in MiB
  for (const json& row : out["results"]) {
    const std::string op = row["op"].get<std::string>();
    const int64_t mib = row["mib"].get<int64_t>();
    const double busbw = row["busbw_gbps"].get<double>();
    EXPECT_TRUE(std::isfinite(busbw) && busbw > 0) << op << " " << mib << " MiB: " << busbw;
    EXPECT_GT(row["time_s"].get<double>(), 0) << op;
    EXPECT_EQ(row["bytes"].get<double>(), static_cast<double>(mib << 20)) << op;
    seen[op].insert(mib);
  }
  const std::set<int64_t> sizes = {1, 4};
  EXPECT_EQ(seen, (std::map<std::string, std::set<int64_t>>{
                      {"all_gather", sizes}, {"reduce_scatter", sizes}, {"all_reduce", sizes}}));
}

TEST(BenchComm, UnknownDeviceIsAUsageError) {
  const RunResult r = dstrain(1, "bench comm --device tpu");
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

// `dstrain bench aio` on a small file: one block size, one queue depth. The file is its own
// (created, measured, removed); an existing file is refused and left alone.
std::string aio_file() { return "/tmp/dstrain-bench-aio-e2e-" + std::to_string(getpid()) + ".dat"; }

bool exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

TEST(BenchAio, ReportsWriteAndReadBandwidthAndRemovesItsFile) {
  const std::string file = aio_file();
  const RunResult r = dstrain(
      1, "bench aio --file " + file + " --file-mib 16 --block-kib 1024 --queue-depth 4 --iters 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json out = json::parse(last_line(r.output), nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(out.is_discarded()) << "last line is not JSON:\n" << r.output;
  EXPECT_EQ(out["bench"], "aio");
  EXPECT_EQ(out["file_mib"], 16);
  ASSERT_EQ(out["results"].size(), 1u) << out.dump();
  const json& row = out["results"][0];
  EXPECT_EQ(row["block_kib"], 1024);
  EXPECT_EQ(row["queue_depth"], 4);
  EXPECT_EQ(row["bytes"].get<double>(), 16.0 * (1 << 20));
  for (const char* key : {"write_gbps", "read_gbps"}) {
    const double gbps = row[key].get<double>();
    EXPECT_TRUE(std::isfinite(gbps) && gbps > 0) << key << ": " << gbps;
  }
  EXPECT_FALSE(exists(file));
}

TEST(BenchAio, RefusesAFileThatExists) {
  const std::string file = aio_file();
  FILE* f = std::fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs("keep me", f);
  std::fclose(f);
  const RunResult r = dstrain(1, "bench aio --file " + file + " --file-mib 4 --iters 1");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(exists(file));
  std::remove(file.c_str());
}

}  // namespace
