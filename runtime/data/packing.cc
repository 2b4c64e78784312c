#include "runtime/data/packing.h"

#include <algorithm>
#include <set>
#include <tuple>
#include <utility>

namespace dstrain::runtime {

void document_pieces(int64_t begin, int64_t end, int64_t seq_len, std::vector<PackPiece>& out) {
  for (int64_t at = begin; end - at >= 2; at += seq_len) {
    out.push_back({at, std::min(seq_len, end - 1 - at)});
  }
}

PackedSequences pack_pieces(const std::vector<PackPiece>& pieces, int64_t seq_len) {
  std::vector<std::vector<PackPiece>> rows;
  // (room left, row index) of rows that can still take a piece; ordered by room, then index.
  std::set<std::pair<int64_t, int64_t>> open;
  for (const PackPiece& piece : pieces) {
    auto fit = open.lower_bound({piece.slots, 0});
    int64_t row;
    int64_t room;
    if (fit == open.end()) {
      row = static_cast<int64_t>(rows.size());
      room = seq_len;
      rows.emplace_back();
    } else {
      std::tie(room, row) = *fit;
      open.erase(fit);
    }
    rows[static_cast<size_t>(row)].push_back(piece);
    room -= piece.slots;
    if (room > 0) open.insert({room, row});
  }
  PackedSequences out;
  out.offsets.reserve(rows.size() + 1);
  out.pieces.reserve(pieces.size());
  for (const auto& row : rows) {
    out.pieces.insert(out.pieces.end(), row.begin(), row.end());
    out.offsets.push_back(static_cast<int64_t>(out.pieces.size()));
  }
  return out;
}

DocumentBoundaries document_boundaries(const std::vector<int64_t>& segment_ids, int64_t rows,
                                       int64_t seq_len) {
  DocumentBoundaries out;
  int64_t start = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t* row = segment_ids.data() + r * seq_len;
    for (int64_t t = 1; t <= seq_len; ++t) {
      if (t < seq_len && row[t] == row[t - 1]) continue;
      const int64_t end = r * seq_len + t;
      out.cu_seqlens.push_back(static_cast<int32_t>(end));
      out.max_seqlen = std::max(out.max_seqlen, end - start);
      start = end;
    }
  }
  return out;
}

}  // namespace dstrain::runtime
