#pragma once
// The one list of config keys. Each entry names a member of base::Config (its type comes from the
// member), its accepted range or values, and one line of meaning. The loader, the snapshot writer
// (config_to_toml) and the reference in docs/config.md all derive from this list.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "base/config.h"

namespace dstrain::launch {

using IntField = int64_t* (*)(base::Config&);
using FloatField = double* (*)(base::Config&);
using BoolField = bool* (*)(base::Config&);
using StringField = std::string* (*)(base::Config&);
using StringListField = std::vector<std::string>* (*)(base::Config&);
// The alternatives are in KeyType's order.
using Field = std::variant<IntField, FloatField, BoolField, StringField, StringListField>;

enum class KeyType { kInt, kFloat, kBool, kString, kStringList };

struct Bound {
  double value = 0;
  bool inclusive = true;
};

// Accepted interval of a numeric key; a missing side is unbounded.
struct Range {
  std::optional<Bound> lo;
  std::optional<Bound> hi;
};

struct KeySpec {
  std::string_view name;  // "section.key" or "section.table.key"
  Field field;
  Range range;                       // int and float keys
  std::vector<std::string> allowed;  // string keys and string-list elements; empty: any
  std::string_view doc;              // one line of meaning (docs/config.md)

  KeyType type() const { return static_cast<KeyType>(field.index()); }
  // The TOML table holding the key: the name up to its last dot.
  std::string_view table() const { return name.substr(0, name.rfind('.')); }
};

// Keys in document order: sections as in base/config.h, a section's own keys before those of its
// sub-tables, so a snapshot can write each table once.
const std::vector<KeySpec>& config_schema();

// nullptr when `name` is not a key.
const KeySpec* find_key(std::string_view name);
// True for "model" and "model.rope_scaling": names of tables that hold keys.
bool is_table(std::string_view name);
// Tables in schema order: "run", "model", "model.rope_scaling", "data", ...
std::vector<std::string_view> config_tables();
// The key or table name nearest to `name` by edit distance, or empty when none is close.
std::string_view nearest_name(std::string_view name);

// "integer", "float", "boolean", "string", "array of strings".
std::string_view type_name(KeyType type);
// The key's value in `cfg` as a TOML literal: 8, 0.5, 1.0, true, "bf16", ["q", "v"].
std::string format_value(const KeySpec& spec, const base::Config& cfg);
// Shortest text that reads back to the same double ("0.5", "1e-08", "16").
std::string format_number(double v);
// The key's constraint for people: ">= 1", "[0, 1)", "llama, qwen2, mistral"; "any" when none.
std::string describe_constraint(const KeySpec& spec);
// Why the key's value in `cfg` breaks its own range or allowed set, or nullopt when it is fine.
std::optional<std::string> check_value(const KeySpec& spec, const base::Config& cfg);

}  // namespace dstrain::launch
