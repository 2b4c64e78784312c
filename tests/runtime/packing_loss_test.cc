// Packed sequences (data.packing) against the same documents run one per row: equal loss sums,
// so the block-diagonal mask and the per-document positions leave nothing crossing documents.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>

#include "base/config.h"
#include "runtime/data/dataset.h"
#include "runtime/data_source.h"
#include "runtime/model/init.h"
#include "runtime/model/llama.h"
#include "runtime/model/rope.h"

namespace dstrain::runtime {
namespace {

base::ModelConfig tiny_config() {
  base::ModelConfig cfg;
  cfg.vocab_size = 64;
  cfg.hidden_size = 32;
  cfg.intermediate_size = 48;
  cfg.num_layers = 2;
  cfg.num_heads = 4;
  cfg.num_kv_heads = 2;
  cfg.init_std = 0.2;
  return cfg;
}

// Nine documents of 2..10 tokens; the first third of each is prompt (mask 0).
TokenFile sft_file() {
  std::vector<uint32_t> tokens;
  std::vector<uint64_t> offsets = {0};
  std::vector<uint8_t> mask;
  for (int d = 0; d < 9; ++d) {
    const int length = 2 + (d * 5) % 9;
    for (int i = 0; i < length; ++i) {
      tokens.push_back(static_cast<uint32_t>((d * 17 + i * 7) % 64));
      mask.push_back(i * 3 >= length ? 1 : 0);
    }
    offsets.push_back(tokens.size());
  }
  return std::move(TokenFile::from_tokens(tokens, 64, "docs.dstok", offsets, mask)).value();
}

// Sum of the token cross-entropies of `ids` (all samples of `ds`, in one batch).
double loss_sum(const base::ModelConfig& cfg, const base::UnitList& units,
                const std::vector<std::vector<at::Tensor>>& params, const Dataset& ds,
                const std::vector<int64_t>& ids, int64_t* targets) {
  auto batch = ds.batch(ids);
  EXPECT_TRUE(batch.ok());
  const BatchTensors t = to_tensors(*batch, at::Device(at::kCPU));
  base::StepContext ctx = make_step_context(cfg, t.position_ids, at::kFloat);
  ctx.attn_mask = t.attn_mask;
  const at::Tensor logits = forward_all(units, params, t.input_ids, ctx);
  *targets += t.num_targets;
  return at::cross_entropy_loss(logits.reshape({-1, cfg.vocab_size}), t.target_ids.reshape({-1}),
                                {}, at::Reduction::Sum, kIgnoreIndex)
      .item<double>();
}

void expect_packed_equals_unpacked(const base::ModelConfig& cfg, int64_t seq_len) {
  const base::UnitList units = build_llama(cfg);
  auto params = make_model_params(units, at::TensorOptions().dtype(at::kFloat), 11);
  ASSERT_TRUE(params.ok()) << params.status().to_string();

  Dataset::Options options{SampleFormat::kSft, seq_len};
  auto plain = Dataset::create(sft_file(), options);
  options.packing = true;
  auto packed = Dataset::create(sft_file(), options);
  ASSERT_TRUE(plain.ok() && packed.ok()) << packed.status().to_string();
  ASSERT_LT(packed->num_samples(), plain->num_samples());  // several documents share a row

  int64_t plain_targets = 0;
  double plain_sum = 0.0;
  for (int64_t d = 0; d < plain->num_samples(); ++d) {
    plain_sum += loss_sum(cfg, units, *params, *plain, {d}, &plain_targets);
  }
  std::vector<int64_t> all(static_cast<size_t>(packed->num_samples()));
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
  int64_t packed_targets = 0;
  const double packed_sum = loss_sum(cfg, units, *params, *packed, all, &packed_targets);
  EXPECT_EQ(packed_targets, plain_targets);
  EXPECT_NEAR(packed_sum, plain_sum, 1e-5 * plain_sum);
}

TEST(PackingLoss, PackedBatchEqualsTheSumOfDocumentsRunAlone) {
  expect_packed_equals_unpacked(tiny_config(), 12);
}

TEST(PackingLoss, HoldsWithASlidingWindowAndTiedEmbeddings) {
  base::ModelConfig cfg = tiny_config();
  cfg.sliding_window = 3;
  cfg.tie_embeddings = true;
  expect_packed_equals_unpacked(cfg, 16);
}

TEST(PackingLoss, MaskIsBlockDiagonalAndCausal) {
  const at::Tensor segments = at::tensor({0, 0, 1, 1, 1, 2}, at::kLong).unsqueeze(0);
  const at::Tensor mask = packed_attention_mask(segments);
  ASSERT_EQ(mask.sizes(), (std::vector<int64_t>{1, 1, 6, 6}));
  const at::Tensor want = at::tensor({1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
                                      0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1},
                                     at::kLong)
                              .to(at::kBool)
                              .reshape({1, 1, 6, 6});
  EXPECT_TRUE(mask.equal(want));
}

// The boundaries handed to variable-length attention describe the same blocks as the mask:
// slots i and j may attend (j <= i) exactly when they lie in one [cu[d], cu[d + 1]).
TEST(PackingLoss, DocumentBoundariesDescribeTheMask) {
  Dataset::Options options{SampleFormat::kSft, 12};
  options.packing = true;
  auto ds = Dataset::create(sft_file(), options);
  ASSERT_TRUE(ds.ok()) << ds.status().to_string();
  std::vector<int64_t> ids;
  for (int64_t s = 0; s < ds->num_samples(); ++s) ids.push_back(s);
  auto batch = ds->batch(ids);
  ASSERT_TRUE(batch.ok());
  const BatchTensors t = to_tensors(*batch, at::Device(at::kCPU));
  ASSERT_TRUE(t.cu_seqlens.defined());
  ASSERT_EQ(t.cu_seqlens.scalar_type(), at::kInt);
  const int64_t rows = batch->rows, seq = batch->seq_len;
  // Document index of every flattened slot, from the boundaries alone.
  at::Tensor doc = at::zeros({rows * seq}, at::kLong);
  const at::Tensor cu = t.cu_seqlens.to(at::kLong);
  int64_t longest = 0;
  for (int64_t d = 0; d + 1 < cu.size(0); ++d) {
    const int64_t begin = cu[d].item<int64_t>(), end = cu[d + 1].item<int64_t>();
    doc.narrow(0, begin, end - begin).fill_(d);
    longest = std::max(longest, end - begin);
  }
  EXPECT_EQ(t.max_seqlen, longest);
  doc = doc.view({rows, seq});
  const at::Tensor causal = at::ones({seq, seq}, at::kBool).tril();
  const at::Tensor from_bounds =
      at::logical_and(doc.unsqueeze(2).eq(doc.unsqueeze(1)), causal).unsqueeze(1);
  EXPECT_TRUE(from_bounds.equal(t.attn_mask));
  EXPECT_GT(cu.size(0), rows + 1);  // several documents share a row
}

}  // namespace
}  // namespace dstrain::runtime
