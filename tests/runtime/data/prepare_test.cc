#include "runtime/data/prepare.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "runtime/data/byte_tokenizer.h"
#include "runtime/data/dataset.h"
#include "runtime/data/token_file.h"
#include "tests/runtime/data/data_test_util.h"

namespace dstrain::runtime {
namespace {

using base::StatusCode;
using testing::ScratchDir;
using testing::write_file;

std::vector<uint32_t> tokens_of(const TokenFile& f, int64_t begin, int64_t end) {
  std::vector<uint32_t> out;
  for (int64_t i = begin; i < end; ++i) out.push_back(f.token(i));
  return out;
}

std::vector<uint32_t> bytes_with(uint32_t first, const std::string& text, uint32_t last) {
  std::vector<uint32_t> out{first};
  byte_encode(text, out);
  out.push_back(last);
  return out;
}

TEST(ByteTokenizer, EncodesBytesAndDecodesWithoutSpecials) {
  std::vector<uint32_t> ids{kByteBos};
  byte_encode("h\xc3\xa9", ids);
  ids.push_back(kByteEos);
  EXPECT_EQ(ids, (std::vector<uint32_t>{256, 'h', 0xc3, 0xa9, 257}));
  EXPECT_EQ(byte_decode(ids), "h\xc3\xa9");
  EXPECT_EQ(kByteVocabSize, 259u);
  EXPECT_EQ(kBytePad, 258u);
}

TEST(ByteTokenizer, Utf8Validation) {
  EXPECT_EQ(first_invalid_utf8("plain ascii"), -1);
  EXPECT_EQ(first_invalid_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"), -1);
  EXPECT_EQ(first_invalid_utf8("ab\xff"), 2);
  EXPECT_EQ(first_invalid_utf8("a\xc3"), 1);             // truncated sequence
  EXPECT_EQ(first_invalid_utf8("\xc0\xaf"), 0);          // overlong '/'
  EXPECT_EQ(first_invalid_utf8("x\xed\xa0\x80"), 1);     // surrogate U+D800
  EXPECT_EQ(first_invalid_utf8("\xf4\x90\x80\x80"), 0);  // above U+10FFFF
  EXPECT_EQ(first_invalid_utf8("\xe2\x28\xa1"), 0);      // bad continuation
}

TEST(PrepareText, EachFileIsOneDocument) {
  ScratchDir dir;
  write_file(dir.file("a.txt"), "hello\nworld\n");
  write_file(dir.file("b.txt"), "no newline at end");
  write_file(dir.file("c.txt"), "");
  std::string out = dir.file("text.dstok");
  PrepareStats stats;
  auto st = prepare_text({dir.file("a.txt"), dir.file("b.txt"), dir.file("c.txt")}, out, &stats);
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_FALSE(std::filesystem::exists(out + ".tmp"));

  auto file = TokenFile::open(out);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->vocab_size(), kByteVocabSize);
  EXPECT_FALSE(file->has_mask());
  ASSERT_EQ(file->num_docs(), 3);
  EXPECT_EQ(tokens_of(*file, file->doc_begin(0), file->doc_end(0)),
            bytes_with(kByteBos, "hello\nworld\n", kByteEos));
  EXPECT_EQ(tokens_of(*file, file->doc_begin(1), file->doc_end(1)),
            bytes_with(kByteBos, "no newline at end", kByteEos));
  EXPECT_EQ(tokens_of(*file, file->doc_begin(2), file->doc_end(2)),
            (std::vector<uint32_t>{kByteBos, kByteEos}));
  EXPECT_EQ(stats.num_docs, 3);
  EXPECT_EQ(stats.num_tokens, file->num_tokens());
  EXPECT_EQ(stats.num_tokens, 14 + 19 + 2);
  EXPECT_EQ(stats.num_target_tokens, stats.num_tokens);
}

TEST(PrepareText, InvalidUtf8NamesFileAndLine) {
  ScratchDir dir;
  std::string in = dir.file("bad.txt");
  write_file(in, "fine\nbro\xffken\n");
  std::string out = dir.file("bad.dstok");
  auto st = prepare_text({in}, out, nullptr);
  EXPECT_EQ(st.code(), StatusCode::kBadInput);
  EXPECT_EQ(st.message().rfind(in + ":2: invalid UTF-8", 0), 0u) << st.message();
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_FALSE(std::filesystem::exists(out + ".tmp"));

  auto missing = prepare_text({dir.file("none.txt")}, out, nullptr);
  EXPECT_EQ(missing.code(), StatusCode::kBadInput);
  EXPECT_NE(missing.message().find("none.txt"), std::string::npos);
  EXPECT_EQ(prepare_text({}, out, nullptr).code(), StatusCode::kInvalidArgument);
}

TEST(PrepareSft, MasksPromptAndTrainsOnCompletion) {
  ScratchDir dir;
  std::string in = dir.file("chat.jsonl");
  write_file(in,
             "{\"prompt\": \"Q: 2+2?\\n\", \"completion\": \"4\", \"id\": 7}\n"
             "\n"
             "{\"completion\": \"caf\\u00e9\", \"prompt\": \"\"}\r\n");
  std::string out = dir.file("chat.dstok");
  PrepareStats stats;
  auto st = prepare_sft_jsonl({in}, out, &stats);
  ASSERT_TRUE(st.ok()) << st.to_string();
  auto file = TokenFile::open(out);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  ASSERT_EQ(file->num_docs(), 2);
  ASSERT_TRUE(file->has_mask());

  std::vector<uint32_t> first{kByteBos};
  byte_encode("Q: 2+2?\n", first);
  byte_encode("4", first);
  first.push_back(kByteEos);
  EXPECT_EQ(tokens_of(*file, 0, file->doc_end(0)), first);
  for (int64_t i = 0; i < file->doc_end(0); ++i) {
    EXPECT_EQ(file->predict(i), i >= 9) << i;  // bos + 8 prompt bytes are masked
  }
  EXPECT_EQ(tokens_of(*file, file->doc_begin(1), file->doc_end(1)),
            bytes_with(kByteBos, "caf\xc3\xa9", kByteEos));
  EXPECT_FALSE(file->predict(file->doc_begin(1)));
  for (int64_t i = file->doc_begin(1) + 1; i < file->doc_end(1); ++i) EXPECT_TRUE(file->predict(i));
  EXPECT_EQ(stats.num_docs, 2);
  EXPECT_EQ(stats.num_target_tokens, 2 + 6);
  EXPECT_EQ(stats.num_tokens, 11 + 7);

  // The output serves the sft format: targets only on completion tokens.
  auto ds = Dataset::create(std::move(file).value(), {SampleFormat::kSft, 16, kBytePad});
  ASSERT_TRUE(ds.ok()) << ds.status().to_string();
  auto sample = ds->sample(0);
  ASSERT_TRUE(sample.ok());
  EXPECT_EQ(sample->num_targets, 2);
  EXPECT_EQ(sample->target_ids[8], '4');
  EXPECT_EQ(sample->target_ids[9], kByteEos);
  EXPECT_EQ(sample->target_ids[7], kIgnoreIndex);
  EXPECT_EQ(sample->input_ids[15], kBytePad);
}

struct BadLine {
  const char* text;
  const char* expected;
};

TEST(PrepareSft, BadLinesReportFileAndLine) {
  const std::string good = "{\"prompt\": \"a\", \"completion\": \"b\"}\n";
  const BadLine cases[] = {
      {"[1, 2]", "expected a JSON object"},
      {"\"just a string\"", "expected a JSON object"},
      {"{\"prompt\": \"a\"}", "field \"completion\" is missing"},
      {"{\"completion\": \"b\"}", "field \"prompt\" is missing"},
      {"{\"prompt\": 3, \"completion\": \"b\"}", "field \"prompt\" is number"},
      {"{\"prompt\": \"a\", \"completion\": null}", "field \"completion\" is null"},
      {"{\"prompt\": \"a\", ", "not valid JSON"},
      {"{\"prompt\": \"\xc3\x28\", \"completion\": \"b\"}", "invalid UTF-8 at byte 13"},
  };
  ScratchDir dir;
  // A good first file: line numbers restart in each file.
  write_file(dir.file("ok.jsonl"), good);
  for (const BadLine& c : cases) {
    std::string in = dir.file("bad.jsonl");
    write_file(in, good + good + "\n" + c.text + "\n" + good);
    std::string out = dir.file("bad.dstok");
    auto st = prepare_sft_jsonl({dir.file("ok.jsonl"), in}, out, nullptr);
    EXPECT_EQ(st.code(), StatusCode::kBadInput) << c.text;
    EXPECT_EQ(st.message().rfind(in + ":4: ", 0), 0u) << st.message();
    EXPECT_NE(st.message().find(c.expected), std::string::npos) << st.message();
    EXPECT_FALSE(std::filesystem::exists(out));
    EXPECT_FALSE(std::filesystem::exists(out + ".tmp"));
  }
}

TEST(PrepareSft, AllBlankIsBadInput) {
  ScratchDir dir;
  write_file(dir.file("blank.jsonl"), "\n  \n");
  auto st = prepare_sft_jsonl({dir.file("blank.jsonl")}, dir.file("o.dstok"), nullptr);
  EXPECT_EQ(st.code(), StatusCode::kBadInput);
  EXPECT_NE(st.message().find("blank.jsonl"), std::string::npos);
  auto missing = prepare_sft_jsonl({dir.file("none.jsonl")}, dir.file("o.dstok"), nullptr);
  EXPECT_EQ(missing.code(), StatusCode::kBadInput);
  EXPECT_NE(missing.message().find("none.jsonl"), std::string::npos);
}

}  // namespace
}  // namespace dstrain::runtime
