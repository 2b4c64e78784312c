#pragma once
// A host read of a value the device computes, bounded in time: a kernel, or a collective that a
// kernel waits for, that never finishes (a peer rank died or stopped) fails the read instead of
// holding the host in a stream synchronisation forever. Device-generic (c10::Event), so the
// engine stays free of CUDA headers; on the CPU it is a plain read.
#include <ATen/ATen.h>

#include <string>

#include "base/status.h"

namespace dstrain::sharding {

// The value of the one-element tensor `t`, once the work queued so far on the current stream of
// its device has finished; at most `timeout_s` seconds of waiting (0: forever), after which a
// kDistributed status begins with `what`.
base::StatusOr<double> read_scalar(const at::Tensor& t, double timeout_s, const std::string& what);

}  // namespace dstrain::sharding
