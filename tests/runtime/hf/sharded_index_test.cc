#include "runtime/hf/sharded_index.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/hf/json_file.h"
#include "tests/runtime/hf/temp_dir.h"

namespace dstrain::runtime::hf {
namespace {

using base::StatusCode;

const std::vector<float> kA = {1, 2, 3, 4};
const std::vector<float> kB = {5, 6};
const std::vector<float> kC = {7, 8, 9};

// Two shards: a, b in the first; c in the second.
void write_shards(const TempDir& dir) {
  ASSERT_TRUE(
      write_safetensors(dir.file("model-00001-of-00002.safetensors"),
                        {{"a", "F32", {2, 2}, kA.data(), 16}, {"b", "F32", {2}, kB.data(), 8}},
                        {{"format", "pt"}})
          .ok());
  ASSERT_TRUE(write_safetensors(dir.file("model-00002-of-00002.safetensors"),
                                {{"c", "F32", {3}, kC.data(), 12}}, {{"format", "pt"}})
                  .ok());
}

const char kGoodIndex[] = R"({"metadata": {"total_size": 36}, "weight_map": {
  "a": "model-00001-of-00002.safetensors",
  "b": "model-00001-of-00002.safetensors",
  "c": "model-00002-of-00002.safetensors"}})";

void expect_bad_input(const base::Status& st, const std::string& names, const std::string& what) {
  EXPECT_EQ(st.code(), StatusCode::kBadInput) << st.to_string();
  EXPECT_NE(st.message().find(names), std::string::npos) << st.message();
  EXPECT_NE(st.message().find(what), std::string::npos) << st.message();
}

std::vector<float> read_all(const TensorRef& ref) {
  std::vector<float> out(ref.info->nbytes() / sizeof(float));
  EXPECT_TRUE(ref.file->read(*ref.info, 0, ref.info->nbytes(), out.data()).ok());
  return out;
}

TEST(ShardedIndex, OpensShardsAndLooksUpTensors) {
  TempDir dir;
  write_shards(dir);
  const std::string index = dir.file(kIndexFileName);
  write_bytes(index, kGoodIndex);
  auto ckpt = ShardedCheckpoint::open_index(index);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().to_string();
  EXPECT_EQ(ckpt->source(), index);
  EXPECT_EQ(ckpt->shards().size(), 2u);
  EXPECT_EQ(ckpt->size(), 3u);
  EXPECT_EQ(ckpt->names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(ckpt->total_size(), std::optional<uint64_t>(36));

  // Moving the checkpoint keeps the references it hands out valid.
  ShardedCheckpoint moved = std::move(ckpt).value();
  auto c = moved.lookup("c");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->file->path(), dir.file("model-00002-of-00002.safetensors"));
  EXPECT_EQ(c->info->shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(read_all(*c), kC);
  auto a = moved.find("a");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(read_all(*a), kA);
  EXPECT_EQ(read_all(*moved.find("b")), kB);

  EXPECT_FALSE(moved.find("d").has_value());
  expect_bad_input(moved.lookup("d").status(), index, "no tensor named d");
}

TEST(ShardedIndex, CheckpointDirPrefersSingleFile) {
  TempDir dir;
  write_shards(dir);
  write_bytes(dir.file(kIndexFileName), kGoodIndex);
  auto from_index = open_checkpoint_dir(dir.path());
  ASSERT_TRUE(from_index.ok()) << from_index.status().to_string();
  EXPECT_EQ(from_index->source(), dir.file(kIndexFileName));
  EXPECT_EQ(from_index->size(), 3u);

  const std::vector<float> w = {42};
  ASSERT_TRUE(
      write_safetensors(dir.file(kSingleFileName), {{"w", "F32", {1}, w.data(), 4}}, {}).ok());
  auto single = open_checkpoint_dir(dir.path() + "/");
  ASSERT_TRUE(single.ok()) << single.status().to_string();
  EXPECT_EQ(single->source(), dir.file(kSingleFileName));
  EXPECT_EQ(single->names(), std::vector<std::string>{"w"});
  EXPECT_FALSE(single->total_size().has_value());
  EXPECT_EQ(read_all(*single->find("w")), w);
}

TEST(ShardedIndex, CheckpointDirWithNeitherFileNamesDir) {
  TempDir dir;
  auto ckpt = open_checkpoint_dir(dir.path());
  ASSERT_FALSE(ckpt.ok());
  expect_bad_input(ckpt.status(), dir.path(), kIndexFileName);
}

TEST(ShardedIndex, CheckpointDirPassesOnSingleFileErrors) {
  TempDir dir;
  write_bytes(dir.file(kSingleFileName), "junk");
  auto ckpt = open_checkpoint_dir(dir.path());
  ASSERT_FALSE(ckpt.ok());
  expect_bad_input(ckpt.status(), dir.file(kSingleFileName), "too short");
}

struct BadShardName {
  const char* label;
  const char* json_name;  // as written in the JSON text
  const char* expect;
};

void PrintTo(const BadShardName& b, std::ostream* os) { *os << b.label; }

class BadShardNames : public testing::TestWithParam<BadShardName> {};

TEST_P(BadShardNames, AreRejectedBeforeOpening) {
  TempDir dir;
  write_shards(dir);
  const std::string index = dir.file(kIndexFileName);
  write_bytes(index,
              std::string(R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "x": )") +
                  GetParam().json_name + "}}");
  auto ckpt = ShardedCheckpoint::open_index(index);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().message().rfind(index + ": ", 0), 0u) << ckpt.status().message();
  expect_bad_input(ckpt.status(), "tensor x: shard", GetParam().expect);
}

INSTANTIATE_TEST_SUITE_P(
    All, BadShardNames,
    testing::Values(BadShardName{"parent", R"("../x.safetensors")", "contains '/'"},
                    BadShardName{"dotdot", R"("..x.safetensors")", "\"..\""},
                    BadShardName{"subdir", R"("sub/x.safetensors")", "contains '/'"},
                    BadShardName{"absolute", R"("/etc/x.safetensors")", "contains '/'"},
                    BadShardName{"empty", R"("")", "is empty"},
                    BadShardName{"nul", R"("a\u0000.safetensors")", "NUL"},
                    BadShardName{"suffix", R"("model.bin")", "does not end in .safetensors"},
                    BadShardName{"bare_suffix", R"(".safetensors")", "does not end in"},
                    BadShardName{"not_string", "3", "is a JSON number"}),
    [](const testing::TestParamInfo<BadShardName>& info) { return std::string(info.param.label); });

TEST(ShardedIndex, MissingShardNamesIndexAndShard) {
  TempDir dir;
  write_shards(dir);
  const std::string index = dir.file(kIndexFileName);
  write_bytes(index, R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                        "z": "model-00003-of-00003.safetensors"}})");
  auto ckpt = ShardedCheckpoint::open_index(index);
  ASSERT_FALSE(ckpt.ok());
  expect_bad_input(ckpt.status(), index, dir.file("model-00003-of-00003.safetensors"));
}

TEST(ShardedIndex, TensorAbsentFromItsShard) {
  TempDir dir;
  write_shards(dir);
  const std::string index = dir.file(kIndexFileName);
  write_bytes(index, R"({"weight_map": {"c": "model-00001-of-00002.safetensors"}})");
  auto ckpt = ShardedCheckpoint::open_index(index);
  ASSERT_FALSE(ckpt.ok());
  expect_bad_input(ckpt.status(), index, "tensor c is mapped to");
}

TEST(ShardedIndex, TensorNamedTwice) {
  TempDir dir;
  write_shards(dir);
  const std::string index = dir.file(kIndexFileName);
  write_bytes(index, R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                        "a": "model-00002-of-00002.safetensors"}})");
  auto ckpt = ShardedCheckpoint::open_index(index);
  ASSERT_FALSE(ckpt.ok());
  expect_bad_input(ckpt.status(), index, "key \"a\" appears twice");
}

TEST(ShardedIndex, MalformedIndexFiles) {
  TempDir dir;
  write_shards(dir);
  const std::string index = dir.file(kIndexFileName);
  const std::pair<const char*, const char*> cases[] = {
      {R"({"metadata": {}})", "missing object \"weight_map\""},
      {R"({"weight_map": []})", "missing object \"weight_map\""},
      {R"({"weight_map": {"a": )", "invalid JSON"},
      {R"(["weight_map"])", "expected an object"},
      {R"({"metadata": {"total_size": -3}, "weight_map": {}})", "total_size"},
      {R"({"metadata": 7, "weight_map": {}})", "\"metadata\""},
  };
  for (const auto& [text, expect] : cases) {
    write_bytes(index, text);
    auto ckpt = ShardedCheckpoint::open_index(index);
    ASSERT_FALSE(ckpt.ok()) << text;
    expect_bad_input(ckpt.status(), index, expect);
  }
}

TEST(ShardedIndex, CorruptShardNamesIndexAndShard) {
  TempDir dir;
  write_shards(dir);
  write_bytes(dir.file("model-00002-of-00002.safetensors"), u64_le(2) + "{}" + "xyz");
  const std::string index = dir.file(kIndexFileName);
  write_bytes(index, kGoodIndex);
  auto ckpt = ShardedCheckpoint::open_index(index);
  ASSERT_FALSE(ckpt.ok());
  expect_bad_input(ckpt.status(), index,
                   dir.file("model-00002-of-00002.safetensors") + ": tensors cover 0");
}

TEST(ConfigJson, ReadsObject) {
  TempDir dir;
  write_bytes(dir.file("config.json"),
              R"({"model_type": "llama", "hidden_size": 64, "rope_scaling": null})");
  auto cfg = read_config_json(dir.path());
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ((*cfg)["model_type"], "llama");
  EXPECT_EQ((*cfg)["hidden_size"], 64);
}

TEST(ConfigJson, ErrorsNameTheFile) {
  TempDir dir;
  const std::string path = dir.file("config.json");
  expect_bad_input(read_config_json(dir.path()).status(), path, "cannot open");
  write_bytes(path, R"({"hidden_size": 64,)");
  expect_bad_input(read_config_json(dir.path()).status(), path, "invalid JSON");
  write_bytes(path, "[64]");
  expect_bad_input(read_config_json(dir.path()).status(), path, "expected an object");
  write_bytes(path, R"({"hidden_size": 64, "hidden_size": 32})");
  expect_bad_input(read_config_json(dir.path()).status(), path, "\"hidden_size\" appears twice");
  // Duplicates are found in nested objects too, and equal keys in sibling objects are fine.
  write_bytes(path, R"({"a": {"k": 1}, "b": {"k": 2, "c": {"k": 3, "k": 4}}})");
  expect_bad_input(read_config_json(dir.path()).status(), path, "\"k\" appears twice");
  write_bytes(path, R"({"a": {"k": 1}, "b": [{"k": 2}, {"k": 3}], "k": 0})");
  EXPECT_TRUE(read_config_json(dir.path()).ok());
}

}  // namespace
}  // namespace dstrain::runtime::hf
