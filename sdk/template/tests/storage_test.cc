// Unit tests of the example storage backend, called directly through a TestContext.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "test_context.h"

namespace example {
namespace {

namespace v1 = hci::v1;
using ::testing::HasSubstr;
using testing::Made;
using testing::Named;
using testing::TestContext;

constexpr std::uint64_t kMiB = 1 << 20;

v1::CreateVolumeRequest VolumeRequest(const std::string& name, std::uint64_t size = kMiB) {
  v1::CreateVolumeRequest request;
  request.mutable_metadata()->set_name(name);
  request.mutable_spec()->set_size_bytes(size);
  return request;
}

v1::AttachVolumeRequest Attach(const std::string& name, const std::string& attacher) {
  v1::AttachVolumeRequest request;
  request.set_name(name);
  request.set_attacher(attacher);
  return request;
}

TEST(StorageTest, CreateIsIdempotentAndChecksTheSize) {
  TestContext context;
  auto storage = Made(MakeStorage(context));
  auto first = storage->CreateVolume(VolumeRequest("data"));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->status().phase(), v1::VOLUME_PHASE_AVAILABLE);
  auto again = storage->CreateVolume(VolumeRequest("data"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->metadata().uid(), first->metadata().uid());
  EXPECT_EQ(storage->CreateVolume(VolumeRequest("data", 2 * kMiB)).status().code(),
            hci::StatusCode::kAlreadyExists);

  auto replicated = VolumeRequest("replicated");
  replicated.mutable_spec()->set_replica_count(3);
  EXPECT_THAT(storage->CreateVolume(replicated).status().message(),
              HasSubstr("spec.replica_count: 3"));

  auto odd = storage->CreateVolume(VolumeRequest("odd", 1000));
  EXPECT_EQ(odd.status().code(), hci::StatusCode::kInvalidArgument);
  EXPECT_THAT(odd.status().message(), HasSubstr("spec.size_bytes: 1000"));
}

TEST(StorageTest, CapacityIsAnOption) {
  TestContext context(testing::NumberOption("capacity_bytes", 3 * kMiB));
  auto storage = Made(MakeStorage(context));
  ASSERT_TRUE(storage->CreateVolume(VolumeRequest("a", 2 * kMiB)).ok());
  auto full = storage->CreateVolume(VolumeRequest("b", 2 * kMiB));
  EXPECT_EQ(full.status().code(), hci::StatusCode::kResourceExhausted);
  ASSERT_TRUE(storage->DeleteVolume(Named<v1::DeleteVolumeRequest>("a")).ok());
  EXPECT_TRUE(storage->CreateVolume(VolumeRequest("b", 2 * kMiB)).ok());
}

TEST(StorageTest, AnAttachedVolumeHasOneAttacherAndCannotBeDeleted) {
  TestContext context;
  auto storage = Made(MakeStorage(context));
  ASSERT_TRUE(storage->CreateVolume(VolumeRequest("data")).ok());
  auto info = storage->AttachVolume(Attach("data", "vm-1"));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->blockdev().fields().at("driver").string_value(), "null-co");
  EXPECT_TRUE(storage->AttachVolume(Attach("data", "vm-1")).ok());  // same attacher again
  EXPECT_EQ(storage->AttachVolume(Attach("data", "vm-2")).status().code(),
            hci::StatusCode::kFailedPrecondition);
  EXPECT_EQ(storage->DeleteVolume(Named<v1::DeleteVolumeRequest>("data")).code(),
            hci::StatusCode::kFailedPrecondition);

  v1::DetachVolumeRequest detach;
  detach.set_name("data");
  detach.set_attacher("vm-1");
  ASSERT_TRUE(storage->DetachVolume(detach).ok());
  EXPECT_TRUE(storage->DeleteVolume(Named<v1::DeleteVolumeRequest>("data")).ok());
  EXPECT_TRUE(storage->DeleteVolume(Named<v1::DeleteVolumeRequest>("data")).ok());
}

TEST(StorageTest, MetricsCountVolumes) {
  TestContext context;
  auto storage = Made(MakeStorage(context));
  ASSERT_TRUE(storage->CreateVolume(VolumeRequest("data", 4 * kMiB)).ok());
  auto metrics = storage->Metrics();
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_THAT(*metrics, HasSubstr("hci_example_volumes 1\n"));
  EXPECT_THAT(*metrics, HasSubstr("hci_example_allocated_bytes 4194304\n"));
}

TEST(StorageTest, UnclaimedFeaturesAreUnimplemented) {
  TestContext context;
  auto storage = Made(MakeStorage(context));
  EXPECT_FALSE(storage->Capabilities().clone());
  auto clone = VolumeRequest("copy");
  clone.mutable_spec()->mutable_source()->set_volume("data");
  EXPECT_EQ(storage->CreateVolume(clone).status().code(), hci::StatusCode::kUnimplemented);
  v1::CreateSnapshotRequest snapshot;
  snapshot.set_volume("data");
  snapshot.mutable_metadata()->set_name("snap");
  EXPECT_EQ(storage->CreateSnapshot(snapshot).status().code(), hci::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace example
