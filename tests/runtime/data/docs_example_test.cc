// The numpy writer in docs/data-format.md is what users copy; run it and read its output back.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "runtime/data/token_file.h"
#include "tests/runtime/data/data_test_util.h"

namespace dstrain::runtime {
namespace {

std::string python_block(const std::string& markdown_path) {
  std::ifstream in(markdown_path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  const std::string open = "```python\n";
  size_t begin = text.find(open);
  if (begin == std::string::npos) return "";
  begin += open.size();
  size_t end = text.find("```", begin);
  return end == std::string::npos ? "" : text.substr(begin, end - begin);
}

TEST(DocsExample, NumpyWriterProducesAValidFile) {
  const char* python = std::getenv("DSTRAIN_PYTHON");
  if (python == nullptr || std::string(python).empty() ||
      std::system((std::string(python) + " -c 'import numpy' 2>/dev/null").c_str()) != 0) {
    GTEST_SKIP() << "DSTRAIN_PYTHON with numpy is not available";
  }
  std::string code = python_block(std::string(DSTRAIN_SOURCE_DIR) + "/docs/data-format.md");
  ASSERT_NE(code.find("def write_dstok"), std::string::npos);

  testing::ScratchDir dir;
  code += "\nwrite_dstok('" + dir.file("small.dstok") +
          "', [1, 2, 3, 4, 5], 300, doc_offsets=[0, 2, 5], mask=[0, 1, 0, 1, 1])\n";
  code += "write_dstok('" + dir.file("big.dstok") + "', [70000, 0, 69999], 70001)\n";
  testing::write_file(dir.file("make.py"), code);
  ASSERT_EQ(std::system((std::string(python) + " " + dir.file("make.py")).c_str()), 0);

  auto small = TokenFile::open(dir.file("small.dstok"));
  ASSERT_TRUE(small.ok()) << small.status().to_string();
  EXPECT_EQ(small->token_bytes(), 2u);
  EXPECT_EQ(small->num_docs(), 2);
  EXPECT_EQ(small->doc_begin(1), 2);
  EXPECT_EQ(small->token(4), 5u);
  EXPECT_FALSE(small->predict(2));
  EXPECT_TRUE(small->predict(3));

  auto big = TokenFile::open(dir.file("big.dstok"));
  ASSERT_TRUE(big.ok()) << big.status().to_string();
  EXPECT_EQ(big->token_bytes(), 4u);
  EXPECT_EQ(big->token(0), 70000u);
  EXPECT_FALSE(big->has_mask());
}

}  // namespace
}  // namespace dstrain::runtime
