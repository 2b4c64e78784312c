#include "launch/config/config_reference.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

#include "launch/config/config_schema.h"

namespace dstrain::launch {
namespace {

constexpr char kBegin[] = "<!-- BEGIN KEYS (generated from launch/config/config_schema.cc) -->\n";
constexpr char kEnd[] = "<!-- END KEYS -->";

TEST(ConfigReference, DocsMatchTheSchema) {
  std::ifstream in(std::string(DSTRAIN_SOURCE_DIR) + "/docs/config.md");
  ASSERT_TRUE(in) << "docs/config.md is missing";
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string doc = buf.str();
  const size_t begin = doc.find(kBegin);
  const size_t end = doc.find(kEnd);
  ASSERT_NE(begin, std::string::npos);
  ASSERT_NE(end, std::string::npos);
  const size_t body = begin + sizeof(kBegin) - 1;
  ASSERT_LE(body, end);
  // On a mismatch the expected text is printed; paste it between the markers.
  EXPECT_EQ(doc.substr(body, end - body), "\n" + config_reference_markdown())
      << "docs/config.md is out of date with the schema";
}

TEST(ConfigReference, EveryKeyHasAMeaning) {
  const std::string ref = config_reference_markdown();
  for (const KeySpec& spec : config_schema()) {
    EXPECT_FALSE(spec.doc.empty()) << spec.name;
    EXPECT_NE(ref.find("| `" + std::string(spec.name) + "` |"), std::string::npos) << spec.name;
  }
}

}  // namespace
}  // namespace dstrain::launch
