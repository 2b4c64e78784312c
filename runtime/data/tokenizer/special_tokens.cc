#include "runtime/data/tokenizer/special_tokens.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace dstrain::runtime {
namespace {

// A token is written either as its content or as an AddedToken object {"content": ...}.
std::optional<std::string> token_content(const nlohmann::json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return std::nullopt;
}

}  // namespace

base::StatusOr<SpecialTokenNames> read_special_token_names(const std::string& path) {
  SpecialTokenNames names;
  if (path.empty() || !std::filesystem::exists(path)) return names;
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json cfg = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (cfg.is_discarded() || !cfg.is_object()) {
    return base::Status::BadInput(path + ": not a JSON object");
  }
  names.bos = token_content(cfg, "bos_token");
  names.eos = token_content(cfg, "eos_token");
  return names;
}

}  // namespace dstrain::runtime
