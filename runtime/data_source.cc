#include "runtime/data_source.h"

#include "runtime/data/byte_tokenizer.h"
#include "runtime/data/demo_corpus.h"

namespace dstrain::runtime {
namespace {

// Enough text for a few hundred tiny-model steps before the sampler starts a second epoch.
constexpr int64_t kDemoCorpusBytes = 4 << 20;
constexpr uint64_t kDemoCorpusSeed = 20261123;

Dataset::Options options_for(const base::DataConfig& data, const base::TrainConfig& train,
                             SampleFormat format, DataSplit split, uint32_t pad_id) {
  Dataset::Options options;
  options.format = format;
  options.seq_len = train.seq_len;
  options.pad_id = pad_id;
  options.packing = data.packing;
  options.split = split;
  options.eval_fraction = data.eval_fraction;
  return options;
}

base::StatusOr<Dataset> open_dataset(const std::string& path, const base::DataConfig& data,
                                     const base::TrainConfig& train, const base::ModelConfig& model,
                                     DataSplit split) {
  ASSIGN_OR_RETURN(TokenFile file, TokenFile::open(path));
  if (file.vocab_size() > static_cast<uint64_t>(model.vocab_size)) {
    return base::Status::BadInput(path + ": token ids go up to vocab_size " +
                                  std::to_string(file.vocab_size()) + ", above model.vocab_size " +
                                  std::to_string(model.vocab_size));
  }
  ASSIGN_OR_RETURN(SampleFormat fmt, parse_sample_format(data.format));
  const uint32_t pad_id = file.vocab_size() == kByteVocabSize ? kBytePad : 0;
  return Dataset::create(std::move(file), options_for(data, train, fmt, split, pad_id));
}

// data.path, or the built-in demo corpus when it is empty; `split` as data.eval_fraction asks.
base::StatusOr<Dataset> open_data(const base::DataConfig& data, const base::TrainConfig& train,
                                  const base::ModelConfig& model, DataSplit split) {
  if (!data.path.empty()) return open_dataset(data.path, data, train, model, split);
  if (model.vocab_size < static_cast<int64_t>(kByteVocabSize)) {
    return base::Status::InvalidArgument(
        "model.vocab_size: the built-in demo corpus (data.path empty) needs at least " +
        std::to_string(kByteVocabSize) + ", got " + std::to_string(model.vocab_size));
  }
  std::vector<uint32_t> tokens;
  byte_encode(make_demo_corpus(kDemoCorpusBytes, kDemoCorpusSeed), tokens);
  ASSIGN_OR_RETURN(TokenFile file, TokenFile::from_tokens(tokens, kByteVocabSize, "<demo corpus>"));
  return Dataset::create(std::move(file),
                         options_for(data, train, SampleFormat::kTokens, split, kBytePad));
}

}  // namespace

base::StatusOr<Dataset> open_train_data(const base::DataConfig& data,
                                        const base::TrainConfig& train,
                                        const base::ModelConfig& model) {
  const bool hold_out = data.eval_path.empty() && data.eval_fraction > 0;
  return open_data(data, train, model, hold_out ? DataSplit::kTrain : DataSplit::kAll);
}

base::StatusOr<std::optional<Dataset>> open_eval_data(const base::DataConfig& data,
                                                      const base::TrainConfig& train,
                                                      const base::ModelConfig& model) {
  if (!data.eval_path.empty()) {
    ASSIGN_OR_RETURN(Dataset ds, open_dataset(data.eval_path, data, train, model, DataSplit::kAll));
    return std::optional<Dataset>(std::move(ds));
  }
  if (data.eval_fraction > 0) {
    ASSIGN_OR_RETURN(Dataset ds, open_data(data, train, model, DataSplit::kHeldOut));
    return std::optional<Dataset>(std::move(ds));
  }
  return std::optional<Dataset>();
}

// Block-diagonal causal mask [B, 1, T, T] (true: attend): a slot sees earlier slots of its own
// segment only.
at::Tensor packed_attention_mask(const at::Tensor& segments) {
  const int64_t seq_len = segments.size(1);
  const at::Tensor same = segments.unsqueeze(2).eq(segments.unsqueeze(1));
  const at::Tensor causal =
      at::ones({seq_len, seq_len}, segments.options().dtype(at::kBool)).tril();
  return at::logical_and(same, causal).unsqueeze(1);
}

BatchTensors to_tensors(const Batch& batch, at::Device device, bool dense_mask) {
  const auto i64 = at::TensorOptions().dtype(at::kLong);
  BatchTensors t;
  t.input_ids =
      at::from_blob(const_cast<int64_t*>(batch.input_ids.data()), {batch.rows, batch.seq_len}, i64)
          .to(device, /*non_blocking=*/false, /*copy=*/true);
  t.target_ids =
      at::from_blob(const_cast<int64_t*>(batch.target_ids.data()), {batch.rows, batch.seq_len}, i64)
          .to(device, false, true);
  if (batch.packed()) {
    t.position_ids = at::from_blob(const_cast<int64_t*>(batch.position_ids.data()),
                                   {batch.rows, batch.seq_len}, i64)
                         .to(device, false, true);
    if (dense_mask) {
      const at::Tensor segments = at::from_blob(const_cast<int64_t*>(batch.segment_ids.data()),
                                                {batch.rows, batch.seq_len}, i64)
                                      .to(device, false, true);
      t.attn_mask = packed_attention_mask(segments);
    }
    const DocumentBoundaries docs =
        document_boundaries(batch.segment_ids, batch.rows, batch.seq_len);
    t.cu_seqlens = at::tensor(docs.cu_seqlens, at::kInt).to(device);
    t.max_seqlen = docs.max_seqlen;
  } else {
    t.position_ids = at::arange(batch.seq_len, i64.device(device))
                         .unsqueeze(0)
                         .expand({batch.rows, batch.seq_len});
  }
  t.num_targets = batch.num_targets;
  return t;
}

}  // namespace dstrain::runtime
