#include "runtime/data/tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

namespace dstrain::runtime {
namespace {

// What a Split step does with the parts of a piece that its pattern matches.
enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// GPT-2's pattern, which ByteLevel applies when "use_regex" is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

base::Status bad(const std::string& file, const std::string& what) {
  return base::Status::BadInput(file + ": pre_tokenizer: " + what);
}

struct CodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};

// Escapes a literal so PCRE2 matches it verbatim (Split's {"String": ...} pattern).
std::string quote_literal(const std::string& s) { return "\\Q" + s + "\\E"; }

// Oniguruma (what `tokenizers` uses) reads \uHHHH; PCRE2 spells it \x{HHHH}. Everything else in
// the patterns these files carry means the same to both.
std::string to_pcre2_syntax(const std::string& pattern) {
  std::string out;
  out.reserve(pattern.size());
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] != '\\' || i + 1 >= pattern.size()) {
      out.push_back(pattern[i]);
      continue;
    }
    if (pattern[i + 1] == 'Q') {  // a quoted literal runs verbatim to \E
      size_t end = pattern.find("\\E", i + 2);
      end = end == std::string::npos ? pattern.size() : end + 2;
      out.append(pattern, i, end - i);
      i = end - 1;
      continue;
    }
    if (pattern[i + 1] == 'u' && i + 6 <= pattern.size() &&
        pattern.find_first_not_of("0123456789abcdefABCDEF", i + 2) >= i + 6) {
      out += "\\x{" + pattern.substr(i + 2, 4) + "}";
      i += 5;
    } else {
      out.push_back(pattern[i]);
      out.push_back(pattern[++i]);  // the escaped character: "\\\\u" is a backslash and a 'u'
    }
  }
  return out;
}

size_t utf8_char_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c & 0xe0) == 0xc0) return 2;
  if ((c & 0xf0) == 0xe0) return 3;
  return 4;
}

}  // namespace

struct PreTokenizer::Step {
  virtual ~Step() = default;
  virtual void split(std::string_view piece, const PreTokenizer::Sink& sink) const = 0;
};

namespace {

class RegexSplit final : public PreTokenizer::Step {
 public:
  static base::StatusOr<std::unique_ptr<RegexSplit>> create(const std::string& onig_pattern,
                                                            Behavior behavior, bool invert,
                                                            const std::string& file) {
    const std::string pattern = to_pcre2_syntax(onig_pattern);
    int err = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                      PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      return bad(file, "cannot compile pattern /" + pattern + "/ at offset " +
                           std::to_string(offset) + ": " + reinterpret_cast<const char*>(msg));
    }
    auto step = std::unique_ptr<RegexSplit>(new RegexSplit());
    step->code_.reset(code);
    // JIT is an optimisation only: without it pcre2_match gives the same matches.
    step->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    step->behavior_ = behavior;
    step->invert_ = invert;
    return step;
  }

  void split(std::string_view piece, const PreTokenizer::Sink& sink) const override {
    // One pair of offsets is all a split needs (rc 0 then only says capture groups were left
    // out); one block per thread serves every pattern and avoids a malloc per piece. Later steps
    // reuse it from inside emit(), so the offsets are copied out before emitting.
    thread_local std::unique_ptr<pcre2_match_data, MatchDataDeleter> md(
        pcre2_match_data_create(1, nullptr));
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
    size_t pos = 0;
    size_t last = 0;  // end of the previous match: text before a match is a non-match part
    Emitter em{behavior_, sink, {}, false};
    while (pos <= piece.size()) {
      int rc = jit_ ? pcre2_jit_match(code_.get(), subject, piece.size(), pos, PCRE2_NO_UTF_CHECK,
                                      md.get(), nullptr)
                    : pcre2_match(code_.get(), subject, piece.size(), pos, PCRE2_NO_UTF_CHECK,
                                  md.get(), nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      size_t b = ov[0];
      size_t e = ov[1];
      if (e == b) {
        // An empty match splits nothing; step over one character and look again.
        if (b >= piece.size()) break;
        pos = b + utf8_char_len(static_cast<unsigned char>(piece[b]));
        continue;
      }
      if (b > last) em.emit(piece.substr(last, b - last), invert_);
      em.emit(piece.substr(b, e - b), !invert_);
      last = e;
      pos = e;
    }
    if (last < piece.size()) em.emit(piece.substr(last), invert_);
    em.finish();
  }

 private:
  RegexSplit() = default;

  // Parts of one piece in order. A part that may still grow (merged with what follows) is held
  // back until the next part decides; each part is adjacent to the previous one in the text.
  struct Emitter {
    Behavior behavior;
    const PreTokenizer::Sink& sink;
    std::string_view held;
    bool prev_was_match = false;

    static std::string_view join(std::string_view a, std::string_view b) {
      return std::string_view(a.data(), a.size() + b.size());
    }
    void release() {
      if (!held.empty()) sink(held);
      held = {};
    }
    void emit(std::string_view part, bool is_match) {
      switch (behavior) {
        case Behavior::kRemoved:
          if (!is_match) sink(part);
          break;
        case Behavior::kIsolated:
          sink(part);
          break;
        case Behavior::kMergedWithPrevious:
          if (is_match && !held.empty()) {
            held = join(held, part);
          } else {
            release();
            held = part;
          }
          break;
        case Behavior::kMergedWithNext:
          if (!held.empty()) {
            part = join(held, part);
            held = {};
          }
          if (is_match) {
            held = part;
          } else {
            sink(part);
          }
          break;
        case Behavior::kContiguous:
          if (is_match && prev_was_match && !held.empty()) {
            held = join(held, part);
          } else {
            release();
            held = part;
          }
          break;
      }
      prev_was_match = is_match;
    }
    void finish() { release(); }
  };

  std::unique_ptr<pcre2_code, CodeDeleter> code_;
  bool jit_ = false;
  Behavior behavior_ = Behavior::kIsolated;
  bool invert_ = false;
};

// ByteLevel's prefix space: a piece that does not start with ' ' gets one.
class PrefixSpace final : public PreTokenizer::Step {
 public:
  void split(std::string_view piece, const PreTokenizer::Sink& sink) const override {
    if (!piece.empty() && piece.front() == ' ') {
      sink(piece);
      return;
    }
    std::string spaced = " " + std::string(piece);
    sink(spaced);
  }
};

base::StatusOr<Behavior> parse_behavior(const nlohmann::json& step, const std::string& file) {
  std::string b = step.value("behavior", "Isolated");
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  return bad(file, "Split behavior \"" + b + "\" is not supported");
}

base::Status add_step(const nlohmann::json& step, const std::string& file,
                      std::vector<std::unique_ptr<PreTokenizer::Step>>& steps,
                      bool* has_byte_level) {
  if (!step.is_object() || !step.contains("type") || !step["type"].is_string()) {
    return bad(file, "a step without a \"type\"");
  }
  const std::string type = step["type"];
  if (type == "Sequence") {
    auto it = step.find("pretokenizers");
    if (it == step.end() || !it->is_array()) return bad(file, "Sequence without \"pretokenizers\"");
    for (const auto& s : *it) RETURN_IF_ERROR(add_step(s, file, steps, has_byte_level));
    return base::Status::Ok();
  }
  if (type == "Split") {
    auto pat = step.find("pattern");
    if (pat == step.end() || !pat->is_object()) return bad(file, "Split without a \"pattern\"");
    std::string pattern;
    if (pat->contains("Regex") && (*pat)["Regex"].is_string()) {
      pattern = (*pat)["Regex"];
    } else if (pat->contains("String") && (*pat)["String"].is_string()) {
      pattern = quote_literal((*pat)["String"]);
    } else {
      return bad(file, "Split pattern is neither {\"Regex\": ...} nor {\"String\": ...}");
    }
    ASSIGN_OR_RETURN(Behavior behavior, parse_behavior(step, file));
    ASSIGN_OR_RETURN(auto split,
                     RegexSplit::create(pattern, behavior, step.value("invert", false), file));
    steps.push_back(std::move(split));
    return base::Status::Ok();
  }
  if (type == "Digits") {
    const char* pattern = step.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)";
    ASSIGN_OR_RETURN(auto split, RegexSplit::create(pattern, Behavior::kIsolated, false, file));
    steps.push_back(std::move(split));
    return base::Status::Ok();
  }
  if (type == "ByteLevel") {
    *has_byte_level = true;
    if (step.value("add_prefix_space", false)) steps.push_back(std::make_unique<PrefixSpace>());
    if (step.value("use_regex", true)) {
      ASSIGN_OR_RETURN(auto split,
                       RegexSplit::create(kGpt2Pattern, Behavior::kIsolated, false, file));
      steps.push_back(std::move(split));
    }
    return base::Status::Ok();
  }
  return bad(file,
             "type \"" + type + "\" is not supported (Split, Digits, ByteLevel, Sequence are)");
}

}  // namespace

PreTokenizer::PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;
PreTokenizer::~PreTokenizer() = default;

base::StatusOr<PreTokenizer> PreTokenizer::parse(const std::string& spec, const std::string& file,
                                                 bool* has_byte_level) {
  *has_byte_level = false;
  nlohmann::json j = nlohmann::json::parse(spec, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return bad(file, "not valid JSON");
  PreTokenizer p;
  if (!j.is_null()) RETURN_IF_ERROR(add_step(j, file, p.steps_, has_byte_level));
  return p;
}

void PreTokenizer::split(std::string_view text, const Sink& sink) const {
  if (!text.empty()) run(0, text, sink);
}

void PreTokenizer::run(size_t step, std::string_view piece, const Sink& sink) const {
  if (step == steps_.size()) {
    sink(piece);
    return;
  }
  steps_[step]->split(piece, [&](std::string_view p) { run(step + 1, p, sink); });
}

}  // namespace dstrain::runtime
