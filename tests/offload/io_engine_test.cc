#include "offload/io_engine.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "base/fs.h"
#include "offload/fault_io_engine.h"
#include "offload/host_buffer.h"
#include "offload/uring_io_engine.h"

namespace dstrain::offload {
namespace {

constexpr size_t kBlock = 64 << 10;

// A scratch directory where O_DIRECT works: /tmp when its file system takes it, else the
// working directory (the build tree).
class IoEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (std::string base : {"/tmp", "."}) {
      std::string pattern = base + "/dstrain-io-XXXXXX";
      if (mkdtemp(pattern.data()) == nullptr) continue;
      const std::string probe = pattern + "/probe";
      const int fd = ::open(probe.c_str(), O_RDWR | O_CREAT | O_DIRECT, 0644);
      if (fd >= 0) {
        ::close(fd);
        ::unlink(probe.c_str());
        dir_ = pattern;
        break;
      }
      (void)base::remove_tree(pattern);
    }
    ASSERT_FALSE(dir_.empty()) << "no directory here takes O_DIRECT";
  }
  void TearDown() override {
    if (!dir_.empty()) EXPECT_TRUE(base::remove_tree(dir_).ok());
  }

  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  HostBuffer buffer(size_t bytes) {
    auto b = alloc_->allocate(bytes);
    EXPECT_TRUE(b.ok());
    return std::move(*b);
  }

  // Distinct bytes per (seed, position), so misplaced blocks show.
  static void fill(HostBuffer& b, uint32_t seed) {
    auto* p = static_cast<uint32_t*>(b.data());
    for (size_t i = 0; i < b.size() / 4; ++i) p[i] = seed * 2654435761u + static_cast<uint32_t>(i);
  }
  static bool same(const HostBuffer& a, const HostBuffer& b, size_t from, size_t bytes) {
    return std::memcmp(static_cast<char*>(a.data()) + from, static_cast<char*>(b.data()) + from,
                       bytes) == 0;
  }

  static std::unique_ptr<IoEngine> engine(int queue_depth, bool direct = true) {
    auto e = make_uring_io_engine(IoOptions{queue_depth, kBlock, direct});
    EXPECT_TRUE(e.ok()) << e.status().to_string();
    return e.ok() ? std::move(*e) : nullptr;
  }

  // Writes `b` to a new file through a plain engine and returns nothing but success.
  void write_file(const std::string& p, HostBuffer& b) {
    auto e = engine(4);
    auto f = e->open(p, /*create=*/true);
    ASSERT_TRUE(f.ok()) << f.status().to_string();
    auto t = e->submit(IoOp::kWrite, *f, 0, b.data(), b.size());
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    ASSERT_TRUE(e->wait(*t).ok());
    ASSERT_TRUE(e->sync(*f).ok());
    ASSERT_TRUE(e->close(*f).ok());
  }

  void read_file(const std::string& p, HostBuffer& b) {
    auto e = engine(4);
    auto f = e->open(p, /*create=*/false);
    ASSERT_TRUE(f.ok()) << f.status().to_string();
    auto t = e->submit(IoOp::kRead, *f, 0, b.data(), b.size());
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    const base::Status s = e->wait(*t);
    ASSERT_TRUE(s.ok()) << s.to_string();
  }

  std::unique_ptr<HostAllocator> alloc_ = make_aligned_host_allocator();
  std::string dir_;
};

TEST_F(IoEngineTest, RoundTripOfManyBlocksOverSeveralFiles) {
  // More blocks than the queue depth, a last block shorter than the others, several transfers
  // per file in flight at once, and waits in another order than the submits.
  constexpr int kFiles = 3;
  constexpr size_t kBytes = (3 << 20) + 3 * 4096;
  auto e = engine(/*queue_depth=*/8);
  std::vector<HostBuffer> out, in;
  std::vector<int> files;
  std::vector<IoTicket> tickets;
  for (int i = 0; i < kFiles; ++i) {
    auto f = e->open(path("f" + std::to_string(i)), /*create=*/true);
    ASSERT_TRUE(f.ok()) << f.status().to_string();
    files.push_back(*f);
    out.push_back(buffer(kBytes));
    in.push_back(buffer(kBytes));
    fill(out.back(), 100 + i);
    std::memset(in.back().data(), 0, kBytes);
    // Two transfers per file: the second half first.
    char* data = static_cast<char*>(out.back().data());
    const size_t half = kBytes / 2 / 4096 * 4096;
    for (auto [at, n] : {std::pair<size_t, size_t>{half, kBytes - half}, {0, half}}) {
      auto t = e->submit(IoOp::kWrite, *f, static_cast<int64_t>(at), data + at, n);
      ASSERT_TRUE(t.ok()) << t.status().to_string();
      tickets.push_back(*t);
    }
  }
  for (auto it = tickets.rbegin(); it != tickets.rend(); ++it) {
    const base::Status s = e->wait(*it);
    ASSERT_TRUE(s.ok()) << s.to_string();
  }
  for (int f : files) ASSERT_TRUE(e->sync(f).ok());
  tickets.clear();
  for (int i = 0; i < kFiles; ++i) {
    auto t = e->submit(IoOp::kRead, files[i], 0, in[i].data(), kBytes);
    ASSERT_TRUE(t.ok());
    tickets.push_back(*t);
  }
  for (IoTicket t : tickets) ASSERT_TRUE(e->wait(t).ok());
  for (int i = 0; i < kFiles; ++i) {
    EXPECT_TRUE(same(out[i], in[i], 0, kBytes)) << "file " << i;
    ASSERT_TRUE(e->close(files[i]).ok());
  }
}

TEST_F(IoEngineTest, BufferedEngineRoundTripsUnalignedTransfers) {
  auto e = engine(/*queue_depth=*/2, /*direct=*/false);
  auto f = e->open(path("buffered"), /*create=*/true);
  ASSERT_TRUE(f.ok());
  std::vector<char> out(300001), in(300001, 0);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>(i * 7 + 1);
  auto w = e->submit(IoOp::kWrite, *f, 13, out.data(), out.size());
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  ASSERT_TRUE(e->wait(*w).ok());
  auto r = e->submit(IoOp::kRead, *f, 13, in.data(), in.size());
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(e->wait(*r).ok());
  EXPECT_EQ(in, out);
}

TEST_F(IoEngineTest, UnalignedArgumentsAreRejectedUnderDirectIo) {
  auto e = engine(4);
  auto f = e->open(path("a"), /*create=*/true);
  ASSERT_TRUE(f.ok());
  HostBuffer b = buffer(3 * 4096);
  char* data = static_cast<char*>(b.data());
  for (auto [buf, at, n] : {std::tuple<char*, int64_t, size_t>{data + 1, 0, 4096},
                            {data, 512, 4096},
                            {data, 0, 4000},
                            {data, -4096, 4096}}) {
    auto t = e->submit(IoOp::kWrite, *f, at, buf, n);
    ASSERT_FALSE(t.ok()) << "offset " << at << " size " << n;
    EXPECT_EQ(t.status().code(), base::StatusCode::kInvalidArgument);
  }
  // The engine is still usable.
  auto t = e->submit(IoOp::kWrite, *f, 4096, data, 2 * 4096);
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(e->wait(*t).ok());
}

TEST_F(IoEngineTest, ReadingPastTheEndOfTheFileIsAnError) {
  HostBuffer out = buffer(2 * kBlock + 8192);
  fill(out, 7);
  write_file(path("short"), out);
  auto e = engine(4);
  auto f = e->open(path("short"), /*create=*/false);
  ASSERT_TRUE(f.ok());
  HostBuffer in = buffer(4 * kBlock);
  // The block that straddles the end gets 8192 bytes, is resubmitted for the rest, gets nothing.
  auto t = e->submit(IoOp::kRead, *f, 0, in.data(), in.size());
  ASSERT_TRUE(t.ok());
  const base::Status s = e->wait(*t);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), base::StatusCode::kIOError);
  EXPECT_NE(s.message().find("read of " + path("short")), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("end of file"), std::string::npos) << s.message();
  // Entirely beyond the end, too.
  auto beyond = e->submit(IoOp::kRead, *f, 16 * kBlock, in.data(), 4096);
  ASSERT_TRUE(beyond.ok());
  const base::Status s2 = e->wait(*beyond);
  ASSERT_FALSE(s2.ok());
  EXPECT_NE(s2.message().find("at offset " + std::to_string(16 * kBlock)), std::string::npos)
      << s2.message();
}

TEST_F(IoEngineTest, BufferedReadPastAnUnalignedEndIsAnError) {
  // Without O_DIRECT the kernel returns the 10000 bytes there are; the remainder is resubmitted
  // and meets the end of the file.
  auto e = engine(2, /*direct=*/false);
  auto f = e->open(path("odd"), /*create=*/true);
  ASSERT_TRUE(f.ok());
  std::vector<char> out(10000, 'x'), in(12288);
  auto w = e->submit(IoOp::kWrite, *f, 0, out.data(), out.size());
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(e->wait(*w).ok());
  auto exact = e->submit(IoOp::kRead, *f, 0, in.data(), 10000);
  ASSERT_TRUE(exact.ok());
  EXPECT_TRUE(e->wait(*exact).ok());
  auto over = e->submit(IoOp::kRead, *f, 0, in.data(), in.size());
  ASSERT_TRUE(over.ok());
  const base::Status s = e->wait(*over);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("at offset 10000"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("end of file after 0 bytes"), std::string::npos) << s.message();
}

TEST_F(IoEngineTest, TicketsAndFilesAreChecked) {
  auto e = engine(2);
  auto missing = e->open(path("missing"), /*create=*/false);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), base::StatusCode::kIOError);
  EXPECT_NE(missing.status().message().find(path("missing")), std::string::npos);

  auto f = e->open(path("t"), /*create=*/true);
  ASSERT_TRUE(f.ok());
  HostBuffer b = buffer(8 * kBlock);
  fill(b, 3);
  auto t = e->submit(IoOp::kWrite, *f, 0, b.data(), b.size());
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(e->close(*f).code(), base::StatusCode::kInvalidArgument);  // not yet waited for
  EXPECT_TRUE(e->wait(*t).ok());
  EXPECT_EQ(e->wait(*t).code(), base::StatusCode::kInvalidArgument);  // twice
  EXPECT_EQ(e->wait(12345).code(), base::StatusCode::kInvalidArgument);
  EXPECT_TRUE(e->close(*f).ok());
  EXPECT_EQ(e->submit(IoOp::kRead, *f, 0, b.data(), 4096).status().code(),
            base::StatusCode::kInvalidArgument);

  // Opening an existing file never truncates it.
  auto again = e->open(path("t"), /*create=*/true);
  ASSERT_TRUE(again.ok());
  HostBuffer in = buffer(b.size());
  auto r = e->submit(IoOp::kRead, *again, 0, in.data(), in.size());
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(e->wait(*r).ok());
  EXPECT_TRUE(same(b, in, 0, b.size()));
}

TEST(IoEngineOptions, BadOptionsAreUsageErrors) {
  for (IoOptions o : {IoOptions{0, kBlock, true}, IoOptions{5000, kBlock, true},
                      IoOptions{4, 1000, true}, IoOptions{4, 0, false}}) {
    auto e = make_uring_io_engine(o);
    ASSERT_FALSE(e.ok()) << o.queue_depth << " " << o.block_bytes;
    EXPECT_EQ(e.status().code(), base::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(make_uring_io_engine(IoOptions{4, 1000, false}).ok());
}

TEST_F(IoEngineTest, DirectIoRefusedByTheFileSystemIsNamed) {
  // tmpfs refused O_DIRECT before Linux 6.6; where it takes it, there is nothing to test.
  const std::string probe = "/dev/shm/dstrain-io-probe-" + std::to_string(::getpid());
  const int fd = ::open(probe.c_str(), O_RDWR | O_CREAT | O_DIRECT, 0644);
  if (fd >= 0) {
    ::close(fd);
    ::unlink(probe.c_str());
    GTEST_SKIP() << "/dev/shm takes O_DIRECT on this kernel";
  }
  auto e = engine(2);
  auto f = e->open(probe, /*create=*/true);
  ::unlink(probe.c_str());
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("O_DIRECT"), std::string::npos) << f.status().message();
}

// --- Injected faults: the wrapped engine's requests are blocks of kBlock bytes.

std::unique_ptr<IoEngine> faulty(std::vector<Fault> faults) {
  auto inner = make_uring_io_engine(IoOptions{4, kBlock, true});
  EXPECT_TRUE(inner.ok());
  auto e = make_fault_io_engine(std::move(*inner), FaultOptions{kBlock, std::move(faults)});
  EXPECT_TRUE(e.ok()) << e.status().to_string();
  return std::move(*e);
}

TEST_F(IoEngineTest, InjectedEioFailsOneWriteAndKeepsEarlierData) {
  HostBuffer before = buffer(8 * kBlock), after = buffer(8 * kBlock), in = buffer(8 * kBlock);
  fill(before, 1);
  fill(after, 2);
  write_file(path("eio"), before);
  auto e = faulty({Fault{FaultKind::kEio, /*request=*/2, std::nullopt}});
  auto f = e->open(path("eio"), /*create=*/false);
  ASSERT_TRUE(f.ok());
  auto t = e->submit(IoOp::kWrite, *f, 0, after.data(), after.size());
  ASSERT_TRUE(t.ok());
  const base::Status s = e->wait(*t);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), base::StatusCode::kIOError);
  EXPECT_EQ(s.message(), "write of " + path("eio") + " at offset " + std::to_string(2 * kBlock) +
                             " (" + std::to_string(kBlock) + " bytes): " + std::strerror(EIO) +
                             " (EIO)");
  read_file(path("eio"), in);
  EXPECT_TRUE(same(in, after, 0, 2 * kBlock));
  EXPECT_TRUE(same(in, before, 2 * kBlock, kBlock));  // the failed block was not written
  EXPECT_TRUE(same(in, after, 3 * kBlock, 5 * kBlock));
}

TEST_F(IoEngineTest, InjectedEnospcNamesTheErrorAndSparesReads) {
  HostBuffer before = buffer(4 * kBlock), after = buffer(4 * kBlock), in = buffer(4 * kBlock);
  fill(before, 5);
  fill(after, 6);
  write_file(path("full"), before);
  const int64_t bad_byte = 3 * kBlock + 100;
  auto e = faulty({Fault{FaultKind::kEnospc, std::nullopt, bad_byte}});
  auto f = e->open(path("full"), /*create=*/false);
  ASSERT_TRUE(f.ok());
  auto r = e->submit(IoOp::kRead, *f, 0, in.data(), in.size());  // ENOSPC is for writes only
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(e->wait(*r).ok());
  EXPECT_TRUE(same(in, before, 0, in.size()));
  auto w = e->submit(IoOp::kWrite, *f, 0, after.data(), after.size());
  ASSERT_TRUE(w.ok());
  const base::Status s = e->wait(*w);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("(ENOSPC)"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("at offset " + std::to_string(3 * kBlock)), std::string::npos);
  read_file(path("full"), in);
  EXPECT_TRUE(same(in, after, 0, 3 * kBlock));
  EXPECT_TRUE(same(in, before, 3 * kBlock, kBlock));
}

TEST_F(IoEngineTest, InjectedShortReadIsAnEndOfFileError) {
  HostBuffer out = buffer(4 * kBlock), in = buffer(4 * kBlock);
  fill(out, 9);
  write_file(path("sr"), out);
  std::memset(in.data(), 0, in.size());
  auto e = faulty({Fault{FaultKind::kShortRead, /*request=*/1, std::nullopt}});
  auto f = e->open(path("sr"), /*create=*/false);
  ASSERT_TRUE(f.ok());
  auto t = e->submit(IoOp::kRead, *f, 0, in.data(), in.size());
  ASSERT_TRUE(t.ok());
  const base::Status s = e->wait(*t);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "read of " + path("sr") + " at offset " + std::to_string(kBlock) + " (" +
                             std::to_string(kBlock) + " bytes): end of file after " +
                             std::to_string(kBlock / 2) + " bytes");
  EXPECT_TRUE(same(in, out, 0, kBlock + kBlock / 2));  // what did arrive is right
  // The fault was the second request only: the next transfer reads everything.
  auto again = e->submit(IoOp::kRead, *f, 0, in.data(), in.size());
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(e->wait(*again).ok());
  EXPECT_TRUE(same(in, out, 0, in.size()));
}

TEST(FaultIoEngine, AFaultNamesExactlyOneTrigger) {
  for (Fault fault :
       {Fault{FaultKind::kEio, std::nullopt, std::nullopt}, Fault{FaultKind::kEio, 1, 4096}}) {
    auto inner = make_uring_io_engine(IoOptions{});
    ASSERT_TRUE(inner.ok());
    auto e = make_fault_io_engine(std::move(*inner), FaultOptions{kBlock, {fault}});
    ASSERT_FALSE(e.ok());
    EXPECT_EQ(e.status().code(), base::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace dstrain::offload
