// The dstrain binary: parses the command line, runs one command, and is the only place where an
// error becomes a message and an exit code (interface.md).
#include <mpi.h>

#include <cstdio>

#include "launch/commands.h"

namespace {

using dstrain::base::Status;

// Prints an error once: rank 0 for errors every rank sees alike, any rank otherwise.
int report(const Status& st, int rank, bool every_rank_alike) {
  if (st.ok()) return 0;
  if (!every_rank_alike || rank == 0) {
    if (rank > 0) std::fprintf(stderr, "[rank %d] ", rank);
    const bool preempted = st.code() == dstrain::base::StatusCode::kPreempted;
    std::fprintf(stderr, "%s: %s\n", preempted ? "preempted" : "error", st.message().c_str());
  }
  return dstrain::base::exit_code(st);
}

}  // namespace

int main(int argc, char** argv) {
  namespace launch = dstrain::launch;
  auto parsed = launch::parse_command_line(argc, argv);
  if (!parsed.ok()) {
    std::fprintf(stderr, "dstrain: %s\n", parsed.status().message().c_str());
    return dstrain::base::exit_code(parsed.status());
  }
  const launch::Command& cmd = *parsed;
  switch (cmd.kind) {
    case launch::CommandKind::kHelp:
      std::printf("%s", cmd.help_text.c_str());
      return 0;
    case launch::CommandKind::kVersion:
      std::printf("dstrain %s\n", DSTRAIN_VERSION);
      return 0;
    case launch::CommandKind::kPlan:
      return report(launch::run_plan(cmd), 0, true);
    case launch::CommandKind::kPrepare:
      return report(launch::run_prepare(cmd), 0, true);
    case launch::CommandKind::kInspect:
      return report(launch::run_inspect(cmd), 0, true);
    case launch::CommandKind::kExport:
      return report(launch::run_export(cmd), 0, true);
    case launch::CommandKind::kBench:
      if (cmd.bench_what == "aio") return report(launch::run_bench_aio(cmd), 0, true);
      if (cmd.bench_what == "adam") return report(launch::run_bench_adam(cmd), 0, true);
      if (cmd.bench_what == "kernels") return report(launch::run_bench_kernels(cmd), 0, true);
      break;
    default:
      break;
  }
  auto world = launch::World::init(&argc, &argv);
  if (!world.ok()) return report(world.status(), 0, false);
  Status st = cmd.kind == launch::CommandKind::kBench ? launch::run_bench_comm(cmd, **world)
                                                      : launch::run_train(cmd, **world);
  if (st.ok()) return 0;
  // Config and data errors are found identically on every rank before any collective starts,
  // and a preemption is agreed by all ranks at a step boundary; anything else may leave peers
  // waiting in a collective, so it ends the whole job.
  const bool alike = st.code() == dstrain::base::StatusCode::kInvalidArgument ||
                     st.code() == dstrain::base::StatusCode::kBadInput ||
                     st.code() == dstrain::base::StatusCode::kPreempted;
  const int code = report(st, (*world)->rank(), alike);
  if (!alike && (*world)->size() > 1) MPI_Abort(MPI_COMM_WORLD, code);
  return code;
}
