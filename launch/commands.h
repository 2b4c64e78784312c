#pragma once
// The subcommands of the dstrain binary. Each returns a Status; launch/main.cc turns it into a
// message and an exit code.
#include "base/status.h"
#include "launch/cli.h"
#include "launch/world.h"

namespace dstrain::launch {

base::Status run_train(const Command& cmd, World& world);
base::Status run_plan(const Command& cmd);
base::Status run_prepare(const Command& cmd);
base::Status run_inspect(const Command& cmd);
base::Status run_export(const Command& cmd);
base::Status run_bench_comm(const Command& cmd, World& world);
// Single-process benchmarks (launch/bench_aio.cc, launch/bench_adam.cc, launch/bench_kernels.cc);
// the last line printed is JSON.
base::Status run_bench_aio(const Command& cmd);
base::Status run_bench_adam(const Command& cmd);
base::Status run_bench_kernels(const Command& cmd);

}  // namespace dstrain::launch
