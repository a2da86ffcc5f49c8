// Unit tests of the example backup backend, wired to an example storage backend as a Host would.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>

#include "test_context.h"

namespace example {
namespace {

namespace v1 = hci::v1;
using ::testing::HasSubstr;
using testing::Made;
using testing::Named;
using testing::TestContext;

class BackupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    storage_ = Made(MakeStorage(storage_context_));
    ASSERT_NE(storage_, nullptr);
    context_.set_storage(storage_.get());
    backup_ = Made(MakeBackup(context_));
    ASSERT_NE(backup_, nullptr);
    v1::CreateVolumeRequest volume;
    volume.mutable_metadata()->set_name("data");
    volume.mutable_spec()->set_size_bytes(1 << 20);
    ASSERT_TRUE(storage_->CreateVolume(volume).ok());
    ASSERT_TRUE(backup_->CreateBackupTarget(Target("nfs", "nfs://127.0.0.1/backups")).ok());
  }

  static v1::CreateBackupTargetRequest Target(const std::string& name, const std::string& url) {
    v1::CreateBackupTargetRequest request;
    request.mutable_metadata()->set_name(name);
    request.mutable_spec()->set_url(url);
    return request;
  }

  static v1::CreateBackupRequest Backup(const std::string& name, const std::string& volume) {
    v1::CreateBackupRequest request;
    request.mutable_metadata()->set_name(name);
    request.mutable_spec()->set_target("nfs");
    request.mutable_spec()->set_volume(volume);
    return request;
  }

  TestContext storage_context_;
  TestContext context_;
  std::unique_ptr<hci::StorageBackend> storage_;
  std::unique_ptr<hci::BackupBackend> backup_;
};

TEST_F(BackupTest, BackupsStayOnTheTarget) {
  auto op = backup_->CreateBackup(Backup("b1", "data"));
  ASSERT_TRUE(op.ok()) << op.status();
  ASSERT_TRUE(op->Wait(std::chrono::seconds(30)).ok());
  v1::GetBackupRequest get;
  get.set_target("nfs");
  get.set_name("b1");
  auto got = backup_->GetBackup(get);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->status().phase(), v1::BACKUP_PHASE_COMPLETED);
  EXPECT_EQ(got->status().volume_size_bytes(), 1u << 20);

  // Forgetting the target keeps its backups; registering the same URL again finds them.
  ASSERT_TRUE(backup_->DeleteBackupTarget(Named<v1::DeleteBackupTargetRequest>("nfs")).ok());
  ASSERT_TRUE(backup_->CreateBackupTarget(Target("nfs", "nfs://127.0.0.1/backups")).ok());
  v1::ListBackupsRequest list;
  list.set_target("nfs");
  auto listed = backup_->ListBackups(list);
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->backups_size(), 1);

  v1::DeleteBackupRequest remove;
  remove.set_target("nfs");
  remove.set_name("b1");
  ASSERT_TRUE(backup_->DeleteBackup(remove).ok());
  EXPECT_TRUE(backup_->DeleteBackup(remove).ok());
  EXPECT_EQ(backup_->GetBackup(get).status().code(), hci::StatusCode::kNotFound);
}

TEST_F(BackupTest, ErrorsNameTheField) {
  auto no_volume = backup_->CreateBackup(Backup("b1", "missing"));
  EXPECT_EQ(no_volume.status().code(), hci::StatusCode::kNotFound);
  EXPECT_THAT(no_volume.status().message(), HasSubstr("spec.volume: volume \"missing\""));

  auto no_target = Backup("b1", "data");
  no_target.mutable_spec()->set_target("s3");
  EXPECT_THAT(backup_->CreateBackup(no_target).status().message(),
              HasSubstr("spec.target: backup target \"s3\" does not exist"));

  EXPECT_EQ(backup_->CreateBackupTarget(Target("bad", "not a url")).status().code(),
            hci::StatusCode::kInvalidArgument);
}

TEST_F(BackupTest, UnclaimedOperationsAreUnimplemented) {
  EXPECT_FALSE(backup_->Capabilities().restore());
  v1::RestoreBackupRequest restore;
  restore.set_target("nfs");
  restore.set_backup("b1");
  restore.mutable_volume()->set_name("restored");
  EXPECT_EQ(backup_->RestoreBackup(restore).status().code(), hci::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace example
