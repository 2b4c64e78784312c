#pragma once
// Training samples over a validated TokenFile: fixed windows of a token stream ("tokens"), or
// one prompt/completion document per sample with loss only where the mask says ("sft"); with
// packing, several documents per sample, each attending only to itself.
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "runtime/data/packing.h"
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

// Several samples stacked row-major as [rows, seq_len], ready to become int64 tensors.
struct Batch {
  int64_t rows = 0;
  int64_t seq_len = 0;
  std::vector<int64_t> input_ids;
  std::vector<int64_t> target_ids;
  int64_t num_targets = 0;
  // Packed samples only (empty otherwise: positions 0..seq_len-1, plain causal attention):
  // each slot's position within its document, and which document of the row it belongs to
  // (padding after the last document forms one more), so attention stays within a document.
  std::vector<int64_t> position_ids;
  std::vector<int64_t> segment_ids;
  bool packed() const { return !segment_ids.empty(); }
};

// Which part of a file a Dataset serves when data.eval_fraction holds some of it out.
enum class DataSplit { kAll, kTrain, kHeldOut };

// Whether unit `index` (a document, or a window of a plain stream) is held out: a hash of the
// index alone below `fraction` of the 64-bit range, so the split does not depend on the seed,
// the world size or the other units.
bool is_held_out(int64_t index, double fraction);

class Dataset {
 public:
  struct Options {
    SampleFormat format = SampleFormat::kTokens;
    int64_t seq_len = 0;
    // Input id placed after an sft document's end; any valid id works (its targets are ignored
    // and attention is causal), the tokenizer's pad id reads best.
    uint32_t pad_id = 0;
    // Several documents per sample (data.packing); needs a file with document offsets.
    bool packing = false;
    DataSplit split = DataSplit::kAll;
    double eval_fraction = 0.0;  // in [0, 1); used unless split is kAll
  };

  // Checks that the file can serve this format: at least one sample; for sft, documents with a
  // mask, each at most seq_len + 1 tokens and with at least one target; for packing, documents.
  // Errors are kBadInput naming the file (and the document), or kInvalidArgument for a bad
  // seq_len or pad_id.
  static base::StatusOr<Dataset> create(TokenFile file, Options options);

  int64_t num_samples() const { return num_samples_; }
  int64_t seq_len() const { return options_.seq_len; }
  SampleFormat format() const { return options_.format; }
  const TokenFile& file() const { return file_; }

  // kInternal when index is outside [0, num_samples()).
  base::StatusOr<Sample> sample(int64_t index) const;
  base::StatusOr<Batch> batch(const std::vector<int64_t>& indices) const;

 private:
  Dataset(TokenFile file, Options options) : file_(std::move(file)), options_(options) {}
  // Selects the units (documents or windows) of the split and packs them when asked.
  base::Status index_samples();
  // Writes one sample's seq_len inputs and targets; returns its target count.
  int64_t fill(int64_t index, int64_t* inputs, int64_t* targets) const;
  // The same for a packed sample, plus positions and segments.
  int64_t fill_packed(int64_t index, int64_t* inputs, int64_t* targets, int64_t* positions,
                      int64_t* segments) const;

  TokenFile file_;
  Options options_;
  int64_t num_samples_ = 0;
  // Unpacked with a split: the document (sft) or window (tokens) behind each sample index.
  std::vector<int64_t> units_;
  PackedSequences packed_;  // with packing
};

}  // namespace dstrain::runtime
