#include "runtime/checkpoint/index.h"

#include <gtest/gtest.h>

#include "runtime/checkpoint/checksum.h"

namespace dstrain::runtime::checkpoint {
namespace {

CheckpointIndex sample_index() {
  CheckpointIndex x;
  x.dstrain_version = "0.1.0";
  x.step = 12;
  x.world_size = 2;
  x.zero_stage = 3;
  x.dtype = "fp32";
  x.seed = 1234;
  x.adam_step = 12.0;
  x.loss_scale = 0.1 + 0.2;  // not representable in short decimal: must round-trip exactly
  x.good_steps = 5;
  x.config_toml = "[run]\ndir = \"runs/x\"\n";
  // One 4096-byte block each: a single block's crc is the file's.
  x.files = {{"rank-00000.h5", 4096, 123, 4096, {123}},
             {"rank-00001.h5", 4096, 4000000000u, 4096, {4000000000u}}};
  TensorEntry w;
  w.shape = {4, 8};
  w.dtype = "fp32";
  w.pieces = {{"rank-00000.h5", "/param/w", 0, 20, 2048},
              {"rank-00001.h5", "/param/w", 20, 12, 2048}};
  x.tensors["param"]["w"] = w;
  x.tensors["exp_avg"]["w"] = w;
  return x;
}

void expect_bad(const CheckpointIndex& x, const std::string& needle) {
  base::Status st = validate_index(x, "/ck/step-00000012/index.json");
  ASSERT_FALSE(st.ok()) << needle;
  EXPECT_EQ(st.code(), base::StatusCode::kBadInput);
  EXPECT_NE(st.message().find("/ck/step-00000012/index.json"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find(needle), std::string::npos) << st.message();
}

TEST(Index, RoundTripsEveryField) {
  const CheckpointIndex x = sample_index();
  auto y = parse_index(index_to_json(x), "index.json");
  ASSERT_TRUE(y.ok()) << y.status().to_string();
  EXPECT_EQ(y->step, 12);
  EXPECT_EQ(y->world_size, 2);
  EXPECT_EQ(y->zero_stage, 3);
  EXPECT_EQ(y->loss_scale, x.loss_scale);
  EXPECT_EQ(y->good_steps, 5);
  EXPECT_EQ(y->config_toml, x.config_toml);
  ASSERT_EQ(y->files.size(), 2u);
  EXPECT_EQ(y->files[1].crc32, 4000000000u);
  EXPECT_EQ(y->format_version, kFormatVersion);
  EXPECT_EQ(y->files[1].block_bytes, 4096);
  EXPECT_EQ(y->files[1].block_crc32, (std::vector<uint32_t>{4000000000u}));
  const TensorEntry& w = y->tensors.at("param").at("w");
  EXPECT_EQ(w.shape, (std::vector<int64_t>{4, 8}));
  ASSERT_EQ(w.pieces.size(), 2u);
  EXPECT_EQ(w.pieces[1].file, "rank-00001.h5");
  EXPECT_EQ(w.pieces[1].offset, 20);
  EXPECT_EQ(w.pieces[1].byte_offset, 2048);
  EXPECT_EQ(index_to_json(*y), index_to_json(x));
}

TEST(Index, ValidationNamesTheIndexAndTheProblem) {
  CheckpointIndex x = sample_index();
  x.tensors["param"]["w"].pieces[1].offset = 21;
  expect_bad(x, "pieces do not tile");

  x = sample_index();
  x.tensors["param"]["w"].pieces.pop_back();
  expect_bad(x, "pieces hold 20 elements, shape needs 32");

  x = sample_index();
  x.tensors["param"]["w"].pieces[0].file = "rank-00007.h5";
  expect_bad(x, "unlisted file 'rank-00007.h5'");

  x = sample_index();
  x.tensors["param"]["w"].pieces[0].byte_offset = 4090;
  expect_bad(x, "lies outside rank-00000.h5");

  x = sample_index();
  x.tensors["param"]["w"].dtype = "int7";
  expect_bad(x, "unknown dtype");

  x = sample_index();
  x.files[0].name = "../escape.h5";
  expect_bad(x, "not a plain name");

  x = sample_index();
  x.tensors["momentum"] = x.tensors["param"];
  expect_bad(x, "unknown state kind");
}

TEST(Index, BlockChecksumsMustDescribeTheFile) {
  CheckpointIndex x = sample_index();
  x.files[0].size = 3 * 4096 + 1;  // four blocks, the last of one byte
  x.files[0].block_crc32 = {1, 2, 3};
  x.tensors["param"]["w"].pieces[0].byte_offset = 0;
  expect_bad(x, "rank-00000.h5: 3 block checksums, 12289 bytes need 4");

  x.files[0].block_crc32 = {1, 2, 3, 4};
  expect_bad(x, "rank-00000.h5: the block checksums do not add up to the file's crc32");
  x.files[0].crc32 = fold_block_crc32s(x.files[0].block_crc32, 4096, x.files[0].size);
  EXPECT_TRUE(validate_index(x, "index.json").ok());

  x.files[0].block_bytes = 1000;
  expect_bad(x, "block_bytes 1000 is not a positive multiple of 4096");

  // Version 1 has whole-file checksums only, and still parses.
  x = sample_index();
  x.format_version = 1;
  expect_bad(x, "block checksums need format_version 2");
  for (FileEntry& f : x.files) {
    f.block_bytes = 0;
    f.block_crc32.clear();
  }
  const std::string v1 = index_to_json(x);
  EXPECT_EQ(v1.find("block_crc32"), std::string::npos);
  auto y = parse_index(v1, "/x/index.json");
  ASSERT_TRUE(y.ok()) << y.status().to_string();
  EXPECT_EQ(y->format_version, 1);
  EXPECT_EQ(y->files[0].crc32, 123u);
  EXPECT_EQ(block_count(y->files[0]), 0);
}

TEST(Index, MalformedOrForeignJsonIsBadInput) {
  for (const std::string text : {"{", "{\"format\": \"something else\"}", "[1,2]",
                                 "{\"format\": \"dstrain-checkpoint\", \"format_version\": 1}"}) {
    auto y = parse_index(text, "/x/index.json");
    ASSERT_FALSE(y.ok()) << text;
    EXPECT_EQ(y.status().code(), base::StatusCode::kBadInput);
    EXPECT_NE(y.status().message().find("/x/index.json"), std::string::npos);
  }
  CheckpointIndex x = sample_index();
  x.format_version = 99;
  auto y = parse_index(index_to_json(x), "/x/index.json");
  ASSERT_FALSE(y.ok());
  EXPECT_NE(y.status().message().find("format_version 99"), std::string::npos);
}

}  // namespace
}  // namespace dstrain::runtime::checkpoint
