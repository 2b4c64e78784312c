#include "runtime/data/packing.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "runtime/data/dataset.h"

namespace dstrain::runtime {
namespace {

// Documents of lengths 3, 5, 2, 4 (ids 10.., 20.., 30.., 40..); prompts are mask 0.
TokenFile sft_file() {
  std::vector<uint32_t> tokens = {10, 11, 12, 20, 21, 22, 23, 24, 30, 31, 40, 41, 42, 43};
  std::vector<uint64_t> offsets = {0, 3, 8, 10, 14};
  std::vector<uint8_t> mask = {0, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 1, 1, 1};
  return std::move(TokenFile::from_tokens(tokens, 100, "sft.dstok", offsets, mask)).value();
}

// `n` documents of lengths 2..9 tokens, ids unique per position, no mask.
TokenFile many_docs(int n) {
  std::vector<uint32_t> tokens;
  std::vector<uint64_t> offsets = {0};
  for (int d = 0; d < n; ++d) {
    for (int i = 0; i < 2 + (d * 7) % 8; ++i)
      tokens.push_back(static_cast<uint32_t>(tokens.size()));
    offsets.push_back(tokens.size());
  }
  return std::move(TokenFile::from_tokens(tokens, 5000, "docs.dstok", offsets)).value();
}

// (input, target, position) triples of every slot with a target, over all samples.
std::multiset<std::tuple<int64_t, int64_t, int64_t>> trained_pairs(const Dataset& ds) {
  std::multiset<std::tuple<int64_t, int64_t, int64_t>> out;
  for (int64_t s = 0; s < ds.num_samples(); ++s) {
    auto b = ds.batch({s});
    EXPECT_TRUE(b.ok());
    for (int64_t i = 0; i < b->seq_len; ++i) {
      if (b->target_ids[i] == kIgnoreIndex) continue;
      int64_t pos = b->packed() ? b->position_ids[i] : i;
      out.insert({b->input_ids[i], b->target_ids[i], pos});
    }
  }
  return out;
}

TEST(Packing, DocumentPiecesShareBoundaryTokens) {
  std::vector<PackPiece> pieces;
  document_pieces(100, 110, 4, pieces);  // 10 tokens, 9 targets
  ASSERT_EQ(pieces.size(), 3u);
  EXPECT_EQ(pieces[0].begin, 100);
  EXPECT_EQ(pieces[0].slots, 4);
  EXPECT_EQ(pieces[1].begin, 104);
  EXPECT_EQ(pieces[1].slots, 4);
  EXPECT_EQ(pieces[2].begin, 108);
  EXPECT_EQ(pieces[2].slots, 1);
  pieces.clear();
  document_pieces(5, 6, 4, pieces);  // one token: nothing to predict
  EXPECT_TRUE(pieces.empty());
}

TEST(Packing, BestFitFillsTheFullestRowThatFits) {
  // Rows of 8: 5 -> row0 (3 left); 6 -> row1 (2 left); 2 -> row1 (fullest fit); 3 -> row0.
  const PackedSequences p = pack_pieces({{0, 5}, {10, 6}, {20, 2}, {30, 3}, {40, 1}}, 8);
  ASSERT_EQ(p.num_sequences(), 3);
  EXPECT_EQ(p.offsets, (std::vector<int64_t>{0, 2, 4, 5}));
  EXPECT_EQ(p.pieces[0].begin, 0);
  EXPECT_EQ(p.pieces[1].begin, 30);
  EXPECT_EQ(p.pieces[2].begin, 10);
  EXPECT_EQ(p.pieces[3].begin, 20);
  EXPECT_EQ(p.pieces[4].begin, 40);
}

TEST(Packing, SftPackedTrainsExactlyWhatUnpackedTrains) {
  Dataset::Options options{SampleFormat::kSft, 6};
  auto plain = Dataset::create(sft_file(), options);
  options.packing = true;
  auto packed = Dataset::create(sft_file(), options);
  ASSERT_TRUE(plain.ok() && packed.ok()) << packed.status().to_string();
  EXPECT_EQ(plain->num_samples(), 4);
  EXPECT_EQ(packed->num_samples(), 2);  // 2 + 4 + 1 + 3 slots in rows of 6
  EXPECT_EQ(trained_pairs(*packed), trained_pairs(*plain));

  auto b = packed->batch({0, 1});
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE(b->packed());
  // Row 0: doc0 (2 slots) + doc1 (4 slots); positions restart, segments change with the doc.
  EXPECT_EQ(std::vector<int64_t>(b->input_ids.begin(), b->input_ids.begin() + 6),
            (std::vector<int64_t>{10, 11, 20, 21, 22, 23}));
  EXPECT_EQ(std::vector<int64_t>(b->position_ids.begin(), b->position_ids.begin() + 6),
            (std::vector<int64_t>{0, 1, 0, 1, 2, 3}));
  EXPECT_EQ(std::vector<int64_t>(b->segment_ids.begin(), b->segment_ids.begin() + 6),
            (std::vector<int64_t>{0, 0, 1, 1, 1, 1}));
  // Row 1: doc2 (1 slot) + doc3 (3 slots) + 2 padding slots in a segment of their own.
  EXPECT_EQ(std::vector<int64_t>(b->segment_ids.begin() + 6, b->segment_ids.end()),
            (std::vector<int64_t>{0, 1, 1, 1, 2, 2}));
  EXPECT_EQ(b->target_ids[10], kIgnoreIndex);
  EXPECT_EQ(b->target_ids[11], kIgnoreIndex);
  EXPECT_EQ(b->num_targets, plain->batch({0, 1, 2, 3})->num_targets);
}

TEST(Packing, LongDocumentsAreCutAndEveryTokenIsPredictedOnce) {
  Dataset::Options options{SampleFormat::kTokens, 4};
  options.packing = true;
  auto ds = Dataset::create(many_docs(40), options);
  ASSERT_TRUE(ds.ok()) << ds.status().to_string();
  const TokenFile& f = ds->file();
  std::multiset<int64_t> targets;
  for (const auto& [input, target, pos] : trained_pairs(*ds)) {
    EXPECT_EQ(target, input + 1);  // never across a document boundary
    EXPECT_LT(pos, 4);
    targets.insert(target);
  }
  std::multiset<int64_t> want;
  for (int64_t d = 0; d < f.num_docs(); ++d) {
    for (int64_t i = f.doc_begin(d) + 1; i < f.doc_end(d); ++i) want.insert(i);
  }
  EXPECT_EQ(targets, want);
  // Packing leaves little room empty: fewer rows than one per piece.
  EXPECT_LT(ds->num_samples() * 4, static_cast<int64_t>(want.size()) + 4 * 8);
}

TEST(Packing, PlainStreamIsBadInput) {
  std::vector<uint32_t> tokens(50, 1);
  auto file = TokenFile::from_tokens(tokens, 10, "stream.dstok");
  Dataset::Options options{SampleFormat::kTokens, 4};
  options.packing = true;
  auto ds = Dataset::create(std::move(file).value(), options);
  ASSERT_FALSE(ds.ok());
  EXPECT_EQ(ds.status().code(), base::StatusCode::kBadInput);
  EXPECT_NE(ds.status().message().find("stream.dstok: data.packing"), std::string::npos);
}

TEST(DataSplit, TrainAndHeldOutPartitionTheDocuments) {
  for (bool packing : {false, true}) {
    Dataset::Options options{SampleFormat::kTokens, 4};
    options.packing = packing;
    options.eval_fraction = 0.25;
    options.split = DataSplit::kTrain;
    auto train = Dataset::create(many_docs(200), options);
    options.split = DataSplit::kHeldOut;
    auto held = Dataset::create(many_docs(200), options);
    options.split = DataSplit::kAll;
    auto all = Dataset::create(many_docs(200), options);
    ASSERT_TRUE(train.ok() && held.ok() && all.ok()) << train.status().to_string();
    auto a = trained_pairs(*train);
    auto b = trained_pairs(*held);
    std::multiset<std::tuple<int64_t, int64_t, int64_t>> both = a;
    both.insert(b.begin(), b.end());
    EXPECT_EQ(both, trained_pairs(*all)) << packing;
    EXPECT_GT(b.size(), trained_pairs(*all).size() / 8) << packing;
    EXPECT_LT(b.size(), trained_pairs(*all).size() / 2) << packing;
  }
  // Documents of the held-out share are chosen by index alone.
  int held = 0;
  for (int64_t d = 0; d < 10000; ++d) held += is_held_out(d, 0.1) ? 1 : 0;
  EXPECT_GT(held, 900);
  EXPECT_LT(held, 1100);
  EXPECT_FALSE(is_held_out(3, 0.0));
}

TEST(DataSplit, SftSplitsWholeDocuments) {
  Dataset::Options options{SampleFormat::kSft, 6};
  options.eval_fraction = 0.5;
  std::multiset<std::tuple<int64_t, int64_t, int64_t>> both;
  int64_t samples = 0;
  for (DataSplit split : {DataSplit::kTrain, DataSplit::kHeldOut}) {
    options.split = split;
    auto ds = Dataset::create(sft_file(), options);
    if (!ds.ok()) continue;  // an empty side is an error, tested below
    samples += ds->num_samples();
    auto pairs = trained_pairs(*ds);
    both.insert(pairs.begin(), pairs.end());
    for (int64_t s = 0; s < ds->num_samples(); ++s) {
      // Each sample is one whole document: its first input is a document's first token.
      const int64_t first = ds->sample(s)->input_ids[0];
      EXPECT_TRUE(first == 10 || first == 20 || first == 30 || first == 40) << first;
    }
  }
  EXPECT_EQ(samples, 4);
  EXPECT_EQ(both, trained_pairs(*Dataset::create(sft_file(), {SampleFormat::kSft, 6})));
}

TEST(DataSplit, EmptySplitIsBadInputNamingTheKey) {
  Dataset::Options options{SampleFormat::kSft, 6};
  options.eval_fraction = 1e-9;
  options.split = DataSplit::kHeldOut;
  auto ds = Dataset::create(sft_file(), options);
  ASSERT_FALSE(ds.ok());
  EXPECT_EQ(ds.status().code(), base::StatusCode::kBadInput);
  EXPECT_NE(ds.status().message().find("data.eval_fraction"), std::string::npos);
}

// Runs of equal segment ids are documents; a row end always closes one, even when the next row
// starts with the same id (every row's first document is segment 0).
TEST(DocumentBoundaries, RunsOfSegmentsLaidEndToEnd) {
  const std::vector<int64_t> segments = {0, 0, 1, 1, 1,   // row 0: lengths 2, 3
                                         0, 1, 1, 1, 2,   // row 1: lengths 1, 3, 1
                                         0, 0, 0, 0, 0};  // row 2: one document of 5
  const DocumentBoundaries docs = document_boundaries(segments, 3, 5);
  EXPECT_EQ(docs.cu_seqlens, (std::vector<int32_t>{0, 2, 5, 6, 9, 10, 15}));
  EXPECT_EQ(docs.max_seqlen, 5);
}

// A packed dataset's batch: every boundary falls where the segment id changes or a row ends,
// and each document's slots share one segment id.
TEST(DocumentBoundaries, MatchThePackedBatchSegments) {
  Dataset::Options options{SampleFormat::kTokens, 8};
  options.packing = true;
  auto ds = Dataset::create(many_docs(20), options);
  ASSERT_TRUE(ds.ok()) << ds.status().to_string();
  std::vector<int64_t> ids;
  for (int64_t s = 0; s < ds->num_samples(); ++s) ids.push_back(s);
  auto b = ds->batch(ids);
  ASSERT_TRUE(b.ok());
  const DocumentBoundaries docs = document_boundaries(b->segment_ids, b->rows, b->seq_len);
  ASSERT_EQ(docs.cu_seqlens.back(), b->rows * b->seq_len);
  std::set<int64_t> starts = {0};
  for (int64_t i = 1; i < b->rows * b->seq_len; ++i) {
    if (i % b->seq_len == 0 || b->segment_ids[i] != b->segment_ids[i - 1]) starts.insert(i);
  }
  EXPECT_EQ(std::set<int64_t>(docs.cu_seqlens.begin(), docs.cu_seqlens.end() - 1), starts);
  int64_t longest = 0;
  for (size_t d = 0; d + 1 < docs.cu_seqlens.size(); ++d) {
    longest = std::max<int64_t>(longest, docs.cu_seqlens[d + 1] - docs.cu_seqlens[d]);
    // Positions restart at each document (RoPE sees each one from 0).
    EXPECT_EQ(b->position_ids[docs.cu_seqlens[d]], 0) << "document " << d;
  }
  EXPECT_EQ(docs.max_seqlen, longest);
  EXPECT_GT(docs.cu_seqlens.size(), static_cast<size_t>(b->rows + 1));  // rows hold several
}

}  // namespace
}  // namespace dstrain::runtime
