// Unit tests of the example image backend, called directly through a TestContext.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include "test_context.h"

namespace example {
namespace {

namespace fs = std::filesystem;
namespace v1 = hci::v1;
using ::testing::HasSubstr;
using testing::Made;
using testing::Named;
using testing::TestContext;

constexpr auto kWait = std::chrono::seconds(30);

// A source file of `size` bytes in the context's state directory (any absolute path would do).
std::string SourceFile(const TestContext& context, std::uint64_t size) {
  std::string path = context.state_dir() + "/source.img";
  std::ofstream(path, std::ios::binary) << std::string(size, 'x');
  return path;
}

v1::ImportImageRequest ImportRequest(const std::string& name, const std::string& file) {
  v1::ImportImageRequest request;
  request.mutable_metadata()->set_name(name);
  request.mutable_spec()->set_file(file);
  return request;
}

TEST(ImageTest, ImportCopiesTheFileIntoTheStateDir) {
  TestContext context;
  auto image = Made(MakeImage(context));
  const std::uint64_t size = (5 << 20) / 2;  // two and a half chunks
  auto request = ImportRequest("disk", SourceFile(context, size));
  auto op = image->ImportImage(request);
  ASSERT_TRUE(op.ok()) << op.status();
  ASSERT_TRUE(op->Wait(kWait).ok()) << op->Wait(kWait);
  EXPECT_EQ(op->status().progress().done(), size);

  auto got = image->GetImage(Named<v1::GetImageRequest>("disk"));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->status().phase(), v1::IMAGE_PHASE_READY);
  EXPECT_EQ(got->status().virtual_size_bytes(), size);
  EXPECT_EQ(fs::file_size(context.state_dir() + "/images/disk.raw"), size);

  // The same import again is the same operation, not a second copy.
  auto again = image->ImportImage(request);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->id(), op->id());

  ASSERT_TRUE(image->DeleteImage(Named<v1::DeleteImageRequest>("disk")).ok());
  EXPECT_FALSE(fs::exists(context.state_dir() + "/images/disk.raw"));
  EXPECT_TRUE(image->DeleteImage(Named<v1::DeleteImageRequest>("disk")).ok());
}

TEST(ImageTest, DeleteDuringAnImportKeepsNothing) {
  TestContext context;
  auto image = Made(MakeImage(context));
  auto op = image->ImportImage(ImportRequest("big", SourceFile(context, 32 << 20)));
  ASSERT_TRUE(op.ok()) << op.status();
  // Whether the copy finished or was cancelled first, nothing may be left behind.
  ASSERT_TRUE(image->DeleteImage(Named<v1::DeleteImageRequest>("big")).ok());
  EXPECT_TRUE(op->done());
  EXPECT_EQ(image->GetImage(Named<v1::GetImageRequest>("big")).status().code(),
            hci::StatusCode::kNotFound);
  EXPECT_TRUE(fs::is_empty(context.state_dir() + "/images"));
}

TEST(ImageTest, ErrorsNameTheField) {
  TestContext context;
  auto image = Made(MakeImage(context));
  auto missing = image->ImportImage(ImportRequest("disk", "/nonexistent/disk.img"));
  EXPECT_EQ(missing.status().code(), hci::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("spec.file: \"/nonexistent/disk.img\""));

  v1::ImportImageRequest url;
  url.mutable_metadata()->set_name("disk");
  url.mutable_spec()->set_url("https://example.com/disk.img");
  EXPECT_FALSE(image->Capabilities().import_url());
  auto refused = image->ImportImage(url);
  EXPECT_EQ(refused.status().code(), hci::StatusCode::kUnimplemented);
  EXPECT_THAT(refused.status().message(), HasSubstr("spec.url"));
}

}  // namespace
}  // namespace example
