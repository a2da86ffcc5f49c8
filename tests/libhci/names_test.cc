#include "hci/names.h"

#include <gtest/gtest.h>

#include <string>

namespace hci {
namespace {

TEST(NamesTest, AcceptsRfc1123Labels) {
  for (const char* name : {"vm-1", "a", "0", "db01", "a-b-c", "x9"}) {
    EXPECT_TRUE(IsValidName(name)) << name;
    EXPECT_TRUE(ValidateName("metadata.name", name).ok()) << name;
  }
  EXPECT_TRUE(IsValidName(std::string(63, 'a')));
}

TEST(NamesTest, RejectsWithFieldAndReason) {
  struct Case {
    std::string name;
    std::string why;
  };
  const Case cases[] = {
      {"../x", "'.' at position 0"},
      {"a/b", "'/' at position 1"},
      {"", "it is empty"},
      {std::string(64, 'a'), "it is 64 characters long"},
      {"Vm1", "uppercase 'V' at position 0"},
      {"vm_1", "'_' at position 2"},
      {"-vm", "'-' at the start"},
      {"vm-", "'-' at the end"},
      {"a b", "' ' at position 1"},
      {std::string("a\nb"), "control character at position 1"},
      {std::string("a\0b", 3), "control character at position 1"},
      {"vm;rm -rf", "';' at position 2"},
  };
  for (const auto& c : cases) {
    EXPECT_FALSE(IsValidName(c.name)) << c.name;
    Status s = ValidateName("spec.disks[0].volume", c.name);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(s.message().find("spec.disks[0].volume: "), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(c.why), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("RFC 1123"), std::string::npos) << s.message();
  }
}

TEST(NamesTest, MessageEscapesControlBytes) {
  Status s = ValidateName("name", std::string("a\x1b[2Jb"));
  EXPECT_NE(s.message().find("\\x1b"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find('\x1b'), std::string::npos);
}

}  // namespace
}  // namespace hci
