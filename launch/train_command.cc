#include <ATen/Parallel.h>
#include <torch/headeronly/version.h>

#include <cstdio>

#include "base/fs.h"
#include "launch/commands.h"
#include "launch/config/config_loader.h"
#include "launch/device.h"
#include "launch/signals.h"
#include "launch/topology.h"
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
  std::shared_ptr<sharding::CommTrace> trace;
  if (cfg.log.level == "debug") {
    ASSIGN_OR_RETURN(trace, sharding::CommTrace::open(cfg.run.dir + "/comm/rank" +
                                                      std::to_string(world.rank()) + ".log"));
  }
  // Hybrid sharding: split before any communication thread exists (MPI_THREAD_SERIALIZED).
  std::unique_ptr<Topology> topology;
  if (cfg.zero.shard_group == "node") {
    ASSIGN_OR_RETURN(topology, Topology::create(world.comm()));
    if (world.rank() == 0) std::printf("topology: %s\n", topology->describe().c_str());
  }
  // log.level = "debug": every communicator of this rank writes to one diagnostics file.
  auto options = [&](std::string group) {
    sharding::CommOptions o;
    o.timeout_s = cfg.run.collective_timeout_s;
    o.trace = trace;
    o.group = std::move(group);
    return o;
  };
  ASSIGN_OR_RETURN(auto comm, sharding::MpiCommunicator::create(world.comm(), options("world")));
  // On GPUs the engine's collectives run over NCCL; host-side reductions stay on MPI.
  std::unique_ptr<sharding::Communicator> nccl;
  if (device.is_cuda()) {
    ASSIGN_OR_RETURN(
        nccl, sharding::make_nccl_communicator(world.comm(), device.index(), options("world")));
  }
  // zero.shard_group = "node": the engine shards over the node and all-reduces across nodes. On
  // GPUs both groups are split off the world's NCCL communicator (declared after it, so
  // destroyed before it); on the CPU both run on the host communicator's thread (one thread
  // inside MPI). The groups' ranks are ordered as the topology's MPI groups are.
  std::unique_ptr<sharding::Communicator> node_comm, replicas;
  if (topology && device.is_cuda()) {
    ASSIGN_OR_RETURN(node_comm,
                     sharding::split_nccl_communicator(*nccl, topology->node(),
                                                       topology->local_rank(), options("node")));
    ASSIGN_OR_RETURN(
        replicas, sharding::split_nccl_communicator(*nccl, topology->local_rank(), topology->node(),
                                                    options("replicas")));
  } else if (topology) {
    ASSIGN_OR_RETURN(node_comm, comm->create_sharing_thread(topology->intra_node(), "node"));
    ASSIGN_OR_RETURN(replicas, comm->create_sharing_thread(topology->inter_node(), "replicas"));
  }
  if (device.is_cuda() && world.rank() == 0) {
    ASSIGN_OR_RETURN(std::string version, sharding::nccl_version_string());
    std::printf("device: one GPU per rank (cuda:<local rank>), NCCL %s\n", version.c_str());
  }
  // A run.dir another rank just created must exist before rank 0's metrics file is opened.
  RETURN_IF_ERROR(comm->barrier());
  runtime::RunOptions run;
  run.resume = cmd.resume;
  run.config_toml = config_to_toml(cfg);
  run.dstrain_version = DSTRAIN_VERSION;
  run.engine_comm = topology ? node_comm.get() : nccl.get();
  run.engine_replicas = replicas.get();
  // Installed after MPI_Init so that the handlers are ours, not the MPI library's.
  ASSIGN_OR_RETURN(std::unique_ptr<StopSignals> signals, StopSignals::install());
  run.stop_requested = [&stop = *signals] { return stop.requested(); };
  ASSIGN_OR_RETURN(auto trainer, runtime::Trainer::create(cfg, *comm, device, run));
  ASSIGN_OR_RETURN(runtime::TrainSummary summary, trainer->run());
  if (world.rank() == 0) {
    if (summary.steps == summary.start_step) {
      std::printf(
          "done: the checkpoint resumed from is already at train.steps = %lld; nothing to "
          "train (--resume never starts afresh)",
          static_cast<long long>(cfg.train.steps));
    } else {
      std::printf("done: steps %lld..%lld, loss %.4f -> %.4f",
                  static_cast<long long>(summary.start_step + 1),
                  static_cast<long long>(summary.steps), summary.first_loss, summary.last_loss);
    }
    if (summary.last_eval_loss) std::printf(", eval loss %.4f", *summary.last_eval_loss);
    std::printf("\noutputs: %s/metrics.jsonl\n", cfg.run.dir.c_str());
    if (summary.last_checkpoint) std::printf("checkpoint: %s\n", summary.last_checkpoint->c_str());
  }
  return base::Status::Ok();
}

}  // namespace dstrain::launch
