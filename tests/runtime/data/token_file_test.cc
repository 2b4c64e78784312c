#include "runtime/data/token_file.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "runtime/data/token_file_writer.h"
#include "tests/runtime/data/data_test_util.h"

namespace dstrain::runtime {
namespace {

using base::StatusCode;
using testing::RawImage;
using testing::ScratchDir;

// Every open() error is bad input naming the file.
void expect_bad(const std::string& path, const std::string& fragment) {
  auto file = TokenFile::open(path);
  ASSERT_FALSE(file.ok()) << "expected an error containing: " << fragment;
  EXPECT_EQ(file.status().code(), StatusCode::kBadInput);
  EXPECT_EQ(file.status().message().rfind(path + ": ", 0), 0u) << file.status().message();
  EXPECT_NE(file.status().message().find(fragment), std::string::npos) << file.status().message();
  EXPECT_EQ(base::exit_code(file.status()), 3);
}

RawImage valid_image() {
  RawImage img;
  img.vocab_size = 512;
  img.tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 511};
  img.doc_offsets = {0, 4, 4, 10};
  img.mask = {0, 1, 1, 1, 0, 0, 1, 1, 1, 1};
  return img;
}

TEST(TokenFileWriter, RoundTripUint16WithDocumentsAndMask) {
  ScratchDir dir;
  std::string path = dir.file("a.dstok");
  auto writer = TokenFileWriter::create(path, {512, /*documents=*/true, /*mask=*/true});
  ASSERT_TRUE(writer.ok()) << writer.status().to_string();
  ASSERT_TRUE(writer->start_document().ok());
  ASSERT_TRUE(writer->append({1, 2, 3}, {0, 1, 1}).ok());
  ASSERT_TRUE(writer->append({4}, {1}).ok());
  ASSERT_TRUE(writer->start_document().ok());  // an empty document
  ASSERT_TRUE(writer->start_document().ok());
  ASSERT_TRUE(writer->append({5, 6, 7, 8, 9, 511}, {0, 0, 1, 1, 1, 1}).ok());
  ASSERT_TRUE(writer->finish().ok());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  // The writer produces exactly the documented layout.
  EXPECT_EQ(testing::read_bytes(path), valid_image().bytes());

  auto file = TokenFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->token_bytes(), 2u);
  EXPECT_EQ(file->vocab_size(), 512u);
  EXPECT_EQ(file->num_tokens(), 10);
  EXPECT_EQ(file->num_docs(), 3);
  EXPECT_TRUE(file->has_mask());
  EXPECT_EQ(file->token(0), 1u);
  EXPECT_EQ(file->token(9), 511u);
  EXPECT_EQ(file->doc_begin(1), 4);
  EXPECT_EQ(file->doc_end(1), 4);
  EXPECT_EQ(file->doc_end(2), 10);
  EXPECT_FALSE(file->predict(0));
  EXPECT_TRUE(file->predict(1));
  EXPECT_FALSE(file->predict(5));
}

TEST(TokenFileWriter, RoundTripUint32PlainStream) {
  ScratchDir dir;
  std::string path = dir.file("big.dstok");
  const uint64_t vocab = 100000;  // > 65536: 4-byte tokens
  std::vector<uint32_t> tokens;
  for (uint32_t i = 0; i < 3000; ++i) tokens.push_back((i * 7919u) % vocab);
  tokens.push_back(99999);
  {
    auto writer = TokenFileWriter::create(path, {vocab, false, false});
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE(writer->append(tokens).ok());
    ASSERT_TRUE(writer->finish().ok());
  }
  EXPECT_EQ(std::filesystem::file_size(path), 64u + 4u * tokens.size());
  auto file = TokenFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->token_bytes(), 4u);
  EXPECT_EQ(file->num_docs(), 0);
  EXPECT_FALSE(file->has_mask());
  ASSERT_EQ(file->num_tokens(), static_cast<int64_t>(tokens.size()));
  for (size_t i = 0; i < tokens.size(); ++i) ASSERT_EQ(file->token(i), tokens[i]) << i;
  EXPECT_TRUE(file->predict(5));
}

TEST(TokenFileWriter, Vocab65536StillUsesUint16) {
  ScratchDir dir;
  std::string path = dir.file("edge.dstok");
  auto writer = TokenFileWriter::create(path, {65536, false, false});
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE(writer->append({65535, 0}).ok());
  ASSERT_TRUE(writer->finish().ok());
  auto file = TokenFile::open(path);
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->token_bytes(), 2u);
  EXPECT_EQ(file->token(0), 65535u);
}

TEST(TokenFileWriter, RejectsBadValuesAndCleansUp) {
  ScratchDir dir;
  std::string path = dir.file("w.dstok");
  {
    auto writer = TokenFileWriter::create(path, {10, true, true});
    ASSERT_TRUE(writer.ok());
    EXPECT_EQ(writer->append({1}, {1}).code(), StatusCode::kInvalidArgument);  // no document yet
    ASSERT_TRUE(writer->start_document().ok());
    EXPECT_EQ(writer->append({10}, {1}).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(writer->append({1}, {}).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(writer->append({1}, {2}).code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(std::filesystem::exists(path + ".tmp"));
  }
  // Abandoned without finish(): neither the file nor its temporary remains.
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  EXPECT_FALSE(std::filesystem::exists(path));
  auto no_vocab = TokenFileWriter::create(path, {0, false, false});
  EXPECT_EQ(no_vocab.status().code(), StatusCode::kInvalidArgument);
  auto no_dir = TokenFileWriter::create(dir.file("missing/x.dstok"), {10, false, false});
  EXPECT_EQ(no_dir.status().code(), StatusCode::kIOError);
}

TEST(TokenFile, FromTokensInMemory) {
  auto file = TokenFile::from_tokens({1, 2, 3, 4}, 5, "mem", {0, 1, 4}, {1, 0, 1, 1});
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->name(), "mem");
  EXPECT_EQ(file->num_tokens(), 4);
  EXPECT_EQ(file->num_docs(), 2);
  EXPECT_EQ(file->token(3), 4u);
  EXPECT_FALSE(file->predict(1));
  // Moving keeps the in-memory bytes valid.
  TokenFile moved = std::move(file).value();
  EXPECT_EQ(moved.token(2), 3u);

  auto too_big = TokenFile::from_tokens({1, 70000}, 300, "mem");
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.status().code(), StatusCode::kBadInput);
  EXPECT_EQ(too_big.status().message(), "mem: token 70000 at index 1 >= vocab_size 300");
  auto bad_offsets = TokenFile::from_tokens({1, 2}, 5, "mem", {0, 3});
  EXPECT_EQ(bad_offsets.status().code(), StatusCode::kBadInput);
  auto bad_mask = TokenFile::from_tokens({1, 2}, 5, "mem", {}, {1});
  EXPECT_EQ(bad_mask.status().code(), StatusCode::kBadInput);
}

TEST(TokenFileValidation, AcceptsTheValidImage) {
  ScratchDir dir;
  std::string path = dir.file("ok.dstok");
  testing::write_bytes(path, valid_image().bytes());
  auto file = TokenFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->num_docs(), 3);
}

TEST(TokenFileValidation, MissingFile) {
  ScratchDir dir;
  expect_bad(dir.file("nope.dstok"), "cannot open");
}

TEST(TokenFileValidation, BadMagic) {
  ScratchDir dir;
  std::string path = dir.file("magic.dstok");
  auto bytes = valid_image().bytes();
  bytes[7] = '2';
  testing::write_bytes(path, bytes);
  expect_bad(path, "bad magic");
}

TEST(TokenFileValidation, TruncatedHeader) {
  ScratchDir dir;
  std::string path = dir.file("short.dstok");
  auto bytes = valid_image().bytes();
  bytes.resize(40);
  testing::write_bytes(path, bytes);
  expect_bad(path, "file is 40 bytes, shorter than the 64-byte");
  testing::write_bytes(path, {});
  expect_bad(path, "file is 0 bytes");
}

TEST(TokenFileValidation, SizeMismatch) {
  ScratchDir dir;
  std::string path = dir.file("size.dstok");
  auto bytes = valid_image().bytes();
  const size_t full = bytes.size();
  bytes.pop_back();  // truncated mask
  testing::write_bytes(path, bytes);
  expect_bad(path, "file is " + std::to_string(full - 1) + " bytes but its header implies " +
                       std::to_string(full));
  bytes.push_back(1);
  bytes.push_back(0);  // one byte too many
  testing::write_bytes(path, bytes);
  expect_bad(path, "file is " + std::to_string(full + 1) + " bytes");
}

TEST(TokenFileValidation, TokenAtOrAboveVocab) {
  ScratchDir dir;
  std::string path = dir.file("x.dstok");
  RawImage img;
  img.vocab_size = 512;
  img.tokens.assign(2000, 7);
  img.tokens[1033] = 812;
  img.tokens[1500] = 900;  // only the first offender is reported
  testing::write_bytes(path, img.bytes());
  expect_bad(path, "token 812 at index 1033 >= vocab_size 512");
  auto file = TokenFile::open(path);
  EXPECT_EQ(file.status().message(), path + ": token 812 at index 1033 >= vocab_size 512");

  img.token_bytes = 4;
  img.vocab_size = 70000;
  img.tokens.assign(10, 1);
  img.tokens[9] = 70000;
  testing::write_bytes(path, img.bytes());
  expect_bad(path, "token 70000 at index 9 >= vocab_size 70000");
}

TEST(TokenFileValidation, HeaderFields) {
  ScratchDir dir;
  std::string path = dir.file("hdr.dstok");
  RawImage img = valid_image();
  img.version = 2;
  testing::write_bytes(path, img.bytes());
  expect_bad(path, "unsupported version 2");

  img = valid_image();
  img.token_bytes = 3;
  testing::write_bytes(path, img.bytes());
  expect_bad(path, "token_bytes is 3");

  img = valid_image();
  img.extra_flags = 4;
  testing::write_bytes(path, img.bytes());
  expect_bad(path, "unknown bits");

  img = valid_image();
  img.vocab_size = 0;
  testing::write_bytes(path, img.bytes());
  expect_bad(path, "vocab_size is 0");

  auto bytes = valid_image().bytes();
  bytes[50] = 1;
  testing::write_bytes(path, bytes);
  expect_bad(path, "header byte 50 is not zero");

  // num_tokens so large that the implied size overflows.
  bytes = valid_image().bytes();
  for (int i = 24; i < 32; ++i) bytes[i] = 0xff;
  testing::write_bytes(path, bytes);
  expect_bad(path, "overflow");
}

TEST(TokenFileValidation, BadDocumentOffsets) {
  ScratchDir dir;
  std::string path = dir.file("offsets.dstok");
  RawImage img = valid_image();
  img.doc_offsets = {1, 4, 4, 10};
  testing::write_bytes(path, img.bytes());
  expect_bad(path, "doc_offsets[0] is 1, must be 0");

  img.doc_offsets = {0, 4, 4, 9};
  testing::write_bytes(path, img.bytes());
  expect_bad(path, "doc_offsets[3] is 9, must equal num_tokens 10");

  img.doc_offsets = {0, 6, 5, 10};
  testing::write_bytes(path, img.bytes());
  expect_bad(path, "doc_offsets[2] = 5 is out of order");

  img.doc_offsets = {0, 11, 10};
  testing::write_bytes(path, img.bytes());
  expect_bad(path, "doc_offsets[1] = 11 is out of order or range");
}

TEST(TokenFileValidation, MaskByteNotZeroOrOne) {
  ScratchDir dir;
  std::string path = dir.file("mask.dstok");
  RawImage img = valid_image();
  img.mask[6] = 2;
  testing::write_bytes(path, img.bytes());
  expect_bad(path, "mask byte 2 at index 6 is not 0 or 1");
}

}  // namespace
}  // namespace dstrain::runtime
