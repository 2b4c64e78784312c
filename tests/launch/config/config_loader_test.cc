#include "launch/config/config_loader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "launch/config/config_schema.h"

namespace dstrain::launch {
namespace {

using ::testing::StartsWith;

// The error message of parsing `text` as "x.toml" with `overrides`; fails the test on success.
std::string error_of(const std::string& text, const std::vector<std::string>& overrides = {}) {
  auto result = parse_config(text, "x.toml", overrides);
  EXPECT_FALSE(result.ok()) << "accepted:\n" << text;
  if (result.ok()) return "";
  EXPECT_EQ(result.status().code(), base::StatusCode::kInvalidArgument);
  EXPECT_EQ(base::exit_code(result.status()), 2);
  return result.status().message();
}

base::Config parse_ok(const std::string& text, const std::vector<std::string>& overrides = {}) {
  auto result = parse_config(text, "x.toml", overrides);
  EXPECT_TRUE(result.ok()) << result.status().message();
  return result.ok() ? result.value() : base::Config{};
}

TEST(ConfigLoader, EmptyInputGivesDefaults) {
  auto from_text = parse_config("", "", {});
  ASSERT_TRUE(from_text.ok()) << from_text.status().message();
  EXPECT_EQ(config_to_toml(*from_text), config_to_toml(base::Config{}));
  auto from_path = load_config("", {});
  ASSERT_TRUE(from_path.ok()) << from_path.status().message();
  EXPECT_EQ(from_path->source, "");
  EXPECT_EQ(from_path->train.steps, 100);
  EXPECT_EQ(from_path->model.rope_scaling.type, "none");
  EXPECT_EQ(from_path->lora.targets, (std::vector<std::string>{"q", "v"}));
  EXPECT_TRUE(validate_config(base::Config{}).ok());
}

TEST(ConfigLoader, ReadsEveryKindOfValue) {
  const base::Config cfg = parse_ok(R"(
[run]
dir = "/tmp/run"
seed = -7

[model]
architecture = "qwen2"
attention_bias = true
rope_scaling = { type = "llama3", original_max_position_embeddings = 8192, factor = 8 }

[optim]
lr = 1          # an integer is fine for a float key
beta2 = 0.999

[lora]
targets = ["q", "k", "v", "o"]
)");
  EXPECT_EQ(cfg.source, "x.toml");
  EXPECT_EQ(cfg.run.dir, "/tmp/run");
  EXPECT_EQ(cfg.run.seed, -7);
  EXPECT_EQ(cfg.model.architecture, "qwen2");
  EXPECT_TRUE(cfg.model.attention_bias);
  EXPECT_EQ(cfg.model.rope_scaling.type, "llama3");
  EXPECT_EQ(cfg.model.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(cfg.model.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(cfg.optim.lr, 1.0);
  EXPECT_DOUBLE_EQ(cfg.optim.beta2, 0.999);
  EXPECT_EQ(cfg.lora.targets, (std::vector<std::string>{"q", "k", "v", "o"}));
  EXPECT_EQ(cfg.train.steps, 100);  // untouched keys keep their defaults
}

TEST(ConfigLoader, DottedKeysAndSubTableHeaders) {
  const base::Config cfg = parse_ok(
      "train.steps = 5\n"
      "[model.rope_scaling]\n"
      "type = \"linear\"\n"
      "factor = 2.0\n");
  EXPECT_EQ(cfg.train.steps, 5);
  EXPECT_EQ(cfg.model.rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(cfg.model.rope_scaling.factor, 2.0);
}

TEST(ConfigLoader, OverridesBeatFileValues) {
  const std::string file = R"(
[run]
dir = "from-file"
[train]
steps = 50
dtype = "bf16"
[lora]
enabled = false
targets = ["q"]
[optim]
lr = 0.1
)";
  base::Config cfg = parse_ok(file, {"train.steps=20", "run.dir=/tmp/x", "lora.enabled=true",
                                     "lora.targets=[\"q\",\"v\"]", "optim.lr=2"});
  EXPECT_EQ(cfg.train.steps, 20);
  EXPECT_EQ(cfg.run.dir, "/tmp/x");
  EXPECT_TRUE(cfg.lora.enabled);
  EXPECT_EQ(cfg.lora.targets, (std::vector<std::string>{"q", "v"}));
  EXPECT_DOUBLE_EQ(cfg.optim.lr, 2.0);
  EXPECT_EQ(cfg.train.dtype, "bf16");  // not overridden

  cfg = parse_ok(
      file, {"run.dir=\"/tmp/quoted dir\"", "lora.targets=k, o", "train.steps=3", "train.steps=4"});
  EXPECT_EQ(cfg.run.dir, "/tmp/quoted dir");
  EXPECT_EQ(cfg.lora.targets, (std::vector<std::string>{"k", "o"}));
  EXPECT_EQ(cfg.train.steps, 4);  // the last --set of a key wins

  // An override can also repair a file value that alone would be out of range.
  cfg = parse_ok("[train]\nmicro_batch = 0\n", {"train.micro_batch=1"});
  EXPECT_EQ(cfg.train.micro_batch, 1);
  // A bare string that looks like a number stays a string.
  cfg = parse_ok("", {"run.dir=123"});
  EXPECT_EQ(cfg.run.dir, "123");
}

TEST(ConfigLoader, LoadsAFile) {
  const std::string path = ::testing::TempDir() + "config_loader_test.toml";
  {
    std::ofstream out(path);
    out << "[train]\nsteps = 12\n\n[zero]\nstage = 4\n";
  }
  auto bad = load_config(path, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), path + ":5: zero.stage: must be in [0, 3], got 4");
  auto good = load_config(path, {"zero.stage=3"});
  ASSERT_TRUE(good.ok()) << good.status().message();
  EXPECT_EQ(good->source, path);
  EXPECT_EQ(good->train.steps, 12);
  EXPECT_EQ(good->zero.stage, 3);
  std::remove(path.c_str());
}

TEST(ConfigLoader, UnreadableFile) {
  auto result = load_config("/nonexistent/dir/x.toml", {});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), base::StatusCode::kInvalidArgument);
  EXPECT_EQ(result.status().message(),
            "/nonexistent/dir/x.toml: cannot read: No such file or directory");
  auto dir = load_config(::testing::TempDir(), {});
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.status().message(), ::testing::TempDir() + ": cannot read: Is a directory");
}

TEST(ConfigErrors, UnknownKey) {
  EXPECT_EQ(error_of("[train]\nsteps = 5\nstepz = 3\n"),
            "x.toml:3: train.stepz: unknown key; did you mean train.steps?");
  EXPECT_EQ(error_of("[model.rope_scaling]\ntype = \"none\"\nwhatever = 1\n"),
            "x.toml:3: model.rope_scaling.whatever: unknown key");
  EXPECT_EQ(error_of("[model.attention]\nx = 1\n"), "x.toml:1: model.attention: unknown key");
}

TEST(ConfigErrors, UnknownSection) {
  EXPECT_THAT(error_of("\n[trian]\nsteps = 1\n"),
              StartsWith("x.toml:2: trian: unknown section (sections: run, model, data, train, "
                         "optim, zero, offload, lora, checkpoint, log); did you mean train?"));
  EXPECT_THAT(error_of("steps = 1\n"), StartsWith("x.toml:1: steps: unknown section"));
}

TEST(ConfigErrors, WrongType) {
  EXPECT_EQ(error_of("[train]\n\nsteps = 2.5\n"),
            "x.toml:3: train.steps: expected an integer, got a float");
  EXPECT_EQ(error_of("[optim]\nlr = \"fast\"\n"),
            "x.toml:2: optim.lr: expected a float, got a string");
  EXPECT_EQ(error_of("[lora]\nenabled = 1\n"),
            "x.toml:2: lora.enabled: expected a boolean, got an integer");
  EXPECT_EQ(error_of("[run]\ndir = 3\n"), "x.toml:2: run.dir: expected a string, got an integer");
  EXPECT_EQ(error_of("[lora]\ntargets = \"q\"\n"),
            "x.toml:2: lora.targets: expected an array of strings, got a string");
  EXPECT_EQ(
      error_of("[lora]\ntargets = [\n  \"q\",\n  4,\n]\n"),
      "x.toml:4: lora.targets: expected an array of strings, got an element that is an integer");
  EXPECT_EQ(error_of("train = 5\n"), "x.toml:1: train: expected a table, got an integer");
  EXPECT_EQ(error_of("[model]\nrope_scaling = \"llama3\"\n"),
            "x.toml:2: model.rope_scaling: expected a table, got a string");
}

TEST(ConfigErrors, OutOfRange) {
  EXPECT_EQ(error_of("[run]\ndir = \"r\"\n\n[train]\nsteps = 3\nseq_len = 16\nmicro_batch = 0\n"),
            "x.toml:7: train.micro_batch: must be >= 1, got 0");
  EXPECT_EQ(error_of("[lora]\ndropout = 1.0\n"),
            "x.toml:2: lora.dropout: must be in [0, 1), got 1");
  EXPECT_EQ(error_of("[optim]\nlr = 0\n"), "x.toml:2: optim.lr: must be > 0, got 0");
  EXPECT_EQ(error_of("[optim]\nmin_lr_ratio = 1.5\n"),
            "x.toml:2: optim.min_lr_ratio: must be in [0, 1], got 1.5");
  EXPECT_EQ(error_of("[optim]\neps = nan\n"), "x.toml:2: optim.eps: must be finite, got nan");
  EXPECT_EQ(error_of("[checkpoint]\nkeep = 0\n"), "x.toml:2: checkpoint.keep: must be >= 1, got 0");
  EXPECT_EQ(error_of("[zero]\nstage = -1\n"), "x.toml:2: zero.stage: must be in [0, 3], got -1");
}

TEST(ConfigErrors, NotAllowedString) {
  EXPECT_EQ(error_of("[train]\ndtype = \"fp8\"\n"),
            "x.toml:2: train.dtype: must be one of fp32, bf16, fp16, got \"fp8\"");
  EXPECT_EQ(error_of("[model]\narchitecture = \"gpt2\"\n"),
            "x.toml:2: model.architecture: must be one of llama, qwen2, mistral, got \"gpt2\"");
  EXPECT_EQ(error_of("[lora]\ntargets = [\"q\", \"qkv\"]\n"),
            "x.toml:2: lora.targets: each must be one of q, k, v, o, gate, up, down, all-linear, "
            "got \"qkv\"");
  EXPECT_EQ(error_of("[offload]\noptimizer = \"gpu\"\n"),
            "x.toml:2: offload.optimizer: must be one of none, cpu, nvme, got \"gpu\"");
}

TEST(ConfigErrors, ContradictoryPairs) {
  EXPECT_EQ(error_of("[zero]\nstage = 2\n[offload]\nparams = \"cpu\"\n"),
            "x.toml:4: offload.params: offload.params other than \"none\" requires zero.stage = 3, "
            "got offload.params = \"cpu\", zero.stage = 2");
  EXPECT_EQ(error_of("[train]\nglobal_batch = 10\nmicro_batch = 4\n"),
            "x.toml:2: train.global_batch: train.global_batch must be a multiple of "
            "train.micro_batch, got train.global_batch = 10, train.micro_batch = 4");
  EXPECT_EQ(error_of("[train]\neval_every = 50\n"),
            "x.toml:2: train.eval_every: train.eval_every > 0 requires data.eval_path or "
            "data.eval_fraction > 0, got train.eval_every = 50, data.eval_path = \"\", "
            "data.eval_fraction = 0.0");
  EXPECT_EQ(error_of("[data]\neval_path = \"e.dstok\"\neval_fraction = 0.1\n"),
            "x.toml:3: data.eval_fraction: data.eval_fraction > 0 holds out part of data.path, "
            "which conflicts with a separate data.eval_path; set one of them, got "
            "data.eval_fraction = 0.1, data.eval_path = \"e.dstok\"");
  EXPECT_EQ(error_of("[data]\neval_fraction = 1.0\n"),
            "x.toml:2: data.eval_fraction: must be in [0, 1), got 1");
  EXPECT_EQ(error_of("[zero]\nstage = 3\n[offload]\nparams = \"cpu\"\n"),
            "x.toml:4: offload.params: offload.params other than \"none\" requires "
            "offload.optimizer other than \"none\", got offload.params = \"cpu\", "
            "offload.optimizer = \"none\"");
  EXPECT_EQ(error_of("[offload]\noptimizer = \"nvme\"\n"),
            "x.toml:2: offload.optimizer: offload.optimizer = \"nvme\" requires offload.nvme_dir, "
            "got offload.nvme_dir = \"\"");
  EXPECT_EQ(error_of("[train]\nrecompute_layers = 4\n"),
            "x.toml:2: train.recompute_layers: train.recompute_layers >= 0 requires "
            "train.activation_checkpointing = \"selective\", got train.recompute_layers = 4, "
            "train.activation_checkpointing = \"none\"");
  EXPECT_EQ(error_of("[offload]\nratio = 0.5\n"),
            "x.toml:2: offload.ratio: offload.ratio below 1 requires offload.optimizer = \"cpu\" "
            "and offload.params other than \"nvme\", got offload.ratio = 0.5, "
            "offload.optimizer = \"none\", offload.params = \"none\"");
  EXPECT_EQ(error_of("[offload]\noptimizer = \"cpu\"\nratio = 0.0\n"),
            "x.toml:3: offload.ratio: must be in (0, 1], got 0");
  EXPECT_EQ(error_of("[model]\nhidden_size = 66\nnum_heads = 4\nnum_kv_heads = 2\n"),
            "x.toml:2: model.hidden_size: model.hidden_size must be a multiple of model.num_heads "
            "when model.head_dim = 0, got model.hidden_size = 66, model.num_heads = 4");
  EXPECT_EQ(error_of("[model]\nnum_kv_heads = 3\n"),
            "x.toml:2: model.num_kv_heads: model.num_heads must be a multiple of "
            "model.num_kv_heads, got model.num_heads = 4, model.num_kv_heads = 3");
  EXPECT_EQ(
      error_of("[model]\nhidden_size = 12\nnum_heads = 4\nnum_kv_heads = 1\n"),
      "x.toml:2: model.hidden_size: model.hidden_size / model.num_heads must be even (RoPE "
      "rotates pairs) when model.head_dim = 0, got model.hidden_size = 12, model.num_heads = 4");
  EXPECT_EQ(error_of("[model]\nhead_dim = 7\n"),
            "x.toml:2: model.head_dim: must be even (RoPE rotates pairs), got 7");
  EXPECT_EQ(error_of("[lora]\nenabled = true\ntargets = []\n"),
            "x.toml:3: lora.targets: lora.enabled = true requires at least one target, got "
            "lora.targets = []");
}

TEST(ConfigErrors, Llama3RopeScaling) {
  const std::string head = "[model.rope_scaling]\ntype = \"llama3\"\n";
  EXPECT_EQ(error_of(head),
            "x.toml:2: model.rope_scaling.type: model.rope_scaling.type = \"llama3\" requires "
            "model.rope_scaling.original_max_position_embeddings > 0, got "
            "model.rope_scaling.original_max_position_embeddings = 0");
  const std::string with_orig = head + "original_max_position_embeddings = 8192\n";
  EXPECT_EQ(error_of(with_orig + "factor = 0.5\n"),
            "x.toml:4: model.rope_scaling.factor: model.rope_scaling.type = \"llama3\" requires "
            "model.rope_scaling.factor >= 1, got model.rope_scaling.factor = 0.5");
  EXPECT_EQ(
      error_of(with_orig + "factor = 8.0\nlow_freq_factor = 4\nhigh_freq_factor = 4\n"),
      "x.toml:6: model.rope_scaling.high_freq_factor: model.rope_scaling.type = \"llama3\" "
      "requires model.rope_scaling.high_freq_factor > model.rope_scaling.low_freq_factor, got "
      "model.rope_scaling.high_freq_factor = 4.0, model.rope_scaling.low_freq_factor = 4.0");
  parse_ok(with_orig + "factor = 8.0\nlow_freq_factor = 1\nhigh_freq_factor = 4\n");
}

TEST(ConfigErrors, SyntaxError) {
  EXPECT_THAT(error_of("[train]\nsteps = 1\nseq_len = = 3\n"),
              StartsWith("x.toml:3: parse error: "));
  EXPECT_THAT(error_of("[train\n"), StartsWith("x.toml:1: parse error: "));
}

TEST(ConfigErrors, BadSetValue) {
  EXPECT_THAT(error_of("", {"train.steps=abc"}),
              StartsWith("--set: train.steps: cannot read \"abc\" as an integer: "));
  EXPECT_EQ(error_of("", {"train.steps=2.5"}),
            "--set: train.steps: expected an integer, got a float");
  EXPECT_EQ(error_of("", {"train.steps=0"}), "--set: train.steps: must be >= 1, got 0");
  EXPECT_EQ(error_of("", {"lora.enabled=yes"})
                .rfind("--set: lora.enabled: cannot read \"yes\" as a boolean", 0),
            0u);
  EXPECT_EQ(error_of("", {"train.dtype=fp8"}),
            "--set: train.dtype: must be one of fp32, bf16, fp16, got \"fp8\"");
  EXPECT_EQ(error_of("", {"lora.targets=[\"q\", 1]"}),
            "--set: lora.targets: expected an array of strings, got an element that is an integer");
  EXPECT_THAT(error_of("", {"run.dir=\"unterminated"}), StartsWith("--set: run.dir: cannot read"));
  EXPECT_THAT(error_of("", {"train.steps=1\nseed = 2"}),
              StartsWith("--set: train.steps: cannot read"));
  EXPECT_EQ(error_of("", {"train.steps"}), "--set: train.steps: expected KEY=VALUE");
}

TEST(ConfigErrors, UnknownSetKey) {
  EXPECT_EQ(error_of("", {"train.stepz=3"}),
            "--set: train.stepz: unknown key; did you mean train.steps?");
  EXPECT_EQ(error_of("", {"train=3"}).rfind("--set: train: unknown key", 0), 0u);
}

TEST(ConfigErrors, CrossFieldNamesTheSetThatCausedIt) {
  const std::string file = "[zero]\nstage = 3\n[offload]\noptimizer = \"cpu\"\nparams = \"cpu\"\n";
  parse_ok(file);
  EXPECT_EQ(error_of(file, {"zero.stage=1"}),
            "--set: zero.stage: offload.params other than \"none\" requires zero.stage = 3, got "
            "offload.params = \"cpu\", zero.stage = 1");
}

TEST(ConfigErrors, ValidateWithoutLines) {
  base::Config cfg;
  cfg.train.micro_batch = 0;
  EXPECT_EQ(validate_config(cfg).message(), "config: train.micro_batch: must be >= 1, got 0");
  cfg.train.micro_batch = 2;
  cfg.source = "a.toml";
  cfg.zero.stage = 1;
  cfg.offload.params = "nvme";
  const base::Status s = validate_config(cfg);
  EXPECT_EQ(s.code(), base::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), StartsWith("a.toml: offload.params: "));
}

// A config where every section differs from the defaults, with strings that need escaping.
base::Config non_default_config() {
  base::Config cfg;
  cfg.run.dir = "/tmp/a \"quoted\" dir\\with\ttab";
  cfg.run.seed = -42;
  cfg.model.hf_dir = "/models/llama";
  cfg.model.architecture = "mistral";
  cfg.model.vocab_size = 32000;
  cfg.model.hidden_size = 4096;
  cfg.model.intermediate_size = 14336;
  cfg.model.num_layers = 32;
  cfg.model.num_heads = 32;
  cfg.model.num_kv_heads = 8;
  cfg.model.head_dim = 128;
  cfg.model.rms_norm_eps = 1e-6;
  cfg.model.rope_theta = 500000.0;
  cfg.model.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 8192, 32.0, 1.0};
  cfg.model.max_position_embeddings = 131072;
  cfg.model.attention_bias = true;
  cfg.model.mlp_bias = true;
  cfg.model.sliding_window = 4096;
  cfg.model.tie_embeddings = true;
  cfg.model.init_std = 0.006;
  cfg.data = {"/data/train.dstok", "sft", "/data/eval.dstok", 7, 0.0, true};
  cfg.train.steps = 1000;
  cfg.train.global_batch = 64;
  cfg.train.micro_batch = 4;
  cfg.train.seq_len = 4096;
  cfg.train.dtype = "bf16";
  cfg.train.eval_every = 100;
  cfg.train.activation_checkpointing = "selective";
  cfg.train.loss_scale_init = 1024.0;
  cfg.train.loss_scale_window = 500;
  cfg.optim = {1.0 / 3.0, 0.0, 200, "linear", 0.0, 0.8, 0.999, 1e-12, 0.0};
  cfg.zero = {3, 2, "bf16"};
  cfg.offload = {"nvme", "cpu", "/nvme/dstrain"};
  cfg.lora = {true, 16, 32.0, 0.05, {"all-linear"}, true};
  cfg.checkpoint = {500, 3, true, false};
  cfg.log = {10, false};
  return cfg;
}

TEST(ConfigToToml, RoundTripsANonDefaultConfig) {
  const base::Config cfg = non_default_config();
  ASSERT_TRUE(validate_config(cfg).ok()) << validate_config(cfg).message();
  const std::string text = config_to_toml(cfg);
  auto back = parse_config(text, "snapshot.toml", {});
  ASSERT_TRUE(back.ok()) << back.status().message() << "\n" << text;
  EXPECT_EQ(config_to_toml(*back), text);
  EXPECT_EQ(back->run.dir, cfg.run.dir);
  EXPECT_EQ(back->optim.lr, cfg.optim.lr);  // exact, not approximately
  EXPECT_EQ(back->model.rms_norm_eps, cfg.model.rms_norm_eps);
  EXPECT_EQ(back->lora.targets, cfg.lora.targets);
  EXPECT_NE(text, config_to_toml(base::Config{}));
}

TEST(ConfigToToml, WritesEveryKeyOnce) {
  const std::string text = config_to_toml(base::Config{});
  for (const KeySpec& spec : config_schema()) {
    const std::string leaf(spec.name.substr(spec.table().size() + 1));
    EXPECT_NE(text.find("\n" + leaf + " = "), std::string::npos) << spec.name;
  }
  for (std::string_view table : config_tables()) {
    const std::string header = "\n[" + std::string(table) + "]\n";
    const size_t first = text.find(header);
    EXPECT_NE(first, std::string::npos) << table;
    EXPECT_EQ(text.find(header, first + 1), std::string::npos) << table;
  }
  EXPECT_NE(text.find("\nlr = 0.0003\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nalpha = 16.0\n"), std::string::npos) << text;
}

}  // namespace
}  // namespace dstrain::launch
