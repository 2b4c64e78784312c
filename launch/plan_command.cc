// `dstrain plan`: what a job needs per rank (device memory by kind, host memory and NVMe by tier,
// bytes moved per step) from the same layouts the engine allocates (sharding/memory_plan.h), and
// whether that fits the hardware, with the smallest change that makes it fit
// (sharding/fit_advice.h). docs/plan.md gives the formulas.
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "launch/commands.h"
#include "launch/config/config_loader.h"
#include "runtime/hf_model/hf_config.h"
#include "runtime/model/llama.h"
#include "runtime/model/lora.h"
#include "sharding/fit_advice.h"
#include "sharding/memory_plan.h"

namespace dstrain::launch {
namespace {

constexpr double kGiB = static_cast<double>(int64_t{1} << 30);

double gib(double bytes) { return bytes / kGiB; }

// Bytes of this machine's memory; -1 when unknown.
int64_t host_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : -1;
}

// Free bytes of the file system holding `dir` (its nearest existing ancestor); -1 when unknown.
int64_t free_disk_bytes(std::string dir) {
  struct statvfs st {};
  while (!dir.empty() && statvfs(dir.c_str(), &st) != 0) {
    const size_t slash = dir.find_last_of('/');
    dir = slash == std::string::npos ? std::string() : dir.substr(0, slash);
  }
  if (dir.empty() && statvfs(".", &st) != 0) return -1;
  return static_cast<int64_t>(st.f_bavail) * static_cast<int64_t>(st.f_frsize);
}

int64_t gib_to_bytes(double g) { return static_cast<int64_t>(g * kGiB); }

sharding::Hardware hardware(const Command& cmd, const base::Config& cfg) {
  sharding::Hardware hw;
  hw.gpu_bytes = cmd.gpu_mem_gib >= 0 ? gib_to_bytes(cmd.gpu_mem_gib) : -1;
  hw.host_bytes = cmd.host_mem_gib >= 0 ? gib_to_bytes(cmd.host_mem_gib) : host_memory_bytes();
  const bool uses_nvme = cfg.offload.optimizer == "nvme" || cfg.offload.params == "nvme";
  hw.nvme_bytes = cmd.nvme_gib >= 0 ? gib_to_bytes(cmd.nvme_gib)
                  : uses_nvme       ? free_disk_bytes(cfg.offload.nvme_dir)
                                    : -1;
  hw.ranks_per_node = cmd.ranks_per_node;
  return hw;
}

nlohmann::json device_json(const sharding::DeviceBytes& d) {
  return {{"params", d.params},
          {"params_in_flight", d.params_in_flight},
          {"gradients", d.gradients},
          {"released_gradients", d.released_gradients},
          {"optimizer", d.optimizer},
          {"activations", d.activations},
          {"comm_buffers", d.comm_buffers},
          {"workspace", d.workspace},
          {"persistent", d.persistent},
          {"peak", d.peak}};
}

nlohmann::json tier_json(const sharding::TierBytes& t) {
  return {
      {"optimizer", t.optimizer}, {"params", t.params}, {"staging", t.staging}, {"total", t.total}};
}

nlohmann::json plan_json(const sharding::MemoryPlan& p, const base::Config& cfg) {
  return {{"world", p.world},
          {"zero_stage", cfg.zero.stage},
          {"dtype", cfg.train.dtype},
          {"micro_batch", cfg.train.micro_batch},
          {"seq_len", cfg.train.seq_len},
          {"activation_checkpointing", cfg.train.activation_checkpointing},
          {"offload", {{"optimizer", cfg.offload.optimizer}, {"params", cfg.offload.params}}},
          {"parameters", p.parameters},
          {"trainable_parameters", p.trainable_parameters},
          {"grad_accumulation", p.grad_accumulation},
          {"per_rank_bytes",
           {{"compute_params", p.compute_params},
            {"master_params", p.master_params},
            {"optimizer_moments", p.optimizer_moments},
            {"gradients", p.device.gradients},
            {"total", p.device.peak + p.host.total + p.nvme.total}}},
          {"per_rank_tier_bytes",
           {{"device", p.device.peak}, {"host", p.host.total}, {"nvme", p.nvme.total}}},
          {"device_bytes", device_json(p.device)},
          {"host_bytes", tier_json(p.host)},
          {"nvme_bytes", tier_json(p.nvme)},
          {"activations",
           {{"per_layer_bytes", p.layer_activation_bytes},
            {"at_backward_bytes", p.activations_at_backward}}},
          {"comm",
           {{"intra_node_bytes_per_step", p.comm.intra_node},
            {"inter_node_bytes_per_step", p.comm.inter_node},
            {"shard_group", p.comm.shard_group},
            {"ranks_per_node", p.comm.ranks_per_node}}},
          {"comm_bytes_per_step_per_rank", p.comm.intra_node + p.comm.inter_node},
          {"host_device_bytes_per_step_per_rank", p.comm.host_device},
          {"nvme_bytes_per_step_per_rank", p.comm.nvme}};
}

void print_table(const sharding::MemoryPlan& p, const base::Config& cfg, const sharding::Verdict& v,
                 const sharding::Hardware& hw) {
  std::printf(
      "model: %lld parameters (%lld trainable); %d rank(s), zero stage %lld, %s, micro-batch %lld "
      "x %lld "
      "tokens, checkpointing %s, offload optimizer %s, params %s\n",
      static_cast<long long>(p.parameters), static_cast<long long>(p.trainable_parameters), p.world,
      static_cast<long long>(cfg.zero.stage), cfg.train.dtype.c_str(),
      static_cast<long long>(cfg.train.micro_batch), static_cast<long long>(cfg.train.seq_len),
      cfg.train.activation_checkpointing.c_str(), cfg.offload.optimizer.c_str(),
      cfg.offload.params.c_str());
  const sharding::DeviceBytes& d = p.device;
  std::printf("%-34s %10s\n", "per rank, GPU", "GiB");
  const std::pair<const char*, int64_t> rows[] = {
      {"  parameters", d.params},
      {"  parameters in flight (stage 3)", d.params_in_flight},
      {"  gradients", d.gradients},
      {"  optimizer state", d.optimizer},
      {"  activations (one micro-batch)", d.activations},
      {"  communication buffers", d.comm_buffers},
      {"  workspace", d.workspace},
      {"  peak", d.peak}};
  for (const auto& [name, bytes] : rows)
    std::printf("%-34s %10.3f\n", name, gib(static_cast<double>(bytes)));
  std::printf("%-34s %10.3f  (optimizer %.3f, params %.3f, staging %.3f)\n",
              "per rank, host memory", gib(static_cast<double>(p.host.total)),
              gib(static_cast<double>(p.host.optimizer)), gib(static_cast<double>(p.host.params)),
              gib(static_cast<double>(p.host.staging)));
  std::printf("%-34s %10.3f  (optimizer %.3f, params %.3f)\n", "per rank, NVMe",
              gib(static_cast<double>(p.nvme.total)), gib(static_cast<double>(p.nvme.optimizer)),
              gib(static_cast<double>(p.nvme.params)));
  std::printf(
      "%-34s %10.3f  (intra-node %.3f, inter-node %.3f; shard group %s, %d rank(s) per node)\n",
      "network per step per rank", gib(static_cast<double>(p.comm.intra_node + p.comm.inter_node)),
      gib(static_cast<double>(p.comm.intra_node)), gib(static_cast<double>(p.comm.inter_node)),
      p.comm.shard_group.c_str(), p.comm.ranks_per_node);
  std::printf("%-34s %10.3f\n", "host<->device per step",
              gib(static_cast<double>(p.comm.host_device)));
  if (p.comm.nvme > 0)
    std::printf("%-34s %10.3f\n", "NVMe read+written per step",
                gib(static_cast<double>(p.comm.nvme)));
  if (hw.gpu_bytes < 0) std::printf("GPU memory not checked (give --gpu-mem GiB)\n");
  if (v.fits) {
    std::printf("fits\n");
    for (const sharding::Change& c : v.faster) {
      std::printf("also fits, faster: %s (GPU peak %.3f GiB, host %.3f GiB per rank)\n",
                  c.description.c_str(), gib(static_cast<double>(c.plan.device.peak)),
                  gib(static_cast<double>(c.plan.host.total)));
    }
    return;
  }
  for (const std::string& problem : v.problems) std::printf("does not fit: %s\n", problem.c_str());
  if (!v.fixes.empty()) {
    std::printf("smallest change that fits: %s (GPU peak %.3f GiB, host %.3f GiB per rank)\n",
                v.fixes[0].description.c_str(),
                gib(static_cast<double>(v.fixes[0].plan.device.peak)),
                gib(static_cast<double>(v.fixes[0].plan.host.total)));
    for (size_t i = 1; i < v.fixes.size(); ++i)
      std::printf("  also fits: %s\n", v.fixes[i].description.c_str());
  } else if (v.combined_fits) {
    std::string all;
    for (const std::string& c : v.combined) all += (all.empty() ? "" : ", ") + c;
    std::printf("no single change fits; together these do: %s\n", all.c_str());
  } else {
    std::printf("no change tried makes it fit\n");
  }
}

nlohmann::json verdict_json(const sharding::Verdict& v) {
  nlohmann::json fixes = nlohmann::json::array();
  for (const sharding::Change& c : v.fixes) {
    fixes.push_back({{"change", c.description},
                     {"world", c.world},
                     {"device_peak_bytes", c.plan.device.peak},
                     {"host_bytes", c.plan.host.total},
                     {"nvme_bytes", c.plan.nvme.total}});
  }
  nlohmann::json j = {{"fits", v.fits}, {"problems", v.problems}, {"fixes", fixes}};
  if (!v.fits && !v.fixes.empty()) j["suggestion"] = v.fixes[0].description;
  nlohmann::json faster = nlohmann::json::array();
  for (const sharding::Change& c : v.faster) {
    faster.push_back({{"change", c.description},
                      {"device_peak_bytes", c.plan.device.peak},
                      {"host_bytes", c.plan.host.total}});
  }
  j["faster"] = faster;
  if (!v.fits && v.fixes.empty() && v.combined_fits) {
    std::string all;
    for (const std::string& c : v.combined) all += (all.empty() ? "" : ", ") + c;
    j["suggestion"] = all;
  }
  return j;
}

}  // namespace

base::Status run_plan(const Command& cmd) {
  ASSIGN_OR_RETURN(base::Config cfg, load_config(cmd.config_path, cmd.overrides));
  if (!cmd.hf_dir.empty()) cfg.model.hf_dir = cmd.hf_dir;
  // With a Hugging Face directory the architecture comes from its config.json alone.
  if (!cfg.model.hf_dir.empty()) {
    ASSIGN_OR_RETURN(cfg.model, runtime::hf_model::model_config_from_hf_dir(cfg.model.hf_dir));
  }
  RETURN_IF_ERROR(runtime::validate_llama_config(cfg.model));
  base::UnitList units = runtime::build_llama(cfg.model);
  if (cfg.lora.enabled) RETURN_IF_ERROR(runtime::apply_lora(units, cfg.lora));

  const sharding::Hardware hw = hardware(cmd, cfg);
  sharding::PlanOptions options;
  options.world = cmd.world > 0 ? cmd.world : 1;
  options.ranks_per_node = cmd.ranks_per_node;
  options.cuda = cfg.run.device != "cpu";
  options.gpu_bytes = hw.gpu_bytes > 0 ? hw.gpu_bytes : 0;
  ASSIGN_OR_RETURN(sharding::MemoryPlan plan, sharding::plan_memory(units, cfg, options));
  ASSIGN_OR_RETURN(sharding::Verdict verdict, sharding::judge(units, cfg, options, hw));

  if (cmd.json) {
    nlohmann::json j = plan_json(plan, cfg);
    j.update(verdict_json(verdict));
    j["machine"] = {{"gpu_memory_bytes", hw.gpu_bytes},
                    {"host_memory_bytes", hw.host_bytes},
                    {"nvme_free_bytes", hw.nvme_bytes},
                    {"ranks_per_node", hw.ranks_per_node > 0 ? hw.ranks_per_node : options.world}};
    std::printf("%s\n", j.dump(2).c_str());
    return base::Status::Ok();
  }
  print_table(plan, cfg, verdict, hw);
  return base::Status::Ok();
}

}  // namespace dstrain::launch
