#include "runtime/data/chat_template.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>

#include "runtime/data/prepare_chat.h"
#include "runtime/data/token_file.h"
#include "tests/runtime/data/data_test_util.h"

namespace dstrain::runtime {
namespace {

// Byte ids 0..255, except that a space and the byte after it become one token (256 + byte):
// enough to make a token straddle the boundary of two segments, as real BPE merges do.
class FakeTokenizer : public Tokenizer {
 public:
  explicit FakeTokenizer(std::map<std::string, uint32_t, std::less<>> specials)
      : specials_(std::move(specials)) {}
  void encode(std::string_view text, std::vector<uint32_t>& out) const override {
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] == ' ' && i + 1 < text.size()) {
        out.push_back(256 + static_cast<unsigned char>(text[++i]));
      } else {
        out.push_back(static_cast<unsigned char>(text[i]));
      }
    }
  }
  std::optional<uint32_t> token_id(std::string_view content) const override {
    auto it = specials_.find(content);
    if (it == specials_.end()) return std::nullopt;
    return it->second;
  }
  std::optional<uint32_t> bos_id() const override { return std::nullopt; }
  std::optional<uint32_t> eos_id() const override { return std::nullopt; }
  uint64_t vocab_size() const override { return 600; }
  std::string decode(const std::vector<uint32_t>& ids) const override { return {}; }

 private:
  std::map<std::string, uint32_t, std::less<>> specials_;
};

const std::string kDeepseekBos =
    "<\xef\xbd\x9c"
    "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
const std::string kDeepseekEos =
    "<\xef\xbd\x9c"
    "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";

FakeTokenizer deepseek_tokenizer() {
  return FakeTokenizer({{kDeepseekBos, 512}, {kDeepseekEos, 513}});
}

std::vector<ChatMessage> parse_ok(const std::string& line) {
  auto m = parse_chat_record(line, "chat.jsonl", 1);
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return m.ok() ? *m : std::vector<ChatMessage>{};
}

// Reference renderings from transformers (make_chat_reference.py, a ctest fixture).
TEST(ChatReference, RenderingEqualsTransformersApplyChatTemplate) {
  const char* dir = std::getenv("DSTRAIN_CHAT_REF");
  if (dir == nullptr) GTEST_SKIP() << "DSTRAIN_CHAT_REF unset: run ctest -R data_chat_reference";
  std::ifstream expected_file(std::string(dir) + "/expected.json");
  ASSERT_TRUE(expected_file) << dir;
  const nlohmann::json expected = nlohmann::json::parse(expected_file);
  std::vector<std::string> lines;
  std::ifstream in(std::string(dir) + "/conversations.jsonl");
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_GE(lines.size(), 8u);
  for (const char* name : {"llama3", "chatml", "deepseek"}) {
    auto format = parse_chat_format(name);
    ASSERT_TRUE(format.ok());
    ASSERT_EQ(expected.at(name).size(), lines.size());
    for (size_t i = 0; i < lines.size(); ++i) {
      auto messages =
          parse_chat_record(lines[i], "conversations.jsonl", static_cast<int64_t>(i + 1));
      ASSERT_TRUE(messages.ok()) << messages.status().to_string();
      EXPECT_EQ(rendered_text(render_chat(*format, *messages)),
                expected.at(name)[i].get<std::string>())
          << name << ", line " << i + 1;
    }
  }
}

TEST(ChatTemplate, TrainableSegmentsAreAssistantContentAndEndOfTurn) {
  const auto messages = parse_ok(
      R"({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
          {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
          {"role": "assistant", "content": "A2"}]})");
  const std::map<ChatFormat, std::string> end_of_turn = {{ChatFormat::kLlama3, "<|eot_id|>"},
                                                         {ChatFormat::kChatml, "<|im_end|>"},
                                                         {ChatFormat::kDeepseek, kDeepseekEos}};
  for (const auto& [format, eot] : end_of_turn) {
    std::string trained;
    for (const ChatSegment& s : render_chat(format, messages)) {
      if (s.trainable) trained += s.text;
      if (s.special) EXPECT_EQ(s.text.front(), '<');
    }
    EXPECT_EQ(trained, "A1" + eot + "A2" + eot);
  }
}

TEST(ChatTemplate, PromptCompletionIsOneUserAndOneAssistantTurn) {
  const auto messages = parse_ok(R"({"prompt": "Q", "completion": "A", "extra": 1})");
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0].role, ChatRole::kUser);
  EXPECT_EQ(messages[0].content, "Q");
  EXPECT_EQ(messages[1].role, ChatRole::kAssistant);
  EXPECT_EQ(messages[1].content, "A");
}

TEST(ChatTemplate, TokensStraddlingIntoAssistantContentAreTrainable) {
  // DeepSeek: "User: q\n\nAssistant: ab" + eos; the fake merges " a" into one token, which
  // crosses from the prompt's "Assistant: " into the answer.
  const auto segments =
      render_chat(ChatFormat::kDeepseek, parse_ok(R"({"prompt": "q", "completion": "ab"})"));
  auto tokens = tokenize_chat(segments, deepseek_tokenizer());
  ASSERT_TRUE(tokens.ok()) << tokens.status().to_string();
  std::vector<uint32_t> want = {512};
  FakeTokenizer plain({});
  plain.encode("User: q\n\nAssistant: ab", want);
  want.push_back(513);
  EXPECT_EQ(tokens->ids, want);
  ASSERT_EQ(tokens->mask.size(), want.size());
  // Trainable: 256+'a', 'b', eos; everything before is not.
  const size_t n = want.size();
  EXPECT_EQ(want[n - 3], 256u + 'a');
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(tokens->mask[i], i + 3 >= n ? 1 : 0) << i;
}

TEST(ChatTemplate, MissingSpecialTokenIsBadInput) {
  const auto segments =
      render_chat(ChatFormat::kLlama3, parse_ok(R"({"prompt": "q", "completion": "a"})"));
  auto tokens = tokenize_chat(segments, deepseek_tokenizer());
  ASSERT_FALSE(tokens.ok());
  EXPECT_EQ(tokens.status().code(), base::StatusCode::kBadInput);
  EXPECT_NE(tokens.status().message().find("<|begin_of_text|>"), std::string::npos);
}

TEST(ChatTemplate, BadRecordsNameFileAndLine) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"[1, 2]", "expected a JSON object"},
      {"{not json", "not valid JSON"},
      {R"({"prompt": "q"})", "field \"completion\" is missing"},
      {R"({"prompt": 3, "completion": "a"})", "field \"prompt\" is number"},
      {R"({"messages": [{"role": "robot", "content": "x"}]})", "role \"robot\""},
      {R"({"messages": [{"role": "user"}]})", "messages[0]: field \"content\" is missing"},
      {R"({"messages": {"role": "user"}})", "expected an array"},
      {R"({"messages": [{"role": "user", "content": "only a question"}]})", "no \"assistant\""},
      {"{\"prompt\": \"\xff\", \"completion\": \"a\"}", "invalid UTF-8"},
  };
  for (const auto& [line, reason] : cases) {
    auto m = parse_chat_record(line, "data/chat.jsonl", 42);
    ASSERT_FALSE(m.ok()) << line;
    EXPECT_EQ(m.status().code(), base::StatusCode::kBadInput) << line;
    EXPECT_EQ(m.status().message().rfind("data/chat.jsonl:42: ", 0), 0u) << m.status().message();
    EXPECT_NE(m.status().message().find(reason), std::string::npos) << m.status().message();
  }
}

TEST(ChatTemplate, UnknownFormatIsInvalidArgument) {
  auto f = parse_chat_format("alpaca");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), base::StatusCode::kInvalidArgument);
}

TEST(PrepareChat, EncodesOneConversationWithItsMask) {
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> mask;
  const std::string line =
      R"({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "yz"}]})";
  ASSERT_TRUE(encode_chat_record(ChatFormat::kDeepseek, deepseek_tokenizer(), "chat.jsonl", 3, line,
                                 tokens, mask)
                  .ok());
  ASSERT_EQ(tokens.size(), mask.size());
  // "... Assistant: yz" + eos: 256+'y', 'z', eos trainable, nothing else.
  const size_t n = tokens.size();
  EXPECT_EQ(tokens[n - 1], 513u);
  EXPECT_EQ(tokens[n - 3], 256u + 'y');
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(mask[i], i + 3 >= n ? 1 : 0) << i;
}

TEST(PrepareChat, BadRecordAndMissingSpecialTokenNameTheLine) {
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> mask;
  auto st = encode_chat_record(ChatFormat::kDeepseek, deepseek_tokenizer(), "c.jsonl", 2,
                               R"({"prompt": "q"})", tokens, mask);
  EXPECT_EQ(st.code(), base::StatusCode::kBadInput);
  EXPECT_EQ(st.message().rfind("c.jsonl:2: ", 0), 0u) << st.message();
  st = encode_chat_record(ChatFormat::kChatml, deepseek_tokenizer(), "c.jsonl", 5,
                          R"({"prompt": "q", "completion": "a"})", tokens, mask);
  EXPECT_EQ(st.code(), base::StatusCode::kBadInput);
  EXPECT_EQ(st.message().rfind("c.jsonl:5: ", 0), 0u) << st.message();
  EXPECT_NE(st.message().find("<|im_start|>"), std::string::npos) << st.message();
}

std::vector<std::vector<uint32_t>> expected_ids(const std::string& dir, const char* name) {
  std::ifstream in(dir + "/expected_ids.json");
  return nlohmann::json::parse(in).at(name).get<std::vector<std::vector<uint32_t>>>();
}

// The ids Hugging Face gives the rendered text, with a byte-level BPE that carries the
// format's special tokens (make_chat_reference.py), and a mask on assistant turns only.
TEST(ChatReference, TokenIdsEqualHuggingFaceAndMaskEndsAssistantTurns) {
  const char* dir = std::getenv("DSTRAIN_CHAT_REF");
  if (dir == nullptr) GTEST_SKIP() << "DSTRAIN_CHAT_REF unset: run ctest -R data_chat_reference";
  std::vector<std::string> lines;
  std::ifstream in(std::string(dir) + "/conversations.jsonl");
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  const std::map<std::string, std::string> end_of_turn = {
      {"llama3", "<|eot_id|>"}, {"chatml", "<|im_end|>"}, {"deepseek", kDeepseekEos}};
  for (const auto& [name, eot] : end_of_turn) {
    auto tokenizer = load_tokenizer(std::string(dir) + "/" + name + "/tokenizer.json");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().to_string();
    const ChatFormat format = parse_chat_format(name).value();
    const uint32_t eot_id = (*tokenizer)->token_id(eot).value();
    const auto want = expected_ids(dir, name.c_str());
    ASSERT_EQ(want.size(), lines.size());
    for (size_t i = 0; i < lines.size(); ++i) {
      std::vector<uint32_t> tokens;
      std::vector<uint8_t> mask;
      ASSERT_TRUE(encode_chat_record(format, **tokenizer, "c.jsonl", static_cast<int64_t>(i + 1),
                                     lines[i], tokens, mask)
                      .ok());
      EXPECT_EQ(tokens, want[i]) << name << ", line " << i + 1;
      // Every assistant turn ends in a trained end-of-turn token; no other is trained.
      const auto messages = parse_chat_record(lines[i], "c.jsonl", 1).value();
      int64_t assistants = 0;
      for (const ChatMessage& m : messages) assistants += m.role == ChatRole::kAssistant ? 1 : 0;
      int64_t trained_eot = 0;
      int64_t untrained_eot = 0;
      for (size_t t = 0; t < tokens.size(); ++t) {
        if (tokens[t] != eot_id) continue;
        (mask[t] ? trained_eot : untrained_eot) += 1;
      }
      EXPECT_EQ(trained_eot, assistants) << name << ", line " << i + 1;
      EXPECT_EQ(trained_eot + untrained_eot,
                static_cast<int64_t>(std::count(want[i].begin(), want[i].end(), eot_id)));
    }
  }
}

// `dstrain prepare --format chat` as the CLI runs it: several workers, one document per line.
TEST(ChatReference, PrepareChatWritesTheSameIdsAsDocuments) {
  const char* dir = std::getenv("DSTRAIN_CHAT_REF");
  if (dir == nullptr) GTEST_SKIP() << "DSTRAIN_CHAT_REF unset: run ctest -R data_chat_reference";
  testing::ScratchDir scratch;
  PrepareOptions options;
  options.tokenizer = std::string(dir) + "/chatml/tokenizer.json";
  options.workers = 2;
  PrepareStats stats;
  const std::string out = scratch.file("chat.dstok");
  auto st = prepare_chat_jsonl({std::string(dir) + "/conversations.jsonl"}, out,
                               ChatFormat::kChatml, options, &stats);
  ASSERT_TRUE(st.ok()) << st.to_string();
  auto file = TokenFile::open(out);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  const auto want = expected_ids(dir, "chatml");
  ASSERT_EQ(file->num_docs(), static_cast<int64_t>(want.size()));
  ASSERT_TRUE(file->has_mask());
  for (size_t d = 0; d < want.size(); ++d) {
    std::vector<uint32_t> got;
    for (int64_t i = file->doc_begin(d); i < file->doc_end(d); ++i) got.push_back(file->token(i));
    EXPECT_EQ(got, want[d]) << d;
  }
  EXPECT_GT(stats.num_target_tokens, 0);
  EXPECT_LT(stats.num_target_tokens, stats.num_tokens / 2);
}

}  // namespace
}  // namespace dstrain::runtime
