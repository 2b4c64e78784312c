#pragma once
// A deterministic English-like corpus made by a small grammar, so `make demo` trains on data the
// project makes itself: regular enough (agreement, fixed sentence shapes, ~200 words) that a
// tiny byte-level model's loss falls clearly within a few dozen steps.
#include <cstdint>
#include <string>

#include "base/status.h"
#include "runtime/data/token_file.h"

namespace dstrain::runtime {

// Exactly num_bytes bytes of text (the last sentence may be cut), a function of seed alone.
std::string make_demo_corpus(int64_t num_bytes, uint64_t seed);

// The corpus as an in-memory byte-level token stream: <bos> + text + <eos>, one document,
// vocab kByteVocabSize, named "demo corpus (seed N)" in messages.
base::StatusOr<TokenFile> make_demo_token_file(int64_t num_bytes, uint64_t seed);

}  // namespace dstrain::runtime
