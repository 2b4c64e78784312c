// `dstrain bench comm`: bus bandwidth of the Communicator's collectives over message sizes,
// computed as nccl-tests does, so figures compare with other tools' (docs/performance.md). On
// GPUs it measures the NCCL communicator on CUDA tensors, on the CPU the MPI one.
#include <ATen/detail/CUDAHooksInterface.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>

#include "launch/commands.h"
#include "launch/device.h"
#include "sharding/mpi_communicator.h"
#include "sharding/nccl_factory.h"

namespace dstrain::launch {
namespace {

using Clock = std::chrono::steady_clock;
using Issue = std::function<std::unique_ptr<sharding::Work>()>;

// Default message sizes in MiB: GPUs reach their bus bandwidth only from tens of MiB up.
const std::vector<int64_t> kCpuSizesMib = {1, 4, 16, 64};
const std::vector<int64_t> kGpuSizesMib = {1, 4, 16, 64, 256, 1024};

// Blocks the host until every stream of `device` is idle. NCCL's Work::wait() only orders the
// current stream after the collective, so without this the clock would stop at enqueue time.
base::Status sync_device(const at::Device& device) {
  if (!device.is_cuda()) return base::Status::Ok();  // MPI's wait() already blocks the host
  try {
    at::detail::getCUDAHooks().deviceSynchronize(device.index());
  } catch (const c10::Error& e) {
    return base::Status::Internal(std::string("device synchronize: ") + e.what_without_backtrace());
  }
  return base::Status::Ok();
}

struct Timing {
  at::Device device;
  sharding::Communicator& comm;
  int warmup;
  int iters;
};

// Seconds per operation over `iters` back-to-back collectives, the slowest rank's figure (every
// rank's clock starts after the same barrier; the collective ends when its last rank is done).
base::StatusOr<double> time_op(const Timing& t, const Issue& issue) {
  for (int i = 0; i < t.warmup; ++i) RETURN_IF_ERROR(issue()->wait());
  RETURN_IF_ERROR(sync_device(t.device));
  RETURN_IF_ERROR(t.comm.barrier());
  const auto t0 = Clock::now();
  for (int i = 0; i < t.iters; ++i) RETURN_IF_ERROR(issue()->wait());
  RETURN_IF_ERROR(sync_device(t.device));
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count() / t.iters;
  try {
    at::Tensor slowest =
        at::full({1}, seconds, at::TensorOptions().dtype(at::kDouble).device(t.device));
    RETURN_IF_ERROR(sharding::all_reduce_now(t.comm, slowest, sharding::ReduceOp::kMax));
    return slowest.item<double>();
  } catch (const c10::Error& e) {
    return base::Status::Internal(std::string("bench comm: ") + e.what_without_backtrace());
  }
}

base::StatusOr<std::unique_ptr<sharding::Communicator>> make_communicator(const at::Device& device,
                                                                          World& world) {
  // The watchdog's limit for one collective: run.collective_timeout_s's default.
  constexpr double kTimeoutS = 60;
  if (device.is_cuda()) {
    return sharding::make_nccl_communicator(world.comm(), device.index(), kTimeoutS);
  }
  ASSIGN_OR_RETURN(auto comm, sharding::MpiCommunicator::create(world.comm()));
  return std::unique_ptr<sharding::Communicator>(std::move(comm));
}

}  // namespace

base::Status run_bench_comm(const Command& cmd, World& world) {
  ASSIGN_OR_RETURN(const at::Device device, select_device(cmd.bench_device, world));
  ASSIGN_OR_RETURN(auto comm, make_communicator(device, world));
  const int n = comm->size();
  std::vector<int64_t> sizes = cmd.bench_sizes_mib;
  if (sizes.empty()) sizes = device.is_cuda() ? kGpuSizesMib : kCpuSizesMib;
  // NCCL sets up its channels and buffers on first use: a few more warm-up rounds than MPI needs.
  const Timing timing{device, *comm, device.is_cuda() ? 5 : 1, cmd.bench_iters};
  nlohmann::json results = nlohmann::json::array();
  if (world.rank() == 0) {
    std::printf("%-15s %10s %12s %12s\n", "collective", "MiB", "time_ms", "busbw_GB/s");
  }
  for (int64_t mib : sizes) {
    const int64_t numel = (mib << 20) / 4 / n * n;  // fp32, divisible into shards
    const auto options = at::TensorOptions().dtype(at::kFloat).device(device);
    at::Tensor full, shard;
    try {
      full = at::ones({numel}, options);
      shard = at::ones({numel / n}, options);
    } catch (const c10::Error& e) {
      return base::Status::Internal("bench comm: " + std::to_string(mib) + " MiB on " +
                                    device.str() + ": " + e.what_without_backtrace());
    }
    const double bytes = static_cast<double>(numel) * 4;
    // Bus bandwidth factors of nccl-tests: what each rank's link carries relative to `bytes`.
    struct Case {
      const char* name;
      double factor;
      Issue issue;
    };
    const std::vector<Case> cases = {
        {"all_reduce", 2.0 * (n - 1) / n,
         [&] { return comm->all_reduce(full, sharding::ReduceOp::kSum); }},
        {"all_gather", 1.0 * (n - 1) / n, [&] { return comm->all_gather(shard, full); }},
        {"reduce_scatter", 1.0 * (n - 1) / n,
         [&] { return comm->reduce_scatter(full, shard, sharding::ReduceOp::kSum); }},
    };
    for (const Case& c : cases) {
      ASSIGN_OR_RETURN(double seconds, time_op(timing, c.issue));
      const double busbw = bytes * c.factor / seconds / 1e9;
      if (world.rank() == 0) {
        std::printf("%-15s %10lld %12.3f %12.3f\n", c.name, static_cast<long long>(mib),
                    seconds * 1e3, busbw);
      }
      results.push_back({{"op", c.name},
                         {"mib", mib},
                         {"bytes", bytes},
                         {"time_s", seconds},
                         {"busbw_gbps", busbw}});
    }
  }
  if (world.rank() == 0) {
    nlohmann::json out = {{"bench", "comm"},        {"backend", device.is_cuda() ? "nccl" : "mpi"},
                          {"device", device.str()}, {"dtype", "fp32"},
                          {"world_size", n},        {"iters", cmd.bench_iters},
                          {"results", results}};
    std::printf("%s\n", out.dump().c_str());
    std::fflush(stdout);
  }
  return base::Status::Ok();
}

}  // namespace dstrain::launch
