#include "sharding/nvme_state.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "offload/fault_io_engine.h"
#include "offload/uring_io_engine.h"

namespace dstrain::sharding {
namespace {

// Shards of awkward sizes: records straddle 4096-byte pages and one spans several 1 MiB requests.
const std::vector<int64_t> kNumels = {1000, 300000, 3, 5000};

std::string temp_path(const std::string& name) {
  return "/tmp/dstrain_nvme_state_" + name + "_" + std::to_string(getpid()) + ".bin";
}

std::unique_ptr<offload::IoEngine> uring() {
  auto io = offload::make_uring_io_engine(offload::IoOptions{});
  EXPECT_TRUE(io.ok()) << io.status().message();
  return std::move(*io);
}

std::unique_ptr<NvmeStateFile> make_file(const std::string& path,
                                         std::unique_ptr<offload::IoEngine> io) {
  auto f = NvmeStateFile::create(path, kNumels, 3, at::kFloat,
                                 offload::make_aligned_host_allocator(), 4, std::move(io));
  EXPECT_TRUE(f.ok()) << f.status().message();
  return std::move(*f);
}

NvmeRecord filled(int64_t n, float base) {
  return {at::arange(n, at::kFloat) + base, at::full({n}, base + 1), at::full({n}, base + 2)};
}

NvmeRecord empty_like(int64_t n) {
  return {at::empty({n}, at::kFloat), at::empty({n}, at::kFloat), at::empty({n}, at::kFloat)};
}

void expect_equal(const NvmeRecord& a, const NvmeRecord& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i], b[i])) << "array " << i;
}

// What the host optimizer does: fetch one ahead, update, write back behind.
base::Status one_step(NvmeStateFile& f, float delta) {
  const int n = f.num_shards();
  RETURN_IF_ERROR(f.fetch(0));
  for (int i = 0; i < n; ++i) {
    if (i + 1 < n) RETURN_IF_ERROR(f.fetch(i + 1));
    ASSIGN_OR_RETURN(NvmeRecord s, f.acquire(i));
    s[0].add_(delta);
    s[2].mul_(2);
    RETURN_IF_ERROR(f.release(i));
  }
  return f.flush();
}

TEST(NvmeStateFile, PipelinedStepsUpdateEveryShardInPlace) {
  const std::string path = temp_path("pipeline");
  auto f = make_file(path, uring());
  for (int i = 0; i < f->num_shards(); ++i)
    ASSERT_TRUE(f->write(i, filled(kNumels[i], 10.0f * i)).ok());
  for (int step = 0; step < 3; ++step) ASSERT_TRUE(one_step(*f, 1.0f).ok());
  for (int i = 0; i < f->num_shards(); ++i) {
    NvmeRecord want = filled(kNumels[i], 10.0f * i);
    want[0].add_(3.0f);
    want[2].mul_(8);
    NvmeRecord got = empty_like(kNumels[i]);
    ASSERT_TRUE(f->read(i, got).ok());
    expect_equal(got, want);
  }
  f.reset();
  EXPECT_NE(access(path.c_str(), F_OK), 0) << "the scratch file outlived its owner";
}

TEST(NvmeStateFile, OneArrayRecordsOfSixteenBitValuesRoundTrip) {
  // offload.params = nvme: one bf16 array per shard.
  auto f = NvmeStateFile::create(temp_path("params"), kNumels, 1, at::kBFloat16,
                                 offload::make_aligned_host_allocator(), 4, uring());
  ASSERT_TRUE(f.ok()) << f.status().message();
  for (int i = 0; i < (*f)->num_shards(); ++i) {
    ASSERT_TRUE(
        (*f)->write(i, {(at::arange(kNumels[i], at::kFloat) * 0.5).to(at::kBFloat16)}).ok());
  }
  for (int i = (*f)->num_shards() - 1; i >= 0; --i) {
    NvmeRecord got = {at::empty({kNumels[i]}, at::kBFloat16)};
    ASSERT_TRUE((*f)->read(i, got).ok());
    EXPECT_TRUE(at::equal(got[0], (at::arange(kNumels[i], at::kFloat) * 0.5).to(at::kBFloat16)));
  }
}

// An engine that carries out each transfer only when it is waited for, in the order of the
// waits: a read submitted after a write but waited for first overtakes it, as a real engine's
// requests may complete in any order.
class DeferredIoEngine : public offload::IoEngine {
 public:
  explicit DeferredIoEngine(std::unique_ptr<offload::IoEngine> inner) : inner_(std::move(inner)) {}
  base::StatusOr<int> open(const std::string& path, bool create) override {
    return inner_->open(path, create);
  }
  base::Status close(int file) override { return inner_->close(file); }
  base::StatusOr<offload::IoTicket> submit(offload::IoOp op, int file, int64_t offset, void* buf,
                                           size_t bytes) override {
    pending_.push_back({op, file, offset, buf, bytes});
    return static_cast<offload::IoTicket>(pending_.size() - 1);
  }
  base::Status wait(offload::IoTicket ticket) override {
    const Transfer& t = pending_.at(static_cast<size_t>(ticket));
    ASSIGN_OR_RETURN(offload::IoTicket inner,
                     inner_->submit(t.op, t.file, t.offset, t.buf, t.bytes));
    return inner_->wait(inner);
  }
  base::Status sync(int file) override { return inner_->sync(file); }

 private:
  struct Transfer {
    offload::IoOp op;
    int file;
    int64_t offset;
    void* buf;
    size_t bytes;
  };
  std::unique_ptr<offload::IoEngine> inner_;
  std::vector<Transfer> pending_;
};

// Initialisation writes every shard behind (more shards than slots, moments as zeros); a fetch,
// a read or a synchronous write of a shard whose write is still in flight waits for it first.
TEST(NvmeStateFile, WritesBehindAreNeverOvertaken) {
  auto f = make_file(temp_path("behind"), std::make_unique<DeferredIoEngine>(uring()));
  for (int i = 0; i < f->num_shards(); ++i) {
    ASSERT_TRUE(f->write_behind(i, {at::arange(kNumels[i], at::kFloat) + i, {}, {}}).ok());
  }
  const auto expected = [](int i) {
    const int64_t n = kNumels[i];
    return NvmeRecord{at::arange(n, at::kFloat) + i, at::zeros({n}), at::zeros({n})};
  };
  // The last shard's write is still in flight in its slot: the fetch must not read before it.
  const int last = f->num_shards() - 1;
  ASSERT_TRUE(f->fetch(last).ok());
  auto fetched = f->acquire(last);
  ASSERT_TRUE(fetched.ok()) << fetched.status().message();
  expect_equal(*fetched, expected(last));
  f->discard(last);
  // A write behind then a synchronous write of the same shard: the later one stays.
  ASSERT_TRUE(f->write_behind(1, filled(kNumels[1], 5.0f)).ok());
  ASSERT_TRUE(f->write(1, filled(kNumels[1], 7.0f)).ok());
  // And a plain read after a write behind.
  ASSERT_TRUE(f->write_behind(2, filled(kNumels[2], 9.0f)).ok());
  for (int i = 0; i < f->num_shards(); ++i) {
    NvmeRecord got = empty_like(kNumels[i]);
    ASSERT_TRUE(f->read(i, got).ok());
    const NvmeRecord want = i == 1   ? filled(kNumels[1], 7.0f)
                            : i == 2 ? filled(kNumels[2], 9.0f)
                                     : expected(i);
    expect_equal(got, want);
  }
  for (int step = 0; step < 2; ++step) ASSERT_TRUE(one_step(*f, 1.0f).ok());
  NvmeRecord got = empty_like(kNumels[0]);
  ASSERT_TRUE(f->read(0, got).ok());
  NvmeRecord want = expected(0);
  want[0].add_(2.0f);
  expect_equal(got, want);
}

TEST(NvmeStateFile, AcquireWithoutFetchIsAnError) {
  auto f = make_file(temp_path("order"), uring());
  EXPECT_FALSE(f->acquire(1).ok());
  EXPECT_FALSE(f->release(2).ok());
}

// Each injected fault surfaces as an error naming the file, and the shards written before it
// keep their contents.
TEST(NvmeStateFile, InjectedFaultsAreNamedAndLeaveEarlierShardsIntact) {
  struct Case {
    offload::FaultKind kind;
    const char* text;
  };
  for (const Case c :
       {Case{offload::FaultKind::kEio, "EIO"}, Case{offload::FaultKind::kEnospc, "ENOSPC"},
        Case{offload::FaultKind::kShortRead, "end of file"}}) {
    const std::string path = temp_path("fault");
    // EIO and ENOSPC hit the write of shard 1; a short read hits its read in the first step.
    const bool on_write = c.kind != offload::FaultKind::kShortRead;
    // Shard 0's record is three 4096-aligned arrays of 1000 floats: 12288 bytes. The fault hits
    // shard 1's record, past it.
    offload::FaultOptions options;
    options.faults.push_back({c.kind, std::nullopt, int64_t{12288 + 4096}});
    auto faulty = offload::make_fault_io_engine(uring(), options);
    ASSERT_TRUE(faulty.ok()) << faulty.status().message();
    auto f = make_file(path, std::move(*faulty));
    ASSERT_TRUE(f->write(0, filled(kNumels[0], 1.0f)).ok());
    base::Status st = f->write(1, filled(kNumels[1], 2.0f));
    if (!on_write) {
      ASSERT_TRUE(st.ok()) << st.message();
      st = one_step(*f, 1.0f);
    }
    ASSERT_FALSE(st.ok()) << c.text;
    EXPECT_NE(st.message().find(path), std::string::npos) << st.message();
    EXPECT_NE(st.message().find(c.text), std::string::npos) << st.message();
    NvmeRecord got = empty_like(kNumels[0]);
    ASSERT_TRUE(f->read(0, got).ok());
    NvmeRecord want = filled(kNumels[0], 1.0f);
    if (!on_write) want[0].add_(1.0f), want[2].mul_(2);  // shard 0 was updated first
    expect_equal(got, want);
  }
}

}  // namespace
}  // namespace dstrain::sharding
