// MpiCommunicator over MPI_COMM_WORLD with CPU tensors. Every rank runs every test and issues the
// same collectives in the same order; expected values are computed locally from the inputs every
// rank would contribute, so a wrong rank, block or reduction shows as a mismatch.
#include "sharding/mpi_communicator.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace dstrain::sharding {
namespace {

class MpiCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto comm = MpiCommunicator::create(MPI_COMM_WORLD);
    ASSERT_TRUE(comm.ok()) << comm.status().to_string();
    comm_ = std::move(comm).value();
  }
  int rank() const { return comm_->rank(); }
  int size() const { return comm_->size(); }

  std::unique_ptr<MpiCommunicator> comm_;
};

// Rank `r`'s contribution: small signed integers, different per rank and per element, exact in
// every dtype tested (bf16 holds integers up to 256 exactly).
at::Tensor input(int r, int64_t n, at::ScalarType dtype) {
  at::Tensor i = at::arange(n, at::kLong);
  return ((i * 7 + r * 5) % 13 - 6).to(dtype);
}

// Large int64 values that a detour through double would round.
at::Tensor input_int64_wide(int r, int64_t n) {
  return at::arange(n, at::kLong) + (int64_t{1} << 55) / 8 * (r + 1) + 1;
}

at::Tensor reduce_inputs(int world, int64_t n, at::ScalarType dtype, ReduceOp op) {
  at::Tensor acc = input(0, n, at::kDouble);
  for (int r = 1; r < world; ++r) {
    const at::Tensor x = input(r, n, at::kDouble);
    acc = op == ReduceOp::kSum ? acc + x : at::maximum(acc, x);
  }
  return acc.to(dtype);
}

TEST_F(MpiCommunicatorTest, RankAndSizeMatchTheWorld) {
  int world_rank = 0, world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  EXPECT_EQ(rank(), world_rank);
  EXPECT_EQ(size(), world_size);
}

TEST_F(MpiCommunicatorTest, AllReduceSumAndMaxOverDtypes) {
  constexpr int64_t kN = 37;
  for (at::ScalarType dtype : {at::kFloat, at::kDouble, at::kLong, at::kBFloat16}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + (op == ReduceOp::kSum ? " sum" : " max"));
      at::Tensor t = input(rank(), kN, dtype);
      ASSERT_TRUE(all_reduce_now(*comm_, t, op).ok());
      EXPECT_EQ(t.scalar_type(), dtype);
      EXPECT_TRUE(at::equal(t, reduce_inputs(size(), kN, dtype, op)))
          << t << reduce_inputs(size(), kN, dtype, op);
    }
  }
}

TEST_F(MpiCommunicatorTest, AllReduceInt64IsExact) {
  constexpr int64_t kN = 9;
  at::Tensor t = input_int64_wide(rank(), kN);
  at::Tensor m = input_int64_wide(rank(), kN);
  auto sum = comm_->all_reduce(t, ReduceOp::kSum);
  auto max = comm_->all_reduce(m, ReduceOp::kMax);
  ASSERT_TRUE(sum->wait().ok());
  ASSERT_TRUE(max->wait().ok());
  at::Tensor expected = input_int64_wide(0, kN);
  for (int r = 1; r < size(); ++r) expected += input_int64_wide(r, kN);
  EXPECT_TRUE(at::equal(t, expected));
  EXPECT_TRUE(at::equal(m, input_int64_wide(size() - 1, kN)));
}

TEST_F(MpiCommunicatorTest, AllGatherPlacesShardsInRankOrder) {
  constexpr int64_t kN = 13;  // odd, so shards do not start on a word boundary
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    const at::Tensor shard = input(rank(), kN, dtype);
    at::Tensor full = at::full({size() * kN}, 99, dtype);
    ASSERT_TRUE(comm_->all_gather(shard, full)->wait().ok());
    for (int r = 0; r < size(); ++r) {
      EXPECT_TRUE(at::equal(full.slice(0, r * kN, (r + 1) * kN), input(r, kN, dtype)))
          << "block " << r;
    }
  }
}

TEST_F(MpiCommunicatorTest, ReduceScatterGivesEachRankItsReducedBlock) {
  constexpr int64_t kN = 21;
  for (at::ScalarType dtype : {at::kFloat, at::kDouble, at::kBFloat16}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + (op == ReduceOp::kSum ? " sum" : " max"));
      const at::Tensor full = input(rank(), size() * kN, dtype);
      at::Tensor shard = at::full({kN}, 99, dtype);
      ASSERT_TRUE(comm_->reduce_scatter(full, shard, op)->wait().ok());
      const at::Tensor expected =
          reduce_inputs(size(), size() * kN, dtype, op).slice(0, rank() * kN, (rank() + 1) * kN);
      EXPECT_TRUE(at::equal(shard, expected)) << shard << expected;
      // The input is left as it was.
      EXPECT_TRUE(at::equal(full, input(rank(), size() * kN, dtype)));
    }
  }
}

TEST_F(MpiCommunicatorTest, BroadcastFromNonZeroRoot) {
  constexpr int64_t kN = 11;
  const int root = size() - 1;
  for (at::ScalarType dtype : {at::kFloat, at::kLong, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    at::Tensor t = input(rank(), kN, dtype);
    ASSERT_TRUE(comm_->broadcast(t, root)->wait().ok());
    EXPECT_TRUE(at::equal(t, input(root, kN, dtype)));
  }
  // Every root in turn, on one tensor.
  for (int r = 0; r < size(); ++r) {
    at::Tensor t = at::full({3}, rank(), at::kInt);
    ASSERT_TRUE(comm_->broadcast(t, r)->wait().ok());
    EXPECT_TRUE(at::equal(t, at::full({3}, r, at::kInt))) << "root " << r;
  }
}

TEST_F(MpiCommunicatorTest, BarrierHoldsEveryRankUntilAllArrive) {
  using Clock = std::chrono::steady_clock;
  constexpr auto kDelay = std::chrono::milliseconds(400);
  ASSERT_TRUE(comm_->barrier().ok());
  const Clock::time_point start = Clock::now();
  if (rank() == 0) std::this_thread::sleep_for(kDelay);
  ASSERT_TRUE(comm_->barrier().ok());
  const auto waited = Clock::now() - start;
  // Ranks leave the first barrier at slightly different times; a quarter of the delay is slack
  // enough for an oversubscribed machine and still fails a barrier that does not wait.
  EXPECT_GE(waited, kDelay / 4) << "rank " << rank();
}

TEST_F(MpiCommunicatorTest, BarrierCompletesAfterEarlierCollectives) {
  at::Tensor t = input(rank(), 5, at::kFloat);
  std::unique_ptr<Work> work = comm_->all_reduce(t, ReduceOp::kSum);
  ASSERT_TRUE(comm_->barrier().ok());
  // The barrier ran after the all-reduce on the communication thread, so its result is visible
  // before wait() is called.
  EXPECT_TRUE(at::equal(t, reduce_inputs(size(), 5, at::kFloat, ReduceOp::kSum)));
  EXPECT_TRUE(work->wait().ok());
}

TEST_F(MpiCommunicatorTest, AsyncOpsBackToBackKeepIssueOrder) {
  constexpr int64_t kN = 8;
  // A chain over one tensor: each step's result depends on the previous step having run.
  at::Tensor t = at::full({kN}, rank() + 1, at::kDouble);
  at::Tensor gathered = at::zeros({size() * kN}, at::kDouble);
  at::Tensor scattered = at::zeros({kN / 2}, at::kDouble);
  const at::Tensor full = at::full({size() * (kN / 2)}, rank() + 1, at::kDouble);
  std::vector<std::unique_ptr<Work>> works;
  works.push_back(comm_->all_reduce(t, ReduceOp::kSum));  // t = S = size(size+1)/2
  works.push_back(comm_->all_gather(t, gathered));        // every block = S
  works.push_back(comm_->all_reduce(t, ReduceOp::kSum));  // t = size * S
  works.push_back(comm_->broadcast(t, size() - 1));       // unchanged, all ranks agree
  // Independent operations of varied sizes in between, each with its own expected value.
  std::vector<at::Tensor> sizes;
  for (int i = 0; i < 12; ++i) {
    sizes.push_back(at::full({1 + 97 * i}, rank() + i, at::kFloat));
    works.push_back(comm_->all_reduce(sizes.back(), i % 2 ? ReduceOp::kMax : ReduceOp::kSum));
  }
  works.push_back(comm_->reduce_scatter(full, scattered, ReduceOp::kSum));
  for (size_t i = 0; i < works.size(); ++i) {
    const base::Status st = works[i]->wait();
    EXPECT_TRUE(st.ok()) << "op " << i << ": " << st.to_string();
  }
  const double s = size() * (size() + 1) / 2.0;
  EXPECT_TRUE(at::equal(gathered, at::full({size() * kN}, s, at::kDouble))) << gathered;
  EXPECT_TRUE(at::equal(t, at::full({kN}, size() * s, at::kDouble))) << t;
  EXPECT_TRUE(at::equal(scattered, at::full({kN / 2}, s, at::kDouble))) << scattered;
  for (int i = 0; i < 12; ++i) {
    const double want = i % 2 ? size() - 1 + i : size() * i + size() * (size() - 1) / 2.0;
    EXPECT_TRUE(at::equal(sizes[i], at::full({1 + 97 * i}, want, at::kFloat))) << "op " << i;
  }
}

TEST_F(MpiCommunicatorTest, WaitingOutOfIssueOrderIsFine) {
  std::vector<at::Tensor> ts;
  std::vector<std::unique_ptr<Work>> works;
  for (int i = 0; i < 6; ++i) {
    ts.push_back(at::full({4}, rank() * (i + 1), at::kLong));
    works.push_back(comm_->all_reduce(ts.back(), ReduceOp::kMax));
  }
  for (int i = 5; i >= 0; --i) {
    ASSERT_TRUE(works[i]->wait().ok());
    EXPECT_TRUE(at::equal(ts[i], at::full({4}, (size() - 1) * (i + 1), at::kLong)));
  }
}

// The invalid calls below are made on every rank alike: they must fail locally before any rank
// enters MPI, so no rank is left waiting in a collective and the communicator stays usable.
TEST_F(MpiCommunicatorTest, SizeMismatchIsAnErrorNotACrash) {
  const at::Tensor shard = at::ones({5}, at::kFloat);
  at::Tensor too_small = at::zeros({5 * size() - 1}, at::kFloat);
  const base::Status gather = comm_->all_gather(shard, too_small)->wait();
  EXPECT_EQ(gather.code(), base::StatusCode::kInvalidArgument) << gather.to_string();
  EXPECT_NE(gather.message().find("all_gather"), std::string::npos) << gather.message();

  at::Tensor wrong_shard = at::zeros({4}, at::kFloat);
  const base::Status scatter =
      comm_->reduce_scatter(at::ones({5 * size()}, at::kFloat), wrong_shard, ReduceOp::kSum)
          ->wait();
  EXPECT_EQ(scatter.code(), base::StatusCode::kInvalidArgument) << scatter.to_string();

  at::Tensor other_dtype = at::zeros({5 * size()}, at::kDouble);
  EXPECT_EQ(comm_->all_gather(shard, other_dtype)->wait().code(),
            base::StatusCode::kInvalidArgument);

  // Still in step across ranks afterwards.
  at::Tensor t = input(rank(), 6, at::kFloat);
  ASSERT_TRUE(all_reduce_now(*comm_, t, ReduceOp::kSum).ok());
  EXPECT_TRUE(at::equal(t, reduce_inputs(size(), 6, at::kFloat, ReduceOp::kSum)));
}

TEST_F(MpiCommunicatorTest, UnsupportedInputsAreErrors) {
  at::Tensor non_contiguous = at::zeros({4, 6}, at::kFloat).t();
  EXPECT_EQ(comm_->all_reduce(non_contiguous, ReduceOp::kSum)->wait().code(),
            base::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm_->broadcast(non_contiguous, 0)->wait().code(), base::StatusCode::kInvalidArgument);
  at::Tensor flags = at::zeros({4}, at::kBool);
  EXPECT_EQ(comm_->all_reduce(flags, ReduceOp::kMax)->wait().code(),
            base::StatusCode::kInvalidArgument);
  EXPECT_TRUE(comm_->barrier().ok());
}

TEST_F(MpiCommunicatorTest, LibTorchExceptionOnTheCommThreadIsAnError) {
  // A bf16 all-reduce copies the fp32 result back in place, which LibTorch refuses (throws) for a
  // leaf that requires grad; that happens on the communication thread, where an escaping
  // exception would terminate the process. Every rank throws alike, after the collective.
  const at::Tensor leaf = at::ones({4}, at::kBFloat16).set_requires_grad(true);
  const base::Status st = comm_->all_reduce(leaf, ReduceOp::kSum)->wait();
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("all_reduce"), std::string::npos) << st.message();
  EXPECT_TRUE(comm_->barrier().ok());
}

TEST_F(MpiCommunicatorTest, InvalidRootIsAnErrorNotACrash) {
  // MPI rejects the root before communicating; the communicator must return that as a status
  // rather than let MPI's default handler abort the job.
  at::Tensor t = at::zeros({3}, at::kFloat);
  const base::Status st = comm_->broadcast(t, size())->wait();
  EXPECT_EQ(st.code(), base::StatusCode::kDistributed) << st.to_string();
  EXPECT_NE(st.message().find("MPI_Bcast"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("broadcast"), std::string::npos) << st.message();
  EXPECT_TRUE(comm_->barrier().ok());
}

// A tensor that claims `claimed` elements but owns only the first `owned` of `storage`. MPI takes
// an int count, so 2^32 + k elements would wrap to k: the communicator must refuse such a message
// before touching the data; an implementation that truncates touches only the owned part.
at::Tensor oversized(std::vector<float>& storage, int64_t claimed) {
  return at::from_blob(storage.data(), {claimed}, at::kFloat);
}

TEST_F(MpiCommunicatorTest, CountsBeyondMpiIntAreErrorsNotTruncated) {
  constexpr int64_t kWrapped = 4;
  constexpr int64_t kClaimed = (int64_t{1} << 32) + kWrapped;
  std::vector<float> a(kWrapped * size(), 1.0f), b(kWrapped * size(), 1.0f);
  const auto expect_rejected = [](const base::Status& st, const char* what) {
    EXPECT_EQ(st.code(), base::StatusCode::kInvalidArgument) << what << ": " << st.to_string();
  };
  expect_rejected(comm_->all_reduce(oversized(a, kClaimed), ReduceOp::kSum)->wait(), "all_reduce");
  expect_rejected(comm_->broadcast(oversized(a, kClaimed), 0)->wait(), "broadcast");
  expect_rejected(
      comm_->all_gather(oversized(a, kClaimed), oversized(b, kClaimed * size()))->wait(),
      "all_gather");
  expect_rejected(
      comm_->reduce_scatter(oversized(a, kClaimed * size()), oversized(b, kClaimed), ReduceOp::kSum)
          ->wait(),
      "reduce_scatter");
  EXPECT_TRUE(comm_->barrier().ok());
}

TEST_F(MpiCommunicatorTest, EightMebibyteRoundTrip) {
  constexpr int64_t kBytes = int64_t{8} << 20;
  constexpr int64_t kN = kBytes / sizeof(float);
  // Values below 2^24 / world keep fp32 sums exact.
  const at::Tensor base = at::arange(kN, at::kLong).remainder(1000).to(at::kFloat);
  at::Tensor t = base + rank();
  ASSERT_TRUE(all_reduce_now(*comm_, t, ReduceOp::kSum).ok());
  const double rank_sum = size() * (size() - 1) / 2.0;
  EXPECT_TRUE(at::equal(t, base * size() + rank_sum));

  // Reduce-scatter the 8 MiB buffer, then all-gather the shards back into it.
  const int64_t shard_n = kN / size();
  at::Tensor full = base + rank();
  at::Tensor shard = at::empty({shard_n}, at::kFloat);
  auto rs = comm_->reduce_scatter(full, shard, ReduceOp::kSum);
  at::Tensor back = at::empty({kN}, at::kFloat);
  auto ag = comm_->all_gather(shard, back);
  ASSERT_TRUE(rs->wait().ok());
  ASSERT_TRUE(ag->wait().ok());
  EXPECT_TRUE(at::equal(back, base * size() + rank_sum));

  at::Tensor b = rank() == 1 % size() ? base.clone() : at::zeros({kN}, at::kFloat);
  ASSERT_TRUE(comm_->broadcast(b, 1 % size())->wait().ok());
  EXPECT_TRUE(at::equal(b, base));
}

TEST(MpiCommunicatorTimeout, NegativeTimeoutIsRejected) {
  auto comm = MpiCommunicator::create(MPI_COMM_WORLD, -1);
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), base::StatusCode::kInvalidArgument);
}

// Rank 0 waits on an all_reduce the others issue only after its wait has given up (they learn
// it from a file, not from MPI: the stuck communication thread owns MPI meanwhile), so the
// timeout fires without any race. Once the peers arrive the stuck collective completes.
TEST_F(MpiCommunicatorTest, WaitPastTheTimeoutNamesRankOperationAndSequence) {
  at::Tensor pid = at::full({1}, static_cast<int64_t>(getpid()), at::kLong);
  ASSERT_TRUE(comm_->broadcast(pid, 0)->wait().ok());
  const std::filesystem::path flag =
      std::filesystem::temp_directory_path() /
      ("dstrain_timeout_test_" + std::to_string(pid.item<int64_t>()));
  comm_.reset();  // one communication thread in MPI at a time (MPI_THREAD_SERIALIZED)
  auto late = MpiCommunicator::create(MPI_COMM_WORLD, 0.2);
  ASSERT_TRUE(late.ok()) << late.status().to_string();
  at::Tensor t = at::ones({4}, at::kFloat);
  std::unique_ptr<Work> w;
  const int rank = (*late)->rank();
  if (rank == 0) {
    w = (*late)->all_reduce(t, ReduceOp::kSum);
    const base::Status st = w->wait();
    std::ofstream(flag) << "timed out";
    EXPECT_EQ(st.code(), base::StatusCode::kDistributed) << st.to_string();
    EXPECT_NE(st.message().find("rank 0: all_reduce #0 (4 x Float) did not complete in 0.2 s"),
              std::string::npos)
        << st.message();
    // Nothing queued behind a stuck collective can run; it fails at once, not after 0.2 s more.
    const base::Status next = (*late)->barrier();
    EXPECT_NE(next.message().find("rank 0: barrier #1: abandoned"), std::string::npos)
        << next.message();
    // Waiting again reports the collective's own result once the peers have joined it.
    base::Status again = w->wait();
    for (int i = 0; i < 6000 && !again.ok(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      again = w->wait();
    }
    EXPECT_TRUE(again.ok()) << again.to_string();
    EXPECT_TRUE(at::equal(t, at::full({4}, static_cast<float>((*late)->size()), at::kFloat)));
    std::filesystem::remove(flag);
  } else {
    for (int i = 0; i < 6000 && !std::filesystem::exists(flag); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_TRUE(all_reduce_now(**late, t, ReduceOp::kSum).ok());
  }
}

// Hybrid sharding's groups: sub-communicators on the world's thread. Collectives of the
// sub-group and of the world, issued back to back without waiting, run in issue order on the one
// thread and each reduces over its own ranks; the sub-communicators can go before their owner.
TEST_F(MpiCommunicatorTest, SubCommunicatorsShareTheThread) {
  MPI_Comm half, across;
  const int half_size = size() > 1 ? size() / 2 : 1;
  MPI_Comm_split(MPI_COMM_WORLD, rank() / half_size, rank(), &half);
  MPI_Comm_split(MPI_COMM_WORLD, rank() % half_size, rank(), &across);
  auto node = comm_->create_sharing_thread(half);
  auto replicas = comm_->create_sharing_thread(across);
  MPI_Comm_free(&half);
  MPI_Comm_free(&across);
  ASSERT_TRUE(node.ok()) << node.status().to_string();
  ASSERT_TRUE(replicas.ok()) << replicas.status().to_string();
  EXPECT_EQ((*node)->size(), half_size);
  EXPECT_EQ((*node)->rank(), rank() % half_size);
  EXPECT_EQ((*replicas)->rank(), rank() / half_size);
  at::Tensor in_node = at::full({5}, static_cast<double>(rank() + 1), at::kDouble);
  at::Tensor in_world = in_node.clone();
  at::Tensor in_replicas = in_node.clone();
  auto w1 = (*node)->all_reduce(in_node, ReduceOp::kSum);
  auto w2 = comm_->all_reduce(in_world, ReduceOp::kSum);
  auto w3 = (*replicas)->all_reduce(in_replicas, ReduceOp::kSum);
  ASSERT_TRUE(w3->wait().ok());
  ASSERT_TRUE(w1->wait().ok());
  ASSERT_TRUE(w2->wait().ok());
  double node_sum = 0, replica_sum = 0;
  for (int r = 0; r < size(); ++r) {
    if (r / half_size == rank() / half_size) node_sum += r + 1;
    if (r % half_size == rank() % half_size) replica_sum += r + 1;
  }
  EXPECT_EQ(in_node[0].item<double>(), node_sum);
  EXPECT_EQ(in_world[0].item<double>(), size() * (size() + 1) / 2.0);
  EXPECT_EQ(in_replicas[0].item<double>(), replica_sum);
  // A sub-communicator's last collective may still be queued when it is destroyed.
  at::Tensor late = at::ones({3}, at::kDouble);
  auto w4 = (*node)->all_reduce(late, ReduceOp::kSum);
  node->reset();
  replicas->reset();
  ASSERT_TRUE(w4->wait().ok());
  EXPECT_EQ(late[0].item<double>(), half_size);
  EXPECT_TRUE(comm_->barrier().ok());
}

}  // namespace
}  // namespace dstrain::sharding
