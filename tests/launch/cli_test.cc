#include "launch/cli.h"

#include <gtest/gtest.h>

namespace dstrain::launch {
namespace {

base::StatusOr<Command> parse(std::vector<const char*> args) {
  args.insert(args.begin(), "dstrain");
  return parse_command_line(static_cast<int>(args.size()), args.data());
}

TEST(Cli, TrainIsTheDefaultCommand) {
  auto cmd = parse({"--config", "a.toml", "--set", "train.steps=3", "--set", "run.dir=x"});
  ASSERT_TRUE(cmd.ok()) << cmd.status().message();
  EXPECT_EQ(cmd->kind, CommandKind::kTrain);
  EXPECT_EQ(cmd->config_path, "a.toml");
  EXPECT_EQ(cmd->overrides, (std::vector<std::string>{"train.steps=3", "run.dir=x"}));
  EXPECT_EQ(cmd->resume, "auto");
}

TEST(Cli, ExplicitTrainAndResume) {
  auto cmd = parse({"train", "-c", "a.toml", "--resume", "never"});
  ASSERT_TRUE(cmd.ok());
  EXPECT_EQ(cmd->kind, CommandKind::kTrain);
  EXPECT_EQ(cmd->resume, "never");
}

TEST(Cli, InspectTakesACheckpointDirectory) {
  auto cmd = parse({"inspect", "--checkpoint", "runs/x/checkpoints/step-00000010"});
  ASSERT_TRUE(cmd.ok()) << cmd.status().message();
  EXPECT_EQ(cmd->kind, CommandKind::kInspect);
  EXPECT_EQ(cmd->checkpoint_dir, "runs/x/checkpoints/step-00000010");
  auto missing = parse({"inspect"});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), base::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("--checkpoint DIR"), std::string::npos);
  // Training options are not inspect's.
  EXPECT_FALSE(parse({"inspect", "--checkpoint", "d", "--config", "a.toml"}).ok());
  auto resume = parse({"--config", "a.toml", "--resume", "runs/x/checkpoints/step-00000010"});
  ASSERT_TRUE(resume.ok());
  EXPECT_EQ(resume->resume, "runs/x/checkpoints/step-00000010");
  EXPECT_NE(parse({"--help"})->help_text.find("dstrain inspect --checkpoint DIR"),
            std::string::npos);
}

TEST(Cli, HelpAndVersion) {
  auto help = parse({"--help"});
  ASSERT_TRUE(help.ok());
  EXPECT_EQ(help->kind, CommandKind::kHelp);
  EXPECT_NE(help->help_text.find("mpirun -np 32 dstrain --config lora.toml"), std::string::npos);
  auto version = parse({"--version"});
  ASSERT_TRUE(version.ok());
  EXPECT_EQ(version->kind, CommandKind::kVersion);
  auto sub_help = parse({"plan", "--help"});
  ASSERT_TRUE(sub_help.ok());
  EXPECT_EQ(sub_help->kind, CommandKind::kHelp);
}

TEST(Cli, UsageErrorsExitTwo) {
  for (auto args :
       std::vector<std::vector<const char*>>{{"frobnicate"},
                                             {"train"},
                                             {"--config"},
                                             {"--config", "a", "--bogus"},
                                             {"prepare", "--input", "a.txt"},
                                             {"prepare", "-i", "a", "-o", "b", "--format", "xml"},
                                             {"bench"},
                                             {"bench", "disk"},
                                             {"plan", "--config", "a", "--world", "-2"}}) {
    auto cmd = parse(args);
    ASSERT_FALSE(cmd.ok()) << args[0];
    EXPECT_EQ(base::exit_code(cmd.status()), 2);
    EXPECT_NE(cmd.status().message().find("--help"), std::string::npos);
  }
}

TEST(Cli, PlanPrepareBench) {
  auto plan = parse({"plan", "--config", "a.toml", "--world", "8", "--json"});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->world, 8);
  EXPECT_TRUE(plan->json);
  auto prep = parse({"prepare", "--input", "a.txt", "b.txt", "--output", "o.dstok"});
  ASSERT_TRUE(prep.ok());
  EXPECT_EQ(prep->inputs.size(), 2u);
  EXPECT_EQ(prep->prepare_format, "text");
  auto bench = parse({"bench", "comm", "--sizes-mib", "1", "2", "--iters", "3"});
  ASSERT_TRUE(bench.ok());
  EXPECT_EQ(bench->bench_what, "comm");
  EXPECT_EQ(bench->bench_sizes_mib, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(bench->bench_iters, 3);
  EXPECT_EQ(bench->bench_device, "auto");
}

TEST(Cli, PrepareChatNeedsItsTemplate) {
  auto chat = parse({"prepare", "-i", "c.jsonl", "-o", "c.dstok", "--format", "chat",
                     "--chat-template", "chatml", "--tokenizer", "tok.json"});
  ASSERT_TRUE(chat.ok()) << chat.status().message();
  EXPECT_EQ(chat->prepare_format, "chat");
  EXPECT_EQ(chat->chat_template, "chatml");
  for (auto args : std::vector<std::vector<const char*>>{
           {"prepare", "-i", "c.jsonl", "-o", "c.dstok", "--format", "chat"},
           {"prepare", "-i", "c.jsonl", "-o", "c.dstok", "--format", "sft", "--chat-template",
            "llama3"}}) {
    auto cmd = parse(args);
    ASSERT_FALSE(cmd.ok());
    EXPECT_EQ(base::exit_code(cmd.status()), 2);
    EXPECT_NE(cmd.status().message().find("--chat-template"), std::string::npos);
  }
}

TEST(Cli, PrepareTokenizerAndWorkers) {
  auto dflt = parse({"prepare", "-i", "a.txt", "-o", "o.dstok"});
  ASSERT_TRUE(dflt.ok());
  EXPECT_EQ(dflt->tokenizer, "byte");
  EXPECT_EQ(dflt->workers, 0);  // one per hardware thread
  auto set = parse({"prepare", "-i", "a.txt", "-o", "o.dstok", "--tokenizer", "models/llama3",
                    "--workers", "6"});
  ASSERT_TRUE(set.ok()) << set.status().message();
  EXPECT_EQ(set->tokenizer, "models/llama3");
  EXPECT_EQ(set->workers, 6);
  auto negative = parse({"prepare", "-i", "a.txt", "-o", "o.dstok", "--workers", "-1"});
  ASSERT_FALSE(negative.ok());
  EXPECT_EQ(base::exit_code(negative.status()), 2);
  EXPECT_NE(negative.status().message().find("--workers"), std::string::npos);
}

TEST(Cli, BenchDeviceIsAutoCpuOrCuda) {
  for (const char* device : {"auto", "cpu", "cuda"}) {
    auto cmd = parse({"bench", "comm", "--device", device});
    ASSERT_TRUE(cmd.ok()) << device << ": " << cmd.status().message();
    EXPECT_EQ(cmd->bench_device, device);
    EXPECT_TRUE(cmd->bench_sizes_mib.empty()) << "the default sizes depend on the device";
  }
  for (auto args :
       std::vector<std::vector<const char*>>{{"bench", "comm", "--device", "tpu"},
                                             {"bench", "comm", "--device"},
                                             {"bench", "comm", "--sizes-mib", "0"},
                                             {"bench", "comm", "--sizes-mib", "4", "-1"},
                                             {"bench", "comm", "--iters", "0"}}) {
    auto cmd = parse(args);
    ASSERT_FALSE(cmd.ok()) << args.back();
    EXPECT_EQ(base::exit_code(cmd.status()), 2);
  }
  auto bad = parse({"bench", "comm", "--device", "tpu"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'tpu'"), std::string::npos);
}

TEST(Cli, ExportTakesCheckpointFormatAndOut) {
  auto cmd = parse({"export", "--checkpoint", "runs/x", "--format", "peft", "--out", "adapter"});
  ASSERT_TRUE(cmd.ok()) << cmd.status().message();
  EXPECT_EQ(cmd->kind, CommandKind::kExport);
  EXPECT_EQ(cmd->checkpoint_dir, "runs/x");
  EXPECT_EQ(cmd->export_format, "peft");
  EXPECT_EQ(cmd->out_dir, "adapter");
  EXPECT_EQ(cmd->export_dtype, "");
  EXPECT_EQ(cmd->max_shard_bytes, 5'000'000'000);
  EXPECT_TRUE(cmd->merge);
  EXPECT_FALSE(cmd->force);
  EXPECT_EQ(cmd->prepare_format, "text");  // --format is export's here, not prepare's

  auto all = parse({"export", "--checkpoint", "c", "--format", "hf", "--out", "o", "--dtype",
                    "bf16", "--max-shard-size", "2GiB", "--merge", "false", "--force"});
  ASSERT_TRUE(all.ok()) << all.status().message();
  EXPECT_EQ(all->export_dtype, "bf16");
  EXPECT_EQ(all->max_shard_bytes, int64_t{2} << 30);
  EXPECT_FALSE(all->merge);
  EXPECT_TRUE(all->force);
  EXPECT_NE(parse({"--help"})
                ->help_text.find("dstrain export  --checkpoint DIR --format hf|peft --out DIR"),
            std::string::npos);

  for (auto args : std::vector<std::vector<const char*>>{
           {"export", "--format", "hf", "--out", "o"},
           {"export", "--checkpoint", "c", "--format", "hf"},
           {"export", "--checkpoint", "c", "--out", "o"},
           {"export", "--checkpoint", "c", "--format", "gguf", "--out", "o"},
           {"export", "--checkpoint", "c", "--format", "hf", "--out", "o", "--dtype", "int8"},
           {"export", "--checkpoint", "c", "--format", "hf", "--out", "o", "--max-shard-size",
            "lots"},
           {"export", "--checkpoint", "c", "--format", "hf", "--out", "o", "--merge", "maybe"},
           {"export", "--checkpoint", "c", "--format", "hf", "--out", "o", "--config", "a.toml"}}) {
    auto bad = parse(args);
    ASSERT_FALSE(bad.ok()) << args.back();
    EXPECT_EQ(base::exit_code(bad.status()), 2);
    EXPECT_NE(bad.status().message().find("--help"), std::string::npos) << bad.status().message();
  }
}

TEST(Cli, ByteSizes) {
  EXPECT_EQ(*parse_byte_size("5GB"), 5'000'000'000);
  EXPECT_EQ(*parse_byte_size("500mb"), 500'000'000);
  EXPECT_EQ(*parse_byte_size("3KiB"), 3072);
  EXPECT_EQ(*parse_byte_size("1TiB"), int64_t{1} << 40);
  EXPECT_EQ(*parse_byte_size("1234"), 1234);
  EXPECT_EQ(*parse_byte_size("7B"), 7);
  for (const char* bad : {"", "GB", "0", "-5GB", "1.5GB", "5 GB", "9999999999999999GB", "5XB"}) {
    auto r = parse_byte_size(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), base::StatusCode::kInvalidArgument) << bad;
  }
}

}  // namespace
}  // namespace dstrain::launch
