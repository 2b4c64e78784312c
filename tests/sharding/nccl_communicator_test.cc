// NcclCommunicator over MPI_COMM_WORLD with CUDA tensors: 2 ranks, one GPU each (device = local
// rank). Every rank runs every test and issues the same collectives in the same order. The ranks
// agree over MPI whether all of them have a GPU before any NCCL communicator exists, so on a
// machine without GPUs every GPU test skips on every rank and none waits for the others.
#include "sharding/nccl_communicator.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "sharding/nccl_factory.h"

namespace dstrain::sharding {
namespace {

// The watchdog's limit for an unfinished operation (run.collective_timeout_s's default).
constexpr double kTimeoutS = 60;

int local_rank() {
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int r = 0;
  MPI_Comm_rank(node, &r);
  MPI_Comm_free(&node);
  return r;
}

int visible_gpus() { return at::hasCUDA() ? static_cast<int>(at::cuda::device_count()) : 0; }

// DSTRAIN_TEST_SHARE_GPU=1 (tests/gpu/shared_gpu_rank.sh, which also gives each rank its own
// NCCL_HOSTID): the local ranks share the visible GPUs round-robin, as dstrain's do then.
bool sharing_gpus() {
  const char* v = std::getenv("DSTRAIN_TEST_SHARE_GPU");
  return v != nullptr && std::string(v) == "1";
}

// This rank's device: its local rank, or that modulo the GPUs when they are shared.
int device_of_this_rank() {
  const int gpus = visible_gpus();
  return sharing_gpus() && gpus > 0 ? local_rank() % gpus : local_rank();
}

// True on every rank when every rank has a CUDA device (its own, unless shared).
bool every_rank_has_a_gpu() {
  const int devices = visible_gpus();
  int mine = devices > device_of_this_rank() ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

class NcclCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!every_rank_has_a_gpu()) GTEST_SKIP() << "needs one CUDA device per rank";
    device_ = device_of_this_rank();
    auto comm = NcclCommunicator::create(MPI_COMM_WORLD, device_, kTimeoutS);
    ASSERT_TRUE(comm.ok()) << comm.status().to_string();
    comm_ = std::move(comm).value();
    guard_.emplace(static_cast<c10::DeviceIndex>(device_));
  }
  int rank() const { return comm_->rank(); }
  int size() const { return comm_->size(); }
  c10::cuda::CUDAStream pool_stream() const {
    return c10::cuda::getStreamFromPool(false, static_cast<c10::DeviceIndex>(device_));
  }
  at::TensorOptions on_gpu(at::ScalarType dtype) const {
    return at::TensorOptions().dtype(dtype).device(at::kCUDA, device_);
  }
  // Queues large reduce-scatters (their Works dropped at once) so that the next operation on the
  // scatter lane finishes milliseconds after it is issued: work that is not ordered after it
  // runs first.
  void keep_scatter_lane_busy() {
    constexpr int64_t kBig = int64_t{1} << 25;
    const at::Tensor full = at::ones({size() * kBig}, on_gpu(at::kFloat));
    const at::Tensor shard = at::empty({kBig}, on_gpu(at::kFloat));
    for (int i = 0; i < 4; ++i) (void)comm_->reduce_scatter(full, shard, ReduceOp::kSum);
  }

  int device_ = 0;
  std::optional<c10::cuda::CUDAGuard> guard_;
  std::unique_ptr<NcclCommunicator> comm_;
};

// Rank `r`'s contribution: small integers, different per rank and per element, exact in every
// dtype tested (bf16 holds integers up to 256 exactly); non-negative for uint8.
at::Tensor input(int r, int64_t n, at::ScalarType dtype) {
  const at::Tensor i = at::arange(n, at::kLong);
  const at::Tensor v = (i * 7 + r * 5) % 13;
  return (dtype == at::kByte ? v : v - 6).to(dtype);
}

at::Tensor reduce_inputs(int world, int64_t n, at::ScalarType dtype, ReduceOp op) {
  at::Tensor acc = input(0, n, dtype).to(at::kDouble);
  for (int r = 1; r < world; ++r) {
    const at::Tensor x = input(r, n, dtype).to(at::kDouble);
    acc = op == ReduceOp::kSum ? acc + x : at::maximum(acc, x);
  }
  return acc.to(dtype);
}

const char* op_name(ReduceOp op) { return op == ReduceOp::kSum ? " sum" : " max"; }

// --- Without a communicator: these run on every machine. ---

TEST(NcclLibraryTest, VersionIsReported) {
  auto code = NcclCommunicator::nccl_version();
  ASSERT_TRUE(code.ok()) << code.status().to_string();
  EXPECT_GE(*code, 21800) << "ncclCommSplit needs NCCL 2.18 or newer";
  auto text = nccl_version_string();
  ASSERT_TRUE(text.ok()) << text.status().to_string();
  EXPECT_EQ(*text, std::to_string(*code / 10000) + "." + std::to_string(*code / 100 % 100) + "." +
                       std::to_string(*code % 100));
}

TEST(NcclLibraryTest, NegativeDeviceIsRefusedOnEveryRank) {
  auto comm = make_nccl_communicator(MPI_COMM_WORLD, -1, kTimeoutS);
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), base::StatusCode::kInvalidArgument) << comm.status().to_string();
}

TEST(NcclLibraryTest, ABadDeviceOnOneRankFailsEveryRankWithoutHanging) {
  const bool gpus = every_rank_has_a_gpu();
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const int bad_rank = size - 1;
  const int device = device_of_this_rank();  // collective: every rank calls it
  auto comm = make_nccl_communicator(MPI_COMM_WORLD, rank == bad_rank ? -1 : device, kTimeoutS);
  ASSERT_FALSE(comm.ok());
  if (rank == bad_rank) {
    EXPECT_EQ(comm.status().code(), base::StatusCode::kInvalidArgument);
  } else if (gpus) {
    // Its own device was fine: it learns of the other rank's failure from the agreement.
    EXPECT_EQ(comm.status().code(), base::StatusCode::kDistributed) << comm.status().to_string();
    EXPECT_NE(comm.status().message().find("another rank"), std::string::npos);
  }
}

// --- Collectives on the GPU ---

TEST_F(NcclCommunicatorTest, RankAndSizeMatchTheWorld) {
  int world_rank = 0, world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  EXPECT_EQ(rank(), world_rank);
  EXPECT_EQ(size(), world_size);
  EXPECT_EQ(comm_->device(), device_);
}

TEST_F(NcclCommunicatorTest, AllReduceSumAndMaxOverDtypes) {
  constexpr int64_t kN = 37;
  for (at::ScalarType dtype :
       {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble, at::kLong, at::kInt, at::kByte}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + op_name(op));
      at::Tensor t = input(rank(), kN, dtype).to(on_gpu(dtype));
      std::unique_ptr<Work> work = comm_->all_reduce(t, op);
      ASSERT_TRUE(work->wait().ok());
      EXPECT_TRUE(at::equal(t.cpu(), reduce_inputs(size(), kN, dtype, op)))
          << t.cpu() << reduce_inputs(size(), kN, dtype, op);
    }
  }
}

TEST_F(NcclCommunicatorTest, AllGatherPlacesShardsInRankOrder) {
  // 13 is odd, so shards do not start on a word boundary; the large one takes several channels.
  for (int64_t n : {int64_t{13}, (int64_t{1} << 20) + 7}) {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " n=" + std::to_string(n));
      const at::Tensor shard = input(rank(), n, dtype).to(on_gpu(dtype));
      at::Tensor full = at::full({size() * n}, 99, on_gpu(dtype));
      ASSERT_TRUE(comm_->all_gather(shard, full)->wait().ok());
      const at::Tensor host = full.cpu();
      for (int r = 0; r < size(); ++r) {
        EXPECT_TRUE(at::equal(host.slice(0, r * n, (r + 1) * n), input(r, n, dtype)))
            << "block " << r;
      }
    }
  }
}

TEST_F(NcclCommunicatorTest, ReduceScatterGivesEachRankItsReducedBlock) {
  constexpr int64_t kN = 21;
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kDouble}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + op_name(op));
      const at::Tensor full = input(rank(), size() * kN, dtype).to(on_gpu(dtype));
      at::Tensor shard = at::full({kN}, 99, on_gpu(dtype));
      ASSERT_TRUE(comm_->reduce_scatter(full, shard, op)->wait().ok());
      const at::Tensor expected =
          reduce_inputs(size(), size() * kN, dtype, op).slice(0, rank() * kN, (rank() + 1) * kN);
      EXPECT_TRUE(at::equal(shard.cpu(), expected)) << shard.cpu() << expected;
      EXPECT_TRUE(at::equal(full.cpu(), input(rank(), size() * kN, dtype)));
    }
  }
}

TEST_F(NcclCommunicatorTest, BroadcastFromEveryRoot) {
  constexpr int64_t kN = 11;
  for (int root = 0; root < size(); ++root) {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kLong}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " root " + std::to_string(root));
      at::Tensor t = input(rank(), kN, dtype).to(on_gpu(dtype));
      ASSERT_TRUE(comm_->broadcast(t, root)->wait().ok());
      EXPECT_TRUE(at::equal(t.cpu(), input(root, kN, dtype)));
    }
  }
}

// The pattern of stage-3 training: prefetch all-gathers and gradient reduce-scatters in flight on
// their own communicators at once, plus an all-reduce, all issued before any is waited for, on a
// non-default caller stream. Inputs are written by a slow kernel just before each issue, so a
// lane that did not wait for the caller's stream would read them unwritten.
TEST_F(NcclCommunicatorTest, GathersAndScattersInterleavedInFlight) {
  c10::cuda::CUDAStreamGuard on_stream(pool_stream());
  constexpr int kRounds = 6;
  constexpr int64_t kN = int64_t{1} << 16;
  const at::Tensor heavy = at::ones({1024, 1024}, on_gpu(at::kFloat));
  // Every element of heavy @ heavy is 1024 exactly; the matmul keeps the caller's stream busy.
  const auto slow_fill = [&](int64_t n, double value) {
    return (at::mm(heavy, heavy).flatten().slice(0, 0, 1) / 1024 * value).expand({n}).contiguous();
  };
  std::vector<at::Tensor> gathered, scattered, reduced;
  std::vector<std::unique_ptr<Work>> works;
  for (int i = 0; i < kRounds; ++i) {
    const at::Tensor shard = slow_fill(kN, 100 * i + rank());
    gathered.push_back(at::zeros({size() * kN}, on_gpu(at::kFloat)));
    works.push_back(comm_->all_gather(shard, gathered.back()));
    const at::Tensor grads = slow_fill(size() * kN, i + 1 + rank());
    scattered.push_back(at::zeros({kN}, on_gpu(at::kFloat)));
    works.push_back(comm_->reduce_scatter(grads, scattered.back(), ReduceOp::kSum));
    reduced.push_back(slow_fill(7, rank() + i));
    works.push_back(comm_->all_reduce(reduced.back(), i % 2 ? ReduceOp::kMax : ReduceOp::kSum));
  }
  // Waiting in reverse issue order is fine: each wait only orders the caller's stream.
  for (int i = static_cast<int>(works.size()) - 1; i >= 0; --i) {
    const base::Status st = works[i]->wait();
    ASSERT_TRUE(st.ok()) << "op " << i << ": " << st.to_string();
  }
  const double rank_sum = size() * (size() - 1) / 2.0;
  for (int i = 0; i < kRounds; ++i) {
    SCOPED_TRACE("round " + std::to_string(i));
    const at::Tensor g = gathered[i].cpu();
    for (int r = 0; r < size(); ++r) {
      EXPECT_TRUE(
          at::equal(g.slice(0, r * kN, (r + 1) * kN), at::full({kN}, 100.0 * i + r, at::kFloat)))
          << "block " << r;
    }
    EXPECT_TRUE(
        at::equal(scattered[i].cpu(), at::full({kN}, size() * (i + 1) + rank_sum, at::kFloat)));
    const double want = i % 2 ? size() - 1 + i : size() * i + rank_sum;
    EXPECT_TRUE(at::equal(reduced[i].cpu(), at::full({7}, want, at::kFloat)));
  }
}

// A collective that consumes another lane's output is issued after wait() on the producer; the
// wait is a stream dependency, not a host synchronisation, and is enough for the data to flow.
TEST_F(NcclCommunicatorTest, WaitOrdersTheCallerStreamAcrossLanes) {
  constexpr int64_t kN = 1000;
  const at::Tensor full = input(rank(), size() * kN, at::kFloat).to(on_gpu(at::kFloat));
  at::Tensor shard = at::empty({kN}, on_gpu(at::kFloat));
  ASSERT_TRUE(comm_->reduce_scatter(full, shard, ReduceOp::kSum)->wait().ok());
  shard.mul_(2);  // compute on the caller's stream, after the scatter
  at::Tensor back = at::empty({size() * kN}, on_gpu(at::kFloat));
  ASSERT_TRUE(comm_->all_gather(shard, back)->wait().ok());
  ASSERT_TRUE(comm_->all_reduce(back, ReduceOp::kMax)->wait().ok());
  EXPECT_TRUE(
      at::equal(back.cpu(), reduce_inputs(size(), size() * kN, at::kFloat, ReduceOp::kSum) * 2));
}

// wait() returns at once, yet compute queued after it on the caller's stream sees the result.
TEST_F(NcclCommunicatorTest, WaitOrdersLaterComputeAfterTheOperation) {
  keep_scatter_lane_busy();
  constexpr int64_t kN = int64_t{1} << 20;
  const at::Tensor full = at::full({size() * kN}, rank() + 1.0, on_gpu(at::kFloat));
  at::Tensor shard = at::full({kN}, -1.0, on_gpu(at::kFloat));
  ASSERT_TRUE(comm_->reduce_scatter(full, shard, ReduceOp::kSum)->wait().ok());
  const at::Tensor copy = shard.clone();  // ordered after the scatter by wait() alone
  EXPECT_TRUE(at::equal(copy.cpu(), at::full({kN}, size() * (size() + 1) / 2.0, at::kFloat)));
}

// The caller drops its input and the Work right after issuing; the allocator must not hand the
// input's block to new tensors before the lane has read it. Earlier large operations keep the
// lane busy, so if the communicator let go of the input the overwrite below would land first.
TEST_F(NcclCommunicatorTest, DroppedInputsStayValidUntilTheLaneIsDone) {
  keep_scatter_lane_busy();
  constexpr int64_t kN = int64_t{1} << 20;
  at::Tensor shard = at::empty({kN}, on_gpu(at::kFloat));
  std::unique_ptr<Work> work;
  {
    const at::Tensor full = at::full({size() * kN}, rank() + 1.0, on_gpu(at::kFloat));
    work = comm_->reduce_scatter(full, shard, ReduceOp::kSum);
  }
  work.reset();
  std::vector<at::Tensor> junk;
  for (int i = 0; i < 4; ++i) junk.push_back(at::full({size() * kN}, -1e6, on_gpu(at::kFloat)));
  ASSERT_TRUE(comm_->barrier().ok());
  EXPECT_TRUE(at::equal(shard.cpu(), at::full({kN}, size() * (size() + 1) / 2.0, at::kFloat)));
}

// take_wait_seconds(): the GPU time the caller's stream stood still at wait(), each wait counted
// once. The timing events are pooled and reused from the second round on; a reused pair must
// time its own wait, not report a stale one.
TEST_F(NcclCommunicatorTest, WaitTimeCountsEachStallOnceWithReusedEvents) {
  ASSERT_TRUE(comm_->take_wait_seconds().ok());
  constexpr int64_t kN = int64_t{1} << 20;
  for (int round = 0; round < 3; ++round) {
    keep_scatter_lane_busy();  // the next scatter finishes milliseconds after it is issued
    const at::Tensor full = at::ones({size() * kN}, on_gpu(at::kFloat));
    at::Tensor shard = at::empty({kN}, on_gpu(at::kFloat));
    ASSERT_TRUE(comm_->reduce_scatter(full, shard, ReduceOp::kSum)->wait().ok());
    for (int i = 0; i < 20; ++i) {
      ASSERT_TRUE(
          comm_->all_reduce(at::ones({4}, on_gpu(at::kFloat)), ReduceOp::kSum)->wait().ok());
    }
    auto waited = comm_->take_wait_seconds();
    ASSERT_TRUE(waited.ok()) << waited.status().to_string();
    EXPECT_GT(*waited, 1e-4) << "round " << round;
    EXPECT_LT(*waited, 30.0) << "round " << round;
    auto again = comm_->take_wait_seconds();
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, 0.0) << "round " << round;
  }
}

// log.level = "debug": one line per waited operation with its lane, sequence number, bytes and
// wait time, written when take_wait_seconds() reads the timing; one summary line per step.
TEST_F(NcclCommunicatorTest, DebugTraceHasALinePerWaitedOperation) {
  const std::string path = "/tmp/dstrain_nccl_trace_" + std::to_string(getpid()) + ".log";
  std::remove(path.c_str());
  auto trace = CommTrace::open(path);
  ASSERT_TRUE(trace.ok()) << trace.status().to_string();
  CommOptions options;
  options.timeout_s = kTimeoutS;
  options.trace = *trace;
  options.group = "node";
  auto traced = NcclCommunicator::create(MPI_COMM_WORLD, device_, options);
  ASSERT_TRUE(traced.ok()) << traced.status().to_string();
  NcclCommunicator& c = **traced;
  constexpr int64_t kN = 256;
  const at::Tensor shard = at::ones({kN}, on_gpu(at::kFloat));
  at::Tensor full = at::empty({size() * kN}, on_gpu(at::kFloat));
  ASSERT_TRUE(c.all_gather(shard, full)->wait().ok());
  at::Tensor back = at::empty({kN}, on_gpu(at::kFloat));
  ASSERT_TRUE(c.reduce_scatter(full, back, ReduceOp::kSum)->wait().ok());
  ASSERT_TRUE(c.all_reduce(back, ReduceOp::kMax)->wait().ok());
  auto waited = c.take_wait_seconds();
  ASSERT_TRUE(waited.ok()) << waited.status().to_string();
  ASSERT_TRUE(c.end_step(1).ok());
  traced->reset();
  trace->reset();
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::remove(path.c_str());
  const std::string full_bytes = std::to_string(size() * kN * 4);
  ASSERT_EQ(lines.size(), 5u) << ::testing::PrintToString(lines);
  EXPECT_EQ(lines[0], "start");
  EXPECT_EQ(lines[1].rfind("seq=0 op=all_gather group=node lane=dstrain.gather bytes=" +
                               full_bytes + " wait_ms=",
                           0),
            0u)
      << lines[1];
  EXPECT_EQ(lines[2].rfind("seq=1 op=reduce_scatter group=node lane=dstrain.scatter bytes=" +
                               full_bytes + " wait_ms=",
                           0),
            0u)
      << lines[2];
  EXPECT_EQ(
      lines[3].rfind("seq=2 op=all_reduce group=node lane=dstrain.main bytes=1024 wait_ms=", 0), 0u)
      << lines[3];
  EXPECT_EQ(lines[4].rfind("step=1 all_reduce:n=1,bytes=1024,wait_s=", 0), 0u) << lines[4];
  EXPECT_NE(lines[4].find(" all_gather:n=1,bytes=" + full_bytes), std::string::npos) << lines[4];
  EXPECT_NE(lines[4].find(" reduce_scatter:n=1,bytes=" + full_bytes), std::string::npos)
      << lines[4];
}

TEST_F(NcclCommunicatorTest, BarrierHoldsEveryRankUntilAllArrive) {
  using Clock = std::chrono::steady_clock;
  constexpr auto kDelay = std::chrono::milliseconds(400);
  ASSERT_TRUE(comm_->barrier().ok());
  const Clock::time_point start = Clock::now();
  if (rank() == 0) std::this_thread::sleep_for(kDelay);
  ASSERT_TRUE(comm_->barrier().ok());
  EXPECT_GE(Clock::now() - start, kDelay / 4) << "rank " << rank();
}

TEST_F(NcclCommunicatorTest, BarrierCompletesEarlierCollectivesOnEveryLane) {
  constexpr int64_t kN = 5;
  at::Tensor reduced = input(rank(), kN, at::kFloat).to(on_gpu(at::kFloat));
  at::Tensor gathered = at::zeros({size() * kN}, on_gpu(at::kFloat));
  const at::Tensor shard = input(rank(), kN, at::kFloat).to(on_gpu(at::kFloat));
  auto w1 = comm_->all_reduce(reduced, ReduceOp::kSum);
  auto w2 = comm_->all_gather(shard, gathered);
  ASSERT_TRUE(comm_->barrier().ok());
  // Copies on a fresh stream that never waited on the Works: only the barrier's host
  // synchronisation of every lane makes the results visible to it.
  c10::cuda::CUDAStreamGuard other(pool_stream());
  EXPECT_TRUE(at::equal(reduced.cpu(), reduce_inputs(size(), kN, at::kFloat, ReduceOp::kSum)));
  const at::Tensor g = gathered.cpu();
  for (int r = 0; r < size(); ++r) {
    EXPECT_TRUE(at::equal(g.slice(0, r * kN, (r + 1) * kN), input(r, kN, at::kFloat)));
  }
  EXPECT_TRUE(w1->wait().ok());
  EXPECT_TRUE(w2->wait().ok());
}

// The invalid calls are made on every rank alike: they fail before anything is enqueued, so no
// rank is left waiting in NCCL and the communicator stays usable.
TEST_F(NcclCommunicatorTest, BadArgumentsAreErrorsNotCrashes) {
  const at::Tensor shard = at::ones({5}, on_gpu(at::kFloat));
  at::Tensor too_small = at::zeros({5 * size() - 1}, on_gpu(at::kFloat));
  const base::Status gather = comm_->all_gather(shard, too_small)->wait();
  EXPECT_EQ(gather.code(), base::StatusCode::kInvalidArgument) << gather.to_string();
  EXPECT_NE(gather.message().find("all_gather"), std::string::npos) << gather.message();

  at::Tensor wrong_shard = at::zeros({4}, on_gpu(at::kFloat));
  const base::Status scatter =
      comm_->reduce_scatter(at::ones({5 * size()}, on_gpu(at::kFloat)), wrong_shard, ReduceOp::kSum)
          ->wait();
  EXPECT_EQ(scatter.code(), base::StatusCode::kInvalidArgument) << scatter.to_string();

  const auto expect_invalid = [](const base::Status& st, const char* what) {
    EXPECT_EQ(st.code(), base::StatusCode::kInvalidArgument) << what << ": " << st.to_string();
  };
  expect_invalid(comm_->all_gather(shard, at::zeros({5 * size()}, on_gpu(at::kDouble)))->wait(),
                 "dtype mismatch");
  expect_invalid(comm_->all_reduce(at::ones({4}, at::kFloat), ReduceOp::kSum)->wait(),
                 "CPU tensor");
  expect_invalid(
      comm_->all_reduce(at::zeros({4, 6}, on_gpu(at::kFloat)).t(), ReduceOp::kSum)->wait(),
      "non-contiguous");
  expect_invalid(comm_->all_reduce(at::zeros({4}, on_gpu(at::kBool)), ReduceOp::kMax)->wait(),
                 "bool");
  expect_invalid(comm_->broadcast(at::zeros({3}, on_gpu(at::kFloat)), size())->wait(), "root");

  // Still in step across ranks afterwards.
  at::Tensor t = input(rank(), 6, at::kFloat).to(on_gpu(at::kFloat));
  ASSERT_TRUE(all_reduce_now(*comm_, t, ReduceOp::kSum).ok());
  EXPECT_TRUE(at::equal(t.cpu(), reduce_inputs(size(), 6, at::kFloat, ReduceOp::kSum)));
}

TEST_F(NcclCommunicatorTest, AbortCancelsAndLaterOperationsFail) {
  at::Tensor t = at::ones({16}, on_gpu(at::kFloat));
  ASSERT_TRUE(all_reduce_now(*comm_, t, ReduceOp::kSum).ok());
  ASSERT_TRUE(comm_->barrier().ok());
  EXPECT_TRUE(comm_->check_async_errors().ok());
  comm_->abort();
  const base::Status after = comm_->all_reduce(t, ReduceOp::kSum)->wait();
  EXPECT_EQ(after.code(), base::StatusCode::kDistributed) << after.to_string();
  EXPECT_FALSE(comm_->barrier().ok());
  comm_.reset();  // destroying an aborted communicator must neither hang nor crash
}

// Hybrid sharding's two groups, split off one communicator: "nodes" of consecutive ranks and the
// "replicas" across them. Each group's collectives reduce over its members only, and the parent
// stays usable.
TEST_F(NcclCommunicatorTest, SplitsFormGroupsByColourRankedByKey) {
  const int per_node = size() % 2 == 0 ? 2 : 1;
  const int node = rank() / per_node, local = rank() % per_node;
  CommOptions options;
  options.timeout_s = kTimeoutS;
  auto nodes = comm_->split(node, local, options);
  ASSERT_TRUE(nodes.ok()) << nodes.status().to_string();
  auto replicas = comm_->split(local, node, options);
  ASSERT_TRUE(replicas.ok()) << replicas.status().to_string();
  EXPECT_EQ((*nodes)->size(), per_node);
  EXPECT_EQ((*nodes)->rank(), local);
  EXPECT_EQ((*replicas)->size(), size() / per_node);
  EXPECT_EQ((*replicas)->rank(), node);

  // Sum of world ranks over the group: node members are node * per_node + 0..per_node-1,
  // replicas are local + per_node * 0..nodes-1.
  at::Tensor t = at::full({8}, static_cast<float>(rank()), on_gpu(at::kFloat));
  ASSERT_TRUE(all_reduce_now(**nodes, t, ReduceOp::kSum).ok());
  float want = 0;
  for (int l = 0; l < per_node; ++l) want += static_cast<float>(node * per_node + l);
  EXPECT_TRUE(at::equal(t.cpu(), at::full({8}, want)));

  at::Tensor shard = at::full({3}, static_cast<float>(rank()), on_gpu(at::kFloat));
  at::Tensor full = at::empty({3 * (*replicas)->size()}, on_gpu(at::kFloat));
  ASSERT_TRUE((*replicas)->all_gather(shard, full)->wait().ok());
  for (int n = 0; n < (*replicas)->size(); ++n) {
    EXPECT_TRUE(at::equal(full.slice(0, 3 * n, 3 * n + 3).cpu(),
                          at::full({3}, static_cast<float>(local + per_node * n))));
  }
  ASSERT_TRUE((*nodes)->barrier().ok());
  ASSERT_TRUE((*replicas)->barrier().ok());
  nodes->reset();
  replicas->reset();
  at::Tensor w = at::ones({4}, on_gpu(at::kFloat));
  ASSERT_TRUE(all_reduce_now(*comm_, w, ReduceOp::kSum).ok());
  EXPECT_TRUE(at::equal(w.cpu(), at::full({4}, static_cast<float>(size()))));
  EXPECT_EQ(comm_->split(-1, 0, options).status().code(), base::StatusCode::kInvalidArgument);
}

// A peer that never issues the operation: the first operation on a new communicator (which is
// when NCCL connects the peers) and everything after it fail within the timeout on the waiting
// rank, naming the operation, instead of blocking inside NCCL. The late rank then fails too.
TEST_F(NcclCommunicatorTest, APeerThatNeverArrivesFailsTheOperationWithinTheTimeout) {
  constexpr double kShortS = 5;
  auto made = NcclCommunicator::create(MPI_COMM_WORLD, device_, kShortS);
  ASSERT_TRUE(made.ok()) << made.status().to_string();
  std::unique_ptr<NcclCommunicator> c = std::move(made).value();
  const bool late = rank() == size() - 1;
  at::Tensor t = at::ones({1024}, on_gpu(at::kFloat));
  const auto start = std::chrono::steady_clock::now();
  if (late) std::this_thread::sleep_for(std::chrono::seconds(15));
  base::Status st = c->all_reduce(t, ReduceOp::kSum)->wait();
  if (st.ok()) st = c->barrier();
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(st.code(), base::StatusCode::kDistributed) << st.to_string();
  if (!late) {
    EXPECT_LT(took, kShortS + 6) << st.to_string();
    EXPECT_NE(st.message().find("all_reduce #0"), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("within 5 s"), std::string::npos) << st.message();
  } else {
    EXPECT_LT(took, 15 + kShortS + 6) << st.to_string();
  }
  c.reset();  // aborted: neither hangs nor crashes
  MPI_Barrier(MPI_COMM_WORLD);
}

}  // namespace
}  // namespace dstrain::sharding
