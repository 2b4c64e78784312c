#include "launch/config/config_schema.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace dstrain::launch {
namespace {

Range at_least(double v) { return {Bound{v, true}, std::nullopt}; }
Range above(double v) { return {Bound{v, false}, std::nullopt}; }
Range closed(double lo, double hi) { return {Bound{lo, true}, Bound{hi, true}}; }
Range right_open(double lo, double hi) { return {Bound{lo, true}, Bound{hi, false}}; }
Range left_open(double lo, double hi) { return {Bound{lo, false}, Bound{hi, true}}; }
Range any() { return {}; }

KeySpec number(std::string_view name, Field field, Range range, std::string_view doc) {
  return {name, field, range, {}, doc};
}
KeySpec text(std::string_view name, Field field, std::string_view doc) {
  return {name, field, {}, {}, doc};
}
KeySpec choice(std::string_view name, Field field, std::vector<std::string> allowed,
               std::string_view doc) {
  return {name, field, {}, std::move(allowed), doc};
}
KeySpec flag(std::string_view name, Field field, std::string_view doc) {
  return {name, field, {}, {}, doc};
}

// The key's name is the member's path spelled out, so the two cannot drift apart.
#define DSTRAIN_KEY(path) #path, +[](base::Config & c) { return &c.path; }

std::vector<KeySpec> build_schema() {
  const std::vector<std::string> offload_modes = {"none", "cpu", "nvme"};
  return {
      text(DSTRAIN_KEY(run.dir), "output directory: metrics.jsonl and checkpoints/ go here"),
      number(DSTRAIN_KEY(run.seed), any(), "seed for initialisation, data order and dropout"),
      choice(DSTRAIN_KEY(run.device), {"auto", "cpu", "cuda"},
             "auto: one GPU per local rank when GPUs are present, else the CPU; cuda: GPUs or an "
             "error"),
      number(DSTRAIN_KEY(run.collective_timeout_s), at_least(0),
             "seconds a rank waits for a collective (MPI on the CPU; on GPUs an NCCL operation, "
             "or an NCCL call that needs a peer) before it ends the job with exit 4 naming the "
             "collective (a peer died or stopped); on GPUs a process the fault does not end "
             "within 5 s more is ended by the NCCL monitor thread (docs/faults.md); 0: wait "
             "forever. Raise it when one rank can pause far longer than its peers (slow "
             "checkpoint storage)"),
      number(DSTRAIN_KEY(run.profile_start), at_least(0),
             "first step (counted from 1) that the torch profiler records"),
      number(DSTRAIN_KEY(run.profile_steps), at_least(0),
             "steps the torch profiler records from run.profile_start, written as a Chrome trace "
             "per rank to run.dir/profile/rank<R>.json; 0: no profile"),

      text(DSTRAIN_KEY(model.hf_dir),
           "Hugging Face checkpoint directory (config.json + safetensors); empty: build the "
           "model from the model.* keys"),
      choice(DSTRAIN_KEY(model.architecture), {"llama", "qwen2", "mistral"},
             "model family (layer layout and Hugging Face weight names)"),
      number(DSTRAIN_KEY(model.vocab_size), at_least(1), "number of token ids"),
      number(DSTRAIN_KEY(model.hidden_size), at_least(1), "width of the residual stream"),
      number(DSTRAIN_KEY(model.intermediate_size), at_least(1), "inner width of the gated MLP"),
      number(DSTRAIN_KEY(model.num_layers), at_least(1), "number of decoder layers"),
      number(DSTRAIN_KEY(model.num_heads), at_least(1), "attention (query) heads"),
      number(DSTRAIN_KEY(model.num_kv_heads), at_least(1),
             "key/value heads (grouped-query attention); must divide model.num_heads"),
      number(DSTRAIN_KEY(model.head_dim), at_least(0),
             "width of one head; 0: model.hidden_size / model.num_heads; must be even"),
      number(DSTRAIN_KEY(model.rms_norm_eps), above(0), "epsilon of RMSNorm"),
      number(DSTRAIN_KEY(model.rope_theta), above(0), "RoPE base frequency"),
      number(DSTRAIN_KEY(model.max_position_embeddings), at_least(1),
             "longest sequence the position encoding is meant for"),
      flag(DSTRAIN_KEY(model.attention_bias), "biases on the q, k and v projections (Qwen2: true)"),
      flag(DSTRAIN_KEY(model.mlp_bias), "biases on the MLP projections"),
      number(DSTRAIN_KEY(model.sliding_window), at_least(0),
             "attention window in tokens; 0: full causal attention (Mistral: 4096)"),
      flag(DSTRAIN_KEY(model.tie_embeddings), "the output head shares the embedding matrix"),
      number(DSTRAIN_KEY(model.init_std), above(0), "standard deviation of initial weights"),
      choice(DSTRAIN_KEY(model.rope_scaling.type), {"none", "linear", "dynamic", "llama3", "yarn"},
             "RoPE scaling for long context"),
      number(DSTRAIN_KEY(model.rope_scaling.factor), above(0),
             "context extension factor (llama3: >= 1)"),
      number(DSTRAIN_KEY(model.rope_scaling.low_freq_factor), above(0),
             "llama3: wavelengths above original / low_freq_factor are scaled fully"),
      number(DSTRAIN_KEY(model.rope_scaling.high_freq_factor), above(0),
             "llama3: wavelengths below original / high_freq_factor are kept; must be > "
             "low_freq_factor"),
      number(DSTRAIN_KEY(model.rope_scaling.original_max_position_embeddings), at_least(0),
             "context length of pre-training (llama3: required, > 0; yarn, dynamic)"),
      number(DSTRAIN_KEY(model.rope_scaling.beta_fast), above(0),
             "yarn: rotations above which dimensions are not interpolated"),
      number(DSTRAIN_KEY(model.rope_scaling.beta_slow), above(0),
             "yarn: rotations below which dimensions are fully interpolated"),

      text(DSTRAIN_KEY(data.path), "token file (.dstok); empty: the built-in demo corpus"),
      choice(DSTRAIN_KEY(data.format), {"tokens", "sft"},
             "tokens: a plain token stream; sft: prompt/response examples"),
      text(DSTRAIN_KEY(data.eval_path), "held-out token file; empty: no evaluation"),
      number(DSTRAIN_KEY(data.eval_batches), at_least(1), "micro-batches per evaluation per rank"),
      number(DSTRAIN_KEY(data.eval_fraction), right_open(0, 1),
             "without data.eval_path: the share of documents (of windows, for an unpacked "
             "\"tokens\" stream) held out of training for evaluation; 0: none"),
      flag(DSTRAIN_KEY(data.packing),
           "pack several documents into each sequence; attention and positions stay within "
           "each document (needs a file with documents)"),

      number(DSTRAIN_KEY(train.steps), at_least(1), "optimizer steps to run"),
      number(DSTRAIN_KEY(train.global_batch), at_least(1),
             "sequences per optimizer step, at any world size; a multiple of train.micro_batch"),
      number(DSTRAIN_KEY(train.micro_batch), at_least(1), "sequences per forward pass per rank"),
      number(DSTRAIN_KEY(train.seq_len), at_least(1), "tokens per sequence"),
      choice(DSTRAIN_KEY(train.dtype), {"fp32", "bf16", "fp16"},
             "compute dtype of forward and backward (master weights stay fp32)"),
      number(DSTRAIN_KEY(train.eval_every), at_least(0),
             "evaluate every N steps; 0: never; > 0 requires data.eval_path or "
             "data.eval_fraction"),
      choice(DSTRAIN_KEY(train.activation_checkpointing), {"none", "full", "selective"},
             "recompute activations in backward: none, every unit but the head (full), or every "
             "other decoder layer (selective)"),
      number(DSTRAIN_KEY(train.recompute_layers), at_least(-1),
             "selective: how many decoder layers recompute, spread evenly over the model; -1: "
             "every other"),
      flag(DSTRAIN_KEY(train.fused_weight_grad),
           "matrix products write their weight gradients in fp32 straight into the gradient "
           "buffers (no compute-dtype gradient, no widening pass); false: through autograd"),
      number(DSTRAIN_KEY(train.loss_scale_init), above(0), "fp16: initial dynamic loss scale"),
      number(DSTRAIN_KEY(train.loss_scale_window), at_least(1),
             "fp16: steps without overflow before the loss scale doubles"),

      number(DSTRAIN_KEY(optim.lr), above(0), "peak learning rate of AdamW"),
      number(DSTRAIN_KEY(optim.min_lr_ratio), closed(0, 1),
             "final learning rate as a fraction of optim.lr"),
      number(DSTRAIN_KEY(optim.warmup_steps), at_least(0), "steps of linear warm-up from 0"),
      choice(DSTRAIN_KEY(optim.schedule), {"cosine", "linear", "constant"},
             "decay from optim.lr to optim.lr * optim.min_lr_ratio after warm-up"),
      number(DSTRAIN_KEY(optim.weight_decay), at_least(0), "decoupled weight decay"),
      number(DSTRAIN_KEY(optim.beta1), right_open(0, 1), "AdamW first-moment decay"),
      number(DSTRAIN_KEY(optim.beta2), right_open(0, 1), "AdamW second-moment decay"),
      number(DSTRAIN_KEY(optim.eps), above(0), "AdamW denominator epsilon"),
      number(DSTRAIN_KEY(optim.grad_clip), at_least(0), "global gradient-norm clip; 0: none"),

      number(DSTRAIN_KEY(zero.stage), closed(0, 3),
             "ZeRO stage: 0 replicate, 1 shard optimizer state, 2 + gradients, 3 + parameters"),
      number(DSTRAIN_KEY(zero.prefetch_depth), at_least(0),
             "stage 3: units gathered ahead of the one computing"),
      choice(DSTRAIN_KEY(zero.reduce_dtype), {"fp32", "bf16"},
             "dtype of gradient reduction across ranks"),
      choice(DSTRAIN_KEY(zero.shard_group), {"world", "node"},
             "ranks that split the state: all, or each node's (replicated across nodes)"),

      choice(DSTRAIN_KEY(offload.optimizer), offload_modes,
             "where optimizer state lives between steps"),
      choice(DSTRAIN_KEY(offload.params), offload_modes,
             "where parameter shards live between uses; not none requires zero.stage = 3 and an "
             "offloaded optimizer"),
      text(DSTRAIN_KEY(offload.nvme_dir), "directory for nvme offload files; required by nvme"),
      number(DSTRAIN_KEY(offload.host_budget_gib), at_least(0),
             "optimizer = nvme: GiB of host memory per rank for optimizer state; units that fit "
             "stay in host memory, the rest go to NVMe"),
      number(DSTRAIN_KEY(offload.ratio), left_open(0, 1),
             "optimizer = cpu: share of the parameters whose optimizer state (and, with "
             "offload.params = cpu, parameter shards) lives in host memory; the rest stays on the "
             "device, updated there while the host updates its share"),
      flag(DSTRAIN_KEY(offload.overlap_step),
           "zero.stage 3 with an offloaded optimizer: the host AdamW runs on its own thread and "
           "the next forward waits only for the unit it reaches (same results either way)"),

      flag(DSTRAIN_KEY(lora.enabled), "train low-rank adapters instead of all weights"),
      number(DSTRAIN_KEY(lora.rank), at_least(1), "rank r of each adapter"),
      number(DSTRAIN_KEY(lora.alpha), above(0),
             "adapter scale numerator: scale = alpha / r (alpha / sqrt(r) with lora.rslora)"),
      number(DSTRAIN_KEY(lora.dropout), right_open(0, 1), "dropout on the adapter input"),
      choice(DSTRAIN_KEY(lora.targets), {"q", "k", "v", "o", "gate", "up", "down", "all-linear"},
             "projections that get adapters; not empty when lora.enabled"),
      flag(DSTRAIN_KEY(lora.rslora), "rank-stabilised scaling alpha / sqrt(r)"),
      choice(DSTRAIN_KEY(lora.base_sharding), {"auto", "replicated", "sharded"},
             "zero.stage 3: frozen base weights whole on every rank (no gathers) or sharded like "
             "the rest; auto: replicated when they take at most a quarter of device memory"),

      flag(DSTRAIN_KEY(checkpoint.enabled), "false: write no checkpoints at all (benchmarks)"),
      number(DSTRAIN_KEY(checkpoint.every), at_least(0),
             "checkpoint every N steps; 0: only at the end and on preemption"),
      number(DSTRAIN_KEY(checkpoint.keep), at_least(1),
             "complete checkpoints kept; older are deleted"),
      flag(DSTRAIN_KEY(checkpoint.async),
           "write checkpoints in the background while training goes on"),

      number(DSTRAIN_KEY(log.every), at_least(1), "console progress line every N steps"),
      flag(DSTRAIN_KEY(log.progress_bar), "rank 0 draws a progress bar on a terminal"),
      choice(DSTRAIN_KEY(log.level), {"info", "debug"},
             "debug: every rank writes each collective (op, sequence number, bytes, group, lane, "
             "time) and a per-step summary to <run.dir>/comm/rank<R>.log; info: nothing extra"),
  };
}

#undef DSTRAIN_KEY

// Accessors only take a member's address; nothing is written through the const Config.
template <typename FieldT>
auto& member(const KeySpec& spec, const base::Config& cfg) {
  return *std::get<FieldT>(spec.field)(const_cast<base::Config&>(cfg));
}

std::string quote(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04X", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string join(const std::vector<std::string>& items, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += sep;
    out += items[i];
  }
  return out;
}

std::string format_bound(const KeySpec& spec, double v) {
  return spec.type() == KeyType::kInt ? std::to_string(static_cast<int64_t>(v)) : format_number(v);
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

}  // namespace

const std::vector<KeySpec>& config_schema() {
  static const std::vector<KeySpec> schema = build_schema();
  return schema;
}

const KeySpec* find_key(std::string_view name) {
  for (const KeySpec& spec : config_schema()) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}

bool is_table(std::string_view name) {
  const auto tables = config_tables();
  return std::find(tables.begin(), tables.end(), name) != tables.end();
}

std::vector<std::string_view> config_tables() {
  std::vector<std::string_view> tables;
  for (const KeySpec& spec : config_schema()) {
    if (std::find(tables.begin(), tables.end(), spec.table()) == tables.end()) {
      tables.push_back(spec.table());
    }
  }
  return tables;
}

std::string_view nearest_name(std::string_view name) {
  std::string_view best;
  size_t best_distance = std::max<size_t>(2, name.size() / 5) + 1;
  auto consider = [&](std::string_view candidate) {
    const size_t d = edit_distance(name, candidate);
    if (d < best_distance) {
      best_distance = d;
      best = candidate;
    }
  };
  for (const KeySpec& spec : config_schema()) consider(spec.name);
  for (std::string_view table : config_tables()) consider(table);
  return best;
}

std::string_view type_name(KeyType type) {
  switch (type) {
    case KeyType::kInt:
      return "integer";
    case KeyType::kFloat:
      return "float";
    case KeyType::kBool:
      return "boolean";
    case KeyType::kString:
      return "string";
    case KeyType::kStringList:
      return "array of strings";
  }
  return "?";
}

std::string format_number(double v) {
  // Both forms are the shortest that read back exactly; fixed reads better unless it is much
  // longer (1e-08, 1e+20).
  char fixed[400];
  char scientific[64];
  const auto f = std::to_chars(fixed, fixed + sizeof(fixed), v, std::chars_format::fixed);
  const auto e =
      std::to_chars(scientific, scientific + sizeof(scientific), v, std::chars_format::scientific);
  if (f.ec == std::errc() && f.ptr - fixed <= e.ptr - scientific + 3)
    return std::string(fixed, f.ptr);
  return std::string(scientific, e.ptr);
}

std::string format_value(const KeySpec& spec, const base::Config& cfg) {
  switch (spec.type()) {
    case KeyType::kInt:
      return std::to_string(member<IntField>(spec, cfg));
    case KeyType::kFloat: {
      std::string s = format_number(member<FloatField>(spec, cfg));
      // TOML reads "16" as an integer; a float needs a fraction or an exponent.
      if (s.find_first_of(".eEni") == std::string::npos) s += ".0";
      return s;
    }
    case KeyType::kBool:
      return member<BoolField>(spec, cfg) ? "true" : "false";
    case KeyType::kString:
      return quote(member<StringField>(spec, cfg));
    case KeyType::kStringList: {
      std::vector<std::string> quoted;
      for (const std::string& item : member<StringListField>(spec, cfg))
        quoted.push_back(quote(item));
      return "[" + join(quoted, ", ") + "]";
    }
  }
  return "";
}

std::string describe_constraint(const KeySpec& spec) {
  if (!spec.allowed.empty()) {
    const std::string values = join(spec.allowed, ", ");
    return spec.type() == KeyType::kStringList ? "each of " + values : values;
  }
  const Range& r = spec.range;
  if (r.lo && r.hi) {
    return std::string(r.lo->inclusive ? "[" : "(") + format_bound(spec, r.lo->value) + ", " +
           format_bound(spec, r.hi->value) + (r.hi->inclusive ? "]" : ")");
  }
  if (r.lo) return std::string(r.lo->inclusive ? ">= " : "> ") + format_bound(spec, r.lo->value);
  if (r.hi) return std::string(r.hi->inclusive ? "<= " : "< ") + format_bound(spec, r.hi->value);
  return "any";
}

std::optional<std::string> check_value(const KeySpec& spec, const base::Config& cfg) {
  auto outside = [&](double v) {
    const Range& r = spec.range;
    // Written so that NaN fails every bound.
    const bool low_ok = !r.lo || (r.lo->inclusive ? v >= r.lo->value : v > r.lo->value);
    const bool high_ok = !r.hi || (r.hi->inclusive ? v <= r.hi->value : v < r.hi->value);
    return !(low_ok && high_ok);
  };
  auto not_in = [&](const std::string& v) {
    return !spec.allowed.empty() &&
           std::find(spec.allowed.begin(), spec.allowed.end(), v) == spec.allowed.end();
  };
  const std::string rule = describe_constraint(spec);
  const std::string must = (rule[0] == '[' || rule[0] == '(') ? "must be in " : "must be ";
  switch (spec.type()) {
    case KeyType::kInt: {
      const int64_t v = member<IntField>(spec, cfg);
      if (outside(static_cast<double>(v))) return must + rule + ", got " + std::to_string(v);
      return std::nullopt;
    }
    case KeyType::kFloat: {
      const double v = member<FloatField>(spec, cfg);
      if (!std::isfinite(v)) return "must be finite, got " + format_number(v);
      if (outside(v)) return must + rule + ", got " + format_number(v);
      return std::nullopt;
    }
    case KeyType::kBool:
      return std::nullopt;
    case KeyType::kString: {
      const std::string& v = member<StringField>(spec, cfg);
      if (not_in(v)) return "must be one of " + rule + ", got " + quote(v);
      return std::nullopt;
    }
    case KeyType::kStringList:
      for (const std::string& v : member<StringListField>(spec, cfg)) {
        if (not_in(v))
          return "each must be one of " + join(spec.allowed, ", ") + ", got " + quote(v);
      }
      return std::nullopt;
  }
  return std::nullopt;
}

}  // namespace dstrain::launch
