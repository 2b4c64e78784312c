#include "runtime/trainer.h"

#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "runtime/data/sampler.h"
#include "runtime/data_source.h"
#include "runtime/device_memory.h"
#include "runtime/hf_model/hf_config.h"
#include "runtime/hf_model/hf_weights.h"
#include "runtime/lr_schedule.h"
#include "runtime/model/init.h"
#include "runtime/model/llama.h"
#include "runtime/model/lora.h"
#include "runtime/model/rope.h"
#include "runtime/model/varlen_attention.h"
#include "runtime/progress.h"
#include "runtime/step_profiler.h"

namespace dstrain::runtime {
namespace {

// lora.base_sharding: "auto" keeps the frozen base whole on every rank when it takes at most a
// quarter of the device's memory (always on the CPU), so stage 3 gathers only what trains.
bool replicate_frozen_base(const std::string& mode, const base::UnitList& units,
                           at::ScalarType dtype, const at::Device& device) {
  if (mode != "auto") return mode == "replicated";
  int64_t frozen = 0;
  for (const auto& unit : units) {
    for (const base::ParamSpec& p : unit->schema()) {
      if (!p.trainable && p.tied_to.empty()) frozen += p.numel();
    }
  }
  const int64_t total = device_memory_total_bytes(device);
  return total == 0 || frozen * static_cast<int64_t>(c10::elementSize(dtype)) <= total / 4;
}

at::ScalarType dtype_of(const std::string& name) {
  if (name == "bf16") return at::kBFloat16;
  if (name == "fp16") return at::kHalf;
  return at::kFloat;
}

// Sums `values` over all ranks in one collective (fp64, exact for counts below 2^53).
base::StatusOr<std::vector<double>> sum_over_ranks(sharding::Communicator& comm,
                                                   std::vector<double> values) {
  at::Tensor t = at::tensor(values, at::TensorOptions().dtype(at::kDouble));
  RETURN_IF_ERROR(sharding::all_reduce_now(comm, t, sharding::ReduceOp::kSum));
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

// The randomness key of a training sample (LoRA dropout): a function of the run seed and the
// sample's global index alone, so no rank, world size or recomputation changes it.
int64_t sample_key(int64_t seed, int64_t global_index) {
  uint64_t state =
      static_cast<uint64_t>(seed) * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(global_index);
  return static_cast<int64_t>(splitmix64_next(state));
}

}  // namespace

base::StatusOr<std::unique_ptr<Trainer>> Trainer::create(const base::Config& user_cfg,
                                                         sharding::Communicator& comm,
                                                         at::Device device, const RunOptions& run) {
  // With model.hf_dir the architecture comes from the checkpoint's config.json.
  base::Config cfg = user_cfg;
  if (!cfg.model.hf_dir.empty()) {
    ASSIGN_OR_RETURN(cfg.model, hf_model::model_config_from_hf_dir(cfg.model.hf_dir));
  }
  RETURN_IF_ERROR(validate_llama_config(cfg.model));
  ASSIGN_OR_RETURN(Dataset train, open_train_data(cfg.data, cfg.train, cfg.model));
  ASSIGN_OR_RETURN(std::optional<Dataset> eval, open_eval_data(cfg.data, cfg.train, cfg.model));
  ASSIGN_OR_RETURN(Sampler sampler, Sampler::create(train.num_samples(), cfg.train.global_batch,
                                                    cfg.train.micro_batch, comm.size(), comm.rank(),
                                                    static_cast<uint64_t>(cfg.run.seed)));
  std::unique_ptr<Trainer> t(
      new Trainer(cfg, comm, device, std::move(train), std::move(eval), std::move(sampler)));
  t->compute_dtype_ = dtype_of(cfg.train.dtype);

  sharding::EngineOptions options;
  options.zero = cfg.zero;
  options.optim = cfg.optim;
  options.compute_dtype = t->compute_dtype_;
  options.device = device;
  options.dynamic_loss_scale = cfg.train.dtype == "fp16";
  options.loss_scale_init = cfg.train.loss_scale_init;
  options.loss_scale_window = cfg.train.loss_scale_window;
  options.activation_checkpointing = cfg.train.activation_checkpointing;
  options.recompute_layers = cfg.train.recompute_layers;
  options.fused_weight_grad = cfg.train.fused_weight_grad;
  options.device_timeout_s = cfg.run.collective_timeout_s;
  options.offload = cfg.offload;
  options.offload_threads = at::get_num_threads();  // the rank's intra-op threads
  const int64_t seed = cfg.run.seed;
  auto init = [seed](const base::Unit& unit, at::TensorList out) {
    return init_unit_params(unit, out, seed);
  };
  base::UnitList units = build_llama(cfg.model);
  if (cfg.lora.enabled) RETURN_IF_ERROR(apply_lora(units, cfg.lora));
  options.replicate_frozen =
      replicate_frozen_base(cfg.lora.base_sharding, units, t->compute_dtype_, device);
  if ((cfg.zero.shard_group == "node") != (run.engine_replicas != nullptr)) {
    return base::Status::Internal("zero.shard_group = \"" + cfg.zero.shard_group +
                                  "\" needs the node's and the replicas' communicators exactly "
                                  "when it is \"node\"");
  }
  sharding::Communicator& engine_comm = run.engine_comm != nullptr ? *run.engine_comm : comm;
  t->engine_comm_ = &engine_comm;
  ASSIGN_OR_RETURN(t->engine_, sharding::Engine::create(std::move(units), options, engine_comm,
                                                        init, run.engine_replicas));
  if (t->is_root()) {
    ASSIGN_OR_RETURN(t->metrics_, MetricsWriter::open(cfg.run.dir + "/metrics.jsonl"));
  }
  checkpoint::CheckpointOptions ck;
  ck.run_dir = cfg.run.dir;
  ck.config = cfg.checkpoint;
  ck.config_toml = run.config_toml;
  ck.dstrain_version = run.dstrain_version;
  ck.dtype = cfg.train.dtype;
  ck.seed = cfg.run.seed;
  ck.zero_stage = cfg.zero.stage;
  checkpoint::CheckpointIo* io = run.io;
  if (io == nullptr) {
    t->posix_io_ = std::make_unique<checkpoint::PosixIo>();
    io = t->posix_io_.get();
  }
  t->checkpointer_ = std::make_unique<checkpoint::Checkpointer>(std::move(ck), comm, *io);
  t->resume_ = run.resume;
  t->stop_requested_ = run.stop_requested;
  if (const char* at = std::getenv("DSTRAIN_TEST_STOP_AT")) {
    long long rank = -1, step = -1;
    if (std::sscanf(at, "%lld:%lld", &rank, &step) != 2) {
      return base::Status::InvalidArgument(std::string("DSTRAIN_TEST_STOP_AT=") + at +
                                           ": expected RANK:STEP");
    }
    t->test_stop_rank_ = static_cast<int>(rank);
    t->test_stop_step_ = step;
  }
  return t;
}

base::StatusOr<sharding::MicroBatch> Trainer::micro_batch(
    const Dataset& ds, const std::vector<int64_t>& ids, const std::vector<int64_t>* global_indices,
    int64_t* num_targets) const {
  ASSIGN_OR_RETURN(Batch batch, ds.batch(ids));
  // Packed batches: no dense mask where variable-length attention serves every layer.
  BatchTensors t =
      to_tensors(batch, device_,
                 !varlen_attention_serves(device_, compute_dtype_, cfg_.model.resolved_head_dim()));
  *num_targets = t.num_targets;
  sharding::MicroBatch mb;
  mb.input_ids = t.input_ids;
  mb.target_ids = t.target_ids;
  mb.ctx = make_step_context(cfg_.model, t.position_ids, compute_dtype_);
  mb.ctx.attn_mask = t.attn_mask;  // packed batches; undefined (plain causal) otherwise
  mb.ctx.cu_seqlens = t.cu_seqlens;
  mb.ctx.max_seqlen = t.max_seqlen;
  if (global_indices != nullptr) {
    std::vector<int64_t> keys;
    for (int64_t g : *global_indices) keys.push_back(sample_key(cfg_.run.seed, g));
    mb.ctx.sample_keys = at::tensor(keys, at::kLong);
    mb.ctx.training = true;
  }
  return mb;
}

base::StatusOr<double> Trainer::evaluate() {
  ASSIGN_OR_RETURN(auto batches, eval_batches(eval_->num_samples(), cfg_.data.eval_batches,
                                              cfg_.train.micro_batch, comm_.size(), comm_.rank()));
  double ce = 0.0;
  double targets = 0.0;
  for (const auto& ids : batches) {
    int64_t n = 0;
    ASSIGN_OR_RETURN(sharding::MicroBatch mb, micro_batch(*eval_, ids, nullptr, &n));
    ASSIGN_OR_RETURN(double sum, engine_->eval_loss_sum(mb));
    ce += sum;
    targets += static_cast<double>(n);
  }
  ASSIGN_OR_RETURN(std::vector<double> total, sum_over_ranks(comm_, {ce, targets}));
  return total[0] / std::max(1.0, total[1]);
}

// `step` < 0 only commits the asynchronous save still in flight (at the end of training).
base::Status Trainer::save_checkpoint(int64_t step, Progress& progress, TrainSummary& summary) {
  std::vector<checkpoint::SavedCheckpoint> committed;
  if (step >= 0) {
    // Offloaded to NVMe, the state is paged in for the save and dropped again once the save has
    // written it or, when asynchronous, taken its own copy of it.
    RETURN_IF_ERROR(engine_->page_in_state());
    ASSIGN_OR_RETURN(committed, checkpointer_->start_save(*engine_, step));
    if (cfg_.offload.optimizer == "nvme") checkpointer_->wait_for_snapshot();
    RETURN_IF_ERROR(engine_->page_out_state(/*write_back=*/false));
  } else {
    ASSIGN_OR_RETURN(std::optional<checkpoint::SavedCheckpoint> last,
                     checkpointer_->finish_pending());
    if (last) committed.push_back(std::move(*last));
  }
  for (const checkpoint::SavedCheckpoint& c : committed) {
    summary.last_checkpoint = c.dir;
    if (!is_root()) continue;
    RETURN_IF_ERROR(metrics_->write({{"step", c.step},
                                     {"event", "checkpoint"},
                                     {"path", c.dir},
                                     {"stall_s", c.stall_s},
                                     {"commit_s", c.commit_s}}));
    char stall[48];
    std::snprintf(stall, sizeof(stall), " (training waited %.3f s)", c.stall_s);
    progress.message("checkpoint at step " + std::to_string(c.step) + ": " + c.dir + stall);
  }
  return base::Status::Ok();
}

base::Status Trainer::preempt(int64_t step, bool saved_at_step, Progress& progress,
                              TrainSummary& summary) {
  const std::string stopped = "stopped by SIGUSR1/SIGTERM after step " + std::to_string(step);
  if (!cfg_.checkpoint.enabled) {
    progress.finish();
    return base::Status::Preempted(stopped +
                                   "; checkpoint.enabled = false, so nothing was saved "
                                   "and a rerun starts afresh");
  }
  if (!saved_at_step) RETURN_IF_ERROR(save_checkpoint(step, progress, summary));
  RETURN_IF_ERROR(save_checkpoint(-1, progress, summary));  // commits an asynchronous save
  const std::string dir = summary.last_checkpoint.value_or("");
  if (is_root()) {
    RETURN_IF_ERROR(metrics_->write({{"step", step}, {"event", "preempted"}, {"path", dir}}));
  }
  progress.finish();
  return base::Status::Preempted(stopped + ": checkpoint " + dir +
                                 " committed; run again (--resume auto) to continue");
}

base::StatusOr<TrainSummary> Trainer::run() {
  TrainSummary summary;
  const base::TrainConfig& tc = cfg_.train;
  // Picks, loads and verifies in one pass; a corrupt checkpoint is skipped from inside the load,
  // so what it returns is the checkpoint actually loaded. load_s starts once every rank is here,
  // so it times the load rather than the ranks' head start.
  RETURN_IF_ERROR(comm_.barrier());
  const auto load_start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(std::optional<checkpoint::LoadedCheckpoint> loaded,
                   checkpointer_->resume(*engine_, resume_));
  std::optional<std::string> resume_dir;
  if (loaded) {
    resume_dir = loaded->dir;
    summary.start_step = loaded->step;
    const double load_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
    summary.resumed_from = *resume_dir;
    summary.steps = summary.start_step;
    if (is_root()) {
      RETURN_IF_ERROR(metrics_->write({{"step", summary.start_step},
                                       {"event", "resume"},
                                       {"path", *resume_dir},
                                       {"load_s", load_s}}));
      RETURN_IF_ERROR(metrics_->mark_restart(summary.start_step + 1));
    }
  } else if (!cfg_.model.hf_dir.empty()) {
    // A fresh run from a Hugging Face checkpoint: each rank reads only the ranges it keeps.
    RETURN_IF_ERROR(engine_->page_in_state());
    RETURN_IF_ERROR(hf_model::load_hf_weights(cfg_.model.hf_dir, *engine_));
  }
  Progress progress(summary.start_step, tc.steps, cfg_.log.progress_bar);
  if (is_root() && resume_dir) {
    progress.message("resumed from " + *resume_dir + " at step " +
                     std::to_string(summary.start_step));
  }
  if (is_root()) {
    char line[256];
    std::snprintf(line, sizeof(line),
                  "dstrain: %lld parameters, %d rank(s), zero stage %lld, %s, global batch %lld "
                  "(micro %lld x %lld accumulation), seq_len %lld, %lld %s",
                  static_cast<long long>(engine_->num_parameters()), comm_.size(),
                  static_cast<long long>(cfg_.zero.stage), tc.dtype.c_str(),
                  static_cast<long long>(tc.global_batch), static_cast<long long>(tc.micro_batch),
                  static_cast<long long>(sampler_.accumulation_steps()),
                  static_cast<long long>(tc.seq_len), static_cast<long long>(train_.num_samples()),
                  cfg_.data.packing ? "packed samples" : "samples");
    progress.message(line);
  }
  StepProfiler profiler(std::max<int64_t>(cfg_.run.profile_start, 1) - 1, cfg_.run.profile_steps,
                        device_.is_cuda(),
                        cfg_.run.dir + "/profile/rank" + std::to_string(comm_.rank()) + ".json");
  for (int64_t step = summary.start_step; step < tc.steps; ++step) {
    profiler.before_step(step);
    const auto t0 = std::chrono::steady_clock::now();
    const double lr = learning_rate(cfg_.optim, step, tc.steps);

    // Build this step's micro-batches first: the loss is normalised by the global target count.
    std::vector<sharding::MicroBatch> mbs;
    double local_targets = 0.0;
    const std::vector<std::vector<int64_t>> batches = sampler_.micro_batches(step);
    const std::vector<std::vector<int64_t>> globals = sampler_.global_indices(step);
    for (size_t i = 0; i < batches.size(); ++i) {
      int64_t n = 0;
      ASSIGN_OR_RETURN(sharding::MicroBatch mb, micro_batch(train_, batches[i], &globals[i], &n));
      mbs.push_back(std::move(mb));
      local_targets += static_cast<double>(n);
    }
    ASSIGN_OR_RETURN(std::vector<double> counts, sum_over_ranks(comm_, {local_targets}));
    const double global_targets = std::max(1.0, counts[0]);
    // Waits before this point are the trainer's own (same communicator on the CPU): not counted.
    RETURN_IF_ERROR(engine_comm_->take_wait_seconds().status());
    if (step + 1 == test_stop_step_ && comm_.rank() == test_stop_rank_) std::raise(SIGSTOP);

    double local_ce = 0.0;
    for (size_t i = 0; i < mbs.size(); ++i) {
      ASSIGN_OR_RETURN(
          double ce, engine_->forward_backward(mbs[i], 1.0 / global_targets, i + 1 == mbs.size()));
      local_ce += ce;
    }
    // An asynchronous checkpoint copies the state during this step's forward and backward; the
    // optimizer step changes it, so the copy must be done first.
    checkpointer_->wait_for_snapshot();
    ASSIGN_OR_RETURN(sharding::StepResult result, engine_->step(lr));
    RETURN_IF_ERROR(profiler.after_step(step));
    ASSIGN_OR_RETURN(double comm_wait, engine_comm_->take_wait_seconds());
    // log.level = "debug": the summary line of everything issued since the last one.
    RETURN_IF_ERROR(engine_comm_->end_step(step + 1));
    ASSIGN_OR_RETURN(std::vector<double> ce_total, sum_over_ranks(comm_, {local_ce}));
    // Peaks over all ranks in one collective: host RSS, device memory, unhidden communication,
    // whether any rank was asked to stop (riding along, so agreeing costs no extra latency), and
    // the caching allocator's trips to the driver so far.
    const bool stop_local = stop_requested_ && stop_requested_();
    const AllocatorCounts allocs = device_allocator_counts(device_);
    at::Tensor peaks = at::tensor(
        {static_cast<double>(host_rss_peak_bytes()),
         static_cast<double>(device_memory_peak_bytes(device_)), comm_wait, stop_local ? 1.0 : 0.0,
         static_cast<double>(allocs.device_allocs + allocs.device_frees),
         static_cast<double>(allocs.retries)},
        at::kDouble);
    RETURN_IF_ERROR(sharding::all_reduce_now(comm_, peaks, sharding::ReduceOp::kMax));
    const double loss = ce_total[0] / global_targets;
    const double step_time =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double tokens = static_cast<double>(tc.global_batch * tc.seq_len);

    if (result.skipped) ++summary.skipped_steps;
    if (step == summary.start_step) summary.first_loss = loss;
    summary.last_loss = loss;
    summary.steps = step + 1;
    if (is_root()) {
      nlohmann::json line = {
          {"step", step + 1},
          {"loss", loss},
          {"lr", lr},
          {"grad_norm", std::isfinite(result.grad_norm) ? nlohmann::json(result.grad_norm)
                                                        : nlohmann::json(nullptr)},
          {"tokens", static_cast<int64_t>(tokens) * (step + 1)},
          {"tokens_per_s", tokens / step_time},
          {"step_time_s", step_time},
          {"skipped_steps", summary.skipped_steps},
          {"gpu_mem_peak_bytes", static_cast<int64_t>(peaks[1].item<double>())},
          {"host_rss_peak_bytes", static_cast<int64_t>(peaks[0].item<double>())},
          {"comm_wait_s", peaks[2].item<double>()},
          {"gpu_driver_calls", static_cast<int64_t>(peaks[4].item<double>())},
          {"gpu_alloc_retries", static_cast<int64_t>(peaks[5].item<double>())}};
      if (cfg_.train.dtype == "fp16") line["loss_scale"] = result.loss_scale;
      RETURN_IF_ERROR(metrics_->write(line));
      if ((step + 1) % cfg_.log.every == 0 || step + 1 == tc.steps) {
        progress.update(step + 1, loss, tokens / step_time, lr);
      }
    }
    const bool eval_now =
        eval_ && tc.eval_every > 0 && ((step + 1) % tc.eval_every == 0 || step + 1 == tc.steps);
    if (eval_now) {
      ASSIGN_OR_RETURN(double eval_loss, evaluate());
      summary.last_eval_loss = eval_loss;
      if (is_root()) {
        RETURN_IF_ERROR(metrics_->write(
            {{"step", step + 1}, {"eval_loss", eval_loss}, {"eval_ppl", std::exp(eval_loss)}}));
        char text[96];
        std::snprintf(text, sizeof(text), "eval at step %lld: loss %.4f, perplexity %.2f",
                      static_cast<long long>(step + 1), eval_loss, std::exp(eval_loss));
        progress.message(text);
      }
    }
    const int64_t every = cfg_.checkpoint.every;
    const bool save_now =
        cfg_.checkpoint.enabled && ((every > 0 && (step + 1) % every == 0) || step + 1 == tc.steps);
    if (save_now) RETURN_IF_ERROR(save_checkpoint(step + 1, progress, summary));
    // Every rank holds the same reduced flag, so all leave here together. After the last step
    // the run simply ends.
    if (peaks[3].item<double>() > 0.0 && step + 1 < tc.steps) {
      return preempt(step + 1, save_now, progress, summary);
    }
  }
  if (cfg_.checkpoint.enabled) RETURN_IF_ERROR(save_checkpoint(-1, progress, summary));
  progress.finish();
  return summary;
}

}  // namespace dstrain::runtime
