#include "runtime/data/dataset.h"

#include <gtest/gtest.h>

#include <numeric>

namespace dstrain::runtime {
namespace {

using base::StatusCode;
constexpr int64_t kI = kIgnoreIndex;

TokenFile stream_file(int n, std::vector<uint8_t> mask = {}) {
  std::vector<uint32_t> tokens(n);
  std::iota(tokens.begin(), tokens.end(), 0);
  return std::move(TokenFile::from_tokens(tokens, 1000, "stream.dstok", {}, mask)).value();
}

// Documents of lengths 3, 5, 2 (ids 10.., 20.., 30..); prompts are mask 0.
TokenFile sft_file() {
  std::vector<uint32_t> tokens = {10, 11, 12, 20, 21, 22, 23, 24, 30, 31};
  std::vector<uint64_t> offsets = {0, 3, 8, 10};
  std::vector<uint8_t> mask = {0, 1, 1, 0, 0, 0, 1, 1, 0, 1};
  return std::move(TokenFile::from_tokens(tokens, 100, "sft.dstok", offsets, mask)).value();
}

TEST(SampleFormat, Parses) {
  EXPECT_EQ(parse_sample_format("tokens").value(), SampleFormat::kTokens);
  EXPECT_EQ(parse_sample_format("sft").value(), SampleFormat::kSft);
  auto bad = parse_sample_format("text");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("data.format"), std::string::npos);
}

TEST(Dataset, StreamWindowsShiftByOne) {
  auto ds = Dataset::create(stream_file(21), {SampleFormat::kTokens, 4});
  ASSERT_TRUE(ds.ok()) << ds.status().to_string();
  EXPECT_EQ(ds->num_samples(), 5);  // (21 - 1) / 4
  auto s = ds->sample(1);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->input_ids, (std::vector<int64_t>{4, 5, 6, 7}));
  EXPECT_EQ(s->target_ids, (std::vector<int64_t>{5, 6, 7, 8}));
  EXPECT_EQ(s->num_targets, 4);
  auto last = ds->sample(4);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->target_ids.back(), 20);
  EXPECT_EQ(ds->sample(5).status().code(), StatusCode::kInternal);
  EXPECT_EQ(ds->sample(-1).status().code(), StatusCode::kInternal);
  // One token short of a second full sample.
  EXPECT_EQ(Dataset::create(stream_file(8), {SampleFormat::kTokens, 4})->num_samples(), 1);
}

TEST(Dataset, StreamHonoursAMask) {
  std::vector<uint8_t> mask = {1, 1, 0, 1, 0, 1, 1, 1, 1};
  auto ds = Dataset::create(stream_file(9, mask), {SampleFormat::kTokens, 4});
  ASSERT_TRUE(ds.ok());
  auto s = ds->sample(0);
  EXPECT_EQ(s->target_ids, (std::vector<int64_t>{1, kI, 3, kI}));
  EXPECT_EQ(s->num_targets, 2);
}

TEST(Dataset, StreamTooShortIsBadInput) {
  auto ds = Dataset::create(stream_file(4), {SampleFormat::kTokens, 4});
  ASSERT_FALSE(ds.ok());
  EXPECT_EQ(ds.status().code(), StatusCode::kBadInput);
  EXPECT_EQ(ds.status().message().rfind("stream.dstok: ", 0), 0u) << ds.status().message();
  auto zero = Dataset::create(stream_file(4), {SampleFormat::kTokens, 0});
  EXPECT_EQ(zero.status().code(), StatusCode::kInvalidArgument);
  auto pad = Dataset::create(stream_file(40), {SampleFormat::kTokens, 4, /*pad_id=*/1000});
  EXPECT_EQ(pad.status().code(), StatusCode::kInvalidArgument);
}

TEST(Dataset, SftPadsAndMasksPrompts) {
  auto ds = Dataset::create(sft_file(), {SampleFormat::kSft, 4, /*pad_id=*/99});
  ASSERT_TRUE(ds.ok()) << ds.status().to_string();
  EXPECT_EQ(ds->num_samples(), 3);
  auto a = ds->sample(0);  // 10 11 12, mask 0 1 1
  EXPECT_EQ(a->input_ids, (std::vector<int64_t>{10, 11, 12, 99}));
  EXPECT_EQ(a->target_ids, (std::vector<int64_t>{11, 12, kI, kI}));
  EXPECT_EQ(a->num_targets, 2);
  auto b = ds->sample(1);  // exactly seq_len + 1 tokens, mask 0 0 0 1 1
  EXPECT_EQ(b->input_ids, (std::vector<int64_t>{20, 21, 22, 23}));
  EXPECT_EQ(b->target_ids, (std::vector<int64_t>{kI, kI, 23, 24}));
  EXPECT_EQ(b->num_targets, 2);
  auto c = ds->sample(2);
  EXPECT_EQ(c->input_ids, (std::vector<int64_t>{30, 31, 99, 99}));
  EXPECT_EQ(c->target_ids, (std::vector<int64_t>{31, kI, kI, kI}));

  auto batch = ds->batch({2, 0});
  ASSERT_TRUE(batch.ok());
  EXPECT_EQ(batch->rows, 2);
  EXPECT_EQ(batch->seq_len, 4);
  EXPECT_EQ(batch->input_ids, (std::vector<int64_t>{30, 31, 99, 99, 10, 11, 12, 99}));
  EXPECT_EQ(batch->target_ids, (std::vector<int64_t>{31, kI, kI, kI, 11, 12, kI, kI}));
  EXPECT_EQ(batch->num_targets, 3);
  EXPECT_EQ(ds->batch({0, 3}).status().code(), StatusCode::kInternal);
}

TEST(Dataset, SftDocumentTooLongNamesFileAndDocument) {
  auto ds = Dataset::create(sft_file(), {SampleFormat::kSft, 3});
  ASSERT_FALSE(ds.ok());
  EXPECT_EQ(ds.status().code(), StatusCode::kBadInput);
  EXPECT_EQ(ds.status().message().rfind("sft.dstok: document 1 has 5 tokens", 0), 0u)
      << ds.status().message();
}

TEST(Dataset, SftNeedsDocumentsMaskAndTargets) {
  auto plain = Dataset::create(stream_file(20), {SampleFormat::kSft, 8});
  EXPECT_EQ(plain.status().code(), StatusCode::kBadInput);
  EXPECT_NE(plain.status().message().find("stream.dstok: "), std::string::npos);

  auto no_mask = Dataset::create(
      std::move(TokenFile::from_tokens({1, 2, 3}, 10, "nomask.dstok", {0, 3})).value(),
      {SampleFormat::kSft, 8});
  EXPECT_EQ(no_mask.status().code(), StatusCode::kBadInput);
  EXPECT_NE(no_mask.status().message().find("nomask.dstok: "), std::string::npos);

  // Document 1 masks everything after its first token: it could only yield a zero-token loss.
  auto no_targets =
      Dataset::create(std::move(TokenFile::from_tokens({1, 2, 3, 4, 5}, 10, "empty.dstok",
                                                       {0, 2, 5}, {0, 1, 1, 0, 0}))
                          .value(),
                      {SampleFormat::kSft, 8});
  EXPECT_EQ(no_targets.status().code(), StatusCode::kBadInput);
  EXPECT_NE(no_targets.status().message().find("empty.dstok: document 1 has no token"),
            std::string::npos)
      << no_targets.status().message();
}

}  // namespace
}  // namespace dstrain::runtime
