#include "runtime/data/dataset.h"

#include <cmath>
#include <utility>

#include "runtime/data/sampler.h"

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

// Keys the split apart from the sampler's streams, which hash the seed and epoch.
constexpr uint64_t kSplitSalt = 0x6576616c5f73706cULL;  // "eval_spl"

std::string split_name(DataSplit split) {
  return split == DataSplit::kTrain ? "training" : "held-out";
}

}  // namespace

bool is_held_out(int64_t index, double fraction) {
  if (!(fraction > 0.0)) return false;
  const double scaled = std::ldexp(fraction, 64);
  if (scaled >= 18446744073709551615.0) return true;
  uint64_t state = static_cast<uint64_t>(index) ^ kSplitSalt;
  return splitmix64_next(state) < static_cast<uint64_t>(scaled);
}

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
  if (options.format == SampleFormat::kSft) {
    RETURN_IF_ERROR(check_sft(file, options.seq_len));
  } else if (options.packing && file.num_docs() == 0) {
    return base::Status::BadInput(file.name() +
                                  ": data.packing needs document offsets, the file is a plain "
                                  "stream (prepare it with `dstrain prepare`)");
  } else if (!options.packing && file.num_tokens() <= options.seq_len) {
    return base::Status::BadInput(file.name() + ": " + std::to_string(file.num_tokens()) +
                                  " tokens are fewer than one sample of train.seq_len + 1 = " +
                                  std::to_string(options.seq_len + 1));
  }
  Dataset ds(std::move(file), options);
  RETURN_IF_ERROR(ds.index_samples());
  return ds;
}

base::Status Dataset::index_samples() {
  const bool documents = options_.packing || options_.format == SampleFormat::kSft;
  const int64_t num_units =
      documents ? file_.num_docs() : (file_.num_tokens() - 1) / options_.seq_len;
  auto wanted = [&](int64_t unit) {
    if (options_.split == DataSplit::kAll) return true;
    return is_held_out(unit, options_.eval_fraction) == (options_.split == DataSplit::kHeldOut);
  };
  if (options_.packing) {
    std::vector<PackPiece> pieces;
    for (int64_t d = 0; d < num_units; ++d) {
      if (wanted(d))
        document_pieces(file_.doc_begin(d), file_.doc_end(d), options_.seq_len, pieces);
    }
    packed_ = pack_pieces(pieces, options_.seq_len);
    num_samples_ = packed_.num_sequences();
  } else if (options_.split == DataSplit::kAll) {
    num_samples_ = num_units;
  } else {
    for (int64_t u = 0; u < num_units; ++u) {
      if (wanted(u)) units_.push_back(u);
    }
    num_samples_ = static_cast<int64_t>(units_.size());
  }
  if (num_samples_ > 0) return base::Status::Ok();
  if (options_.split == DataSplit::kAll) {
    return base::Status::BadInput(file_.name() + ": no document has a token to predict");
  }
  return base::Status::BadInput(
      file_.name() + ": data.eval_fraction = " + std::to_string(options_.eval_fraction) +
      " leaves no " + split_name(options_.split) + " " + (documents ? "document" : "window") +
      " of " + std::to_string(num_units) + " (change data.eval_fraction or use data.eval_path)");
}

int64_t Dataset::fill(int64_t index, int64_t* inputs, int64_t* targets) const {
  const int64_t seq_len = options_.seq_len;
  int64_t begin;
  int64_t length;  // tokens that exist, at most seq_len + 1
  const int64_t unit = units_.empty() ? index : units_[static_cast<size_t>(index)];
  if (options_.format == SampleFormat::kSft) {
    begin = file_.doc_begin(unit);
    length = file_.doc_end(unit) - begin;
  } else {
    begin = unit * seq_len;
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

int64_t Dataset::fill_packed(int64_t index, int64_t* inputs, int64_t* targets, int64_t* positions,
                             int64_t* segments) const {
  const int64_t first = packed_.offsets[static_cast<size_t>(index)];
  const int64_t last = packed_.offsets[static_cast<size_t>(index) + 1];
  int64_t slot = 0;
  int64_t count = 0;
  for (int64_t p = first; p < last; ++p) {
    const PackPiece& piece = packed_.pieces[static_cast<size_t>(p)];
    for (int64_t i = 0; i < piece.slots; ++i, ++slot) {
      inputs[slot] = file_.token(piece.begin + i);
      const bool real_target = file_.predict(piece.begin + i + 1);
      targets[slot] = real_target ? file_.token(piece.begin + i + 1) : kIgnoreIndex;
      count += real_target ? 1 : 0;
      positions[slot] = i;
      segments[slot] = p - first;
    }
  }
  for (int64_t i = 0; slot < options_.seq_len; ++i, ++slot) {
    inputs[slot] = options_.pad_id;
    targets[slot] = kIgnoreIndex;
    positions[slot] = i;
    segments[slot] = last - first;
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
  if (options_.packing) {
    b.position_ids.resize(b.input_ids.size());
    b.segment_ids.resize(b.input_ids.size());
  }
  for (size_t r = 0; r < indices.size(); ++r) {
    int64_t index = indices[r];
    if (index < 0 || index >= num_samples_) {
      return base::Status::Internal(file_.name() + ": sample " + std::to_string(index) +
                                    " outside [0, " + std::to_string(num_samples_) + ")");
    }
    size_t at = r * static_cast<size_t>(b.seq_len);
    b.num_targets += options_.packing
                         ? fill_packed(index, b.input_ids.data() + at, b.target_ids.data() + at,
                                       b.position_ids.data() + at, b.segment_ids.data() + at)
                         : fill(index, b.input_ids.data() + at, b.target_ids.data() + at);
  }
  return b;
}

}  // namespace dstrain::runtime
