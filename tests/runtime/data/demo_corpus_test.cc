#include "runtime/data/demo_corpus.h"

#include <gtest/gtest.h>

#include <set>
#include <sstream>

#include "runtime/data/byte_tokenizer.h"
#include "runtime/data/dataset.h"

namespace dstrain::runtime {
namespace {

TEST(DemoCorpus, ExactSizeAndDeterministic) {
  std::string a = make_demo_corpus(5000, 1);
  EXPECT_EQ(a.size(), 5000u);
  EXPECT_EQ(a, make_demo_corpus(5000, 1));
  EXPECT_NE(a, make_demo_corpus(5000, 2));
  // A longer corpus extends the shorter one with the same seed.
  EXPECT_EQ(make_demo_corpus(9000, 1).substr(0, 5000), a);
  EXPECT_TRUE(make_demo_corpus(0, 1).empty());
}

TEST(DemoCorpus, LooksLikeEnglishSentences) {
  std::string text = make_demo_corpus(20000, 7);
  std::set<std::string> words;
  std::string word;
  int64_t sentences = 0;
  for (char c : text) {
    ASSERT_TRUE((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == ' ' || c == '\n' ||
                c == '.' || c == ',' || c == '?' || c == '!')
        << "unexpected byte " << static_cast<int>(c);
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c >= 'a' && c <= 'z') {
      word.push_back(c);
      continue;
    }
    if (!word.empty()) words.insert(word);
    word.clear();
    sentences += (c == '.' || c == '?' || c == '!') ? 1 : 0;
  }
  EXPECT_GT(sentences, 200);
  // Enough variety to be worth learning, small enough to be learnt quickly.
  EXPECT_GT(words.size(), 120u);
  EXPECT_LT(words.size(), 260u);
  EXPECT_NE(text.find('\n'), std::string::npos);
  // Agreement: singular subjects take singular verbs.
  EXPECT_EQ(text.find("the fox jump "), std::string::npos);
  EXPECT_EQ(text.find("the foxes jumps"), std::string::npos);
}

TEST(DemoCorpus, InMemoryTokenFileServesSamples) {
  auto file = make_demo_token_file(4096, 3);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->vocab_size(), kByteVocabSize);
  EXPECT_EQ(file->num_tokens(), 4098);
  EXPECT_EQ(file->token(0), kByteBos);
  EXPECT_EQ(file->token(4097), kByteEos);
  EXPECT_NE(file->name().find("demo corpus"), std::string::npos);
  auto ds = Dataset::create(std::move(file).value(), {SampleFormat::kTokens, 64});
  ASSERT_TRUE(ds.ok());
  EXPECT_EQ(ds->num_samples(), 4097 / 64);
  auto s = ds->sample(3);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->num_targets, 64);
}

}  // namespace
}  // namespace dstrain::runtime
