#include "runtime/data/dataset.h"

#include <utility>

namespace dstrain::runtime {
namespace {

base::Status check_sft(const TokenFile& file, int64_t seq_len) {
  auto bad = [&](const std::string& what) {
    return base::Status::BadInput(file.name() + ": " + what);
  };
  if (file.num_docs() == 0) {
    return bad("data.format \"sft\" needs documents (num_docs > 0), the file is a plain stream");
  }
  if (!file.has_mask()) return bad("data.format \"sft\" needs a loss mask (flags bit 0)");
  for (int64_t d = 0; d < file.num_docs(); ++d) {
    int64_t begin = file.doc_begin(d);
    int64_t length = file.doc_end(d) - begin;
    if (length > seq_len + 1) {
      return bad("document " + std::to_string(d) + " has " + std::to_string(length) +
                 " tokens, more than train.seq_len + 1 = " + std::to_string(seq_len + 1) +
                 " (raise train.seq_len or shorten the document)");
    }
    // Token `begin` is never a target: nothing precedes it within the document.
    bool any_target = false;
    for (int64_t i = begin + 1; i < begin + length && !any_target; ++i) {
      any_target = file.predict(i);
    }
    if (!any_target) {
      return bad("document " + std::to_string(d) +
                 " has no token to predict (its mask is 0 after the first token)");
    }
  }
  return base::Status::Ok();
}

}  // namespace

base::StatusOr<SampleFormat> parse_sample_format(const std::string& text) {
  if (text == "tokens") return SampleFormat::kTokens;
  if (text == "sft") return SampleFormat::kSft;
  return base::Status::InvalidArgument("data.format: \"" + text +
                                       "\" is not one of \"tokens\", \"sft\"");
}

base::StatusOr<Dataset> Dataset::create(TokenFile file, Options options) {
  if (options.seq_len < 1) {
    return base::Status::InvalidArgument("train.seq_len must be positive, got " +
                                         std::to_string(options.seq_len));
  }
  if (options.pad_id >= file.vocab_size()) {
    return base::Status::InvalidArgument(file.name() + ": pad id " +
                                         std::to_string(options.pad_id) + " >= vocab_size " +
                                         std::to_string(file.vocab_size()));
  }
  int64_t num_samples;
  if (options.format == SampleFormat::kSft) {
    RETURN_IF_ERROR(check_sft(file, options.seq_len));
    num_samples = file.num_docs();
  } else {
    num_samples = file.num_tokens() > 0 ? (file.num_tokens() - 1) / options.seq_len : 0;
    if (num_samples == 0) {
      return base::Status::BadInput(file.name() + ": " + std::to_string(file.num_tokens()) +
                                    " tokens are fewer than one sample of train.seq_len + 1 = " +
                                    std::to_string(options.seq_len + 1));
    }
  }
  return Dataset(std::move(file), options, num_samples);
}

int64_t Dataset::fill(int64_t index, int64_t* inputs, int64_t* targets) const {
  const int64_t seq_len = options_.seq_len;
  int64_t begin;
  int64_t length;  // tokens that exist, at most seq_len + 1
  if (options_.format == SampleFormat::kSft) {
    begin = file_.doc_begin(index);
    length = file_.doc_end(index) - begin;
  } else {
    begin = index * seq_len;
    length = seq_len + 1;
  }
  int64_t count = 0;
  for (int64_t i = 0; i < seq_len; ++i) {
    bool real_input = i < length;
    inputs[i] = real_input ? file_.token(begin + i) : options_.pad_id;
    bool real_target = i + 1 < length && file_.predict(begin + i + 1);
    targets[i] = real_target ? file_.token(begin + i + 1) : kIgnoreIndex;
    count += real_target ? 1 : 0;
  }
  return count;
}

base::StatusOr<Sample> Dataset::sample(int64_t index) const {
  ASSIGN_OR_RETURN(Batch b, batch({index}));
  return Sample{std::move(b.input_ids), std::move(b.target_ids), b.num_targets};
}

base::StatusOr<Batch> Dataset::batch(const std::vector<int64_t>& indices) const {
  Batch b;
  b.rows = static_cast<int64_t>(indices.size());
  b.seq_len = options_.seq_len;
  b.input_ids.resize(static_cast<size_t>(b.rows * b.seq_len));
  b.target_ids.resize(b.input_ids.size());
  for (size_t r = 0; r < indices.size(); ++r) {
    int64_t index = indices[r];
    if (index < 0 || index >= num_samples_) {
      return base::Status::Internal(file_.name() + ": sample " + std::to_string(index) +
                                    " outside [0, " + std::to_string(num_samples_) + ")");
    }
    size_t at = r * static_cast<size_t>(b.seq_len);
    b.num_targets += fill(index, b.input_ids.data() + at, b.target_ids.data() + at);
  }
  return b;
}

}  // namespace dstrain::runtime
