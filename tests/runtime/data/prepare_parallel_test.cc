// `prepare` with a real tokenizer, several workers and resumption: the output must not depend on
// the number of workers, a re-run must reuse finished parts, and errors must name the true line
// even in a piece that starts deep inside a file.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "runtime/data/prepare.h"
#include "runtime/data/token_file.h"
#include "runtime/data/tokenizer/byte_level.h"
#include "tests/runtime/data/data_test_util.h"

namespace dstrain::runtime {
namespace {

using base::StatusCode;
using testing::read_bytes;
using testing::ScratchDir;
using testing::write_file;

// A small byte-level BPE tokenizer.json with the Llama 3 split pattern, a few merges and two
// special tokens, written by hand so these tests need no Python.
std::string write_tokenizer(const ScratchDir& dir) {
  ByteLevelMap map;
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[map.encode_byte(static_cast<uint8_t>(b))] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"\xc4\xa0", "t"}, {"h", "e"}, {"\xc4\xa0t", "he"}, {"i", "n"}, {"\xc4\x8a", "\xc4\x8a"}};
  nlohmann::json merge_list = nlohmann::json::array();
  int next = 256;
  for (const auto& [a, b] : merges) {
    vocab[a + b] = next++;
    merge_list.push_back({a, b});
  }
  nlohmann::json j = {
      {"version", "1.0"},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern",
            {{"Regex",
              R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"added_tokens",
       {{{"id", next}, {"content", "<s>"}, {"special", true}},
        {{"id", next + 1}, {"content", "</s>"}, {"special", true}}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}}};
  std::filesystem::create_directories(dir.file("tok"));
  write_file(dir.file("tok/tokenizer.json"), j.dump());
  write_file(dir.file("tok/tokenizer_config.json"), R"({"bos_token": "<s>", "eos_token": "</s>"})");
  return dir.file("tok");
}

std::string lines(int n, const std::string& stem) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    s += stem + " " + std::to_string(i) + " then the inn\n";
    if (i % 7 == 0) s += "\n\n";
  }
  return s;
}

std::vector<uint32_t> all_tokens(const std::string& path) {
  auto f = TokenFile::open(path);
  EXPECT_TRUE(f.ok()) << f.status().to_string();
  std::vector<uint32_t> out;
  if (!f.ok()) return out;
  for (int64_t i = 0; i < f->num_tokens(); ++i) out.push_back(f->token(i));
  return out;
}

TEST(PrepareParallel, TextWithTokenizerEqualsWholeFileEncoding) {
  ScratchDir dir;
  std::string tok_dir = write_tokenizer(dir);
  std::string a = lines(40, "the cat");
  std::string b = "no newline at the end";
  write_file(dir.file("a.txt"), a);
  write_file(dir.file("b.txt"), b);
  PrepareOptions opt;
  opt.tokenizer = tok_dir;
  PrepareStats stats;
  ASSERT_TRUE(
      prepare_text({dir.file("a.txt"), dir.file("b.txt")}, dir.file("o.dstok"), opt, &stats).ok());

  auto tok = load_tokenizer(tok_dir);
  ASSERT_TRUE(tok.ok());
  std::vector<uint32_t> want{*(*tok)->bos_id()};
  (*tok)->encode(a, want);
  want.push_back(*(*tok)->eos_id());
  size_t second = want.size();
  want.push_back(*(*tok)->bos_id());
  (*tok)->encode(b, want);
  want.push_back(*(*tok)->eos_id());
  EXPECT_EQ(all_tokens(dir.file("o.dstok")), want);
  auto f = TokenFile::open(dir.file("o.dstok"));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->num_docs(), 2);
  EXPECT_EQ(f->doc_begin(1), static_cast<int64_t>(second));
  EXPECT_EQ(f->vocab_size(), (*tok)->vocab_size());
  // The merges did something: fewer tokens than bytes.
  EXPECT_LT(want.size(), a.size() + b.size());
  EXPECT_FALSE(std::filesystem::exists(dir.file("o.dstok.parts")));
}

TEST(PrepareParallel, WorkersDoNotChangeTheOutput) {
  ScratchDir dir;
  std::string tok_dir = write_tokenizer(dir);
  write_file(dir.file("big.txt"), lines(400, "the big file"));
  write_file(dir.file("small.txt"), "tiny");
  std::string sft;
  for (int i = 0; i < 300; ++i) {
    sft += R"({"prompt": "q )" + std::to_string(i) +
           R"(", "completion": "the answer in"})"
           "\n";
    if (i % 9 == 0) sft += "\n";
  }
  write_file(dir.file("d.jsonl"), sft);
  for (const std::string tokenizer : {std::string("byte"), tok_dir}) {
    PrepareOptions one;
    one.tokenizer = tokenizer;
    one.piece_bytes = 1000;  // many pieces, cut inside the files
    PrepareOptions four = one;
    four.workers = 4;
    PrepareStats s1;
    PrepareStats s4;
    std::vector<std::string> text_in = {dir.file("big.txt"), dir.file("small.txt")};
    ASSERT_TRUE(prepare_text(text_in, dir.file("t1.dstok"), one, &s1).ok());
    ASSERT_TRUE(prepare_text(text_in, dir.file("t4.dstok"), four, &s4).ok());
    EXPECT_GT(s1.num_parts, 10);
    EXPECT_EQ(read_bytes(dir.file("t1.dstok")), read_bytes(dir.file("t4.dstok"))) << tokenizer;
    EXPECT_EQ(s1.num_docs, 2);
    // Cuts fall after a line break followed by a non-space byte, which no Llama 3 pre-token
    // crosses: the pieces tokenize exactly as the whole file.
    auto tok = load_tokenizer(tokenizer);
    ASSERT_TRUE(tok.ok());
    std::vector<uint32_t> whole;
    for (const std::string& path : text_in) {
      whole.push_back(*(*tok)->bos_id());
      auto bytes = read_bytes(path);
      (*tok)->encode(std::string(bytes.begin(), bytes.end()), whole);
      whole.push_back(*(*tok)->eos_id());
    }
    EXPECT_EQ(all_tokens(dir.file("t1.dstok")), whole) << tokenizer;

    ASSERT_TRUE(prepare_sft_jsonl({dir.file("d.jsonl")}, dir.file("s1.dstok"), one, &s1).ok());
    ASSERT_TRUE(prepare_sft_jsonl({dir.file("d.jsonl")}, dir.file("s4.dstok"), four, &s4).ok());
    EXPECT_EQ(s1.num_docs, 300);
    EXPECT_EQ(s1.num_target_tokens, s4.num_target_tokens);
    EXPECT_EQ(read_bytes(dir.file("s1.dstok")), read_bytes(dir.file("s4.dstok"))) << tokenizer;
  }
}

TEST(PrepareParallel, ErrorsNameTheTrueLineInALaterPiece) {
  ScratchDir dir;
  std::string text = lines(200, "good line");  // 200 + 29 blank-pair lines = 258 lines
  write_file(dir.file("bad.txt"), text + "fine\nbroken \xff here\n" + lines(50, "after"));
  PrepareOptions opt;
  opt.piece_bytes = 700;
  opt.workers = 3;
  auto st = prepare_text({dir.file("bad.txt")}, dir.file("o.dstok"), opt, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kBadInput);
  int64_t line = 1 + std::count(text.begin(), text.end(), '\n') + 1;
  EXPECT_NE(st.message().find("bad.txt:" + std::to_string(line) + ": invalid UTF-8 at byte 8"),
            std::string::npos)
      << st.message();

  std::string sft;
  for (int i = 0; i < 100; ++i)
    sft += R"({"prompt": "p", "completion": "c"})"
           "\n";
  write_file(dir.file("bad.jsonl"), sft + "\n" +
                                        R"({"prompt": "p"})"
                                        "\n" +
                                        sft);
  st = prepare_sft_jsonl({dir.file("bad.jsonl")}, dir.file("o.dstok"), opt, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("bad.jsonl:102: field \"completion\" is missing"), std::string::npos)
      << st.message();
}

TEST(PrepareParallel, ARerunReusesFinishedParts) {
  ScratchDir dir;
  std::string tok_dir = write_tokenizer(dir);
  write_file(dir.file("a.txt"), lines(300, "first file"));
  write_file(dir.file("b.txt"), "second file, broken \xff\n");
  PrepareOptions opt;
  opt.tokenizer = tok_dir;
  opt.piece_bytes = 2000;
  std::vector<std::string> in = {dir.file("a.txt"), dir.file("b.txt")};
  // The first run stops at b.txt (as an interrupted run would), after a.txt's parts are written.
  ASSERT_FALSE(prepare_text(in, dir.file("o.dstok"), opt, nullptr).ok());
  EXPECT_FALSE(std::filesystem::exists(dir.file("o.dstok")));
  ASSERT_TRUE(std::filesystem::exists(dir.file("o.dstok.parts")));

  write_file(dir.file("b.txt"), "second file, mended\n");
  PrepareStats resumed;
  ASSERT_TRUE(prepare_text(in, dir.file("o.dstok"), opt, &resumed).ok());
  EXPECT_GT(resumed.reused_parts, 3);
  EXPECT_LT(resumed.reused_parts, resumed.num_parts);  // b.txt's part was made again

  PrepareStats fresh;
  ASSERT_TRUE(prepare_text(in, dir.file("fresh.dstok"), opt, &fresh).ok());
  EXPECT_EQ(fresh.reused_parts, 0);
  EXPECT_EQ(read_bytes(dir.file("o.dstok")), read_bytes(dir.file("fresh.dstok")));

  // Another tokenizer must not reuse parts made with this one.
  opt.tokenizer = "byte";
  PrepareStats other;
  ASSERT_TRUE(prepare_text(in, dir.file("fresh.dstok"), opt, &other).ok());
  EXPECT_EQ(other.reused_parts, 0);
}

TEST(PrepareParallel, BadTokenizerAndWorkerCountAreReported) {
  ScratchDir dir;
  write_file(dir.file("a.txt"), "x");
  PrepareOptions opt;
  opt.tokenizer = dir.file("missing/tokenizer.json");
  auto st = prepare_text({dir.file("a.txt")}, dir.file("o.dstok"), opt, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kBadInput);
  EXPECT_NE(st.message().find("missing/tokenizer.json"), std::string::npos);
  opt.tokenizer = "byte";
  opt.workers = 0;
  st = prepare_text({dir.file("a.txt")}, dir.file("o.dstok"), opt, nullptr);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dstrain::runtime
