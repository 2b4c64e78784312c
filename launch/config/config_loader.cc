#include "launch/config/config_loader.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "launch/config/config_schema.h"
#include "launch/config/config_validate.h"

namespace dstrain::launch {
namespace {

constexpr std::string_view kSetOrigin = "--set";

// Where values come from: a file (errors carry the node's line) or a --set (no line).
struct Origin {
  std::string file;
  bool from_set = false;

  std::string at(const toml::source_region& region) const {
    return from_set ? std::string(kSetOrigin) : file + ":" + std::to_string(region.begin.line);
  }
};

base::Status fail(const std::string& where, std::string_view key, const std::string& reason) {
  return base::Status::InvalidArgument(where + ": " + std::string(key) + ": " + reason);
}

std::string a_node_type(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

std::string a_key_type(KeyType type) {
  const std::string name(type_name(type));
  return (name[0] == 'i' || name[0] == 'a' ? "an " : "a ") + name;
}

std::string suggestion(std::string_view name) {
  const std::string_view near = nearest_name(name);
  return near.empty() ? "" : "; did you mean " + std::string(near) + "?";
}

// Stores one TOML value in the key's member. Only the type is checked here; ranges and cross-key
// rules are validate_config_at's, run once every value (file and --set) is in place.
base::Status assign(const KeySpec& spec, const toml::node& node, const Origin& origin,
                    base::Config& cfg) {
  const std::string where = origin.at(node.source());
  auto wrong_type = [&] {
    return fail(where, spec.name,
                "expected " + a_key_type(spec.type()) + ", got " + a_node_type(node));
  };
  switch (spec.type()) {
    case KeyType::kInt:
      if (!node.is_integer()) return wrong_type();
      *std::get<IntField>(spec.field)(cfg) = node.as_integer()->get();
      break;
    case KeyType::kFloat:
      if (node.is_integer()) {
        *std::get<FloatField>(spec.field)(cfg) = static_cast<double>(node.as_integer()->get());
      } else if (node.is_floating_point()) {
        *std::get<FloatField>(spec.field)(cfg) = node.as_floating_point()->get();
      } else {
        return wrong_type();
      }
      break;
    case KeyType::kBool:
      if (!node.is_boolean()) return wrong_type();
      *std::get<BoolField>(spec.field)(cfg) = node.as_boolean()->get();
      break;
    case KeyType::kString:
      if (!node.is_string()) return wrong_type();
      *std::get<StringField>(spec.field)(cfg) = node.as_string()->get();
      break;
    case KeyType::kStringList: {
      if (!node.is_array()) return wrong_type();
      std::vector<std::string> items;
      for (const toml::node& item : *node.as_array()) {
        if (!item.is_string()) {
          return fail(origin.at(item.source()), spec.name,
                      "expected an array of strings, got an element that is " + a_node_type(item));
        }
        items.push_back(item.as_string()->get());
      }
      *std::get<StringListField>(spec.field)(cfg) = std::move(items);
      break;
    }
  }
  return base::Status::Ok();
}

base::Status read_table(const toml::table& table, const std::string& prefix, const Origin& origin,
                        base::Config& cfg, KeyOrigins& origins) {
  for (const auto& [key, node] : table) {
    const std::string name =
        prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
    if (const KeySpec* spec = find_key(name)) {
      RETURN_IF_ERROR(assign(*spec, node, origin, cfg));
      origins[name] = origin.at(node.source());
    } else if (is_table(name)) {
      if (!node.is_table()) {
        return fail(origin.at(node.source()), name, "expected a table, got " + a_node_type(node));
      }
      RETURN_IF_ERROR(read_table(*node.as_table(), name, origin, cfg, origins));
    } else if (prefix.empty()) {
      std::string sections;
      for (std::string_view t : config_tables()) {
        if (t.find('.') == std::string_view::npos)
          sections += (sections.empty() ? "" : ", ") + std::string(t);
      }
      return fail(origin.at(key.source()), name,
                  "unknown section (sections: " + sections + ")" + suggestion(name));
    } else {
      return fail(origin.at(key.source()), name, "unknown key" + suggestion(name));
    }
  }
  return base::Status::Ok();
}

std::string trim(std::string_view s) {
  const size_t begin = s.find_first_not_of(" \t");
  if (begin == std::string_view::npos) return "";
  const size_t end = s.find_last_not_of(" \t");
  return std::string(s.substr(begin, end - begin + 1));
}

// VALUE of a --set as a one-key TOML table {v = VALUE}. Strings may be given bare
// (run.dir=/tmp/x) and string arrays as a bare comma list (lora.targets=q,v); everything else is
// TOML syntax.
base::StatusOr<toml::table> parse_set_value(const KeySpec& spec, const std::string& value) {
  const bool bare = value.empty() || (value[0] != '"' && value[0] != '\'' && value[0] != '[');
  toml::table doc;
  if (bare && spec.type() == KeyType::kString) {
    doc.insert_or_assign("v", value);
    return doc;
  }
  if (bare && spec.type() == KeyType::kStringList) {
    toml::array items;
    for (size_t begin = 0; begin < value.size();) {
      const size_t comma = std::min(value.find(',', begin), value.size());
      items.push_back(trim(std::string_view(value).substr(begin, comma - begin)));
      begin = comma + 1;
    }
    doc.insert_or_assign("v", std::move(items));
    return doc;
  }
  try {
    doc = toml::parse("v = " + value, std::string(kSetOrigin));
  } catch (const toml::parse_error& e) {
    return fail(std::string(kSetOrigin), spec.name,
                "cannot read \"" + value + "\" as " + a_key_type(spec.type()) + ": " +
                    std::string(e.description()));
  }
  if (doc.size() != 1) {
    return fail(
        std::string(kSetOrigin), spec.name,
        "cannot read \"" + value + "\" as " + a_key_type(spec.type()) + ": more than one value");
  }
  return doc;
}

base::Status apply_override(const std::string& text, base::Config& cfg, KeyOrigins& origins) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos) {
    return fail(std::string(kSetOrigin), text, "expected KEY=VALUE");
  }
  const std::string name = trim(std::string_view(text).substr(0, eq));
  const KeySpec* spec = find_key(name);
  if (spec == nullptr) return fail(std::string(kSetOrigin), name, "unknown key" + suggestion(name));
  ASSIGN_OR_RETURN(toml::table doc,
                   parse_set_value(*spec, trim(std::string_view(text).substr(eq + 1))));
  RETURN_IF_ERROR(assign(*spec, *doc.get("v"), Origin{"", true}, cfg));
  origins[name] = std::string(kSetOrigin);
  return base::Status::Ok();
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

base::StatusOr<std::string> read_file(const std::string& path) {
  auto cannot_read = [&] {
    return base::Status::InvalidArgument(path + ": cannot read: " + std::strerror(errno));
  };
  errno = 0;
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) return cannot_read();
  std::string text;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), file.get())) > 0) text.append(buf, n);
  if (std::ferror(file.get())) return cannot_read();
  return text;
}

}  // namespace

base::StatusOr<base::Config> parse_config(std::string_view toml_text,
                                          const std::string& source_name,
                                          const std::vector<std::string>& overrides) {
  base::Config cfg;
  cfg.source = source_name;
  const std::string label = source_name.empty() ? "config" : source_name;
  toml::table root;
  try {
    root = toml::parse(toml_text, label);
  } catch (const toml::parse_error& e) {
    return base::Status::InvalidArgument(label + ":" + std::to_string(e.source().begin.line) +
                                         ": parse error: " + std::string(e.description()));
  }
  KeyOrigins origins;
  RETURN_IF_ERROR(read_table(root, "", Origin{label, false}, cfg, origins));
  for (const std::string& text : overrides) RETURN_IF_ERROR(apply_override(text, cfg, origins));
  RETURN_IF_ERROR(validate_config_at(cfg, origins));
  return cfg;
}

base::StatusOr<base::Config> load_config(const std::string& path,
                                         const std::vector<std::string>& overrides) {
  if (path.empty()) return parse_config("", "", overrides);
  ASSIGN_OR_RETURN(std::string text, read_file(path));
  return parse_config(text, path, overrides);
}

std::string config_to_toml(const base::Config& cfg) {
  std::string out = "# dstrain configuration: every key (docs/config.md)\n";
  std::string_view table;
  for (const KeySpec& spec : config_schema()) {
    if (spec.table() != table) {
      table = spec.table();
      out += "\n[" + std::string(table) + "]\n";
    }
    out += std::string(spec.name.substr(table.size() + 1)) + " = " + format_value(spec, cfg) + "\n";
  }
  return out;
}

}  // namespace dstrain::launch
