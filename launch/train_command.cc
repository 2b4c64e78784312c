#include <ATen/Parallel.h>
#include <torch/headeronly/version.h>

#include <cstdio>

#include "base/fs.h"
#include "launch/commands.h"
#include "launch/device.h"
#include "launch/signals.h"
#include "launch/config/config_loader.h"
#include "runtime/trainer.h"
#include "sharding/mpi_communicator.h"
#include "sharding/nccl_factory.h"

namespace dstrain::launch {
base::Status run_train(const Command& cmd, World& world) {
  ASSIGN_OR_RETURN(base::Config cfg, load_config(cmd.config_path, cmd.overrides));
  if (world.rank() == 0) {
    RETURN_IF_ERROR(base::make_dirs(cfg.run.dir).with_context("run.dir"));
    std::printf("dstrain %s | %s | LibTorch %s | %d threads per rank\n", DSTRAIN_VERSION,
                world.mpi_version().c_str(), TORCH_VERSION, at::get_num_threads());
    if (!world.launcher_warning().empty()) {
      std::fprintf(stderr, "warning: %s\n", world.launcher_warning().c_str());
    }
  }
  ASSIGN_OR_RETURN(at::Device device, select_device(cfg.run.device, world));
  ASSIGN_OR_RETURN(auto comm, sharding::MpiCommunicator::create(world.comm(),
                                                                  cfg.run.collective_timeout_s));
  // On GPUs the engine's collectives run over NCCL; host-side reductions stay on MPI.
  std::unique_ptr<sharding::Communicator> nccl;
  if (device.is_cuda()) {
    ASSIGN_OR_RETURN(nccl, sharding::make_nccl_communicator(world.comm(), device.index()));
    if (world.rank() == 0) {
      ASSIGN_OR_RETURN(std::string version, sharding::nccl_version_string());
      std::printf("device: one GPU per rank (cuda:<local rank>), NCCL %s\n", version.c_str());
    }
  }
  // A run.dir another rank just created must exist before rank 0's metrics file is opened.
  RETURN_IF_ERROR(comm->barrier());
  runtime::RunOptions run;
  run.resume = cmd.resume;
  run.config_toml = config_to_toml(cfg);
  run.dstrain_version = DSTRAIN_VERSION;
  run.engine_comm = nccl.get();
  // Installed after MPI_Init so that the handlers are ours, not the MPI library's.
  ASSIGN_OR_RETURN(std::unique_ptr<StopSignals> signals, StopSignals::install());
  run.stop_requested = [&stop = *signals] { return stop.requested(); };
  ASSIGN_OR_RETURN(auto trainer, runtime::Trainer::create(cfg, *comm, device, run));
  ASSIGN_OR_RETURN(runtime::TrainSummary summary, trainer->run());
  if (world.rank() == 0) {
    if (summary.steps == summary.start_step) {
      std::printf("done: the checkpoint resumed from is already at train.steps = %lld; nothing to "
                  "train (--resume never starts afresh)",
                  static_cast<long long>(cfg.train.steps));
    } else {
      std::printf("done: steps %lld..%lld, loss %.4f -> %.4f",
                  static_cast<long long>(summary.start_step + 1), static_cast<long long>(summary.steps),
                  summary.first_loss, summary.last_loss);
    }
    if (summary.last_eval_loss) std::printf(", eval loss %.4f", *summary.last_eval_loss);
    std::printf("\noutputs: %s/metrics.jsonl\n", cfg.run.dir.c_str());
    if (summary.last_checkpoint) std::printf("checkpoint: %s\n", summary.last_checkpoint->c_str());
  }
  return base::Status::Ok();
}

}  // namespace dstrain::launch
