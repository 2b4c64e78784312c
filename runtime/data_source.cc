#include "runtime/data_source.h"

#include "runtime/data/byte_tokenizer.h"
#include "runtime/data/demo_corpus.h"

namespace dstrain::runtime {
namespace {

// Enough text for a few hundred tiny-model steps before the sampler starts a second epoch.
constexpr int64_t kDemoCorpusBytes = 4 << 20;
constexpr uint64_t kDemoCorpusSeed = 20261123;

base::StatusOr<Dataset> open_dataset(const std::string& path, const std::string& format,
                                     const base::TrainConfig& train,
                                     const base::ModelConfig& model) {
  ASSIGN_OR_RETURN(TokenFile file, TokenFile::open(path));
  if (file.vocab_size() > static_cast<uint64_t>(model.vocab_size)) {
    return base::Status::BadInput(path + ": token ids go up to vocab_size " +
                                  std::to_string(file.vocab_size()) + ", above model.vocab_size " +
                                  std::to_string(model.vocab_size));
  }
  ASSIGN_OR_RETURN(SampleFormat fmt, parse_sample_format(format));
  Dataset::Options options;
  options.format = fmt;
  options.seq_len = train.seq_len;
  options.pad_id = file.vocab_size() == kByteVocabSize ? kBytePad : 0;
  return Dataset::create(std::move(file), options);
}

}  // namespace

base::StatusOr<Dataset> open_train_data(const base::DataConfig& data, const base::TrainConfig& train,
                                        const base::ModelConfig& model) {
  if (!data.path.empty()) return open_dataset(data.path, data.format, train, model);
  if (model.vocab_size < static_cast<int64_t>(kByteVocabSize)) {
    return base::Status::InvalidArgument(
        "model.vocab_size: the built-in demo corpus (data.path empty) needs at least " +
        std::to_string(kByteVocabSize) + ", got " + std::to_string(model.vocab_size));
  }
  std::vector<uint32_t> tokens;
  byte_encode(make_demo_corpus(kDemoCorpusBytes, kDemoCorpusSeed), tokens);
  ASSIGN_OR_RETURN(TokenFile file, TokenFile::from_tokens(tokens, kByteVocabSize, "<demo corpus>"));
  Dataset::Options options;
  options.seq_len = train.seq_len;
  options.pad_id = kBytePad;
  return Dataset::create(std::move(file), options);
}

base::StatusOr<std::optional<Dataset>> open_eval_data(const base::DataConfig& data,
                                                      const base::TrainConfig& train,
                                                      const base::ModelConfig& model) {
  if (data.eval_path.empty()) return std::optional<Dataset>();
  ASSIGN_OR_RETURN(Dataset ds, open_dataset(data.eval_path, data.format, train, model));
  return std::optional<Dataset>(std::move(ds));
}

BatchTensors to_tensors(const Batch& batch, at::Device device) {
  const auto i64 = at::TensorOptions().dtype(at::kLong);
  BatchTensors t;
  t.input_ids = at::from_blob(const_cast<int64_t*>(batch.input_ids.data()),
                              {batch.rows, batch.seq_len}, i64).to(device, /*non_blocking=*/false, /*copy=*/true);
  t.target_ids = at::from_blob(const_cast<int64_t*>(batch.target_ids.data()),
                               {batch.rows, batch.seq_len}, i64).to(device, false, true);
  t.position_ids = at::arange(batch.seq_len, i64.device(device)).unsqueeze(0).expand({batch.rows, batch.seq_len});
  t.num_targets = batch.num_targets;
  return t;
}

}  // namespace dstrain::runtime
