#include "launch/config/config_reference.h"

#include "base/config.h"
#include "launch/config/config_schema.h"

namespace dstrain::launch {

std::string config_reference_markdown() {
  const base::Config defaults;
  std::string out;
  for (std::string_view table : config_tables()) {
    out += "### [" + std::string(table) + "]\n\n";
    out += "| Key | Type | Default | Allowed | Meaning |\n";
    out += "|---|---|---|---|---|\n";
    for (const KeySpec& spec : config_schema()) {
      if (spec.table() != table) continue;
      out += "| `" + std::string(spec.name) + "` | " + std::string(type_name(spec.type())) +
             " | `" + format_value(spec, defaults) + "` | " + describe_constraint(spec) + " | " +
             std::string(spec.doc) + " |\n";
    }
    out += "\n";
  }
  return out;
}

}  // namespace dstrain::launch
