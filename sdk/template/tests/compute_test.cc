// Unit tests of the example compute backend, called directly through a TestContext.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "test_context.h"

namespace example {
namespace {

namespace v1 = hci::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::Made;
using testing::Named;
using testing::TestContext;

v1::CreateVmRequest VmRequest(const std::string& name, std::uint32_t vcpus = 1) {
  v1::CreateVmRequest request;
  request.mutable_metadata()->set_name(name);
  request.mutable_spec()->set_vcpus(vcpus);
  request.mutable_spec()->set_memory_mib(256);
  return request;
}

TEST(ComputeTest, CreateIsIdempotentByName) {
  TestContext context;
  auto compute = Made(MakeCompute(context));
  auto first = compute->CreateVm(VmRequest("vm-1"));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->status().phase(), v1::VM_PHASE_STOPPED);
  auto again = compute->CreateVm(VmRequest("vm-1"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->metadata().uid(), first->metadata().uid());

  auto other = compute->CreateVm(VmRequest("vm-1", /*vcpus=*/2));
  EXPECT_EQ(other.status().code(), hci::StatusCode::kAlreadyExists);
  EXPECT_THAT(other.status().message(), HasSubstr("vcpus: 1 -> 2"));
}

TEST(ComputeTest, LifecycleFollowsTheContract) {
  TestContext context;
  auto compute = Made(MakeCompute(context));
  ASSERT_TRUE(compute->CreateVm(VmRequest("vm-1")).ok());

  auto started = compute->StartVm(Named<v1::StartVmRequest>("vm-1"));
  ASSERT_TRUE(started.ok()) << started.status();
  EXPECT_EQ(started->status().phase(), v1::VM_PHASE_RUNNING);
  EXPECT_TRUE(compute->StartVm(Named<v1::StartVmRequest>("vm-1")).ok());  // already running
  EXPECT_EQ(compute->DeleteVm(Named<v1::DeleteVmRequest>("vm-1")).code(),
            hci::StatusCode::kFailedPrecondition);

  auto stopped = compute->StopVm(Named<v1::StopVmRequest>("vm-1"));
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ(stopped->status().phase(), v1::VM_PHASE_STOPPED);
  EXPECT_EQ(stopped->status().reason(), "GuestShutdown");
  EXPECT_THAT(context.recorded().reasons(), ElementsAre("VmPhaseChanged", "VmPhaseChanged",
                                                        "VmPhaseChanged"));  // created, 2 moves

  EXPECT_TRUE(compute->DeleteVm(Named<v1::DeleteVmRequest>("vm-1")).ok());
  EXPECT_TRUE(compute->DeleteVm(Named<v1::DeleteVmRequest>("vm-1")).ok());  // already gone
  EXPECT_EQ(compute->GetVm(Named<v1::GetVmRequest>("vm-1")).status().code(),
            hci::StatusCode::kNotFound);
}

TEST(ComputeTest, ErrorsNameTheField) {
  TestContext context;
  auto compute = Made(MakeCompute(context));
  auto no_cpu = compute->CreateVm(VmRequest("vm-1", /*vcpus=*/0));
  EXPECT_EQ(no_cpu.status().code(), hci::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_cpu.status().message(), HasSubstr("spec.vcpus: 0 is not between 1 and 64"));

  auto uefi = VmRequest("vm-1");
  uefi.mutable_spec()->set_firmware(v1::FIRMWARE_UEFI);
  auto refused = compute->CreateVm(uefi);
  EXPECT_EQ(refused.status().code(), hci::StatusCode::kUnimplemented);
  EXPECT_THAT(refused.status().message(), HasSubstr("spec.firmware: UEFI"));
}

TEST(ComputeTest, DisksMustNameExistingVolumes) {
  TestContext storage_context;
  auto storage = Made(MakeStorage(storage_context));
  TestContext context;
  context.set_storage(storage.get());
  auto compute = Made(MakeCompute(context));
  auto request = VmRequest("vm-1");
  auto* disk = request.mutable_spec()->add_disks();
  disk->set_name("root");
  disk->set_volume("missing");
  auto created = compute->CreateVm(request);
  EXPECT_EQ(created.status().code(), hci::StatusCode::kNotFound);
  EXPECT_THAT(created.status().message(), HasSubstr("spec.disks[0].volume: volume \"missing\""));
}

TEST(ComputeTest, ARunningVmHoldsItsVolumes) {
  TestContext storage_context;
  auto storage = Made(MakeStorage(storage_context));
  v1::CreateVolumeRequest volume;
  volume.mutable_metadata()->set_name("root");
  volume.mutable_spec()->set_size_bytes(1 << 20);
  ASSERT_TRUE(storage->CreateVolume(volume).ok());
  TestContext context;
  context.set_storage(storage.get());
  auto compute = Made(MakeCompute(context));
  auto request = VmRequest("vm-1");
  auto* disk = request.mutable_spec()->add_disks();
  disk->set_name("root");
  disk->set_volume("root");
  ASSERT_TRUE(compute->CreateVm(request).ok());

  ASSERT_TRUE(compute->StartVm(Named<v1::StartVmRequest>("vm-1")).ok());
  EXPECT_EQ(storage->GetVolume(Named<v1::GetVolumeRequest>("root"))->status().attached_to(),
            "vm-1");
  EXPECT_EQ(storage->DeleteVolume(Named<v1::DeleteVolumeRequest>("root")).code(),
            hci::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(compute->StopVm(Named<v1::StopVmRequest>("vm-1")).ok());
  EXPECT_EQ(storage->GetVolume(Named<v1::GetVolumeRequest>("root"))->status().attached_to(), "");
}

TEST(ComputeTest, OptionsAreCheckedByName) {
  TestContext zero(testing::NumberOption("max_vcpus", 0));
  auto made = MakeCompute(zero);
  EXPECT_EQ(made.status().code(), hci::StatusCode::kInvalidArgument);
  EXPECT_THAT(made.status().message(), HasSubstr("options.max_vcpus"));

  TestContext typo(testing::NumberOption("max_vcpu", 2));
  EXPECT_THAT(MakeCompute(typo).status().message(), HasSubstr("options.max_vcpu: unknown option"));

  TestContext small(testing::NumberOption("max_vcpus", 2));
  auto compute = Made(MakeCompute(small));
  EXPECT_EQ(compute->CreateVm(VmRequest("vm-1", /*vcpus=*/3)).status().code(),
            hci::StatusCode::kInvalidArgument);
}

TEST(ComputeTest, UnclaimedOperationsAreUnimplemented) {
  TestContext context;
  auto compute = Made(MakeCompute(context));
  ASSERT_TRUE(compute->CreateVm(VmRequest("vm-1")).ok());
  EXPECT_FALSE(compute->Capabilities().pause());
  EXPECT_EQ(compute->PauseVm(Named<v1::PauseVmRequest>("vm-1")).status().code(),
            hci::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace example
