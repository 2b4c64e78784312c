#include <algorithm>
#include <cstdio>
#include <thread>

#include "launch/commands.h"
#include "runtime/data/prepare.h"
#include "runtime/data/prepare_chat.h"

namespace dstrain::launch {

base::Status run_prepare(const Command& cmd) {
  runtime::PrepareOptions options;
  options.tokenizer = cmd.tokenizer;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  options.workers = cmd.workers > 0 ? cmd.workers : cores;
  options.progress = true;
  runtime::PrepareStats stats;
  if (cmd.prepare_format == "chat") {
    ASSIGN_OR_RETURN(runtime::ChatFormat format, runtime::parse_chat_format(cmd.chat_template));
    RETURN_IF_ERROR(runtime::prepare_chat_jsonl(cmd.inputs, cmd.output, format, options, &stats));
  } else if (cmd.prepare_format == "sft") {
    RETURN_IF_ERROR(runtime::prepare_sft_jsonl(cmd.inputs, cmd.output, options, &stats));
  } else {
    RETURN_IF_ERROR(runtime::prepare_text(cmd.inputs, cmd.output, options, &stats));
  }
  std::printf("wrote %s: %lld documents, %lld tokens, %lld with loss", cmd.output.c_str(),
              static_cast<long long>(stats.num_docs), static_cast<long long>(stats.num_tokens),
              static_cast<long long>(stats.num_target_tokens));
  if (stats.reused_parts > 0) {
    std::printf(" (%lld of %lld parts reused from an interrupted run)",
                static_cast<long long>(stats.reused_parts),
                static_cast<long long>(stats.num_parts));
  }
  std::printf("\n");
  return base::Status::Ok();
}

}  // namespace dstrain::launch
