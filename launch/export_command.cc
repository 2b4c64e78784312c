// dstrain export --checkpoint DIR --format hf|peft --out DIR: a checkpoint as a Hugging Face
// model directory or a PEFT adapter (docs/cli.md). One process; no MPI.
#include <cstdio>
#include <string>

#include "launch/commands.h"
#include "launch/config/config_loader.h"
#include "runtime/export/checkpoint_reader.h"
#include "runtime/export/exporter.h"

namespace dstrain::launch {

base::Status run_export(const Command& cmd) {
  namespace ex = runtime::exporter;
  // Refused before a possibly large checkpoint is verified.
  RETURN_IF_ERROR(ex::check_output_dir(cmd.out_dir, cmd.force));
  ASSIGN_OR_RETURN(const std::string dir, ex::resolve_checkpoint_dir(cmd.checkpoint_dir));
  ASSIGN_OR_RETURN(const ex::CheckpointReader reader, ex::CheckpointReader::open(dir));
  // The snapshot was valid when the run started; one that no longer parses is a damaged
  // checkpoint, not a usage error.
  const std::string source = dir + "/index.json: config";
  auto cfg = parse_config(reader.index().config_toml, source, {});
  if (!cfg.ok()) return base::Status::BadInput(cfg.status().message());

  ex::ExportOptions options;
  options.format = cmd.export_format == "peft" ? ex::ExportFormat::kPeft : ex::ExportFormat::kHf;
  options.out_dir = cmd.out_dir;
  options.dtype = cmd.export_dtype;
  options.max_shard_bytes = cmd.max_shard_bytes;
  options.merge = cmd.merge;
  options.force = cmd.force;
  ASSIGN_OR_RETURN(const ex::ExportSummary summary, ex::export_checkpoint(reader, *cfg, options));

  std::printf("exported %s (step %lld) as %s%s: %lld tensors, %lld bytes\n", dir.c_str(),
              static_cast<long long>(reader.index().step), cmd.export_format.c_str(),
              summary.merged ? " with LoRA merged" : "", static_cast<long long>(summary.tensors),
              static_cast<long long>(summary.tensor_bytes));
  for (const std::string& f : summary.files)
    std::printf("  %s/%s\n", summary.out_dir.c_str(), f.c_str());
  return base::Status::Ok();
}

}  // namespace dstrain::launch
