#include "runtime/data/demo_corpus.h"

#include <array>
#include <vector>

#include "runtime/data/byte_tokenizer.h"
#include "runtime/data/sampler.h"

namespace dstrain::runtime {
namespace {

// Singular and plural forms; verbs as (third person singular, plural/base).
struct Forms {
  const char* one;
  const char* many;
};

constexpr Forms kAnimals[] = {
    {"fox", "foxes"},        {"dog", "dogs"},       {"cat", "cats"},       {"bird", "birds"},
    {"horse", "horses"},     {"mouse", "mice"},     {"wolf", "wolves"},    {"rabbit", "rabbits"},
    {"bear", "bears"},       {"goose", "geese"},    {"child", "children"}, {"farmer", "farmers"},
    {"teacher", "teachers"}, {"king", "kings"},     {"queen", "queens"},   {"girl", "girls"},
    {"boy", "boys"},         {"baker", "bakers"},   {"sailor", "sailors"}, {"doctor", "doctors"},
    {"painter", "painters"}, {"hunter", "hunters"}, {"owl", "owls"},       {"frog", "frogs"},
};
constexpr Forms kThings[] = {
    {"apple", "apples"},   {"ball", "balls"},     {"book", "books"},     {"box", "boxes"},
    {"stone", "stones"},   {"letter", "letters"}, {"basket", "baskets"}, {"lamp", "lamps"},
    {"cake", "cakes"},     {"key", "keys"},       {"hat", "hats"},       {"song", "songs"},
    {"flower", "flowers"}, {"coin", "coins"},     {"map", "maps"},       {"bell", "bells"},
};
constexpr Forms kIntransitive[] = {
    {"jumps", "jump"},   {"runs", "run"},     {"sleeps", "sleep"}, {"sings", "sing"},
    {"waits", "wait"},   {"laughs", "laugh"}, {"walks", "walk"},   {"swims", "swim"},
    {"dances", "dance"}, {"rests", "rest"},   {"plays", "play"},   {"hides", "hide"},
    {"sits", "sit"},     {"works", "work"},   {"dreams", "dream"}, {"wanders", "wander"},
};
constexpr Forms kTransitive[] = {
    {"sees", "see"},     {"likes", "like"},         {"follows", "follow"}, {"chases", "chase"},
    {"finds", "find"},   {"helps", "help"},         {"watches", "watch"},  {"carries", "carry"},
    {"feeds", "feed"},   {"meets", "meet"},         {"loves", "love"},     {"calls", "call"},
    {"visits", "visit"}, {"remembers", "remember"}, {"greets", "greet"},   {"hears", "hear"},
};
constexpr Forms kCopula = {"is", "are"};
constexpr Forms kDo = {"does", "do"};
constexpr Forms kHave = {"has", "have"};

constexpr const char* kAdjectives[] = {
    "red",   "lazy",  "quick",  "brown", "old",    "young",  "small",  "big",
    "happy", "quiet", "clever", "tired", "green",  "gentle", "brave",  "hungry",
    "proud", "shy",   "wise",   "calm",  "little", "bright", "sleepy", "kind",
};
constexpr const char* kSingularDeterminers[] = {"the", "the", "a", "every", "this", "that"};
constexpr const char* kPluralDeterminers[] = {"the",   "the",  "some",  "two",
                                              "three", "many", "these", "those"};
constexpr const char* kPrepositions[] = {"over",   "under",  "near",   "behind",
                                         "beside", "across", "around", "past"};
constexpr const char* kPlaces[] = {"river", "hill",  "house",  "bridge", "garden", "forest",
                                   "road",  "field", "market", "lake",   "wall",   "tree"};
constexpr const char* kAdverbs[] = {"quickly", "slowly", "quietly", "happily", "often",
                                    "again",   "today",  "softly",  "alone",   "together"};
constexpr const char* kTimes[] = {"in the morning", "at night",  "every day", "after the rain",
                                  "before dawn",    "in winter", "on sunday", "at noon"};
constexpr const char* kConjunctions[] = {"because", "while", "when"};

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  // Modulo bias is irrelevant here; the stream only has to be deterministic.
  uint64_t below(uint64_t n) { return splitmix64_next(state_) % n; }
  bool chance(uint64_t percent) { return below(100) < percent; }
  template <typename T, size_t N>
  const T& pick(const T (&items)[N]) {
    return items[below(N)];
  }

 private:
  uint64_t state_;
};

class SentenceMaker {
 public:
  explicit SentenceMaker(uint64_t seed) : rng_(seed) {}

  // One sentence, capitalised and ending in '.', '!' or '?'.
  std::string sentence() {
    std::string s;
    switch (rng_.below(7)) {
      case 0:
      case 1:
        s = intransitive_clause() + end_modifier();
        break;
      case 2:
      case 3:
        s = transitive_clause() + end_modifier();
        break;
      case 4:
        s = std::string(rng_.pick(kTimes)) + ", " + transitive_clause();
        break;
      case 5:
        s = transitive_clause() + " " + rng_.pick(kConjunctions) + " " + copula_clause();
        break;
      default:
        return capitalise(question()) + "?";
    }
    return capitalise(s) + (rng_.chance(8) ? "!" : ".");
  }

 private:
  // "[determiner] [adjective] noun"; `plural` tells the verb which form agrees with it.
  template <size_t N>
  std::string phrase(const Forms (&nouns)[N], bool* plural) {
    *plural = rng_.chance(35);
    std::string out = *plural ? rng_.pick(kPluralDeterminers) : rng_.pick(kSingularDeterminers);
    std::string adjective = rng_.chance(55) ? std::string(rng_.pick(kAdjectives)) : "";
    const Forms& noun = rng_.pick(nouns);
    std::string next = adjective.empty() ? (*plural ? noun.many : noun.one) : adjective;
    // "a" before a vowel reads as "an".
    if (out == "a" && is_vowel(next[0])) out = "an";
    out += " " + next;
    if (!adjective.empty()) out += std::string(" ") + (*plural ? noun.many : noun.one);
    return out;
  }
  static bool is_vowel(char c) { return c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u'; }
  static const char* verb(const Forms& forms, bool plural) {
    return plural ? forms.many : forms.one;
  }

  std::string intransitive_clause() {
    bool plural;
    std::string subject = phrase(kAnimals, &plural);
    return subject + " " + verb(rng_.pick(kIntransitive), plural);
  }
  std::string transitive_clause() {
    bool plural;
    bool object_plural;
    std::string subject = phrase(kAnimals, &plural);
    const char* v = verb(rng_.pick(kTransitive), plural);
    std::string object =
        rng_.chance(50) ? phrase(kAnimals, &object_plural) : phrase(kThings, &object_plural);
    return subject + " " + v + " " + object;
  }
  std::string copula_clause() {
    bool plural;
    std::string subject = phrase(kAnimals, &plural);
    if (rng_.chance(20)) {
      bool object_plural;
      return subject + " " + verb(kHave, plural) + " " + phrase(kThings, &object_plural);
    }
    return subject + " " + verb(kCopula, plural) + " " + rng_.pick(kAdjectives);
  }
  std::string end_modifier() {
    switch (rng_.below(4)) {
      case 0:
        return std::string(" ") + rng_.pick(kPrepositions) + " the " + rng_.pick(kPlaces);
      case 1:
        return std::string(" ") + rng_.pick(kAdverbs);
      case 2:
        return std::string(" ") + rng_.pick(kTimes);
      default:
        return "";
    }
  }
  std::string question() {
    bool plural;
    std::string subject = phrase(kAnimals, &plural);
    std::string q = std::string(verb(kDo, plural)) + " " + subject + " ";
    if (rng_.chance(50)) return q + rng_.pick(kIntransitive).many + end_modifier();
    bool object_plural;
    return q + rng_.pick(kTransitive).many + " " + phrase(kThings, &object_plural);
  }
  static std::string capitalise(std::string s) {
    if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
    return s;
  }

  Rng rng_;
};

}  // namespace

std::string make_demo_corpus(int64_t num_bytes, uint64_t seed) {
  std::string text;
  if (num_bytes <= 0) return text;
  text.reserve(static_cast<size_t>(num_bytes) + 256);
  SentenceMaker maker(seed);
  Rng paragraphs(seed ^ 0x5eed5eed5eed5eedULL);
  uint64_t left_in_paragraph = 3 + paragraphs.below(4);
  while (static_cast<int64_t>(text.size()) < num_bytes) {
    text += maker.sentence();
    if (--left_in_paragraph == 0) {
      text += '\n';
      left_in_paragraph = 3 + paragraphs.below(4);
    } else {
      text += ' ';
    }
  }
  text.resize(static_cast<size_t>(num_bytes));
  return text;
}

base::StatusOr<TokenFile> make_demo_token_file(int64_t num_bytes, uint64_t seed) {
  std::vector<uint32_t> tokens{kByteBos};
  byte_encode(make_demo_corpus(num_bytes, seed), tokens);
  tokens.push_back(kByteEos);
  std::vector<uint64_t> offsets{0, tokens.size()};
  return TokenFile::from_tokens(tokens, kByteVocabSize,
                                "demo corpus (seed " + std::to_string(seed) + ")", offsets);
}

}  // namespace dstrain::runtime
