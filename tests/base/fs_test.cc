#include "base/fs.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

namespace dstrain::base {
namespace {

bool exists(const std::string& p) {
  struct stat st {};
  return stat(p.c_str(), &st) == 0;
}

TEST(Fs, MakeDirsThenRemoveTree) {
  const std::string root = "/tmp/dstrain_fs_" + std::to_string(getpid());
  ASSERT_TRUE(make_dirs(root + "/a/b/c").ok());
  ASSERT_TRUE(make_dirs(root + "/a/b/c").ok());  // existing is fine
  std::ofstream(root + "/a/b/file") << "x";
  ASSERT_EQ(symlink("/etc", (root + "/a/link").c_str()), 0);
  ASSERT_TRUE(remove_tree(root).ok());
  EXPECT_FALSE(exists(root));
  EXPECT_TRUE(exists("/etc/passwd"));   // the link was removed, not followed
  EXPECT_TRUE(remove_tree(root).ok());  // missing is fine
}

TEST(Fs, MakeDirsOverAFileIsAnIoErrorNamingThePath) {
  const std::string file = "/tmp/dstrain_fs_file_" + std::to_string(getpid());
  std::ofstream(file) << "x";
  Status st = make_dirs(file + "/sub");
  EXPECT_EQ(st.code(), StatusCode::kIOError);
  EXPECT_NE(st.message().find(file), std::string::npos);
  st = make_dirs(file);
  EXPECT_EQ(st.code(), StatusCode::kIOError);
  unlink(file.c_str());
}

TEST(Fs, ParentDir) {
  EXPECT_EQ(parent_dir("a/b/c.txt"), "a/b");
  EXPECT_EQ(parent_dir("c.txt"), ".");
  EXPECT_EQ(parent_dir("/c"), "/");
}

}  // namespace
}  // namespace dstrain::base
