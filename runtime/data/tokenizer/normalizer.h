#pragma once
// The "normalizer" of a tokenizer.json: Unicode normal forms (ICU), alone or in a Sequence.
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace dstrain::runtime {

class Normalizer {
 public:
  // `spec` is the JSON text of the "normalizer" value (null: none); `file` names it in errors.
  static base::StatusOr<Normalizer> parse(const std::string& spec, const std::string& file);

  bool identity() const { return forms_.empty(); }
  // `text` normalized into `out`; valid UTF-8 in, valid UTF-8 out.
  void apply(std::string_view text, std::string& out) const;

 private:
  enum class Form { kNfc, kNfd, kNfkc, kNfkd };
  std::vector<Form> forms_;
};

}  // namespace dstrain::runtime
