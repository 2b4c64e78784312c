#include "runtime/data/tokenizer/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include "runtime/data/tokenizer/special_tokens.h"
#include "runtime/data/tokenizer/utf8.h"

namespace dstrain::runtime {
namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // SentencePiece never reads control symbols (<s>, </s>) out of the text, which is the
  // plain-text contract of encode().
  void encode(std::string_view text, std::vector<uint32_t>& out) const override {
    std::string repaired;
    if (first_invalid_utf8(text) >= 0) {
      repaired = repair_utf8(text);
      text = repaired;
    }
    std::vector<int> ids;
    // Encode fails only on an unloaded model, which load_sentencepiece_tokenizer rules out.
    sp_.Encode(text, &ids).IgnoreError();
    for (int id : ids) out.push_back(static_cast<uint32_t>(id));
  }
  std::optional<uint32_t> token_id(std::string_view content) const override {
    int id = sp_.PieceToId(content);
    // PieceToId answers unk for unknown pieces; only an exact piece counts.
    if (id < 0 || sp_.IdToPiece(id) != content) return std::nullopt;
    return static_cast<uint32_t>(id);
  }
  std::optional<uint32_t> bos_id() const override { return bos_; }
  std::optional<uint32_t> eos_id() const override { return eos_; }
  uint64_t vocab_size() const override { return static_cast<uint64_t>(sp_.GetPieceSize()); }
  std::string decode(const std::vector<uint32_t>& ids) const override {
    std::vector<int> v(ids.begin(), ids.end());
    return sp_.DecodeIds(v);
  }

  sentencepiece::SentencePieceProcessor sp_;
  std::optional<uint32_t> bos_;
  std::optional<uint32_t> eos_;
};

std::optional<uint32_t> model_special(int id) {
  if (id < 0) return std::nullopt;
  return static_cast<uint32_t>(id);
}

}  // namespace

base::StatusOr<std::unique_ptr<Tokenizer>> load_sentencepiece_tokenizer(
    const std::string& model_path, const std::string& config_path) {
  auto tok = std::make_unique<SentencePieceTokenizer>();
  auto st = tok->sp_.Load(model_path);
  if (!st.ok()) {
    return base::Status::BadInput(model_path + ": not a SentencePiece model: " + st.ToString());
  }
  tok->bos_ = model_special(tok->sp_.bos_id());
  tok->eos_ = model_special(tok->sp_.eos_id());
  ASSIGN_OR_RETURN(SpecialTokenNames names, read_special_token_names(config_path));
  for (auto [name, slot] :
       {std::make_pair(&names.bos, &tok->bos_), std::make_pair(&names.eos, &tok->eos_)}) {
    if (!name->has_value()) continue;
    *slot = tok->token_id(**name);
    if (!slot->has_value()) {
      return base::Status::BadInput(config_path + ": token \"" + **name + "\" is not in " +
                                    model_path);
    }
  }
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace dstrain::runtime
