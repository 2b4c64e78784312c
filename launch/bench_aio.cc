// `dstrain bench aio`: write and read bandwidth of the io_uring IoEngine (O_DIRECT) over block
// sizes and queue depths, on one file that it creates and removes. tests/bench/aio_vs_fio.sh runs
// fio with the same pattern on the same file for comparison (docs/performance.md).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <nlohmann/json.hpp>

#include "launch/commands.h"
#include "offload/host_buffer.h"
#include "offload/io_engine.h"
#include "offload/uring_io_engine.h"

namespace dstrain::launch {
namespace {

using Clock = std::chrono::steady_clock;

const std::vector<int64_t> kBlockKib = {128, 1024, 4096};
const std::vector<int64_t> kQueueDepths = {1, 8, 32};
// Shallow queues of small blocks still move this much per transfer: one wait per request would
// time the owner's wake-ups rather than the engine.
constexpr int64_t kMinChunkBytes = int64_t{8} << 20;

// Creates the file (never one that exists: it is overwritten and removed) at its full size, as
// fio lays out its file, so the timed writes do not also grow it.
base::Status lay_out(const std::string& path, int64_t bytes) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    if (err == EEXIST) {
      return base::Status::InvalidArgument("bench aio: " + path +
                                           " exists; name a new file (the benchmark overwrites "
                                           "and removes it)");
    }
    return base::Status::IOError("bench aio: cannot create " + path + ": " +
                                 offload::errno_text(err));
  }
  const int err = posix_fallocate(fd, 0, bytes);
  ::close(fd);
  if (err != 0) {
    ::unlink(path.c_str());
    return base::Status::IOError("bench aio: cannot allocate " + std::to_string(bytes) +
                                 " bytes for " + path + ": " + offload::errno_text(err));
  }
  return base::Status::Ok();
}

// Removes the benchmark's file however the run ends.
class RemoveOnExit {
 public:
  explicit RemoveOnExit(std::string path) : path_(std::move(path)) {}
  ~RemoveOnExit() { ::unlink(path_.c_str()); }
  RemoveOnExit(const RemoveOnExit&) = delete;
  RemoveOnExit& operator=(const RemoveOnExit&) = delete;

 private:
  std::string path_;
};

// Transfers of queue_depth x block bytes or more (fio's buffer is that size), from two buffers that
// alternate: while the owner waits for one transfer the engine already holds the next, so the ring
// stays full between transfers.
struct Pass {
  offload::IoEngine& engine;
  int file;
  int64_t file_bytes;
  int64_t chunk_bytes;
  std::array<offload::HostBuffer, 2>& buffers;
  int iters;
};

// Seconds for `iters` sweeps over the whole file; a write sweep ends with fdatasync.
base::StatusOr<double> time_sweeps(const Pass& p, offload::IoOp op) {
  const auto t0 = Clock::now();
  for (int i = 0; i < p.iters; ++i) {
    std::deque<offload::IoTicket> in_flight;
    int next = 0;
    for (int64_t at = 0; at < p.file_bytes; at += p.chunk_bytes) {
      if (in_flight.size() == p.buffers.size()) {
        RETURN_IF_ERROR(p.engine.wait(in_flight.front()));
        in_flight.pop_front();
      }
      const size_t n = static_cast<size_t>(std::min(p.chunk_bytes, p.file_bytes - at));
      ASSIGN_OR_RETURN(offload::IoTicket t,
                       p.engine.submit(op, p.file, at, p.buffers[next].data(), n));
      in_flight.push_back(t);
      next = (next + 1) % static_cast<int>(p.buffers.size());
    }
    for (offload::IoTicket t : in_flight) RETURN_IF_ERROR(p.engine.wait(t));
    if (op == offload::IoOp::kWrite) RETURN_IF_ERROR(p.engine.sync(p.file));
  }
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

base::Status run_bench_aio(const Command& cmd) {
  const std::vector<int64_t> blocks = cmd.bench_block_kib.empty() ? kBlockKib : cmd.bench_block_kib;
  const std::vector<int64_t> depths =
      cmd.bench_queue_depths.empty() ? kQueueDepths : cmd.bench_queue_depths;
  const int64_t file_bytes = cmd.bench_file_mib << 20;
  const std::string& path = cmd.bench_file;

  const auto chunk_bytes = [&](int64_t kib, int64_t depth) {
    return std::min(file_bytes, std::max(kMinChunkBytes, (kib << 10) * depth));
  };
  int64_t buffer_bytes = 0;
  for (int64_t kib : blocks) {
    for (int64_t depth : depths) buffer_bytes = std::max(buffer_bytes, chunk_bytes(kib, depth));
  }
  auto alloc = offload::make_aligned_host_allocator();
  std::array<offload::HostBuffer, 2> buffers;
  for (offload::HostBuffer& b : buffers) {
    ASSIGN_OR_RETURN(b, alloc->allocate(static_cast<size_t>(buffer_bytes)));
    std::memset(b.data(), 0x5a, b.size());  // touched once, so page faults stay out of the timing
  }
  RETURN_IF_ERROR(lay_out(path, file_bytes));
  RemoveOnExit remove(path);

  std::printf("%10s %12s %12s %12s\n", "block_KiB", "queue_depth", "write_GB/s", "read_GB/s");
  nlohmann::json results = nlohmann::json::array();
  for (int64_t kib : blocks) {
    for (int64_t depth : depths) {
      const offload::IoOptions options{static_cast<int>(depth), static_cast<size_t>(kib) << 10,
                                       /*direct=*/true};
      ASSIGN_OR_RETURN(auto engine, offload::make_uring_io_engine(options));
      ASSIGN_OR_RETURN(const int file, engine->open(path, /*create=*/false));
      const Pass pass{*engine, file, file_bytes, chunk_bytes(kib, depth), buffers, cmd.bench_iters};
      ASSIGN_OR_RETURN(const double write_s, time_sweeps(pass, offload::IoOp::kWrite));
      ASSIGN_OR_RETURN(const double read_s, time_sweeps(pass, offload::IoOp::kRead));
      RETURN_IF_ERROR(engine->close(file));
      const double bytes = static_cast<double>(file_bytes) * cmd.bench_iters;
      const double write_gbps = bytes / write_s / 1e9;
      const double read_gbps = bytes / read_s / 1e9;
      std::printf("%10lld %12lld %12.3f %12.3f\n", static_cast<long long>(kib),
                  static_cast<long long>(depth), write_gbps, read_gbps);
      results.push_back({{"block_kib", kib},
                         {"queue_depth", depth},
                         {"bytes", bytes},
                         {"write_s", write_s},
                         {"read_s", read_s},
                         {"write_gbps", write_gbps},
                         {"read_gbps", read_gbps}});
    }
  }
  nlohmann::json out = {
      {"bench", "aio"},    {"engine", "io_uring"},           {"direct", true},
      {"file", path},      {"file_mib", cmd.bench_file_mib}, {"iters", cmd.bench_iters},
      {"results", results}};
  std::printf("%s\n", out.dump().c_str());
  std::fflush(stdout);
  return base::Status::Ok();
}

}  // namespace dstrain::launch
