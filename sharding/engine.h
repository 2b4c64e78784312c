#pragma once
// The ZeRO engine: owns every parameter's storage in flat buffers and runs the model unit by
// unit (DESIGN.md). Each unit's forward gets fresh views of its flat buffers; every unit has its
// own autograd graph (inputs detached at unit boundaries), so backward walks the units in reverse
// and each unit's gradient lands in one flat gradient that is reduced as soon as it is complete.
//
// Stages: 0 replicates everything and all-reduces gradients; 1 shards the fp32 master weights and
// AdamW moments and all-gathers the updated parameters after the step; 2 also reduce-scatters
// gradients into shard accumulators; 3 also keeps only the parameter shards between uses: each
// unit's full parameters are all-gathered before its forward (up to zero.prefetch_depth units
// ahead) and again before its backward, and released after each.
//
// Activation checkpointing (options.activation_checkpointing, sharding/activation_checkpointing.h)
// is the same walk: a recomputed unit's forward runs under no-grad keeping only its input, and
// backward re-runs it with grad enabled (after the stage-3 re-gather) just before its gradient.
#include <ATen/ATen.h>
#include <c10/core/Stream.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/config.h"
#include "base/status.h"
#include "base/unit.h"
#include "sharding/communicator.h"
#include "sharding/flat_layout.h"
#include "sharding/host_optimizer.h"
#include "sharding/nvme_state.h"

namespace dstrain::sharding {

class AsyncHostStep;

// Fills `out` (one fp32 CPU tensor per schema entry, tied entries included) for a unit.
using ParamInitFn = std::function<base::Status(const base::Unit&, at::TensorList out)>;

struct EngineOptions {
  base::ZeroConfig zero;
  base::OptimConfig optim;
  at::ScalarType compute_dtype = at::kFloat;
  at::Device device = at::kCPU;
  bool dynamic_loss_scale = false;  // fp16
  double loss_scale_init = 65536.0;
  int64_t loss_scale_window = 1000;
  std::string activation_checkpointing = "none";  // none | full | selective
  int64_t recompute_layers = -1;                  // selective: how many (-1: every other)
  // offload.optimizer = cpu keeps fp32 masters and AdamW moments in host memory (pinned on GPU
  // machines) and updates them with the CPU AdamW; offload.params = cpu (stage 3) keeps the
  // parameter shards there too, uploaded before each gather.
  base::OffloadConfig offload;
  int offload_threads = 0;  // CPU AdamW threads; 0: all
  // Stage 3: frozen buffers (a LoRA base) stay whole on every rank, never gathered or released,
  // so a LoRA step moves only the adapters' bytes (lora.base_sharding).
  bool replicate_frozen = false;
  // How long the host may wait for a value the device computes (the loss, the gradient norm)
  // before the step fails as a distributed fault (run.collective_timeout_s; 0: forever).
  double device_timeout_s = 0;
  // train.fused_weight_grad: the model's matrix products write weight gradients in fp32 straight
  // into the gradient buffers (base/grad_sink.h) wherever the model declares it can.
  bool fused_weight_grad = true;
};

struct MicroBatch {
  at::Tensor input_ids;   // [B, T] int64
  at::Tensor target_ids;  // [B, T] int64, -100 where no loss
  base::StepContext ctx;
};

// A contiguous piece of one named state tensor, held by this rank: what checkpoints save and
// load. `data` is a 1-D view into the engine's own storage (writing it loads the state).
enum class StateKind { kParam, kExpAvg, kExpAvgSq };
const char* state_kind_name(StateKind k);

struct StateSlice {
  std::string name;  // parameter name, e.g. "model.norm.weight"
  StateKind kind = StateKind::kParam;
  std::vector<int64_t> full_shape;  // shape of the whole parameter
  int64_t offset = 0;               // element offset of this piece in the flattened parameter
  at::Tensor data;  // [numel] view: fp32 master (trainable) or compute dtype (frozen)
};

// Optimizer scalars that continue across a resume.
struct EngineScalars {
  double adam_step = 0.0;
  double loss_scale = 1.0;
  int64_t good_steps = 0;
};

struct StepResult {
  double grad_norm = 0.0;  // before clipping; non-finite when the step was skipped
  bool skipped = false;
  double loss_scale = 1.0;
};

class Engine {
 public:
  // `comm` is the shard group: the ranks that split the state among themselves. `replicas`
  // (hybrid sharding, zero.shard_group = "node"; null otherwise) joins the ranks on other nodes
  // that hold the same shard: each gradient shard (stages 2, 3) or whole gradient (stages 0, 1),
  // once summed within the shard group, is all-reduced over it, so every replica takes the same
  // step (stages 0, 1: right after each gradient's all-reduce; stages 2, 3: the accumulated shards
  // once per step). Both may share one thread: a collective on `replicas` is issued only after
  // the shard group's ones it follows have completed.
  static base::StatusOr<std::unique_ptr<Engine>> create(base::UnitList units,
                                                        const EngineOptions& options,
                                                        Communicator& comm, const ParamInitFn& init,
                                                        Communicator* replicas = nullptr);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Forward and backward of one micro-batch. The loss is sum(CE over target tokens) * loss_weight
  // (loss_weight = 1 / global target tokens of the optimizer step). Gradients accumulate until
  // step(); on the last micro-batch of a step each unit's gradient reduction starts as soon as its
  // backward finishes. Returns the unweighted CE sum of this micro-batch.
  base::StatusOr<double> forward_backward(const MicroBatch& mb, double loss_weight,
                                          bool last_micro_batch);
  // Finishes gradient reduction, clips by global norm, applies AdamW at `lr` (or skips the step on
  // every rank when any gradient is non-finite) and refreshes the compute parameters.
  base::StatusOr<StepResult> step(double lr);
  // Forward only; returns the CE sum over target tokens.
  base::StatusOr<double> eval_loss_sum(const MicroBatch& mb);

  // Full fp32 copies of every parameter by name (gathered); for tests, export and evaluation.
  base::StatusOr<std::vector<std::pair<std::string, at::Tensor>>> full_parameters();
  int64_t num_parameters() const;
  int64_t num_trainable_parameters() const;
  const base::UnitList& units() const { return units_; }
  // Elements of optimizer state held by this rank: fp32 master weights plus both AdamW moments.
  int64_t optimizer_state_numel() const;
  // This rank's state slices. owned_only: the disjoint part this rank saves (at stage 0 every rank
  // holds everything, and rank r saves shard r; under hybrid sharding only the first node's
  // replica saves, the others own nothing); otherwise everything this rank holds, which is
  // what it loads. Frozen parameters appear as kParam only.
  std::vector<StateSlice> state_slices(bool owned_only);
  EngineScalars scalars() const;
  void set_scalars(const EngineScalars& s);
  // After writing loaded values through state_slices(false): refresh the compute parameters
  // from the masters (collective at stages 1 and 2: call on every rank). Under
  // offload.optimizer = nvme it also writes the paged-in state back and drops it.
  base::Status finish_load();
  // offload.optimizer = nvme keeps the optimizer state in a file: page_in_state() reads all of
  // this rank's into host memory, so state_slices() can show it, until page_out_state() drops it
  // (writing it back first when `write_back`). No-ops for the other tiers.
  base::Status page_in_state();
  base::Status page_out_state(bool write_back);
  // Elements of full (gathered) parameter storage this rank holds right now.
  int64_t local_parameter_numel() const;

 private:
  struct Buffer;
  struct UnitState;
  struct UnitRun;
  enum class GatherState;
  Engine(base::UnitList units, const EngineOptions& options, Communicator& comm,
         Communicator* replicas);
  base::Status init_storage(const ParamInitFn& init);
  base::Status init_stage3_buffer(Buffer& b, const at::Tensor& flat);
  // Stage 3: the one place where a buffer's full storage is allocated, gathered or released.
  base::Status transition(Buffer& b, GatherState to);
  // offload.params = cpu: the shard's upload to the device and the all-gather that follows it.
  base::Status upload_and_gather(Buffer& b);
  // Stage 3 (no-ops below): issue the gathers of unit u's buffers (tied owners' included), wait
  // for them, or release those not read by any unit in [keep_lo, keep_hi].
  base::Status prefetch(int unit);
  base::Status gather(int unit);
  base::Status release(int unit, int keep_lo, int keep_hi);
  // Every unit's forward in order; returns the last unit's output.
  base::StatusOr<at::Tensor> forward_units(const MicroBatch& mb, std::vector<UnitRun>& runs,
                                           bool need_grad);
  std::vector<at::Tensor> make_params(int unit, std::vector<UnitRun>& runs, bool need_grad,
                                      base::GradSinks* sinks);
  at::Tensor forward_unit(int unit, const at::Tensor& x, const base::StepContext& ctx,
                          std::vector<UnitRun>& runs, bool need_grad);
  // A checkpointed unit's forward again, with grad enabled, from its saved input: fresh leaves
  // and a fresh graph for backward_unit. Its parameters must be gathered.
  void recompute_unit(int unit, const base::StepContext& ctx, std::vector<UnitRun>& runs);
  // Recomputes a checkpointed unit first (only when it has something to differentiate).
  base::Status backward_unit(int unit, std::vector<UnitRun>& runs, const at::Tensor& grad_out,
                             const base::StepContext& ctx, at::Tensor* grad_in, bool reduce_now);
  base::Status start_reduction(int unit);
  // Stages 2 and 3, the device tier: the gradient accumulator exists only from the backward's
  // first reduction into it to the end of the step (Buffer::grad_released).
  bool releases_accumulator(const Buffer& b) const;
  void init_accumulator(Buffer& b, int64_t numel, const at::TensorOptions& options) const;
  // A gradient accumulator given back after the last step (Buffer::grad_released), made again:
  // left unwritten when the reduction about to land in it overwrites all of it, else zeros.
  static void restore_accumulator(Buffer& b, bool overwritten);
  // Stages 0, 1 under hybrid sharding: the all-reduce of `t` over the replicas, to issue once the
  // shard group's reduction into `t` is complete; null without replicas.
  std::function<std::unique_ptr<Work>()> across_replicas(const at::Tensor& t);
  // Stages 2, 3 under hybrid sharding: sums the accumulated gradient shards over the replicas,
  // once per step rather than once per micro-batch (accumulation is linear), so the slow link
  // carries 1 / ranks_per_node of the gradient once per step.
  base::Status reduce_shards_across_replicas();
  // Waits for the reductions in flight (all but the newest `keep`) and folds them in. Under NCCL
  // a wait only orders the compute stream after the collective, so this never blocks the host.
  base::Status finish_reductions(size_t keep = 0);
  // Stages 2, 3 under NCCL, before unit u's backward: a wait() never blocks the host, so the host
  // runs ahead and the communicator keeps every reduce-scatter the device has not finished. This
  // waits for the device to finish those that u's reductions push out of the window, so u's
  // first reduce-scatter releases them and the window bounds the memory (the device still has
  // the next units' backward queued).
  base::Status settle_leaving_reductions(int u);
  // Stages 2 and 3: gradient reductions (one per trainable buffer) left in flight while backward
  // goes on: a few units' worth, enough to overlap, few enough to bound the memory.
  static constexpr size_t kReductionsInFlight = 4;
  base::StatusOr<double> grad_norm_squared();
  // The compute parameters from the masters: after a load (every buffer), after the device
  // optimizer (the buffers it updates), or after the host optimizer (which writes stage-3 and
  // stage-0 parameters itself; stages 1 and 2 gather the shards it updated).
  enum class Refresh { kAll, kDeviceTier, kAfterHostStep };
  base::Status refresh_compute_params(Refresh which);
  // AdamW with gradients divided by grad_scale: fused on the device over the buffers kept there,
  // and on host-resident state over the offloaded ones (offload.optimizer, offload.ratio). Both
  // refresh the compute parameters they updated.
  base::Status device_step(double lr, double grad_scale);
  base::Status host_step(double lr, double grad_scale);
  // offload.overlap_step: the host step runs on its own thread and the next forward waits for
  // each unit's shards only as it reaches them (stage 3, optimizer on the host, parameters not
  // on NVMe). Everything else that reads or writes the state waits for the whole step first.
  bool overlap_host_step() const;
  // zero.reduce_dtype: gradients travel (and are summed across ranks) in this dtype.
  at::ScalarType wire_dtype() const {
    return options_.zero.reduce_dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  }
  base::Status start_host_step(std::vector<HostShard> shards, const offload::AdamWHyper& hyper);
  base::Status wait_host_step();
  base::Status wait_host_update(const Buffer& b);
  // fp32 optimizer state of `numel` elements: host memory or the device.
  base::StatusOr<at::Tensor> optimizer_tensor(int64_t numel, bool on_host);
  // The fp32 master from `mine` (unless `b.master` is already set: an alias) and zero moments,
  // in optimizer memory.
  base::Status init_optimizer_state(Buffer& b, const at::Tensor& mine);
  // Every non-empty buffer layout, in the order init_storage meets them.
  std::vector<FlatLayout> layouts_in_init_order() const;
  bool optimizer_on_host() const { return options_.offload.optimizer != "none"; }
  bool optimizer_on_nvme() const { return options_.offload.optimizer == "nvme"; }
  bool params_on_nvme() const { return options_.offload.params == "nvme"; }
  // Creates the NVMe parameter file sized for every gathered shard (offload.params = nvme).
  base::Status create_nvme_params();
  // A scratch file "<offload.nvme_dir>/<kind>-rankNNNNN.bin" behind io_uring.
  base::StatusOr<std::unique_ptr<NvmeStateFile>> create_nvme_file(
      const std::string& kind, const std::vector<int64_t>& numels, int arrays,
      at::ScalarType dtype);
  // Creates the NVMe state file sized for every trainable shard (offload.optimizer = nvme).
  base::Status create_nvme_state();
  // Places the next trainable buffer's optimizer state: its record of the state file, holding
  // `mine` (its initial master shard) and zero moments, or host memory within the budget.
  base::Status store_initial_nvme_state(Buffer& b, const at::Tensor& mine);
  bool params_on_host() const { return options_.offload.params != "none"; }
  int64_t count_parameters(bool trainable_only) const;

  base::UnitList units_;
  EngineOptions options_;
  Communicator& comm_;      // the shard group
  Communicator* replicas_;  // hybrid sharding: the same shard on the other nodes; else null
  std::vector<std::unique_ptr<UnitState>> state_;
  std::vector<bool> input_grad_;  // per unit: does its input need a gradient when training?
  std::vector<bool> recompute_;   // per unit: activation checkpointing recomputes it
  std::vector<std::unique_ptr<Work>> pending_;              // gradient reductions in flight
  std::shared_ptr<offload::HostAllocator> host_allocator_;  // offload tiers only
  std::unique_ptr<HostOptimizer> host_optimizer_;
  std::optional<c10::Stream> upload_stream_;   // offload.params = cpu on a GPU: the uploads' stream
  std::unique_ptr<AsyncHostStep> host_run_;    // the overlapped host step in flight, or null
  std::vector<HostShard> host_shards_;         // its shards, alive until it has been waited for
  base::Status host_error_;                    // a failed overlapped step: every later call fails
  std::unique_ptr<NvmeStateFile> nvme_state_;  // offload.optimizer = nvme
  std::unique_ptr<NvmeStateFile> nvme_params_;  // offload.params = nvme
  int next_param_record_ = 0;
  std::vector<int> nvme_shard_of_;  // per trainable buffer in init order: record, or -1 (host)
  int next_trainable_ = 0;
  at::Tensor step_count_;   // AdamW step (float scalar, as _fused_adamw_ wants)
  int64_t adam_steps_ = 0;  // the same count on the host (the device kernel's bias corrections)
  double loss_scale_ = 1.0;
  int64_t good_steps_ = 0;
};

}  // namespace dstrain::sharding
