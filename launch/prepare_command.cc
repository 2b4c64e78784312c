#include <cstdio>

#include "launch/commands.h"
#include "runtime/data/prepare.h"

namespace dstrain::launch {

base::Status run_prepare(const Command& cmd) {
  runtime::PrepareStats stats;
  if (cmd.prepare_format == "sft") {
    RETURN_IF_ERROR(runtime::prepare_sft_jsonl(cmd.inputs, cmd.output, &stats));
  } else {
    RETURN_IF_ERROR(runtime::prepare_text(cmd.inputs, cmd.output, &stats));
  }
  std::printf("wrote %s: %lld documents, %lld tokens, %lld with loss\n", cmd.output.c_str(),
              static_cast<long long>(stats.num_docs), static_cast<long long>(stats.num_tokens),
              static_cast<long long>(stats.num_target_tokens));
  return base::Status::Ok();
}

}  // namespace dstrain::launch
