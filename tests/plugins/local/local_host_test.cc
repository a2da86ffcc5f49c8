// Integration tests: the real hci_local.so loaded by hci::Host (storage and image bound to
// "local"), against real qemu-img/qemu-io, a real file system and a local HTTP server.
#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "local_test_util.h"

namespace hci::local {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::ElementsAre;
using testing::Entries;
using testing::EventLog;
using testing::FileImageRequest;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using testing::kMiB;
using testing::Listing;
using testing::Named;
using testing::QemuImgInfo;
using testing::QemuIoReads;
using testing::QemuIoWrite;
using testing::RunTool;
using testing::Sha256Of;
using testing::VirtualSize;
using testing::VolumeRequest;

class NullLogSink final : public LogSink {
 public:
  void Write(const LogRecord&) override {}
};

std::string JsonOf(const google::protobuf::Message& m) {
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out);
  return out;
}

class LocalHostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    state_dir_ = testing::MakeTempDir("hci-local-test");
    work_dir_ = testing::MakeTempDir("hci-local-work");
    root_ = state_dir_ + "/plugins/local";
    config_.set_node_name("node-a");
    config_.set_state_dir(state_dir_);
    config_.add_plugin_dirs(HCI_TEST_PLUGIN_DIR);
    config_.mutable_backends()->mutable_storage()->set_plugin("local");
    config_.mutable_backends()->mutable_image()->set_plugin("local");
    Open();
  }
  void TearDown() override {
    // A Subscription must not outlive its Host.
    subscription_.Reset();
    host_.reset();
    std::error_code ec;
    std::filesystem::remove_all(state_dir_, ec);
    std::filesystem::remove_all(work_dir_, ec);
  }

  void Open() {
    HostOptions options;
    options.log_sink = std::make_shared<NullLogSink>();
    auto host = Host::Open(config_, options);
    ASSERT_TRUE(host.ok()) << host.status();
    host_ = std::move(host).MoveValueUnsafe();
    subscription_ = host_->Subscribe(events_.Callback());
    storage_ = *host_->storage();
    image_ = *host_->image();
  }
  void Reopen() {
    subscription_.Reset();
    host_.reset();
    Open();
  }

  std::string VolumePath(const std::string& name) const {
    return root_ + "/volumes/" + name + ".qcow2";
  }
  std::string ImagePath(const std::string& name) const {
    return root_ + "/images/" + name + ".qcow2";
  }

  // A raw image file of `size` bytes with `pattern` in its first 64 KiB.
  std::string MakeRawFile(const std::string& name, std::uint64_t size, int pattern) {
    std::string path = work_dir_ + "/" + name;
    auto r = RunTool({"qemu-img", "create", "-q", "-f", "raw", path, std::to_string(size)});
    EXPECT_TRUE(r.success()) << r.stderr_data;
    QemuIoWrite(path, pattern, 0, "64k", "raw");
    return path;
  }

  // Imports `file` as image `name` and waits for the import; returns the final status.
  Status ImportFile(const std::string& name, const std::string& file,
                    const std::string& sha256 = {}) {
    auto op = image_->ImportImage(FileImageRequest(name, file, sha256));
    if (!op.ok()) return op.status();
    return op->Wait(milliseconds(60000));
  }

  Result<v1::Volume> Create(const v1::CreateVolumeRequest& request) {
    return storage_->CreateVolume(request);
  }

  v1::HostConfig config_;
  std::string state_dir_;
  std::string work_dir_;
  std::string root_;
  EventLog events_;
  Subscription subscription_;
  std::unique_ptr<Host> host_;
  StorageBackend* storage_ = nullptr;
  ImageBackend* image_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Volumes

TEST_F(LocalHostTest, PluginServesStorageAndImage) {
  bool found = false;
  for (const auto& info : host_->plugins()) {
    if (info.name() != "local") continue;
    found = true;
    EXPECT_EQ(info.state(), v1::PLUGIN_STATE_LOADED) << info.reason();
    EXPECT_THAT(info.kinds(), ::testing::UnorderedElementsAre("storage", "image"));
  }
  EXPECT_TRUE(found);
  auto caps = storage_->Capabilities();
  EXPECT_TRUE(caps.snapshots() && caps.revert() && caps.clone() && caps.from_image());
  EXPECT_TRUE(caps.expand());
  EXPECT_FALSE(caps.changed_blocks());
  EXPECT_EQ(image_->Capabilities().stored_format(), v1::IMAGE_FORMAT_QCOW2);
}

TEST_F(LocalHostTest, CreateBlankVolume) {
  auto vol = Create(VolumeRequest("data", 3 * kMiB));
  ASSERT_TRUE(vol.ok()) << vol.status();
  EXPECT_EQ(vol->spec().size_bytes(), 3 * kMiB);
  EXPECT_EQ(vol->status().capacity_bytes(), 3 * kMiB);
  EXPECT_EQ(vol->status().phase(), v1::VOLUME_PHASE_AVAILABLE);
  EXPECT_FALSE(vol->metadata().uid().empty());
  EXPECT_GT(vol->status().actual_size_bytes(), 0u);        // qcow2 metadata
  EXPECT_LT(vol->status().actual_size_bytes(), 3 * kMiB);  // thin

  auto info = QemuImgInfo(VolumePath("data"));
  EXPECT_EQ(info.at("format").as_string(), "qcow2");
  EXPECT_EQ(info.at("virtual-size").as_int64(), static_cast<std::int64_t>(3 * kMiB));
  EXPECT_TRUE(std::filesystem::exists(root_ + "/volumes/data.json"));
  EXPECT_THAT(Entries(root_ + "/tmp"), IsEmpty());

  auto got = storage_->GetVolume(Named<v1::GetVolumeRequest>("data"));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->metadata().uid(), vol->metadata().uid());
  ASSERT_TRUE(events_.WaitFor("VolumeHealthy", "data").has_value());
}

TEST_F(LocalHostTest, CreateIsIdempotentByName) {
  auto request = VolumeRequest("data", kMiB);
  (*request.mutable_metadata()->mutable_labels())["app"] = "db";
  auto first = Create(request);
  ASSERT_TRUE(first.ok()) << first.status();
  for (int i = 0; i < 10; ++i) {
    auto again = Create(request);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->metadata().uid(), first->metadata().uid());
  }
  auto list = storage_->ListVolumes(v1::ListVolumesRequest());
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->volumes_size(), 1);
  v1::ListVolumesRequest selector;
  (*selector.mutable_label_selector())["app"] = "web";
  EXPECT_EQ(storage_->ListVolumes(selector)->volumes_size(), 0);
  EXPECT_THAT(Entries(root_ + "/volumes"), ElementsAre("data.json", "data.qcow2"));
}

TEST_F(LocalHostTest, DifferentSpecIsAlreadyExists) {
  ASSERT_TRUE(Create(VolumeRequest("data", kMiB)).ok());
  auto other = Create(VolumeRequest("data", 2 * kMiB));
  EXPECT_EQ(other.status().code(), StatusCode::kAlreadyExists) << other.status();
  EXPECT_THAT(other.status().message(), HasSubstr("\"data\""));
  EXPECT_EQ(VirtualSize(VolumePath("data")), kMiB);
}

TEST_F(LocalHostTest, MissingVolumeIsNotFoundAndDeleteIsOk) {
  auto got = storage_->GetVolume(Named<v1::GetVolumeRequest>("nope"));
  EXPECT_EQ(got.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(got.status().message(), HasSubstr("\"nope\""));
  EXPECT_TRUE(storage_->DeleteVolume(Named<v1::DeleteVolumeRequest>("nope")).ok());
  v1::AttachVolumeRequest attach;
  attach.set_name("nope");
  attach.set_attacher("vm-1");
  EXPECT_EQ(storage_->AttachVolume(attach).status().code(), StatusCode::kNotFound);
  v1::ExpandVolumeRequest expand;
  expand.set_name("nope");
  expand.set_size_bytes(kMiB);
  EXPECT_EQ(storage_->ExpandVolume(expand).status().code(), StatusCode::kNotFound);
}

TEST_F(LocalHostTest, DeleteRemovesFileAndRecord) {
  ASSERT_TRUE(Create(VolumeRequest("data", kMiB)).ok());
  v1::CreateSnapshotRequest snap;
  snap.set_volume("data");
  snap.mutable_metadata()->set_name("s1");
  ASSERT_TRUE(storage_->CreateSnapshot(snap).ok());
  ASSERT_TRUE(storage_->DeleteVolume(Named<v1::DeleteVolumeRequest>("data")).ok());
  EXPECT_THAT(Entries(root_ + "/volumes"), IsEmpty());
  EXPECT_THAT(Entries(root_ + "/snapshots"), IsEmpty());
  EXPECT_EQ(storage_->GetVolume(Named<v1::GetVolumeRequest>("data")).status().code(),
            StatusCode::kNotFound);
  EXPECT_TRUE(storage_->DeleteVolume(Named<v1::DeleteVolumeRequest>("data")).ok());
}

TEST_F(LocalHostTest, ExpandGrowsAndShrinkIsRefused) {
  ASSERT_TRUE(Create(VolumeRequest("data", kMiB)).ok());
  QemuIoWrite(VolumePath("data"), 0x5a, 0, "64k");
  v1::ExpandVolumeRequest expand;
  expand.set_name("data");
  expand.set_size_bytes(4 * kMiB);
  auto grown = storage_->ExpandVolume(expand);
  ASSERT_TRUE(grown.ok()) << grown.status();
  EXPECT_EQ(grown->spec().size_bytes(), 4 * kMiB);
  EXPECT_EQ(grown->status().capacity_bytes(), 4 * kMiB);
  EXPECT_EQ(VirtualSize(VolumePath("data")), 4 * kMiB);
  EXPECT_TRUE(QemuIoReads(VolumePath("data"), 0x5a, 0, "64k"));

  expand.set_size_bytes(2 * kMiB);
  auto shrink = storage_->ExpandVolume(expand);
  EXPECT_EQ(shrink.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(shrink.status().message(), HasSubstr("size_bytes"));
  expand.set_size_bytes(4 * kMiB + 4095);
  auto odd = storage_->ExpandVolume(expand);
  EXPECT_EQ(odd.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(odd.status().message(), HasSubstr("size_bytes"));
  EXPECT_EQ(VirtualSize(VolumePath("data")), 4 * kMiB);
  // The same size again is a no-op.
  expand.set_size_bytes(4 * kMiB);
  EXPECT_TRUE(storage_->ExpandVolume(expand).ok());
  ASSERT_TRUE(events_.WaitFor("VolumeExpanded", "data").has_value());
}

TEST_F(LocalHostTest, SnapshotRevertRestoresContent) {
  ASSERT_TRUE(Create(VolumeRequest("data", 2 * kMiB)).ok());
  const std::string path = VolumePath("data");
  QemuIoWrite(path, 0xab, 0, "64k");
  v1::CreateSnapshotRequest snap;
  snap.set_volume("data");
  snap.mutable_metadata()->set_name("s1");
  auto s1 = storage_->CreateSnapshot(snap);
  ASSERT_TRUE(s1.ok()) << s1.status();
  EXPECT_TRUE(s1->status().ready_to_use());
  EXPECT_EQ(s1->volume(), "data");
  // Idempotent by name.
  auto again = storage_->CreateSnapshot(snap);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->metadata().uid(), s1->metadata().uid());

  QemuIoWrite(path, 0xcd, 0, "64k");
  EXPECT_TRUE(QemuIoReads(path, 0xcd, 0, "64k"));
  EXPECT_FALSE(QemuIoReads(path, 0xab, 0, "64k"));
  snap.mutable_metadata()->set_name("s2");
  ASSERT_TRUE(storage_->CreateSnapshot(snap).ok());

  auto list = storage_->ListSnapshots([] {
    v1::ListSnapshotsRequest r;
    r.set_volume("data");
    return r;
  }());
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->snapshots_size(), 2);
  EXPECT_EQ(list->snapshots(0).metadata().name(), "s1");
  EXPECT_EQ(list->snapshots(1).metadata().name(), "s2");

  v1::RevertVolumeRequest revert;
  revert.set_volume("data");
  revert.set_snapshot("s1");
  auto reverted = storage_->RevertVolume(revert);
  ASSERT_TRUE(reverted.ok()) << reverted.status();
  EXPECT_TRUE(QemuIoReads(path, 0xab, 0, "64k"));
  EXPECT_FALSE(QemuIoReads(path, 0xcd, 0, "64k"));
  ASSERT_TRUE(events_.WaitFor("VolumeReverted", "data").has_value());

  // Internal snapshots, as qemu-img lists them.
  auto info = QemuImgInfo(path);
  ASSERT_TRUE(info.contains("snapshots"));
  EXPECT_EQ(info.at("snapshots").as_array().size(), 2u);

  v1::DeleteSnapshotRequest del;
  del.set_volume("data");
  del.set_name("s1");
  ASSERT_TRUE(storage_->DeleteSnapshot(del).ok());
  EXPECT_TRUE(storage_->DeleteSnapshot(del).ok());  // already gone
  info = QemuImgInfo(path);
  ASSERT_EQ(info.at("snapshots").as_array().size(), 1u);
  EXPECT_EQ(info.at("snapshots").as_array()[0].at("name").as_string(), "s2");
  EXPECT_THAT(Entries(root_ + "/snapshots/data"), ElementsAre("s2.json"));
  revert.set_snapshot("s1");
  EXPECT_EQ(storage_->RevertVolume(revert).status().code(), StatusCode::kNotFound);
}

TEST_F(LocalHostTest, RevertRestoresTheSizeOfTheSnapshot) {
  ASSERT_TRUE(Create(VolumeRequest("data", kMiB)).ok());
  v1::CreateSnapshotRequest snap;
  snap.set_volume("data");
  snap.mutable_metadata()->set_name("small");
  ASSERT_TRUE(storage_->CreateSnapshot(snap).ok());
  v1::ExpandVolumeRequest expand;
  expand.set_name("data");
  expand.set_size_bytes(2 * kMiB);
  ASSERT_TRUE(storage_->ExpandVolume(expand).ok());
  v1::RevertVolumeRequest revert;
  revert.set_volume("data");
  revert.set_snapshot("small");
  auto reverted = storage_->RevertVolume(revert);
  ASSERT_TRUE(reverted.ok()) << reverted.status();
  EXPECT_EQ(reverted->spec().size_bytes(), kMiB);
  EXPECT_EQ(VirtualSize(VolumePath("data")), kMiB);
}

TEST_F(LocalHostTest, RevertAndSnapshotDeleteNeedADetachedVolume) {
  ASSERT_TRUE(Create(VolumeRequest("data", kMiB)).ok());
  v1::CreateSnapshotRequest snap;
  snap.set_volume("data");
  snap.mutable_metadata()->set_name("s1");
  ASSERT_TRUE(storage_->CreateSnapshot(snap).ok());
  v1::AttachVolumeRequest attach;
  attach.set_name("data");
  attach.set_attacher("vm-1");
  ASSERT_TRUE(storage_->AttachVolume(attach).ok());
  v1::RevertVolumeRequest revert;
  revert.set_volume("data");
  revert.set_snapshot("s1");
  auto r = storage_->RevertVolume(revert);
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("vm-1"));
  v1::DeleteSnapshotRequest del;
  del.set_volume("data");
  del.set_name("s1");
  EXPECT_EQ(storage_->DeleteSnapshot(del).code(), StatusCode::kFailedPrecondition);
  v1::ExpandVolumeRequest expand;
  expand.set_name("data");
  expand.set_size_bytes(2 * kMiB);
  EXPECT_EQ(storage_->ExpandVolume(expand).status().code(), StatusCode::kFailedPrecondition);
  v1::DetachVolumeRequest detach;
  detach.set_name("data");
  detach.set_attacher("vm-1");
  ASSERT_TRUE(storage_->DetachVolume(detach).ok());
  EXPECT_TRUE(storage_->RevertVolume(revert).ok());
  EXPECT_TRUE(storage_->DeleteSnapshot(del).ok());
}

TEST_F(LocalHostTest, CloneFromSnapshotAndFromVolume) {
  ASSERT_TRUE(Create(VolumeRequest("src", 2 * kMiB)).ok());
  QemuIoWrite(VolumePath("src"), 0x11, 0, "64k");
  v1::CreateSnapshotRequest snap;
  snap.set_volume("src");
  snap.mutable_metadata()->set_name("before");
  ASSERT_TRUE(storage_->CreateSnapshot(snap).ok());
  QemuIoWrite(VolumePath("src"), 0x22, 0, "64k");

  auto from_snap = VolumeRequest("from-snap", 0);
  from_snap.mutable_spec()->mutable_source()->mutable_snapshot()->set_volume("src");
  from_snap.mutable_spec()->mutable_source()->mutable_snapshot()->set_snapshot("before");
  auto a = Create(from_snap);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->spec().size_bytes(), 2 * kMiB);  // the snapshot's size
  EXPECT_TRUE(QemuIoReads(VolumePath("from-snap"), 0x11, 0, "64k"));
  EXPECT_TRUE(Create(from_snap).ok());  // the original request again matches

  auto from_vol = VolumeRequest("from-vol", 4 * kMiB);
  from_vol.mutable_spec()->mutable_source()->set_volume("src");
  auto b = Create(from_vol);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->spec().size_bytes(), 4 * kMiB);
  EXPECT_EQ(VirtualSize(VolumePath("from-vol")), 4 * kMiB);
  EXPECT_TRUE(QemuIoReads(VolumePath("from-vol"), 0x22, 0, "64k"));
  // Clones are independent copies: the source can go.
  ASSERT_TRUE(storage_->DeleteVolume(Named<v1::DeleteVolumeRequest>("src")).ok());
  EXPECT_TRUE(QemuIoReads(VolumePath("from-vol"), 0x22, 0, "64k"));
  EXPECT_TRUE(QemuIoReads(VolumePath("from-snap"), 0x11, 0, "64k"));
  EXPECT_FALSE(QemuImgInfo(VolumePath("from-vol")).contains("backing-filename"));
}

TEST_F(LocalHostTest, AttachGivesBlockdevJsonAndOneAttacher) {
  ASSERT_TRUE(Create(VolumeRequest("data", kMiB)).ok());
  QemuIoWrite(VolumePath("data"), 0x42, 0, "64k");
  v1::AttachVolumeRequest attach;
  attach.set_name("data");
  attach.set_attacher("vm-1");
  auto info = storage_->AttachVolume(attach);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->path(), VolumePath("data"));
  boost::system::error_code ec;
  auto blockdev = boost::json::parse(JsonOf(info->blockdev()), ec);
  ASSERT_FALSE(ec);
  auto expected = boost::json::parse(R"({"driver":"qcow2","file":{"driver":"file","filename":")" +
                                     VolumePath("data") + "\"}}");
  EXPECT_EQ(blockdev, expected) << JsonOf(info->blockdev());
  // QEMU opens exactly that.
  EXPECT_TRUE(QemuIoReads("json:" + JsonOf(info->blockdev()), 0x42, 0, "64k", ""));

  auto vol = storage_->GetVolume(Named<v1::GetVolumeRequest>("data"));
  EXPECT_EQ(vol->status().phase(), v1::VOLUME_PHASE_ATTACHED);
  EXPECT_EQ(vol->status().attached_to(), "vm-1");
  EXPECT_TRUE(storage_->AttachVolume(attach).ok());  // same attacher: OK
  attach.set_attacher("vm-2");
  auto second = storage_->AttachVolume(attach);
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("vm-1"));

  v1::DetachVolumeRequest detach;
  detach.set_name("data");
  detach.set_attacher("vm-2");
  EXPECT_TRUE(storage_->DetachVolume(detach).ok());  // not attached to vm-2: no-op
  EXPECT_EQ(storage_->GetVolume(Named<v1::GetVolumeRequest>("data"))->status().attached_to(),
            "vm-1");
  detach.set_attacher("vm-1");
  ASSERT_TRUE(storage_->DetachVolume(detach).ok());
  EXPECT_TRUE(storage_->AttachVolume(attach).ok());  // now vm-2 may
}

TEST_F(LocalHostTest, DeleteWhileAttachedIsRefused) {
  ASSERT_TRUE(Create(VolumeRequest("data", kMiB)).ok());
  v1::AttachVolumeRequest attach;
  attach.set_name("data");
  attach.set_attacher("vm-1");
  ASSERT_TRUE(storage_->AttachVolume(attach).ok());
  auto before = Listing(state_dir_);
  Status s = storage_->DeleteVolume(Named<v1::DeleteVolumeRequest>("data"));
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("vm-1"));
  EXPECT_EQ(Listing(state_dir_), before);
  v1::DetachVolumeRequest detach;
  detach.set_name("data");
  detach.set_attacher("vm-1");
  ASSERT_TRUE(storage_->DetachVolume(detach).ok());
  EXPECT_TRUE(storage_->DeleteVolume(Named<v1::DeleteVolumeRequest>("data")).ok());
  EXPECT_FALSE(std::filesystem::exists(VolumePath("data")));
}

// ---------------------------------------------------------------------------------------------
// Volumes from images

TEST_F(LocalHostTest, LinkedCloneAndFullCopyFromImage) {
  std::string raw = MakeRawFile("base.raw", 4 * kMiB, 0x77);
  ASSERT_TRUE(ImportFile("base", raw).ok());

  auto linked = VolumeRequest("linked", 0);
  linked.mutable_spec()->mutable_source()->set_image("base");
  linked.mutable_spec()->set_linked_clone(true);
  auto a = Create(linked);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->spec().size_bytes(), 4 * kMiB);
  auto info = QemuImgInfo(VolumePath("linked"));
  ASSERT_TRUE(info.contains("backing-filename")) << boost::json::serialize(info);
  EXPECT_EQ(info.at("backing-filename").as_string(), ImagePath("base"));
  EXPECT_EQ(info.at("backing-filename-format").as_string(), "qcow2");
  EXPECT_TRUE(QemuIoReads(VolumePath("linked"), 0x77, 0, "64k"));
  // Writes go to the clone, never to the image.
  QemuIoWrite(VolumePath("linked"), 0x78, 0, "64k");
  EXPECT_TRUE(QemuIoReads(ImagePath("base"), 0x77, 0, "64k"));

  auto copy = VolumeRequest("copy", 8 * kMiB);
  copy.mutable_spec()->mutable_source()->set_image("base");
  auto b = Create(copy);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(VirtualSize(VolumePath("copy")), 8 * kMiB);
  EXPECT_FALSE(QemuImgInfo(VolumePath("copy")).contains("backing-filename"));
  EXPECT_TRUE(QemuIoReads(VolumePath("copy"), 0x77, 0, "64k"));

  auto small = VolumeRequest("small", kMiB);
  small.mutable_spec()->mutable_source()->set_image("base");
  auto c = Create(small);
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("spec.size_bytes"));
}

TEST_F(LocalHostTest, DeleteImageInUseIsRefusedNamingTheVolume) {
  std::string raw = MakeRawFile("base.raw", kMiB, 0x01);
  ASSERT_TRUE(ImportFile("base", raw).ok());
  auto copy = VolumeRequest("disk-1", 0);
  copy.mutable_spec()->mutable_source()->set_image("base");
  ASSERT_TRUE(Create(copy).ok());
  auto linked = VolumeRequest("disk-2", 0);
  linked.mutable_spec()->mutable_source()->set_image("base");
  linked.mutable_spec()->set_linked_clone(true);
  ASSERT_TRUE(Create(linked).ok());

  auto before = Listing(state_dir_);
  Status s = image_->DeleteImage(Named<v1::DeleteImageRequest>("base"));
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("\"disk-1\""));
  EXPECT_THAT(s.message(), HasSubstr("\"disk-2\""));
  EXPECT_EQ(Listing(state_dir_), before);

  ASSERT_TRUE(storage_->DeleteVolume(Named<v1::DeleteVolumeRequest>("disk-1")).ok());
  s = image_->DeleteImage(Named<v1::DeleteImageRequest>("base"));
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("\"disk-2\""));
  ASSERT_TRUE(storage_->DeleteVolume(Named<v1::DeleteVolumeRequest>("disk-2")).ok());
  ASSERT_TRUE(image_->DeleteImage(Named<v1::DeleteImageRequest>("base")).ok());
  EXPECT_THAT(Entries(root_ + "/images"), IsEmpty());
  EXPECT_EQ(image_->GetImage(Named<v1::GetImageRequest>("base")).status().code(),
            StatusCode::kNotFound);
  EXPECT_TRUE(image_->DeleteImage(Named<v1::DeleteImageRequest>("base")).ok());
  ASSERT_TRUE(events_.WaitFor("ImageDeleted", "base").has_value());
}

// ---------------------------------------------------------------------------------------------
// Persistence

TEST_F(LocalHostTest, ReopenedHostFindsVolumesSnapshotsAndImages) {
  std::string raw = MakeRawFile("base.raw", kMiB, 0x09);
  ASSERT_TRUE(ImportFile("base", raw).ok());
  auto image_before = image_->GetImage(Named<v1::GetImageRequest>("base"));
  ASSERT_TRUE(image_before.ok());
  ASSERT_TRUE(Create(VolumeRequest("blank", kMiB)).ok());
  auto linked = VolumeRequest("linked", 0);
  linked.mutable_spec()->mutable_source()->set_image("base");
  linked.mutable_spec()->set_linked_clone(true);
  ASSERT_TRUE(Create(linked).ok());
  v1::CreateSnapshotRequest snap;
  snap.set_volume("blank");
  snap.mutable_metadata()->set_name("s1");
  ASSERT_TRUE(storage_->CreateSnapshot(snap).ok());
  snap.mutable_metadata()->set_name("s2");
  ASSERT_TRUE(storage_->CreateSnapshot(snap).ok());
  v1::AttachVolumeRequest attach;
  attach.set_name("linked");
  attach.set_attacher("vm-1");
  ASSERT_TRUE(storage_->AttachVolume(attach).ok());
  auto volumes_before = storage_->ListVolumes(v1::ListVolumesRequest());
  ASSERT_TRUE(volumes_before.ok());

  Reopen();

  auto volumes = storage_->ListVolumes(v1::ListVolumesRequest());
  ASSERT_TRUE(volumes.ok()) << volumes.status();
  ASSERT_EQ(volumes->volumes_size(), 2);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(volumes->volumes(i).metadata().name(), volumes_before->volumes(i).metadata().name());
    EXPECT_EQ(volumes->volumes(i).metadata().uid(), volumes_before->volumes(i).metadata().uid());
    EXPECT_EQ(volumes->volumes(i).spec().size_bytes(), kMiB);
  }
  auto vol = storage_->GetVolume(Named<v1::GetVolumeRequest>("linked"));
  EXPECT_EQ(vol->status().attached_to(), "vm-1");
  auto snaps = storage_->ListSnapshots([] {
    v1::ListSnapshotsRequest r;
    r.set_volume("blank");
    return r;
  }());
  ASSERT_TRUE(snaps.ok());
  ASSERT_EQ(snaps->snapshots_size(), 2);
  EXPECT_EQ(snaps->snapshots(0).metadata().name(), "s1");
  EXPECT_EQ(snaps->snapshots(1).metadata().name(), "s2");
  auto images = image_->ListImages(v1::ListImagesRequest());
  ASSERT_TRUE(images.ok());
  ASSERT_EQ(images->images_size(), 1);
  EXPECT_EQ(images->images(0).metadata().uid(), image_before->metadata().uid());
  EXPECT_EQ(images->images(0).status().phase(), v1::IMAGE_PHASE_READY);
  EXPECT_EQ(images->images(0).status().sha256(), image_before->status().sha256());
  // Still in use after the restart.
  EXPECT_EQ(image_->DeleteImage(Named<v1::DeleteImageRequest>("base")).code(),
            StatusCode::kFailedPrecondition);
  // Importing the same spec again is the finished import; a clone of a reloaded snapshot works.
  auto op = image_->ImportImage(FileImageRequest("base", raw));
  ASSERT_TRUE(op.ok()) << op.status();
  EXPECT_TRUE(op->done());
  EXPECT_TRUE(op->Wait(milliseconds(0)).ok());
  auto clone = VolumeRequest("clone", 0);
  clone.mutable_spec()->mutable_source()->mutable_snapshot()->set_volume("blank");
  clone.mutable_spec()->mutable_source()->mutable_snapshot()->set_snapshot("s1");
  EXPECT_TRUE(Create(clone).ok());
}

// ---------------------------------------------------------------------------------------------
// Bad input

TEST_F(LocalHostTest, BadInputChangesNothingOnDisk) {
  ASSERT_TRUE(Create(VolumeRequest("src", 2 * kMiB)).ok());
  const auto before = Listing(state_dir_);

  struct Case {
    std::string what;
    v1::CreateVolumeRequest request;
    StatusCode code;
    std::string field;
  };
  std::vector<Case> cases;
  cases.push_back(
      {"size 4095", VolumeRequest("a", 4095), StatusCode::kInvalidArgument, "spec.size_bytes"});
  cases.push_back({"size 0 for a blank volume", VolumeRequest("a", 0), StatusCode::kInvalidArgument,
                   "spec.size_bytes"});
  cases.push_back(
      {"name ../x", VolumeRequest("../x", kMiB), StatusCode::kInvalidArgument, "metadata.name"});
  cases.push_back({"too large", VolumeRequest("a", 1ull << 60), StatusCode::kInvalidArgument,
                   "spec.size_bytes"});
  {
    auto r = VolumeRequest("a", 0);
    r.mutable_spec()->mutable_source()->set_volume("missing");
    cases.push_back({"missing source volume", r, StatusCode::kNotFound, "spec.source.volume"});
  }
  {
    auto r = VolumeRequest("a", 0);
    r.mutable_spec()->mutable_source()->set_image("missing");
    cases.push_back({"missing image", r, StatusCode::kNotFound, "spec.source.image"});
  }
  {
    auto r = VolumeRequest("a", 0);
    r.mutable_spec()->mutable_source()->mutable_snapshot()->set_volume("src");
    r.mutable_spec()->mutable_source()->mutable_snapshot()->set_snapshot("missing");
    cases.push_back(
        {"missing snapshot", r, StatusCode::kNotFound, "spec.source.snapshot.snapshot"});
  }
  {
    auto r = VolumeRequest("a", kMiB);
    r.mutable_spec()->mutable_source()->set_volume("src");
    cases.push_back(
        {"smaller than the source", r, StatusCode::kInvalidArgument, "spec.size_bytes"});
  }
  {
    auto r = VolumeRequest("a", kMiB);
    r.mutable_spec()->set_linked_clone(true);
    cases.push_back(
        {"linked clone of nothing", r, StatusCode::kInvalidArgument, "spec.linked_clone"});
  }
  {
    auto r = VolumeRequest("a", kMiB);
    r.mutable_spec()->set_replica_count(3);
    cases.push_back({"three replicas", r, StatusCode::kInvalidArgument, "spec.replica_count"});
  }
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    auto r = Create(c.request);
    EXPECT_EQ(r.status().code(), c.code) << r.status();
    EXPECT_THAT(r.status().message(), HasSubstr(c.field));
    EXPECT_EQ(Listing(state_dir_), before);
  }

  auto missing_file = image_->ImportImage(FileImageRequest("img", work_dir_ + "/missing.raw"));
  EXPECT_EQ(missing_file.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing_file.status().message(), HasSubstr("spec.file"));
  auto relative = image_->ImportImage(FileImageRequest("img", "relative.raw"));
  EXPECT_EQ(relative.status().code(), StatusCode::kInvalidArgument);
  auto bad_sha = image_->ImportImage(FileImageRequest("img", "/etc/hostname", "ABC"));
  EXPECT_EQ(bad_sha.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_sha.status().message(), HasSubstr("spec.sha256"));
  auto dir = image_->ImportImage(FileImageRequest("img", work_dir_));
  EXPECT_EQ(dir.status().code(), StatusCode::kInvalidArgument);
  v1::ImportImageRequest ftp;
  ftp.mutable_metadata()->set_name("img");
  ftp.mutable_spec()->set_url("ftp://127.0.0.1/x.img");
  EXPECT_EQ(image_->ImportImage(ftp).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(image_->GetImage(Named<v1::GetImageRequest>("img")).status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(Listing(state_dir_), before);
}

// ---------------------------------------------------------------------------------------------
// Image import

TEST_F(LocalHostTest, ImportRawFileStoresQcow2) {
  std::string raw = MakeRawFile("disk.raw", 6 * kMiB, 0x3c);
  std::string sha = Sha256Of(raw);
  auto op = image_->ImportImage(FileImageRequest("disk", raw, sha));
  ASSERT_TRUE(op.ok()) << op.status();
  ASSERT_TRUE(op->Wait(milliseconds(60000)).ok()) << op->status().error();
  auto img = image_->GetImage(Named<v1::GetImageRequest>("disk"));
  ASSERT_TRUE(img.ok());
  EXPECT_EQ(img->status().phase(), v1::IMAGE_PHASE_READY);
  EXPECT_EQ(img->status().sha256(), sha);
  EXPECT_EQ(img->status().source_format(), v1::IMAGE_FORMAT_RAW);
  EXPECT_EQ(img->status().stored_format(), v1::IMAGE_FORMAT_QCOW2);
  EXPECT_EQ(img->status().virtual_size_bytes(), 6 * kMiB);
  EXPECT_GT(img->status().actual_size_bytes(), 0u);
  EXPECT_EQ(op->status().progress().done(), 6 * kMiB);
  auto info = QemuImgInfo(ImagePath("disk"));
  EXPECT_EQ(info.at("format").as_string(), "qcow2");
  EXPECT_TRUE(QemuIoReads(ImagePath("disk"), 0x3c, 0, "64k"));
  EXPECT_THAT(Entries(root_ + "/tmp"), IsEmpty());
  EXPECT_THAT(Entries(root_ + "/images"), ElementsAre("disk.json", "disk.qcow2"));
  auto event = events_.WaitFor("ImageImported", "disk");
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(event->operation_id(), op->id());

  // The same spec again: the same (finished) operation; another spec: AlreadyExists.
  auto again = image_->ImportImage(FileImageRequest("disk", raw, sha));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->id(), op->id());
  auto other = image_->ImportImage(FileImageRequest("disk", raw));
  EXPECT_EQ(other.status().code(), StatusCode::kAlreadyExists);
}

TEST_F(LocalHostTest, ImportQcow2FileKeepsItAndRefusesBackingFiles) {
  std::string qcow2 = work_dir_ + "/disk.qcow2";
  ASSERT_TRUE(RunTool({"qemu-img", "create", "-q", "-f", "qcow2", qcow2, "2M"}).success());
  QemuIoWrite(qcow2, 0x61, 0, "64k");
  ASSERT_TRUE(ImportFile("disk", qcow2).ok());
  auto img = image_->GetImage(Named<v1::GetImageRequest>("disk"));
  EXPECT_EQ(img->status().source_format(), v1::IMAGE_FORMAT_QCOW2);
  EXPECT_EQ(img->status().virtual_size_bytes(), 2 * kMiB);
  EXPECT_EQ(Sha256Of(ImagePath("disk")), Sha256Of(qcow2));  // stored as received

  // A qcow2 naming a backing file on the host would make the import read that file.
  std::string overlay = work_dir_ + "/overlay.qcow2";
  ASSERT_TRUE(
      RunTool({"qemu-img", "create", "-q", "-f", "qcow2", "-b", qcow2, "-F", "qcow2", overlay})
          .success());
  Status s = ImportFile("overlay", overlay);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("backing file"));
  EXPECT_EQ(image_->GetImage(Named<v1::GetImageRequest>("overlay"))->status().phase(),
            v1::IMAGE_PHASE_FAILED);
  EXPECT_THAT(Entries(root_ + "/images"), ElementsAre("disk.json", "disk.qcow2"));
  EXPECT_THAT(Entries(root_ + "/tmp"), IsEmpty());
}

class LocalHttpTest : public LocalHostTest {
 protected:
  void SetUp() override {
    LocalHostTest::SetUp();
    serve_dir_ = work_dir_ + "/www";
    std::filesystem::create_directory(serve_dir_);
    server_ = std::make_unique<testing::HttpServer>(serve_dir_);
    ASSERT_TRUE(server_->running());
  }
  void TearDown() override {
    server_.reset();
    LocalHostTest::TearDown();
  }

  v1::ImportImageRequest UrlRequest(const std::string& name, const std::string& file,
                                    const std::string& sha256 = {}) {
    v1::ImportImageRequest r;
    r.mutable_metadata()->set_name(name);
    r.mutable_spec()->set_url(server_->Url(file));
    r.mutable_spec()->set_sha256(sha256);
    return r;
  }

  // Reopens the Host with imports throttled to 1 MiB/s and serves a 256 MiB sparse big.raw: an
  // import of it would take minutes.
  void ServeSlowBigFile() {
    subscription_.Reset();
    host_.reset();
    google::protobuf::Struct options;
    (*options.mutable_fields())["max_bytes_per_second"].set_number_value(1 << 20);
    *config_.mutable_backends()->mutable_image()->mutable_options() = options;
    Open();
    { std::ofstream big(serve_dir_ + "/big.raw"); }
    std::filesystem::resize_file(serve_dir_ + "/big.raw", 256 * kMiB);
  }

  std::string serve_dir_;
  std::unique_ptr<testing::HttpServer> server_;
};

TEST_F(LocalHttpTest, WrongSha256FailsWithDataLossAndLeavesNothing) {
  std::string raw = MakeRawFile("www/disk.raw", 4 * kMiB, 0x5e);
  std::string sha = Sha256Of(raw);
  std::string wrong(64, '0');
  auto op = image_->ImportImage(UrlRequest("disk", "disk.raw", wrong));
  ASSERT_TRUE(op.ok()) << op.status();
  Status s = op->Wait(milliseconds(60000));
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr(sha));
  EXPECT_EQ(op->status().phase(), v1::OPERATION_PHASE_FAILED);
  auto img = image_->GetImage(Named<v1::GetImageRequest>("disk"));
  ASSERT_TRUE(img.ok());
  EXPECT_EQ(img->status().phase(), v1::IMAGE_PHASE_FAILED);
  EXPECT_EQ(img->status().sha256(), sha);  // what was actually received
  EXPECT_THAT(Entries(root_ + "/images"), IsEmpty());
  EXPECT_THAT(Entries(root_ + "/tmp"), IsEmpty());
  auto event = events_.WaitFor("ImageImportFailed", "disk");
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(event->type(), v1::EVENT_TYPE_WARNING);
  // A volume cannot be made from it.
  auto vol = VolumeRequest("v", 0);
  vol.mutable_spec()->mutable_source()->set_image("disk");
  EXPECT_EQ(Create(vol).status().code(), StatusCode::kFailedPrecondition);
  // The failed image is gone after a restart: nothing of it was stored.
  Reopen();
  EXPECT_EQ(image_->GetImage(Named<v1::GetImageRequest>("disk")).status().code(),
            StatusCode::kNotFound);
}

TEST_F(LocalHttpTest, RightSha256SucceedsWithProgress) {
  std::string raw = MakeRawFile("www/disk.raw", 16 * kMiB, 0x6f);
  std::string sha = Sha256Of(raw);
  auto op = image_->ImportImage(UrlRequest("disk", "disk.raw", sha));
  ASSERT_TRUE(op.ok()) << op.status();
  std::atomic<int> updates{0};
  std::atomic<std::uint64_t> max_done{0};
  op->OnProgress([&](const v1::OperationStatus& st) {
    ++updates;
    if (st.progress().done() > max_done) max_done = st.progress().done();
  });
  ASSERT_TRUE(op->Wait(milliseconds(60000)).ok()) << op->status().error();
  EXPECT_GE(updates.load(), 1);
  EXPECT_EQ(max_done.load(), 16 * kMiB);
  auto img = image_->GetImage(Named<v1::GetImageRequest>("disk"));
  EXPECT_EQ(img->status().phase(), v1::IMAGE_PHASE_READY);
  EXPECT_EQ(img->status().sha256(), sha);
  EXPECT_EQ(img->status().virtual_size_bytes(), 16 * kMiB);
  EXPECT_EQ(img->status().progress().done(), 16 * kMiB);
  EXPECT_TRUE(QemuIoReads(ImagePath("disk"), 0x6f, 0, "64k"));
  // Progress events went through the core.
  bool progress_event = false;
  for (const auto& e : events_.events()) {
    if (e.operation_id() == op->id() && e.has_progress() && e.progress().done() > 0) {
      progress_event = true;
    }
  }
  EXPECT_TRUE(progress_event);
}

TEST_F(LocalHttpTest, NotFoundUrlFailsWith404) {
  auto op = image_->ImportImage(UrlRequest("disk", "missing.img"));
  ASSERT_TRUE(op.ok()) << op.status();
  Status s = op->Wait(milliseconds(60000));
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr("404"));
  EXPECT_THAT(op->status().error(), HasSubstr("404"));
  EXPECT_EQ(image_->GetImage(Named<v1::GetImageRequest>("disk"))->status().phase(),
            v1::IMAGE_PHASE_FAILED);
  EXPECT_THAT(Entries(root_ + "/images"), IsEmpty());
  EXPECT_THAT(Entries(root_ + "/tmp"), IsEmpty());
  // Once the file is there, the same import is retried and succeeds.
  MakeRawFile("www/missing.img", kMiB, 0x01);
  auto retry = image_->ImportImage(UrlRequest("disk", "missing.img"));
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_NE(retry->id(), op->id());
  EXPECT_TRUE(retry->Wait(milliseconds(60000)).ok()) << retry->status().error();
}

TEST_F(LocalHttpTest, CancelSlowImportLeavesNothing) {
  ServeSlowBigFile();
  auto op = image_->ImportImage(UrlRequest("big", "big.raw"));
  ASSERT_TRUE(op.ok()) << op.status();
  // Wait until bytes flow, then cancel.
  bool flowing = false;
  for (int i = 0; i < 200 && !flowing; ++i) {
    flowing = op->status().progress().done() > 0;
    if (!flowing) std::this_thread::sleep_for(milliseconds(50));
  }
  ASSERT_TRUE(flowing);
  ASSERT_TRUE(op->Cancel().ok());
  Status s = op->Wait(milliseconds(30000));
  EXPECT_EQ(s.code(), StatusCode::kCancelled) << s;
  EXPECT_EQ(op->status().phase(), v1::OPERATION_PHASE_CANCELLED);
  EXPECT_LT(op->status().progress().done(), 256 * kMiB);
  EXPECT_EQ(image_->GetImage(Named<v1::GetImageRequest>("big"))->status().phase(),
            v1::IMAGE_PHASE_FAILED);
  EXPECT_THAT(Entries(root_ + "/images"), IsEmpty());
  EXPECT_THAT(Entries(root_ + "/tmp"), IsEmpty());
  // Deleting the cancelled image forgets it.
  EXPECT_TRUE(image_->DeleteImage(Named<v1::DeleteImageRequest>("big")).ok());
  EXPECT_EQ(image_->GetImage(Named<v1::GetImageRequest>("big")).status().code(),
            StatusCode::kNotFound);
}

TEST_F(LocalHttpTest, DeletingAnImportingImageCancelsIt) {
  ServeSlowBigFile();
  auto op = image_->ImportImage(UrlRequest("big", "big.raw"));
  ASSERT_TRUE(op.ok()) << op.status();
  ASSERT_TRUE(image_->DeleteImage(Named<v1::DeleteImageRequest>("big")).ok());
  EXPECT_TRUE(op->done());
  EXPECT_EQ(op->status().phase(), v1::OPERATION_PHASE_CANCELLED);
  EXPECT_EQ(image_->GetImage(Named<v1::GetImageRequest>("big")).status().code(),
            StatusCode::kNotFound);
  EXPECT_THAT(Entries(root_ + "/tmp"), IsEmpty());
}

TEST_F(LocalHttpTest, ClosingTheHostStopsRunningImports) {
  ServeSlowBigFile();
  auto op = image_->ImportImage(UrlRequest("big", "big.raw"));
  ASSERT_TRUE(op.ok()) << op.status();
  auto start = std::chrono::steady_clock::now();
  subscription_.Reset();
  host_.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(30));
  EXPECT_TRUE(op->done());
  EXPECT_EQ(op->status().code(), static_cast<int>(StatusCode::kUnavailable));
  EXPECT_THAT(Entries(root_ + "/tmp"), IsEmpty());
  EXPECT_THAT(Entries(root_ + "/images"), IsEmpty());
  Open();
  EXPECT_EQ(image_->GetImage(Named<v1::GetImageRequest>("big")).status().code(),
            StatusCode::kNotFound);
}

TEST_F(LocalHostTest, BadOptionsAreRefused) {
  subscription_.Reset();
  host_.reset();
  google::protobuf::Struct options;
  (*options.mutable_fields())["connect_timeout_seconds"].set_string_value("soon");
  *config_.mutable_backends()->mutable_image()->mutable_options() = options;
  auto host = Host::Open(config_);
  EXPECT_EQ(host.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(host.status().message(), HasSubstr("connect_timeout_seconds"));
  config_.mutable_backends()->mutable_image()->clear_options();
  google::protobuf::Struct storage_options;
  (*storage_options.mutable_fields())["max_bytes_per_second"].set_number_value(1);
  *config_.mutable_backends()->mutable_storage()->mutable_options() = storage_options;
  host = Host::Open(config_);
  EXPECT_EQ(host.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(host.status().message(), HasSubstr("max_bytes_per_second"));
}

}  // namespace
}  // namespace hci::local
