// Every config the project ships loads and validates as it is.
#include <gtest/gtest.h>

#include <string>

#include "launch/config/config_loader.h"

namespace dstrain::launch {
namespace {

void expect_loads(const std::string& name) {
  const std::string path = std::string(DSTRAIN_SOURCE_DIR) + "/configs/" + name;
  auto cfg = load_config(path, {});
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
}

TEST(ShippedConfigs, TinyLoads) { expect_loads("tiny.toml"); }
TEST(ShippedConfigs, Bench1bLoads) { expect_loads("bench-1b.toml"); }

TEST(ShippedConfigs, LoraIsTheUsageLinesLoraRun) {
  expect_loads("lora.toml");
  auto cfg = load_config(std::string(DSTRAIN_SOURCE_DIR) + "/configs/lora.toml", {});
  ASSERT_TRUE(cfg.ok());
  EXPECT_TRUE(cfg->lora.enabled);
  EXPECT_FALSE(cfg->model.hf_dir.empty());
  EXPECT_EQ(cfg->zero.stage, 3);
}

TEST(ShippedConfigs, TinyLoraFineTunesTheTinyExport) {
  expect_loads("tiny-lora.toml");
  auto cfg = load_config(std::string(DSTRAIN_SOURCE_DIR) + "/configs/tiny-lora.toml", {});
  ASSERT_TRUE(cfg.ok());
  EXPECT_TRUE(cfg->lora.enabled);
  // Relative to the working directory, where its header's export command writes it.
  EXPECT_EQ(cfg->model.hf_dir, "runs/tiny-hf");
  EXPECT_EQ(cfg->run.device, "cpu");
}

}  // namespace
}  // namespace dstrain::launch
