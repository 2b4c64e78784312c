// dstrain's tokenizers against Hugging Face `tokenizers`: make_tokenizers.py trains small
// byte-level BPE tokenizers with the Llama 3, Qwen2 (NFC) and DeepSeek-V3 split patterns, a GPT-2
// style one with digit splitting and "a b" merges, one with every Split behaviour, and
// SentencePiece BPE/Unigram models (converted as transformers converts Llama's), and
// writes the ids `tokenizers` gives for a varied corpus. Every id must match.
#include "runtime/data/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/runtime/data/data_test_util.h"

namespace dstrain::runtime {
namespace {

using base::StatusCode;
using testing::ScratchDir;
using testing::write_file;

// Built once per build tree and script version: training the tokenizers takes seconds, and ctest
// runs each test in its own process. The files go to a temporary directory that is renamed into
// place, so concurrent test processes never see a half-written set.
class TokenizerReference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* python = std::getenv("DSTRAIN_PYTHON");
    if (python == nullptr || std::string(python).empty() ||
        std::system((std::string(python) + " -c 'import tokenizers' 2>/dev/null").c_str()) != 0) {
      skip_reason_ =
          new std::string("DSTRAIN_PYTHON with the `tokenizers` package is not available");
      return;
    }
    const std::string script =
        std::string(DSTRAIN_SOURCE_DIR) + "/tests/runtime/data/tokenizer/make_tokenizers.py";
    std::ifstream in(script);
    std::stringstream code;
    code << in.rdbuf();
    dir_ = new std::string(std::string(DSTRAIN_REFERENCE_DIR) + "/" +
                           std::to_string(std::hash<std::string>()(code.str())));
    if (!std::filesystem::exists(*dir_ + "/expected.json")) {
      std::filesystem::create_directories(DSTRAIN_REFERENCE_DIR);
      std::string pattern = *dir_ + ".tmp-XXXXXX";
      std::vector<char> buf(pattern.begin(), pattern.end());
      buf.push_back('\0');
      const std::string tmp = ::mkdtemp(buf.data()) != nullptr ? buf.data() : "";
      const std::string cmd = std::string(python) + " " + script + " " + tmp;
      if (tmp.empty() || std::system(cmd.c_str()) != 0) {
        skip_reason_ = new std::string("make_tokenizers.py failed: " + cmd);
        return;
      }
      std::error_code ec;
      std::filesystem::rename(tmp, *dir_, ec);
      if (ec) std::filesystem::remove_all(tmp, ec);  // another process got there first
    }
    std::ifstream ref(*dir_ + "/expected.json");
    std::stringstream ss;
    ss << ref.rdbuf();
    expected_ = new nlohmann::json(nlohmann::json::parse(ss.str()));
  }
  static void TearDownTestSuite() {
    delete expected_;
    delete dir_;
    delete skip_reason_;
    expected_ = nullptr;
    dir_ = nullptr;
    skip_reason_ = nullptr;
  }

  static std::string path_of(const std::string& name) {
    return *dir_ + "/" + expected_->at(name)["path"].get<std::string>();
  }

  // Loads the tokenizer `name` and compares every corpus text's ids.
  void check(const std::string& name) {
    if (skip_reason_ != nullptr) GTEST_SKIP() << *skip_reason_;
    ASSERT_NE(expected_, nullptr);
    if (expected_->at("skipped").contains(name)) {
      GTEST_SKIP() << name << ": " << expected_->at("skipped")[name].get<std::string>();
    }
    const nlohmann::json& ref = expected_->at(name);
    auto tok = load_tokenizer(path_of(name));
    ASSERT_TRUE(tok.ok()) << tok.status().to_string();
    EXPECT_EQ((*tok)->vocab_size(), ref["vocab_size"].get<uint64_t>());
    auto opt = [](const nlohmann::json& v) {
      return v.is_null() ? std::nullopt : std::optional<uint32_t>(v.get<uint32_t>());
    };
    EXPECT_EQ((*tok)->bos_id(), opt(ref["bos"]));
    EXPECT_EQ((*tok)->eos_id(), opt(ref["eos"]));
    if (ref.contains("im_start")) {
      EXPECT_EQ((*tok)->token_id("<|im_start|>"), opt(ref["im_start"]));
    }
    int compared = 0;
    for (const auto& c : ref["cases"]) {
      const std::string text = c["text"];
      std::vector<uint32_t> want = c["ids"].get<std::vector<uint32_t>>();
      std::vector<uint32_t> got{12345};  // encode appends: what is there stays
      (*tok)->encode(text, got);
      ASSERT_FALSE(got.empty());
      EXPECT_EQ(got.front(), 12345u);
      got.erase(got.begin());
      EXPECT_EQ(got, want) << name << " on \"" << text << "\"";
      ++compared;
    }
    EXPECT_GT(compared, 30);
  }

  static std::string* dir_;
  static nlohmann::json* expected_;
  static std::string* skip_reason_;
};

std::string* TokenizerReference::dir_ = nullptr;
nlohmann::json* TokenizerReference::expected_ = nullptr;
std::string* TokenizerReference::skip_reason_ = nullptr;

TEST_F(TokenizerReference, Llama3Pattern) { check("llama3"); }
TEST_F(TokenizerReference, Qwen2PatternWithNfc) { check("qwen2"); }
TEST_F(TokenizerReference, DeepSeekSplitChain) { check("deepseek"); }
TEST_F(TokenizerReference, Gpt2ByteLevelRegexDigitsAndStringMerges) { check("gpt2_digits"); }
TEST_F(TokenizerReference, SplitBehavioursInvertStringPatternAndNfkc) { check("behaviours"); }
TEST_F(TokenizerReference, SentencePieceBpe) { check("spm_bpe"); }
TEST_F(TokenizerReference, SentencePieceUnigram) { check("spm_unigram"); }

TEST_F(TokenizerReference, DecodeRestoresTheText) {
  if (skip_reason_ != nullptr) GTEST_SKIP() << *skip_reason_;
  auto tok = load_tokenizer(path_of("llama3"));
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  for (const std::string text : {"hello 世界 😀\n\n  x", "<|im_start|>user"}) {
    std::vector<uint32_t> ids;
    (*tok)->encode(text, ids);
    EXPECT_EQ((*tok)->decode(ids), text);
  }
  // An added special token's id decodes to its content.
  std::optional<uint32_t> im = (*tok)->token_id("<|im_start|>");
  ASSERT_TRUE(im.has_value());
  EXPECT_EQ((*tok)->decode({*im}), "<|im_start|>");
  EXPECT_EQ((*tok)->token_id("<|no such token|>"), std::nullopt);
}

TEST(Tokenizer, ByteIsTheBuiltInTokenizer) {
  auto tok = load_tokenizer("byte");
  ASSERT_TRUE(tok.ok());
  std::vector<uint32_t> ids;
  (*tok)->encode("h\xc3\xa9", ids);
  EXPECT_EQ(ids, (std::vector<uint32_t>{'h', 0xc3, 0xa9}));
  EXPECT_EQ((*tok)->bos_id(), std::optional<uint32_t>(256));
  EXPECT_EQ((*tok)->eos_id(), std::optional<uint32_t>(257));
  EXPECT_EQ((*tok)->vocab_size(), 259u);
  EXPECT_EQ((*tok)->decode({256, 'o', 'k', 257}), "ok");
}

TEST(Tokenizer, BadFilesNameTheFileAndTheProblem) {
  ScratchDir dir;
  auto missing = load_tokenizer(dir.file("nope.json"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kBadInput);
  EXPECT_NE(missing.status().message().find("nope.json"), std::string::npos);

  write_file(dir.file("broken.json"), "{\"model\": ");
  auto broken = load_tokenizer(dir.file("broken.json"));
  ASSERT_FALSE(broken.ok());
  EXPECT_EQ(broken.status().code(), StatusCode::kBadInput);
  EXPECT_NE(broken.status().message().find("broken.json: not valid JSON"), std::string::npos);

  write_file(dir.file("wordpiece.json"),
             R"({"model": {"type": "WordPiece", "vocab": {}}, "pre_tokenizer": null})");
  auto wordpiece = load_tokenizer(dir.file("wordpiece.json"));
  ASSERT_FALSE(wordpiece.ok());
  EXPECT_NE(wordpiece.status().message().find("WordPiece"), std::string::npos);

  write_file(dir.file("nobytelevel.json"),
             R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                 "pre_tokenizer": {"type": "Whitespace"}})");
  auto nbl = load_tokenizer(dir.file("nobytelevel.json"));
  ASSERT_FALSE(nbl.ok());
  EXPECT_NE(nbl.status().message().find("Whitespace"), std::string::npos);

  write_file(dir.file("wrongtype.json"),
             R"({"model": {"type": "BPE", "vocab": {}, "merges": []},
                 "pre_tokenizer": {"type": "ByteLevel", "use_regex": "yes"}})");
  auto wrongtype = load_tokenizer(dir.file("wrongtype.json"));
  ASSERT_FALSE(wrongtype.ok());
  EXPECT_EQ(wrongtype.status().code(), StatusCode::kBadInput);
  EXPECT_NE(wrongtype.status().message().find("wrongtype.json"), std::string::npos);

  write_file(dir.file("garbage.model"), "not a protobuf at all");
  auto spm = load_tokenizer(dir.file("garbage.model"));
  ASSERT_FALSE(spm.ok());
  EXPECT_EQ(spm.status().code(), StatusCode::kBadInput);
  EXPECT_NE(spm.status().message().find("garbage.model"), std::string::npos);

  auto empty_dir = load_tokenizer(dir.path());
  ASSERT_FALSE(empty_dir.ok());
  EXPECT_NE(empty_dir.status().message().find("neither tokenizer.json nor tokenizer.model"),
            std::string::npos);
}

}  // namespace
}  // namespace dstrain::runtime
