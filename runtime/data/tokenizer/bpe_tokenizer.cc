#include "runtime/data/tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "runtime/data/tokenizer/byte_level.h"
#include "runtime/data/tokenizer/merge_table.h"
#include "runtime/data/tokenizer/normalizer.h"
#include "runtime/data/tokenizer/pre_tokenizer.h"
#include "runtime/data/tokenizer/special_tokens.h"
#include "runtime/data/tokenizer/utf8.h"
#include "runtime/data/tokenizer/word_cache.h"

namespace dstrain::runtime {
namespace {

using nlohmann::json;

// Words this long or longer merge through a heap; shorter ones rescan a small rank array, which
// is faster for the usual few-byte word.
constexpr size_t kHeapMergeMin = 48;
// The word cache holds at most this many words of at most kCacheWordMax bytes; when full it stops
// growing (the frequent words are in it by then).
constexpr size_t kCacheCapacity = 1 << 18;
constexpr size_t kCacheWordMax = 64;
constexpr uint32_t kNoRank = std::numeric_limits<uint32_t>::max();

struct AddedToken {
  std::string content;
  uint32_t id;
  bool lstrip;
  bool rstrip;
};

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

class BpeTokenizer final : public Tokenizer {
 public:
  void encode(std::string_view text, std::vector<uint32_t>& out) const override;
  std::optional<uint32_t> token_id(std::string_view content) const override {
    auto it = token_to_id_.find(std::string(content));
    if (it == token_to_id_.end()) return std::nullopt;
    return it->second;
  }
  std::optional<uint32_t> bos_id() const override { return bos_; }
  std::optional<uint32_t> eos_id() const override { return eos_; }
  uint64_t vocab_size() const override { return id_to_bytes_.size(); }
  std::string decode(const std::vector<uint32_t>& ids) const override {
    std::string out;
    for (uint32_t id : ids) {
      if (id < id_to_bytes_.size()) out += id_to_bytes_[id];
    }
    return out;
  }

  static base::StatusOr<std::unique_ptr<Tokenizer>> load(const std::string& json_path,
                                                         const std::string& config_path);

 private:
  BpeTokenizer() = default;
  void encode_segment(std::string_view text, std::vector<uint32_t>& out) const;
  void encode_word(std::string_view word, std::vector<uint32_t>& out) const;
  void merge_small(std::vector<uint32_t>& ids) const;
  void merge_heap(std::vector<uint32_t>& ids) const;

  std::unordered_map<std::string, uint32_t> token_to_id_;  // vocabulary keys and added tokens
  std::unordered_map<std::string, uint32_t> bytes_to_id_;  // vocabulary by raw bytes
  std::vector<std::string> id_to_bytes_;                   // what decode writes for each id
  std::array<uint32_t, 256> byte_id_{};
  MergeTable merges_;
  bool ignore_merges_ = false;
  std::vector<AddedToken> matched_added_;  // non-special added tokens: found in the text
  Normalizer normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::optional<uint32_t> bos_;
  std::optional<uint32_t> eos_;

  mutable std::mutex cache_mu_;
  mutable WordCache cache_{kCacheCapacity};
};

void BpeTokenizer::encode(std::string_view text, std::vector<uint32_t>& out) const {
  std::string repaired;
  if (first_invalid_utf8(text) >= 0) {
    repaired = repair_utf8(text);
    text = repaired;
  }
  // Non-special added tokens are cut out first and never reach the normalizer or the merges.
  // next[k] caches where token k occurs next, so each token's search moves forward only.
  std::vector<size_t> next;
  for (const AddedToken& a : matched_added_) next.push_back(text.find(a.content));
  size_t pos = 0;
  while (pos < text.size() && !matched_added_.empty()) {
    size_t best = std::string_view::npos;
    const AddedToken* tok = nullptr;
    for (size_t k = 0; k < matched_added_.size(); ++k) {
      const AddedToken& a = matched_added_[k];
      if (next[k] != std::string_view::npos && next[k] < pos) next[k] = text.find(a.content, pos);
      size_t at = next[k];
      // Leftmost wins; at the same place the longest, as `tokenizers`' leftmost-longest match.
      if (at < best ||
          (at == best && at != std::string_view::npos && a.content.size() > tok->content.size())) {
        best = at;
        tok = &a;
      }
    }
    if (tok == nullptr) break;
    size_t begin = best;
    size_t end = best + tok->content.size();
    if (tok->lstrip) {
      while (begin > pos && is_space(text[begin - 1])) --begin;
    }
    if (tok->rstrip) {
      while (end < text.size() && is_space(text[end])) ++end;
    }
    encode_segment(text.substr(pos, begin - pos), out);
    out.push_back(tok->id);
    pos = end;
  }
  encode_segment(text.substr(pos), out);
}

void BpeTokenizer::encode_segment(std::string_view text, std::vector<uint32_t>& out) const {
  if (text.empty()) return;
  std::string normalized;
  if (!normalizer_.identity()) {
    normalizer_.apply(text, normalized);
    text = normalized;
  }
  pre_tokenizer_->split(text, [&](std::string_view word) { encode_word(word, out); });
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<uint32_t>& out) const {
  const bool cacheable = word.size() <= kCacheWordMax;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.find(word, out)) return;
  }
  std::vector<uint32_t> ids;
  auto whole = ignore_merges_ ? bytes_to_id_.find(std::string(word)) : bytes_to_id_.end();
  if (whole != bytes_to_id_.end()) {
    ids.push_back(whole->second);
  } else {
    ids.resize(word.size());
    for (size_t i = 0; i < word.size(); ++i) ids[i] = byte_id_[static_cast<uint8_t>(word[i])];
    if (ids.size() >= kHeapMergeMin) {
      merge_heap(ids);
    } else {
      merge_small(ids);
    }
  }
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    cache_.insert(word, ids.data(), ids.size());
  }
}

// Repeatedly merges the lowest-ranked adjacent pair (the leftmost among equals).
void BpeTokenizer::merge_small(std::vector<uint32_t>& ids) const {
  if (ids.size() < 2) return;
  std::vector<uint32_t> ranks(ids.size() - 1);  // ranks[i]: the pair (ids[i], ids[i+1])
  auto rank_at = [&](size_t i) {
    const Merge* m = merges_.find(ids[i], ids[i + 1]);
    return m == nullptr ? kNoRank : m->rank;
  };
  for (size_t i = 0; i + 1 < ids.size(); ++i) ranks[i] = rank_at(i);
  while (!ranks.empty()) {
    auto best = std::min_element(ranks.begin(), ranks.end());
    if (*best == kNoRank) break;
    size_t i = static_cast<size_t>(best - ranks.begin());
    ids[i] = merges_.find(ids[i], ids[i + 1])->result;
    ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(i) + 1);
    ranks.erase(ranks.begin() + static_cast<std::ptrdiff_t>(i));
    if (i > 0) ranks[i - 1] = rank_at(i - 1);
    if (i < ranks.size()) ranks[i] = rank_at(i);
  }
}

// The same order of merges for long words: symbols in a linked list, candidate pairs in a heap
// ordered by (rank, position); a popped pair is applied only if both symbols are still as queued.
void BpeTokenizer::merge_heap(std::vector<uint32_t>& ids) const {
  const int n = static_cast<int>(ids.size());
  std::vector<int> prev(n);
  std::vector<int> next(n);
  std::vector<bool> alive(n, true);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Cand {
    uint32_t rank;
    int pos;
    uint32_t left;
    uint32_t right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int i) {
    if (i < 0 || next[i] < 0) return;
    const Merge* m = merges_.find(ids[i], ids[next[i]]);
    if (m != nullptr) heap.push({m->rank, i, ids[i], ids[next[i]]});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    int r = alive[c.pos] ? next[c.pos] : -1;
    if (r < 0 || ids[c.pos] != c.left || ids[r] != c.right) continue;
    ids[c.pos] = merges_.find(c.left, c.right)->result;
    alive[r] = false;
    next[c.pos] = next[r];
    if (next[r] >= 0) prev[next[r]] = c.pos;
    push(prev[c.pos]);
    push(c.pos);
  }
  size_t k = 0;
  for (int i = 0; i >= 0 && i < n; i = next[i]) ids[k++] = ids[i];
  ids.resize(k);
}

base::Status bad(const std::string& file, const std::string& what) {
  return base::Status::BadInput(file + ": " + what);
}

base::StatusOr<json> read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return bad(path, "cannot open for reading");
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return bad(path, "not valid JSON");
  if (!j.is_object()) return bad(path, "not a JSON object");
  return j;
}

// Merges are "left right" strings (older files) or ["left", "right"] pairs (newer ones).
base::StatusOr<std::pair<std::string, std::string>> merge_parts(const json& m,
                                                                const std::string& file,
                                                                size_t index) {
  if (m.is_string()) {
    const std::string& s = m.get_ref<const std::string&>();
    size_t sp = s.find(' ');
    if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
      return bad(file, "merges[" + std::to_string(index) + "] \"" + s +
                           "\" is not two tokens separated by one space");
    }
    return std::make_pair(s.substr(0, sp), s.substr(sp + 1));
  }
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
    return std::make_pair(m[0].get<std::string>(), m[1].get<std::string>());
  }
  return bad(file, "merges[" + std::to_string(index) + "] is neither \"a b\" nor [\"a\", \"b\"]");
}

base::StatusOr<std::unique_ptr<Tokenizer>> BpeTokenizer::load(const std::string& path,
                                                              const std::string& config_path) {
  ASSIGN_OR_RETURN(json j, read_json(path));
  auto tok = std::unique_ptr<BpeTokenizer>(new BpeTokenizer());
  const json& model = j.contains("model") ? j["model"] : json();
  if (!model.is_object()) return bad(path, "no \"model\" object");
  std::string type = model.value("type", "BPE");
  if (type != "BPE") {
    return bad(path, "model type \"" + type + "\" is not supported (byte-level BPE is; use " +
                         "tokenizer.model for SentencePiece models)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
      return bad(path, std::string("model.") + key + " is not supported");
    }
  }
  tok->ignore_merges_ = model.value("ignore_merges", false);

  bool has_byte_level = false;
  auto pre = PreTokenizer::parse(j.contains("pre_tokenizer") ? j["pre_tokenizer"].dump() : "null",
                                 path, &has_byte_level);
  if (!pre.ok()) return pre.status();
  if (!has_byte_level) {
    return bad(path, "pre_tokenizer has no ByteLevel step: not a byte-level BPE tokenizer " +
                         std::string("(for SentencePiece models pass tokenizer.model)"));
  }
  tok->pre_tokenizer_ = std::make_unique<PreTokenizer>(std::move(pre).value());
  ASSIGN_OR_RETURN(
      tok->normalizer_,
      Normalizer::parse(j.contains("normalizer") ? j["normalizer"].dump() : "null", path));

  const ByteLevelMap byte_map;
  auto vit = model.find("vocab");
  if (vit == model.end() || !vit->is_object()) return bad(path, "model.vocab is not an object");
  uint64_t max_id = 0;
  std::vector<std::pair<uint32_t, std::string>> entries;
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    if (!it.value().is_number_unsigned() || it.value().get<uint64_t>() >= (uint64_t{1} << 31)) {
      return bad(path, "model.vocab[\"" + it.key() + "\"] is not an id in [0, 2^31)");
    }
    auto id = it.value().get<uint32_t>();
    tok->token_to_id_[it.key()] = id;
    entries.emplace_back(id, it.key());
    max_id = std::max<uint64_t>(max_id, id);
  }
  std::vector<AddedToken> added;
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const json& a : j["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_unsigned() ||
          !a.contains("content") || !a["content"].is_string()) {
        return bad(path, "an added_tokens entry without an id and a content");
      }
      AddedToken t{a["content"], a["id"].get<uint32_t>(), a.value("lstrip", false),
                   a.value("rstrip", false)};
      if (t.id >= (uint32_t{1} << 31)) return bad(path, "added token id out of range");
      max_id = std::max<uint64_t>(max_id, t.id);
      tok->token_to_id_[t.content] = t.id;
      if (!a.value("special", false) && !t.content.empty()) tok->matched_added_.push_back(t);
      added.push_back(std::move(t));
    }
  }
  tok->id_to_bytes_.assign(max_id + 1, std::string());
  for (auto& [id, key] : entries) {
    std::optional<std::string> bytes = byte_map.decode(key);
    if (!bytes.has_value()) {
      tok->id_to_bytes_[id] = key;  // a special token kept in the vocabulary, e.g. "<|endoftext|>"
      continue;
    }
    tok->id_to_bytes_[id] = *bytes;
    tok->bytes_to_id_.emplace(std::move(*bytes), id);
  }
  for (const AddedToken& a : added) tok->id_to_bytes_[a.id] = a.content;
  for (int b = 0; b < 256; ++b) {
    auto it = tok->token_to_id_.find(byte_map.encode_byte(static_cast<uint8_t>(b)));
    if (it == tok->token_to_id_.end()) {
      return bad(path, "model.vocab lacks the byte-level token for byte " + std::to_string(b));
    }
    tok->byte_id_[b] = it->second;
  }

  auto mit = model.find("merges");
  if (mit == model.end() || !mit->is_array()) return bad(path, "model.merges is not an array");
  tok->merges_ = MergeTable(mit->size());
  for (size_t i = 0; i < mit->size(); ++i) {
    ASSIGN_OR_RETURN(auto parts, merge_parts((*mit)[i], path, i));
    auto l = tok->token_to_id_.find(parts.first);
    auto r = tok->token_to_id_.find(parts.second);
    auto m = tok->token_to_id_.find(parts.first + parts.second);
    if (l == tok->token_to_id_.end() || r == tok->token_to_id_.end() ||
        m == tok->token_to_id_.end()) {
      return bad(path, "merges[" + std::to_string(i) + "] (\"" + parts.first + "\", \"" +
                           parts.second + "\") names a token missing from model.vocab");
    }
    tok->merges_.insert(l->second, r->second, {static_cast<uint32_t>(i), m->second});
  }

  ASSIGN_OR_RETURN(SpecialTokenNames names, read_special_token_names(config_path));
  for (auto [name, slot] :
       {std::make_pair(&names.bos, &tok->bos_), std::make_pair(&names.eos, &tok->eos_)}) {
    if (!name->has_value()) continue;
    *slot = tok->token_id(**name);
    if (!slot->has_value()) {
      return bad(config_path, "token \"" + **name + "\" is not in " + path);
    }
  }
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace

base::StatusOr<std::unique_ptr<Tokenizer>> load_bpe_tokenizer(const std::string& json_path,
                                                              const std::string& config_path) {
  // The loader checks the types it relies on; a field of an unexpected type elsewhere (say
  // "lstrip": "yes") makes nlohmann throw, which is the same kind of bad file.
  try {
    return BpeTokenizer::load(json_path, config_path);
  } catch (const nlohmann::json::exception& e) {
    return base::Status::BadInput(json_path + ": unexpected JSON: " + e.what());
  }
}

}  // namespace dstrain::runtime
