// The dstrain binary end to end, under mpirun: what a user sees (exit codes, messages) and what
// scripts read (metrics.jsonl).
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <nlohmann/json.hpp>
#include "tests/launch/e2e_util.h"

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

using dstrain::e2e::dstrain;
using dstrain::e2e::kSmallModelToml;
using dstrain::e2e::run;
using dstrain::e2e::RunResult;

namespace fs = std::filesystem;

class TrainE2e : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("dstrain_e2e_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    const fs::path p = dir_ / name;
    std::ofstream(p) << text;
    return p.string();
  }
  // A small model on the built-in demo corpus; a few seconds per run.
  std::string small_config(const std::string& extra = "") {
    // The CPU proofs stay on the CPU on GPU machines too (more ranks than GPUs there).
    return write("small.toml", std::string(kSmallModelToml) + R"(
[train]
steps = 6
global_batch = 8
micro_batch = 2
seq_len = 32
[optim]
lr = 1e-2
grad_clip = 0.5
)" + extra);
  }
  // Step and evaluation lines; event lines (checkpoint, resume) are left out.
  std::vector<nlohmann::json> metrics(const std::string& run_dir) {
    std::vector<nlohmann::json> lines;
    std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      nlohmann::json j = nlohmann::json::parse(line);
      if (!j.contains("event")) lines.push_back(std::move(j));
    }
    return lines;
  }
  std::vector<double> losses(const std::string& run_dir) {
    std::vector<double> out;
    for (const auto& j : metrics(run_dir)) {
      if (j.contains("loss")) out.push_back(j["loss"].get<double>());
    }
    return out;
  }
  std::string run_dir(const std::string& name) { return (dir_ / name).string(); }

  fs::path dir_;
};

TEST_F(TrainE2e, TinyTomlLossFallsByThirtyPercent) {
  const std::string out = run_dir("tiny");
  RunResult r = run(dstrain(2, "--config " DSTRAIN_SOURCE_DIR
                               "/configs/tiny.toml --set run.device=cpu --set run.dir=" +
                                   out));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<nlohmann::json> lines = metrics(out);
  ASSERT_EQ(lines.size(), 120u);
  for (const char* key :
       {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "step_time_s", "skipped_steps",
        "gpu_mem_peak_bytes", "host_rss_peak_bytes", "comm_wait_s", "gpu_driver_calls",
        "gpu_alloc_retries"}) {
    EXPECT_TRUE(lines.back().contains(key)) << key;
  }
  const double first = lines.front()["loss"], last = lines.back()["loss"];
  EXPECT_LT(last, 0.7 * first) << "first " << first << " last " << last;
  EXPECT_EQ(lines.back()["skipped_steps"], 0);
  EXPECT_NE(r.output.find("step 120/120"), std::string::npos) << r.output;
}

TEST_F(TrainE2e, SameLossesAtEveryWorldSizeAndStage) {
  // Same global batch, so accumulation is 4, 2 or 1 micro-batches per rank; the single-rank
  // stage-0 run is the reference for every sharded configuration.
  const std::string cfg = small_config();
  struct Case {
    int ranks;
    int stage;
  };
  const std::vector<Case> cases = {{1, 0}, {2, 0}, {4, 0}, {2, 1}, {4, 2}, {2, 3}, {4, 3}};
  std::vector<std::vector<double>> runs;
  for (const Case& c : cases) {
    const std::string out = run_dir("r" + std::to_string(c.ranks) + "s" + std::to_string(c.stage));
    RunResult r =
        run(dstrain(c.ranks, "--config " + cfg + " --set zero.stage=" + std::to_string(c.stage) +
                                 " --set run.dir=" + out));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    runs.push_back(losses(out));
    ASSERT_EQ(runs.back().size(), 6u);
  }
  for (size_t k = 1; k < runs.size(); ++k) {
    for (size_t s = 0; s < runs[0].size(); ++s) {
      EXPECT_NEAR(runs[k][s], runs[0][s], 1e-5 * std::abs(runs[0][s]))
          << cases[k].ranks << " ranks, stage " << cases[k].stage << ", step " << s;
    }
  }
}

TEST_F(TrainE2e, OffloadedOptimizerAndParametersKeepTheLosses) {
  // fp32 state in host memory or in a file on disk (io_uring), updated by dstrain's CPU AdamW
  // instead of the fused one: the same losses as the run without offload at each stage, on two
  // ranks; the scratch files are gone afterwards.
  const std::string cfg = small_config("weight_decay = 0.1\n");
  struct Case {
    int stage;
    std::string offload;
  };
  const std::string nvme = "--set offload.optimizer=nvme --set offload.nvme_dir=" + run_dir("nvme");
  const std::vector<Case> cases = {
      {1, "--set offload.optimizer=cpu"},
      {2, "--set offload.optimizer=cpu"},
      {3, "--set offload.optimizer=cpu"},
      {3, "--set offload.optimizer=cpu --set offload.params=cpu"},
      // Part of the units on the device, the rest on the host, each updated by its own AdamW.
      {3, "--set offload.optimizer=cpu --set offload.params=cpu --set offload.ratio=0.5"},
      {1, "--set offload.optimizer=cpu --set offload.ratio=0.3"},
      {0, nvme},
      {2, nvme},
      {3, nvme + " --set offload.params=cpu --set offload.host_budget_gib=0.0001"},
      {3, nvme + " --set offload.params=nvme"},
      {3, "--set offload.optimizer=cpu --set offload.params=nvme --set offload.nvme_dir=" +
              run_dir("nvme")}};
  for (const Case& c : cases) {
    std::vector<double> base, off;
    for (bool offloaded : {false, true}) {
      const std::string out = run_dir("s" + std::to_string(c.stage) + (offloaded ? "off" : "on") +
                                      std::to_string(c.offload.size()));
      RunResult r =
          run(dstrain(2, "--config " + cfg + " --set zero.stage=" + std::to_string(c.stage) +
                             (offloaded ? " " + c.offload : "") + " --set run.dir=" + out));
      ASSERT_EQ(r.exit_code, 0) << r.output;
      (offloaded ? off : base) = losses(out);
    }
    ASSERT_EQ(base.size(), 6u);
    ASSERT_EQ(off.size(), base.size());
    EXPECT_TRUE(!fs::exists(run_dir("nvme")) || fs::is_empty(run_dir("nvme")));
    for (size_t s = 0; s < base.size(); ++s) {
      EXPECT_NEAR(off[s], base[s], 1e-6 * std::abs(base[s]))
          << "stage " << c.stage << " " << c.offload << ", step " << s;
    }
  }
}

TEST_F(TrainE2e, Bf16TrainsAndFp16OverflowIsSkippedAndCounted) {
  const std::string cfg = small_config();
  const std::string bf16 = run_dir("bf16");
  RunResult r = run(dstrain(
      2, "--config " + cfg + " --set train.dtype=bf16 --set train.steps=12 --set run.dir=" + bf16));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<double> l = losses(bf16);
  ASSERT_EQ(l.size(), 12u);
  EXPECT_LT(l.back(), l.front());

  // A loss scale of 2^24 makes the first fp16 gradients overflow: those steps are
  // skipped on every rank, counted, and the scale halves until training proceeds.
  const std::string fp16 = run_dir("fp16");
  r = run(dstrain(2, "--config " + cfg + " --set train.dtype=fp16 --set train.steps=12" +
                         " --set train.loss_scale_init=16777216 --set run.dir=" + fp16));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<nlohmann::json> lines = metrics(fp16);
  ASSERT_EQ(lines.size(), 12u);
  const int64_t skipped = lines.back()["skipped_steps"].get<int64_t>();
  EXPECT_GT(skipped, 0);
  EXPECT_LT(skipped, 12);
  EXPECT_TRUE(lines.front()["grad_norm"].is_null());
  EXPECT_LT(lines.back()["loss_scale"].get<double>(), 16777216.0);
  EXPECT_FALSE(lines.back()["grad_norm"].is_null());
  for (const auto& j : lines) EXPECT_TRUE(std::isfinite(j["loss"].get<double>()));
}

TEST_F(TrainE2e, LoraTrainsAdaptersOnlyAndMatchesAcrossWorldSizesAndStages) {
  const std::string cfg = small_config(
      "[lora]\nenabled = true\nrank = 4\nalpha = 8.0\n"
      "dropout = 0.1\ntargets = [\"all-linear\"]\n");
  struct Case {
    int ranks;
    int stage;
  };
  const std::vector<Case> cases = {{1, 0}, {2, 0}, {2, 3}, {4, 2}};
  std::vector<std::vector<double>> runs;
  for (const Case& c : cases) {
    const std::string out =
        run_dir("lora" + std::to_string(c.ranks) + "s" + std::to_string(c.stage));
    RunResult r =
        run(dstrain(c.ranks, "--config " + cfg + " --set train.steps=8 --set zero.stage=" +
                                 std::to_string(c.stage) + " --set run.dir=" + out));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    runs.push_back(losses(out));
    ASSERT_EQ(runs.back().size(), 8u);
  }
  EXPECT_LT(runs[0].back(), runs[0].front());
  for (size_t k = 1; k < runs.size(); ++k) {
    for (size_t s = 0; s < runs[0].size(); ++s) {
      EXPECT_NEAR(runs[k][s], runs[0][s], 1e-5 * std::abs(runs[0][s]))
          << cases[k].ranks << " ranks, stage " << cases[k].stage << ", step " << s;
    }
  }
}

TEST_F(TrainE2e, ActivationCheckpointingKeepsTheLosses) {
  // Recomputation replays the same operations: against the single-rank run without it, every
  // policy at every stage matches as closely as the stages match each other, and on the same
  // ranks LoRA with dropout (masks keyed by sample, so the recompute replays them) matches exactly.
  // small_config rewrites one file: each configuration runs before the next is written.
  auto train = [&](const std::string& cfg, const std::string& tag, int ranks, int stage,
                   const std::string& policy, int layers = -1) {
    const std::string out = run_dir(tag + std::to_string(ranks) + "_" + std::to_string(stage) +
                                    "_" + policy + std::to_string(layers));
    RunResult r =
        run(dstrain(ranks, "--config " + cfg + " --set zero.stage=" + std::to_string(stage) +
                               " --set train.activation_checkpointing=" + policy +
                               " --set train.recompute_layers=" + std::to_string(layers) +
                               " --set run.dir=" + out));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::vector<double> l = losses(out);
    EXPECT_EQ(l.size(), 6u) << ranks << " ranks, stage " << stage << ", " << policy;
    l.resize(6, NAN);
    return l;
  };
  const std::string cfg = small_config();
  const std::vector<double> ref = train(cfg, "full_model", 1, 0, "none");
  struct Case {
    int ranks;
    int stage;
    const char* policy;
    int layers = -1;
  };
  for (const Case& c : {Case{2, 0, "full"}, Case{2, 3, "selective"}, Case{4, 3, "full"},
                        Case{2, 3, "selective", 1}}) {
    const std::vector<double> got = train(cfg, "full_model", c.ranks, c.stage, c.policy, c.layers);
    for (size_t s = 0; s < ref.size(); ++s) {
      EXPECT_NEAR(got[s], ref[s], 1e-5 * std::abs(ref[s]))
          << c.ranks << " ranks, stage " << c.stage << ", " << c.policy << ", step " << s;
    }
  }
  const std::string lora = small_config(
      "[lora]\nenabled = true\nrank = 4\nalpha = 8.0\n"
      "dropout = 0.1\ntargets = [\"all-linear\"]\n");
  const std::vector<double> lora_none = train(lora, "lora", 2, 3, "none");
  const std::vector<double> lora_full = train(lora, "lora", 2, 3, "full");
  for (size_t s = 0; s < lora_none.size(); ++s) {
    EXPECT_NEAR(lora_full[s], lora_none[s], 1e-6 * std::abs(lora_none[s])) << "LoRA step " << s;
  }
}

TEST_F(TrainE2e, FineTunesAHuggingFaceCheckpoint) {
  const char* python = std::getenv("DSTRAIN_PYTHON");
  if (python == nullptr || *python == '\0') GTEST_SKIP() << "DSTRAIN_PYTHON is unset";
  const std::string hf = (dir_ / "hf").string();
  const std::string script = write("make_hf.py", R"(
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  tie_word_embeddings=False)
LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(sys.argv[1])
)");
  RunResult made = run(std::string(python) + " " + script + " " + hf);
  ASSERT_EQ(made.exit_code, 0) << made.output;
  // The model.* keys of the config are ignored: the architecture comes from config.json.
  const std::string cfg = small_config("[lora]\nenabled = true\ntargets = [\"q\", \"v\"]\n");
  // Every rank must load the whole frozen base wherever it is kept whole (stages 1 and 2, and
  // stage 3 with lora.base_sharding = replicated), and its shard where it is sharded.
  struct Case {
    int ranks;
    int stage;
    const char* base_sharding;
  };
  const std::vector<Case> cases = {
      {1, 0, "auto"}, {2, 1, "auto"}, {2, 2, "auto"}, {2, 3, "sharded"}, {2, 3, "replicated"}};
  std::vector<std::vector<double>> runs;
  for (const Case& c : cases) {
    const std::string out = run_dir("hf" + std::to_string(c.stage) + c.base_sharding);
    RunResult r = run(dstrain(
        c.ranks, "--config " + cfg + " --set model.hf_dir=" + hf +
                     " --set model.hidden_size=64 --set zero.stage=" + std::to_string(c.stage) +
                     " --set lora.base_sharding=" + c.base_sharding + " --set run.dir=" + out));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    runs.push_back(losses(out));
  }
  ASSERT_EQ(runs[0].size(), 6u);
  // A random-initialised 259-token model starts near ln(259) = 5.56; the loaded one too, but its
  // exact first loss is the checkpoint's (B = 0 adapters change nothing at step 1).
  for (size_t k = 1; k < runs.size(); ++k) {
    ASSERT_EQ(runs[k].size(), runs[0].size());
    for (size_t s = 0; s < runs[0].size(); ++s) {
      EXPECT_NEAR(runs[k][s], runs[0][s], 1e-5 * runs[0][s])
          << "stage " << cases[k].stage << ", " << cases[k].base_sharding << ", step " << s;
    }
  }
  // A bad checkpoint directory is bad input naming it.
  RunResult bad = run(dstrain(1, "--config " + cfg + " --set model.hf_dir=" + run_dir("nope") +
                                     " --set run.dir=" + run_dir("bad")));
  EXPECT_EQ(bad.exit_code, 3) << bad.output;
  EXPECT_NE(bad.output.find(run_dir("nope")), std::string::npos) << bad.output;
}

TEST_F(TrainE2e, RerunIsBitIdentical) {
  const std::string cfg = small_config();
  std::vector<std::vector<double>> runs;
  for (const char* name : {"a", "b"}) {
    RunResult r = run(dstrain(2, "--config " + cfg + " --set run.dir=" + run_dir(name)));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    runs.push_back(losses(run_dir(name)));
  }
  ASSERT_EQ(runs[0].size(), 6u);
  EXPECT_EQ(runs[0], runs[1]);
  // A different seed is a different run.
  RunResult r =
      run(dstrain(2, "--config " + cfg + " --set run.seed=7 --set run.dir=" + run_dir("c")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(losses(run_dir("c")), runs[0]);
}

TEST_F(TrainE2e, EvaluationWritesEvalLoss) {
  std::string text;
  for (int i = 0; i < 200; ++i)
    text += "the quick brown fox jumps over the lazy dog number " + std::to_string(i) + ".\n";
  const std::string txt = write("eval.txt", text);
  const std::string tok = (dir_ / "eval.dstok").string();
  RunResult prep =
      run(std::string(DSTRAIN_BINARY) + " prepare --input " + txt + " --output " + tok);
  ASSERT_EQ(prep.exit_code, 0) << prep.output;
  const std::string cfg = small_config("[data]\neval_path = \"" + tok + "\"\n");
  const std::string out = run_dir("eval");
  RunResult r =
      run(dstrain(2, "--config " + cfg + " --set train.eval_every=3 --set run.dir=" + out));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  int evals = 0;
  for (const auto& j : metrics(out)) {
    if (!j.contains("eval_loss")) continue;
    ++evals;
    EXPECT_TRUE(std::isfinite(j["eval_loss"].get<double>()));
    EXPECT_EQ(j["step"].get<int>() % 3, 0);
  }
  EXPECT_EQ(evals, 2);
}

TEST_F(TrainE2e, BadDataFileExitsThreeNamingTheFile) {
  const std::string bad = write("bad.dstok", "this is not a token file");
  const std::string cfg = small_config("[data]\npath = \"" + bad + "\"\n");
  RunResult r = run(dstrain(2, "--config " + cfg + " --set run.dir=" + run_dir("bad")));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find(bad), std::string::npos) << r.output;
}

TEST_F(TrainE2e, ConfigErrorExitsTwoWithFileLineKey) {
  const std::string cfg = write("c.toml", "[train]\nsteps = 5\nmicro_bach = 2\n");
  RunResult r = run(dstrain(2, "--config " + cfg));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(cfg + ":3: train.micro_bach"), std::string::npos) << r.output;
}

TEST_F(TrainE2e, GlobalBatchThatDoesNotSplitExitsTwo) {
  const std::string cfg = small_config();
  RunResult r = run(dstrain(3, "--config " + cfg + " --set run.dir=" + run_dir("x")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("train.global_batch"), std::string::npos) << r.output;
}

TEST_F(TrainE2e, Bf16GradientReductionStaysCloseToFp32) {
  const std::string cfg = small_config();
  std::vector<std::vector<double>> runs;
  for (const char* dtype : {"fp32", "bf16"}) {
    for (int stage : {0, 2}) {
      const std::string out = run_dir(std::string("rd_") + dtype + std::to_string(stage));
      RunResult r = run(dstrain(2, "--config " + cfg + " --set zero.reduce_dtype=" + dtype +
                                       " --set zero.stage=" + std::to_string(stage) +
                                       " --set run.dir=" + out));
      ASSERT_EQ(r.exit_code, 0) << r.output;
      runs.push_back(losses(out));
    }
  }
  // Rounding the summed gradients to bf16 moves the losses a little, and only a little.
  for (size_t k : {2, 3}) {
    ASSERT_EQ(runs[k].size(), runs[0].size());
    EXPECT_NE(runs[k], runs[k - 2]);
    for (size_t s = 0; s < runs[0].size(); ++s) {
      EXPECT_NEAR(runs[k][s], runs[k - 2][s], 2e-2 * runs[k - 2][s])
          << "run " << k << " step " << s;
    }
  }
}

TEST_F(TrainE2e, PlanPrintsPerRankBytes) {
  const std::string cfg = small_config("[zero]\nstage = 2\n");
  RunResult r = run(std::string(DSTRAIN_BINARY) + " plan --json --world 4 --config " + cfg);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["world"], 4);
  EXPECT_GT(j["parameters"].get<int64_t>(), 0);
  EXPECT_GT(j["per_rank_bytes"]["total"].get<int64_t>(), 0);
  EXPECT_EQ(j["per_rank_tier_bytes"]["host"], 0);
  EXPECT_TRUE(j["fits"].get<bool>());

  // Offloaded, the optimizer state moves to the host (and past the budget to the disk); a model
  // far beyond this machine's memory is said not to fit.
  const std::string offloaded = small_config(
      "[zero]\nstage = 3\n[offload]\noptimizer = \"nvme\"\n"
      "params = \"cpu\"\nnvme_dir = \"" +
      run_dir("nvme") + "\"\n");
  r = run(std::string(DSTRAIN_BINARY) + " plan --json --world 2 --config " + offloaded);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  j = nlohmann::json::parse(r.output);
  EXPECT_GT(j["per_rank_tier_bytes"]["nvme"].get<int64_t>(), 0);
  EXPECT_GT(j["per_rank_tier_bytes"]["host"].get<int64_t>(), 0);
  EXPECT_EQ(j["per_rank_bytes"]["master_params"].get<int64_t>() +
                j["per_rank_bytes"]["optimizer_moments"].get<int64_t>(),
            j["per_rank_tier_bytes"]["nvme"].get<int64_t>());
  EXPECT_TRUE(j["fits"].get<bool>());
  r = run(std::string(DSTRAIN_BINARY) + " plan --json --world 2 --config " + offloaded +
          " --set offload.optimizer=cpu --set model.hidden_size=16384 --set "
          "model.intermediate_size=65536" +
          " --set model.num_layers=64 --set model.num_heads=128 --set model.num_kv_heads=8");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  j = nlohmann::json::parse(r.output);
  EXPECT_FALSE(j["fits"].get<bool>());
  EXPECT_NE(j["problems"][0].get<std::string>().find("host memory"), std::string::npos) << r.output;
}

}  // namespace
