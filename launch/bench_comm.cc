// `dstrain bench comm`: bus bandwidth of the Communicator's collectives over message sizes,
// computed as nccl-tests does, so figures compare with other tools' (docs/performance.md).
#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "launch/commands.h"
#include "sharding/mpi_communicator.h"

namespace dstrain::launch {
namespace {

using Clock = std::chrono::steady_clock;

// Times `iters` back-to-back collectives after one warm-up; returns seconds per operation.
template <typename Issue>
base::StatusOr<double> time_op(sharding::Communicator& comm, int iters, Issue issue) {
  RETURN_IF_ERROR(issue()->wait());
  RETURN_IF_ERROR(comm.barrier());
  const auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) RETURN_IF_ERROR(issue()->wait());
  RETURN_IF_ERROR(comm.barrier());
  return std::chrono::duration<double>(Clock::now() - t0).count() / iters;
}

}  // namespace

base::Status run_bench_comm(const Command& cmd, World& world) {
  ASSIGN_OR_RETURN(auto comm, sharding::MpiCommunicator::create(world.comm()));
  const int n = comm->size();
  std::vector<int64_t> sizes = cmd.bench_sizes_mib;
  if (sizes.empty()) sizes = {1, 4, 16, 64};
  nlohmann::json results = nlohmann::json::array();
  if (world.rank() == 0) {
    std::printf("%-15s %10s %12s %12s\n", "collective", "MiB", "time_ms", "busbw_GB/s");
  }
  for (int64_t mib : sizes) {
    const int64_t numel = (mib << 20) / 4 / n * n;  // fp32, divisible into shards
    at::Tensor full = at::ones({numel}, at::kFloat);
    at::Tensor shard = at::ones({numel / n}, at::kFloat);
    const double bytes = static_cast<double>(numel) * 4;
    struct Case { const char* name; double factor; std::function<std::unique_ptr<sharding::Work>()> issue; };
    std::vector<Case> cases = {
        {"all_reduce", 2.0 * (n - 1) / n, [&] { return comm->all_reduce(full, sharding::ReduceOp::kSum); }},
        {"all_gather", 1.0 * (n - 1) / n, [&] { return comm->all_gather(shard, full); }},
        {"reduce_scatter", 1.0 * (n - 1) / n,
         [&] { return comm->reduce_scatter(full, shard, sharding::ReduceOp::kSum); }},
    };
    for (const Case& c : cases) {
      ASSIGN_OR_RETURN(double seconds, time_op(*comm, cmd.bench_iters, c.issue));
      const double busbw = bytes * c.factor / seconds / 1e9;
      if (world.rank() == 0) std::printf("%-15s %10lld %12.3f %12.3f\n", c.name,
                                         static_cast<long long>(mib), seconds * 1e3, busbw);
      results.push_back({{"op", c.name}, {"bytes", bytes}, {"time_s", seconds}, {"busbw_gbps", busbw}});
    }
  }
  if (world.rank() == 0) {
    nlohmann::json out = {{"bench", "comm"}, {"backend", "mpi"}, {"world_size", n}, {"results", results}};
    std::printf("%s\n", out.dump().c_str());
  }
  return base::Status::Ok();
}

}  // namespace dstrain::launch
