#pragma once
// Typed configuration, one struct per TOML section. Plain data, no LibTorch, so the loader
// (launch/config_loader) and its tests and fuzzers build in seconds. Every component receives
// only its own section. Defaults here are the documented defaults (docs/config.md).
#include <cstdint>
#include <string>
#include <vector>

namespace dstrain::base {

struct RunConfig {
  std::string dir = "runs/default";  // outputs: metrics.jsonl, checkpoints/
  int64_t seed = 1234;
  std::string device = "auto";  // auto | cpu | cuda
  // A host wait on an MPI collective longer than this fails; 0: none.
  double collective_timeout_s = 60;
  int64_t profile_start = 0;  // first step (1-based) the torch profiler records
  int64_t profile_steps = 0;  // how many steps; 0: no profile
};

struct RopeScalingConfig {
  std::string type = "none";  // none | linear | dynamic | llama3 | yarn
  double factor = 1.0;
  double low_freq_factor = 1.0;                  // llama3
  double high_freq_factor = 4.0;                 // llama3
  int64_t original_max_position_embeddings = 0;  // llama3, yarn, dynamic
  double beta_fast = 32.0;                       // yarn
  double beta_slow = 1.0;                        // yarn
};

struct ModelConfig {
  std::string hf_dir;                  // load config.json + safetensors from here (later issue)
  std::string architecture = "llama";  // llama | qwen2 | mistral
  int64_t vocab_size = 256;
  int64_t hidden_size = 64;
  int64_t intermediate_size = 172;
  int64_t num_layers = 2;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 4;
  int64_t head_dim = 0;  // 0: hidden_size / num_heads
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScalingConfig rope_scaling;
  int64_t max_position_embeddings = 2048;
  bool attention_bias = false;  // q, k, v biases (Qwen2: true)
  bool mlp_bias = false;
  int64_t sliding_window = 0;  // 0: full causal attention (Mistral: 4096)
  bool tie_embeddings = false;
  double init_std = 0.02;

  int64_t resolved_head_dim() const { return head_dim > 0 ? head_dim : hidden_size / num_heads; }
};

struct DataConfig {
  std::string path;               // token file (.dstok); empty: built-in demo corpus
  std::string format = "tokens";  // tokens | sft
  std::string eval_path;          // held-out token file; empty: no evaluation
  int64_t eval_batches = 4;       // micro-batches per evaluation per rank
  double eval_fraction = 0.0;     // without eval_path: share of documents held out for evaluation
  bool packing = false;           // several documents per sequence, attention kept within each
};

struct TrainConfig {
  int64_t steps = 100;
  int64_t global_batch = 8;  // sequences per optimizer step, any world size
  int64_t micro_batch = 2;   // sequences per forward per rank
  int64_t seq_len = 128;
  std::string dtype = "fp32";                     // fp32 | bf16 | fp16
  int64_t eval_every = 0;                         // 0: never
  std::string activation_checkpointing = "none";  // none | full | selective
  int64_t recompute_layers = -1;     // selective: decoder layers recomputed; -1: every other
  double loss_scale_init = 65536.0;  // fp16 only: dynamic loss scaling
  int64_t loss_scale_window = 1000;  // fp16: steps without overflow before doubling the scale
  bool fused_weight_grad = true;     // matrix products write weight gradients in fp32 in place
};

struct OptimConfig {
  double lr = 3e-4;
  double min_lr_ratio = 0.1;  // final lr = lr * min_lr_ratio
  int64_t warmup_steps = 0;
  std::string schedule = "cosine";  // cosine | linear | constant
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;  // 0: no clipping
};

struct ZeroConfig {
  int64_t stage = 0;                  // 0..3
  int64_t prefetch_depth = 1;         // units gathered ahead (stage 3)
  std::string reduce_dtype = "fp32";  // fp32 | bf16
  std::string shard_group = "world";  // world | node (hybrid: shard within, replicate across nodes)
};

struct OffloadConfig {
  std::string optimizer = "none";  // none | cpu | nvme
  std::string params = "none";     // none | cpu | nvme
  std::string nvme_dir;
  double host_budget_gib = 0.0;  // optimizer = nvme: state of the first units kept in host memory
  bool overlap_step = true;      // zero.stage 3: the host AdamW overlaps the next forward
  double ratio = 1.0;  // optimizer = cpu: share of the parameters whose state is offloaded
};

struct LoraConfig {
  bool enabled = false;
  int64_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  std::vector<std::string> targets = {"q", "v"};  // q k v o gate up down | all-linear
  bool rslora = false;
  std::string base_sharding = "auto";  // auto | replicated | sharded (zero.stage 3)
};

struct CheckpointConfig {
  int64_t every = 0;  // steps; 0: only at the end and on preemption
  int64_t keep = 2;
  bool async = false;
  bool enabled = true;  // false: never write (benchmarks)
};

struct LogConfig {
  int64_t every = 1;  // console progress line every N steps
  bool progress_bar = true;
  std::string level = "info";  // info | debug (per-rank communication diagnostics)
};

struct Config {
  std::string source;  // the file it was loaded from (for messages)
  RunConfig run;
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  OptimConfig optim;
  ZeroConfig zero;
  OffloadConfig offload;
  LoraConfig lora;
  CheckpointConfig checkpoint;
  LogConfig log;
};

}  // namespace dstrain::base
