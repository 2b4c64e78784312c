#pragma once
// Packing several documents into each training sequence (data.packing): which pieces of which
// documents share a row. A pure function of the token file and seq_len, computed once, so every
// rank at every world size sees the same packed sequences and the sampler shuffles those.
#include <cstdint>
#include <vector>

namespace dstrain::runtime {

// `slots` consecutive positions of one row taken from one document: inputs are tokens
// [begin, begin + slots), targets tokens [begin + 1, begin + slots] (as the mask allows).
struct PackPiece {
  int64_t begin = 0;
  int64_t slots = 0;
};

// Sequence s holds pieces [offsets[s], offsets[s + 1]) in row order.
struct PackedSequences {
  std::vector<int64_t> offsets = {0};
  std::vector<PackPiece> pieces;
  int64_t num_sequences() const { return static_cast<int64_t>(offsets.size()) - 1; }
};

// Appends the pieces of the document of tokens [begin, end): a document of L tokens has L - 1
// targets, cut into pieces of at most seq_len slots; consecutive pieces share one token (the
// last target of one is the first input of the next), so every target is predicted once. A
// document of fewer than 2 tokens has nothing to predict and adds nothing.
void document_pieces(int64_t begin, int64_t end, int64_t seq_len, std::vector<PackPiece>& out);

// Best fit, in the order given: each piece goes to the sequence with the least room left that
// still holds it (the earliest such sequence on a tie), or opens a new one. Deterministic.
// Precondition: 1 <= piece.slots <= seq_len.
PackedSequences pack_pieces(const std::vector<PackPiece>& pieces, int64_t seq_len);

// Where each document of a packed batch starts and ends once its rows are laid end to end
// (the layout of variable-length attention): document d holds flattened slots
// [cu_seqlens[d], cu_seqlens[d + 1]). A document is a run of equal segment ids within one row
// (the trailing padding of a row is one more run); a row boundary always ends a run.
struct DocumentBoundaries {
  std::vector<int32_t> cu_seqlens = {0};  // [num_docs + 1], last = rows * seq_len
  int64_t max_seqlen = 0;                 // the longest document, in slots
};

// `segment_ids`: rows * seq_len ids, row-major, as Batch carries them. Precondition: rows *
// seq_len fits in int32 (flash attention's offsets).
DocumentBoundaries document_boundaries(const std::vector<int64_t>& segment_ids, int64_t rows,
                                       int64_t seq_len);

}  // namespace dstrain::runtime
