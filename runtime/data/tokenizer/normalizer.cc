#include "runtime/data/tokenizer/normalizer.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>

#include <nlohmann/json.hpp>

namespace dstrain::runtime {
namespace {

bool is_ascii(std::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

}  // namespace

base::StatusOr<Normalizer> Normalizer::parse(const std::string& spec, const std::string& file) {
  nlohmann::json j = nlohmann::json::parse(spec, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return base::Status::BadInput(file + ": normalizer: not valid JSON");
  Normalizer n;
  std::vector<nlohmann::json> todo;
  if (!j.is_null()) todo.push_back(j);
  for (size_t i = 0; i < todo.size(); ++i) {
    const nlohmann::json& step = todo[i];
    std::string type = step.is_object() ? step.value("type", "") : "";
    if (type == "Sequence" && step.contains("normalizers") && step["normalizers"].is_array()) {
      // Keep the order: the Sequence's members replace it where it stands.
      std::vector<nlohmann::json> rest(todo.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                                       todo.end());
      todo.resize(i + 1);
      for (const auto& s : step["normalizers"]) todo.push_back(s);
      todo.insert(todo.end(), rest.begin(), rest.end());
      continue;
    }
    if (type == "NFC") {
      n.forms_.push_back(Form::kNfc);
    } else if (type == "NFD") {
      n.forms_.push_back(Form::kNfd);
    } else if (type == "NFKC") {
      n.forms_.push_back(Form::kNfkc);
    } else if (type == "NFKD") {
      n.forms_.push_back(Form::kNfkd);
    } else {
      return base::Status::BadInput(file + ": normalizer \"" + type +
                                    "\" is not supported (NFC, NFD, NFKC, NFKD, Sequence are)");
    }
  }
  // Fail at load rather than on the first text: ICU's data must be present.
  UErrorCode err = U_ZERO_ERROR;
  icu::Normalizer2::getNFCInstance(err);
  if (U_FAILURE(err)) {
    return base::Status::Internal(std::string("ICU normalizer unavailable: ") + u_errorName(err));
  }
  return n;
}

void Normalizer::apply(std::string_view text, std::string& out) const {
  out.assign(text);
  // Every normal form leaves ASCII as it is; most training text takes this path.
  if (forms_.empty() || is_ascii(text)) return;
  for (Form f : forms_) {
    UErrorCode err = U_ZERO_ERROR;
    const icu::Normalizer2* norm = nullptr;
    switch (f) {
      case Form::kNfc:
        norm = icu::Normalizer2::getNFCInstance(err);
        break;
      case Form::kNfd:
        norm = icu::Normalizer2::getNFDInstance(err);
        break;
      case Form::kNfkc:
        norm = icu::Normalizer2::getNFKCInstance(err);
        break;
      case Form::kNfkd:
        norm = icu::Normalizer2::getNFKDInstance(err);
        break;
    }
    if (U_FAILURE(err) || norm == nullptr) return;  // checked at parse(); text stays as it is
    std::string next;
    icu::StringByteSink<std::string> sink(&next);
    norm->normalizeUTF8(0, icu::StringPiece(out.data(), static_cast<int32_t>(out.size())), sink,
                        nullptr, err);
    if (U_SUCCESS(err)) out.swap(next);
  }
}

}  // namespace dstrain::runtime
