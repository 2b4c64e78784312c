// Communication diagnostics (log.level = "debug", sharding/comm_trace.h) from MpiCommunicator
// over MPI_COMM_WORLD: every collective appears once, in issue order, with its kind, sequence
// number, group, lane and bytes; each step ends with one summary line; without a trace nothing
// is written.
#include "sharding/comm_trace.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "sharding/mpi_communicator.h"

namespace dstrain::sharding {
namespace {

namespace fs = std::filesystem;

// A directory every rank agrees on (rank 0's pid), removed at the end.
class CommTraceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    long pid = static_cast<long>(getpid());
    MPI_Bcast(&pid, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    dir_ = fs::temp_directory_path() / ("dstrain_comm_trace_" + std::to_string(pid));
    MPI_Barrier(MPI_COMM_WORLD);
  }
  void TearDown() override {
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank_ == 0) fs::remove_all(dir_);
  }
  fs::path log_path() const { return dir_ / "comm" / ("rank" + std::to_string(rank_) + ".log"); }

  int rank_ = 0;
  int size_ = 1;
  fs::path dir_;
};

std::vector<std::string> lines_of(const fs::path& p) {
  std::ifstream in(p);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// "k1=v1 k2=v2 ..." -> map (the first word of a summary line has no '=' after its kind).
std::map<std::string, std::string> fields(const std::string& line) {
  std::map<std::string, std::string> out;
  std::istringstream in(line);
  for (std::string word; in >> word;) {
    const size_t eq = word.find('=');
    if (eq != std::string::npos) out[word.substr(0, eq)] = word.substr(eq + 1);
  }
  return out;
}

TEST_F(CommTraceTest, DebugLogsEveryCollectiveAndOneSummaryPerStep) {
  auto trace = CommTrace::open(log_path().string());
  ASSERT_TRUE(trace.ok()) << trace.status().to_string();
  CommOptions options;
  options.trace = *trace;
  options.group = "world";
  auto comm = MpiCommunicator::create(MPI_COMM_WORLD, options);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  MpiCommunicator& c = **comm;
  MPI_Comm half;
  MPI_Comm_split(MPI_COMM_WORLD, rank_ % 2, rank_, &half);
  auto node = c.create_sharing_thread(half, "node");
  MPI_Comm_free(&half);
  ASSERT_TRUE(node.ok()) << node.status().to_string();

  // Step 1: one of each kind on the world (issued back to back, waited later) and one on the
  // sub-group.
  at::Tensor reduced = at::ones({8}, at::kFloat);  // 32 bytes
  at::Tensor shard = at::ones({3}, at::kDouble);
  at::Tensor full = at::zeros({3 * size_}, at::kDouble);  // 24 * size bytes
  at::Tensor rs_in = at::ones({2 * size_}, at::kLong);    // 16 * size bytes
  at::Tensor rs_out = at::zeros({2}, at::kLong);
  at::Tensor bcast = at::arange(5, at::kLong);  // 40 bytes
  at::Tensor sub = at::ones({4}, at::kInt);     // 16 bytes
  std::vector<std::unique_ptr<Work>> works;
  works.push_back(c.all_reduce(reduced, ReduceOp::kSum));
  works.push_back(c.all_gather(shard, full));
  works.push_back((*node)->all_reduce(sub, ReduceOp::kSum));
  works.push_back(c.reduce_scatter(rs_in, rs_out, ReduceOp::kSum));
  works.push_back(c.broadcast(bcast, 0));
  for (auto& w : works) ASSERT_TRUE(w->wait().ok());
  ASSERT_TRUE(c.barrier().ok());
  ASSERT_TRUE(c.end_step(1).ok());
  // Step 2: one all-reduce; the summary covers only it.
  ASSERT_TRUE(all_reduce_now(c, reduced, ReduceOp::kMax).ok());
  ASSERT_TRUE(c.end_step(2).ok());
  node->reset();
  comm->reset();
  trace->reset();  // closes the file

  const std::vector<std::string> lines = lines_of(log_path());
  struct Want {
    const char* op;
    const char* group;
    int seq;
    int64_t bytes;
  };
  const std::vector<Want> step1 = {
      {"all_reduce", "world", 0, 32}, {"all_gather", "world", 1, 24 * size_},
      {"all_reduce", "node", 0, 16},  {"reduce_scatter", "world", 2, 16 * size_},
      {"broadcast", "world", 3, 40},  {"barrier", "world", 4, 0}};
  // start, 6 op lines, step 1, 1 op line, step 2.
  ASSERT_EQ(lines.size(), 1 + step1.size() + 1 + 1 + 1) << ::testing::PrintToString(lines);
  EXPECT_EQ(lines[0], "start");
  for (size_t i = 0; i < step1.size(); ++i) {
    auto f = fields(lines[1 + i]);
    EXPECT_EQ(f["op"], step1[i].op) << lines[1 + i];
    EXPECT_EQ(f["group"], step1[i].group) << lines[1 + i];
    EXPECT_EQ(f["seq"], std::to_string(step1[i].seq)) << lines[1 + i];
    EXPECT_EQ(f["bytes"], std::to_string(step1[i].bytes)) << lines[1 + i];
    EXPECT_EQ(f["lane"], "mpi") << lines[1 + i];
    EXPECT_GE(std::stod(f.at("run_ms")), 0.0) << lines[1 + i];
    EXPECT_GE(std::stod(f.at("queue_ms")), 0.0) << lines[1 + i];
  }
  const std::string& s1 = lines[1 + step1.size()];
  EXPECT_EQ(s1.rfind("step=1 ", 0), 0u) << s1;
  // Two all-reduces (world and node), 48 bytes; every kind once with its bytes.
  EXPECT_NE(s1.find(" all_reduce:n=2,bytes=48,wait_s="), std::string::npos) << s1;
  EXPECT_NE(s1.find(" all_gather:n=1,bytes=" + std::to_string(24 * size_) + ",wait_s="),
            std::string::npos)
      << s1;
  EXPECT_NE(s1.find(" reduce_scatter:n=1,bytes=" + std::to_string(16 * size_) + ",wait_s="),
            std::string::npos)
      << s1;
  EXPECT_NE(s1.find(" broadcast:n=1,bytes=40,wait_s="), std::string::npos) << s1;
  EXPECT_NE(s1.find(" barrier:n=1,bytes=0,wait_s="), std::string::npos) << s1;
  auto f = fields(lines[2 + step1.size()]);
  EXPECT_EQ(f["op"], "all_reduce");
  EXPECT_EQ(f["seq"], "5");
  EXPECT_EQ(lines.back().rfind("step=2 all_reduce:n=1,bytes=32,wait_s=", 0), 0u) << lines.back();
}

TEST_F(CommTraceTest, WaitSecondsOfTheSummaryAreTheCommunicatorsWaits) {
  auto trace = CommTrace::open(log_path().string());
  ASSERT_TRUE(trace.ok()) << trace.status().to_string();
  CommOptions options;
  options.trace = *trace;
  auto comm = MpiCommunicator::create(MPI_COMM_WORLD, options);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  ASSERT_TRUE((*comm)->take_wait_seconds().ok());
  // Rank 1 arrives late, so rank 0's wait is long enough to measure.
  if (rank_ == 1) usleep(200 * 1000);
  ASSERT_TRUE(all_reduce_now(**comm, at::ones({1}, at::kFloat), ReduceOp::kSum).ok());
  auto waited = (*comm)->take_wait_seconds();
  ASSERT_TRUE(waited.ok());
  ASSERT_TRUE((*comm)->end_step(1).ok());
  comm->reset();
  trace->reset();
  const std::string summary = lines_of(log_path()).back();
  const size_t at = summary.find("wait_s=");
  ASSERT_NE(at, std::string::npos) << summary;
  EXPECT_NEAR(std::stod(summary.substr(at + 7)), *waited, 1e-5) << summary;
  if (rank_ == 0 && size_ > 1) EXPECT_GT(*waited, 0.1);
}

TEST_F(CommTraceTest, InfoLevelWritesNothing) {
  auto comm = MpiCommunicator::create(MPI_COMM_WORLD, CommOptions{});
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  ASSERT_TRUE(all_reduce_now(**comm, at::ones({4}, at::kFloat), ReduceOp::kSum).ok());
  ASSERT_TRUE((*comm)->end_step(1).ok());
  EXPECT_FALSE(fs::exists(dir_));
}

TEST_F(CommTraceTest, OpLinesStopAtTheBoundWhileSummariesGoOn) {
  auto trace = CommTrace::open(log_path().string(), /*max_op_bytes=*/200);
  ASSERT_TRUE(trace.ok()) << trace.status().to_string();
  for (int i = 0; i < 20; ++i) (*trace)->record({CommOp::kAllGather, "world", "gather", 0, 1}, {});
  ASSERT_TRUE((*trace)->end_step(1).ok());
  trace->reset();
  const std::vector<std::string> lines = lines_of(log_path());
  ASSERT_GE(lines.size(), 4u);
  size_t ops = 0;
  for (const std::string& l : lines) ops += l.rfind("seq=", 0) == 0 ? 1 : 0;
  EXPECT_LT(ops, 20u);
  EXPECT_GT(ops, 0u);
  EXPECT_EQ(lines[lines.size() - 2].rfind("op lines stop here", 0), 0u) << lines[lines.size() - 2];
  EXPECT_EQ(lines.back(), "step=1");
}

}  // namespace
}  // namespace dstrain::sharding
