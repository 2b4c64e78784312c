// load_tokenizer: picks the implementation from the path, and the built-in byte tokenizer.
#include <filesystem>
#include <fstream>

#include "runtime/data/byte_tokenizer.h"
#include "runtime/data/tokenizer/bpe_tokenizer.h"
#include "runtime/data/tokenizer/sentencepiece_tokenizer.h"
#include "runtime/data/tokenizer/tokenizer.h"

namespace dstrain::runtime {
namespace {

namespace fs = std::filesystem;

// byte_tokenizer.h behind the Tokenizer interface: bytes are ids 0..255, then bos, eos, pad.
class ByteTokenizer final : public Tokenizer {
 public:
  void encode(std::string_view text, std::vector<uint32_t>& out) const override {
    out.reserve(out.size() + text.size());
    for (char c : text) out.push_back(static_cast<unsigned char>(c));
  }
  std::optional<uint32_t> token_id(std::string_view content) const override {
    if (content.size() == 1) return static_cast<unsigned char>(content[0]);
    return std::nullopt;
  }
  std::optional<uint32_t> bos_id() const override { return kByteBos; }
  std::optional<uint32_t> eos_id() const override { return kByteEos; }
  uint64_t vocab_size() const override { return kByteVocabSize; }
  std::string decode(const std::vector<uint32_t>& ids) const override {
    std::string out;
    for (uint32_t id : ids) {
      if (id < 256) out.push_back(static_cast<char>(id));
    }
    return out;
  }
};

// A JSON file starts with '{'; a SentencePiece model is a binary protobuf.
bool looks_like_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char c = 0;
  while (in.get(c)) {
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return c == '{';
  }
  return false;
}

}  // namespace

base::StatusOr<std::unique_ptr<Tokenizer>> load_tokenizer(const std::string& path) {
  if (path == "byte") return std::unique_ptr<Tokenizer>(std::make_unique<ByteTokenizer>());
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const std::string config = (fs::path(path) / "tokenizer_config.json").string();
    const std::string json = (fs::path(path) / "tokenizer.json").string();
    const std::string model = (fs::path(path) / "tokenizer.model").string();
    if (fs::exists(json)) {
      auto tok = load_bpe_tokenizer(json, config);
      // Llama 2 style directories carry a SentencePiece-converted tokenizer.json next to the
      // tokenizer.model; the model is the one to read there.
      if (tok.ok() || !fs::exists(model)) return tok;
    }
    if (fs::exists(model)) return load_sentencepiece_tokenizer(model, config);
    return base::Status::BadInput(path + ": holds neither tokenizer.json nor tokenizer.model");
  }
  if (!fs::exists(path, ec)) {
    return base::Status::BadInput(path + ": no such tokenizer file or directory (or \"byte\")");
  }
  const std::string config = (fs::path(path).parent_path() / "tokenizer_config.json").string();
  if (looks_like_json(path)) return load_bpe_tokenizer(path, config);
  return load_sentencepiece_tokenizer(path, config);
}

}  // namespace dstrain::runtime
