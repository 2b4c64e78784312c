#pragma once
// Training samples over a validated TokenFile: fixed windows of a token stream ("tokens"), or
// one prompt/completion document per sample with loss only where the mask says ("sft").
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "runtime/data/token_file.h"

namespace dstrain::runtime {

// Target id that contributes no loss (cross_entropy's ignore_index).
inline constexpr int64_t kIgnoreIndex = -100;

enum class SampleFormat { kTokens, kSft };

// Parses data.format; kInvalidArgument naming the key otherwise.
base::StatusOr<SampleFormat> parse_sample_format(const std::string& text);

// One sequence: input_ids[i] predicts target_ids[i] (kIgnoreIndex: no loss there).
struct Sample {
  std::vector<int64_t> input_ids;   // seq_len ids
  std::vector<int64_t> target_ids;  // seq_len ids or kIgnoreIndex
  int64_t num_targets = 0;          // entries of target_ids that are not kIgnoreIndex
};

// Several samples stacked row-major as [rows, seq_len], ready to become two int64 tensors.
struct Batch {
  int64_t rows = 0;
  int64_t seq_len = 0;
  std::vector<int64_t> input_ids;
  std::vector<int64_t> target_ids;
  int64_t num_targets = 0;
};

class Dataset {
 public:
  struct Options {
    SampleFormat format = SampleFormat::kTokens;
    int64_t seq_len = 0;
    // Input id placed after an sft document's end; any valid id works (its targets are ignored
    // and attention is causal), the tokenizer's pad id reads best.
    uint32_t pad_id = 0;
  };

  // Checks that the file can serve this format: at least one sample; for sft, documents with a
  // mask, each at most seq_len + 1 tokens and with at least one target. Errors are kBadInput
  // naming the file (and the document), or kInvalidArgument for a bad seq_len or pad_id.
  static base::StatusOr<Dataset> create(TokenFile file, Options options);

  int64_t num_samples() const { return num_samples_; }
  int64_t seq_len() const { return options_.seq_len; }
  SampleFormat format() const { return options_.format; }
  const TokenFile& file() const { return file_; }

  // kInternal when index is outside [0, num_samples()).
  base::StatusOr<Sample> sample(int64_t index) const;
  base::StatusOr<Batch> batch(const std::vector<int64_t>& indices) const;

 private:
  Dataset(TokenFile file, Options options, int64_t num_samples)
      : file_(std::move(file)), options_(options), num_samples_(num_samples) {}
  // Writes one sample's seq_len inputs and targets; returns its target count.
  int64_t fill(int64_t index, int64_t* inputs, int64_t* targets) const;

  TokenFile file_;
  Options options_;
  int64_t num_samples_;
};

}  // namespace dstrain::runtime
