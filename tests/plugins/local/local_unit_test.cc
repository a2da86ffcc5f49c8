// Unit tests of the local plugin's pieces (linking hci_plugin_local_obj): the qemu-img JSON
// parser, options, the fetcher, and the store's recovery, through a fake PluginContext.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "local_internal.h"
#include "local_test_util.h"

namespace hci::local {
namespace {

using ::testing::ElementsAre;
using testing::Entries;
using testing::EventLog;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using testing::kMiB;
using testing::Named;
using testing::VolumeRequest;

class FakeContext final : public PluginContext {
 public:
  explicit FakeContext(std::string state_dir, google::protobuf::Struct options = {})
      : state_dir_(std::move(state_dir)),
        options_(std::move(options)),
        tracker_(MakeOperationTracker(&events_)) {}

  const std::string& plugin_name() const override { return plugin_; }
  const std::string& node_name() const override { return node_; }
  const std::string& state_dir() const override { return state_dir_; }
  const google::protobuf::Struct& options() const override { return options_; }
  const Logger& logger() const override { return logger_; }
  EventSink& events() override { return events_; }
  OperationTracker& operations() override { return *tracker_; }
  ComputeBackend* compute() override { return nullptr; }
  StorageBackend* storage() override { return storage_; }
  NetworkBackend* network() override { return nullptr; }
  ImageBackend* image() override { return image_; }
  BackupBackend* backup() override { return nullptr; }

  EventLog& log() { return events_; }
  StorageBackend* storage_ = nullptr;
  ImageBackend* image_ = nullptr;

 private:
  std::string plugin_ = "local";
  std::string node_ = "node-a";
  std::string state_dir_;
  google::protobuf::Struct options_;
  Logger logger_;
  EventLog events_;
  std::unique_ptr<OperationTracker> tracker_;
};

// ---------------------------------------------------------------------------------------------
// qemu-img's JSON

TEST(ParseImageInfoTest, ReadsSizesBackingAndSnapshots) {
  auto info = ParseImageInfo(R"({
    "snapshots": [{"name": "s1", "id": "1"}, {"name": "s2", "id": "2"}],
    "virtual-size": 1048576, "filename": "a.qcow2", "format": "qcow2",
    "actual-size": 200704, "backing-filename": "/images/base.qcow2",
    "backing-filename-format": "qcow2",
    "format-specific": {"type": "qcow2", "data": {"compat": "1.1", "data-file": "/x.raw"}}
  })");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->format, "qcow2");
  EXPECT_EQ(info->virtual_size, 1048576u);
  EXPECT_EQ(info->actual_size, 200704u);
  EXPECT_EQ(info->backing_filename, "/images/base.qcow2");
  EXPECT_THAT(info->snapshots, ElementsAre("s1", "s2"));
  EXPECT_EQ(info->data_file, "/x.raw");
  EXPECT_THAT(info->extent_files, IsEmpty());
}

TEST(ParseImageInfoTest, ReadsVmdkExtents) {
  auto info = ParseImageInfo(R"({"format": "vmdk", "virtual-size": 65536,
    "format-specific": {"type": "vmdk", "data": {"extents": [
      {"filename": "/a/disk-flat.vmdk", "format": "FLAT"}, {"filename": "/etc/shadow"}]}}})");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_THAT(info->extent_files, ElementsAre("/a/disk-flat.vmdk", "/etc/shadow"));
  EXPECT_EQ(info->actual_size, 0u);
}

TEST(ParseImageInfoTest, RefusesMalformedOutput) {
  EXPECT_EQ(ParseImageInfo("not json").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseImageInfo("[1, 2]").status().code(), StatusCode::kInvalidArgument);
  auto no_size = ParseImageInfo(R"({"format": "raw"})");
  EXPECT_EQ(no_size.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(no_size.status().message(), HasSubstr("virtual-size"));
  auto negative = ParseImageInfo(R"({"format": "raw", "virtual-size": -1})");
  EXPECT_EQ(negative.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseImageInfo(R"({"virtual-size": 1})").status().code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Options

google::protobuf::Struct Opts(std::initializer_list<std::pair<std::string, double>> numbers) {
  google::protobuf::Struct s;
  for (const auto& [k, v] : numbers) (*s.mutable_fields())[k].set_number_value(v);
  return s;
}

TEST(ParseOptionsTest, DefaultsAndValues) {
  auto defaults = ParseOptions({}, BackendKind::kImage);
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->qemu_img, "qemu-img");
  EXPECT_EQ(defaults->connect_timeout_seconds, 30u);
  EXPECT_EQ(defaults->max_bytes_per_second, 0u);
  auto set = ParseOptions(Opts({{"connect_timeout_seconds", 5},
                                {"stall_timeout_seconds", 7},
                                {"max_bytes_per_second", 1024}}),
                          BackendKind::kImage);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->connect_timeout_seconds, 5u);
  EXPECT_EQ(set->stall_timeout_seconds, 7u);
  EXPECT_EQ(set->max_bytes_per_second, 1024u);
}

TEST(ParseOptionsTest, RefusesUnknownAndMistypedKeysNamingThem) {
  auto unknown = ParseOptions(Opts({{"latency_ms", 1}}), BackendKind::kStorage);
  EXPECT_EQ(unknown.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("latency_ms: unknown option"));
  // Image options are not storage options.
  auto wrong_kind = ParseOptions(Opts({{"max_bytes_per_second", 1}}), BackendKind::kStorage);
  EXPECT_EQ(wrong_kind.status().code(), StatusCode::kInvalidArgument);
  auto fraction = ParseOptions(Opts({{"stall_timeout_seconds", 1.5}}), BackendKind::kImage);
  EXPECT_EQ(fraction.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(fraction.status().message(), HasSubstr("stall_timeout_seconds"));
  auto zero = ParseOptions(Opts({{"connect_timeout_seconds", 0}}), BackendKind::kImage);
  EXPECT_EQ(zero.status().code(), StatusCode::kInvalidArgument);
  google::protobuf::Struct program;
  (*program.mutable_fields())["qemu_img"].set_bool_value(true);
  EXPECT_EQ(ParseOptions(program, BackendKind::kStorage).status().code(),
            StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Fetching

class FetchTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("hci-local-fetch"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(FetchTest, CopyHashesTheBytes) {
  std::ofstream(dir_ + "/abc") << "abc";
  auto r = CopyFile(dir_ + "/abc", dir_ + "/out", FetchOptions());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(r->bytes, 3u);
  std::ifstream in(dir_ + "/out");
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, "abc");
}

TEST_F(FetchTest, CopyLeavesHolesForZerosAndReportsProgress) {
  // 32 MiB: zeros, then one non-zero block in the middle, then zeros.
  { std::ofstream out(dir_ + "/sparse"); }
  std::filesystem::resize_file(dir_ + "/sparse", 32 * kMiB);
  {
    std::fstream f(dir_ + "/sparse", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(16 * kMiB);
    f << "data";
  }
  std::vector<std::uint64_t> done;
  FetchOptions options;
  options.progress = [&](std::uint64_t d, std::uint64_t total) {
    EXPECT_EQ(total, 32 * kMiB);
    done.push_back(d);
  };
  auto r = CopyFile(dir_ + "/sparse", dir_ + "/out", options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sha256, testing::Sha256Of(dir_ + "/sparse"));
  EXPECT_EQ(std::filesystem::file_size(dir_ + "/out"), 32 * kMiB);
  EXPECT_LT(AllocatedBytes(dir_ + "/out"), kMiB);
  EXPECT_EQ(testing::Sha256Of(dir_ + "/out"), r->sha256);
  ASSERT_FALSE(done.empty());
  EXPECT_EQ(done.back(), 32 * kMiB);
  EXPECT_TRUE(std::is_sorted(done.begin(), done.end()));
}

TEST_F(FetchTest, CopyErrorsNameSpecFile) {
  auto missing = CopyFile(dir_ + "/missing", dir_ + "/out", FetchOptions());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("spec.file"));
  auto directory = CopyFile(dir_, dir_ + "/out", FetchOptions());
  EXPECT_EQ(directory.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(FetchTest, CopyIsCancellable) {
  { std::ofstream out(dir_ + "/big"); }
  std::filesystem::resize_file(dir_ + "/big", 64 * kMiB);
  FetchOptions options;
  int chunks = 0;
  options.progress = [&](std::uint64_t, std::uint64_t) { ++chunks; };
  options.cancelled = [&] { return chunks >= 2; };
  auto r = CopyFile(dir_ + "/big", dir_ + "/out", options);
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled);
  EXPECT_EQ(chunks, 2);
}

TEST_F(FetchTest, DownloadOfAnUnreachableServerIsUnavailable) {
  FetchOptions options;
  options.connect_timeout_seconds = 5;
  // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
  auto r = Download("http://127.0.0.1:9/x.img", dir_ + "/out", options);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("spec.url"));
}

TEST_F(FetchTest, DownloadHashesAndFollowsTheServer) {
  std::filesystem::create_directory(dir_ + "/www");
  std::ofstream(dir_ + "/www/abc") << "abc";
  testing::HttpServer server(dir_ + "/www");
  ASSERT_TRUE(server.running());
  auto r = Download(server.Url("abc"), dir_ + "/out", FetchOptions());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto missing = Download(server.Url("nope"), dir_ + "/out2", FetchOptions());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("HTTP 404"));
}

// ---------------------------------------------------------------------------------------------
// The store's recovery after a crash

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("hci-local-store");
    context_ = std::make_unique<FakeContext>(dir_);
  }
  void TearDown() override {
    context_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::unique_ptr<StorageBackend> MakeStorageBackend() {
    auto storage = MakeStorage(*context_);
    EXPECT_TRUE(storage.ok()) << storage.status();
    return storage.ok() ? std::move(storage).MoveValueUnsafe() : nullptr;
  }

  std::string dir_;
  std::unique_ptr<FakeContext> context_;
};

TEST_F(StoreTest, LeftoversOfInterruptedWritesAreRemovedOnOpen) {
  {
    auto storage = MakeStorageBackend();
    ASSERT_NE(storage, nullptr);
    ASSERT_TRUE(storage->CreateVolume(VolumeRequest("kept", kMiB)).ok());
  }
  // What a crash could leave: a half-built file in tmp/, a qcow2 renamed into place whose record
  // was never written, a temporary record, snapshot records of a deleted volume.
  std::ofstream(dir_ + "/tmp/new.1.2.qcow2") << "partial";
  std::filesystem::copy_file(dir_ + "/volumes/kept.qcow2", dir_ + "/volumes/orphan.qcow2");
  std::ofstream(dir_ + "/volumes/.kept.json.tmp.1.2") << "{";
  std::filesystem::create_directories(dir_ + "/snapshots/gone");
  std::ofstream(dir_ + "/snapshots/gone/s1.json") << "{}";

  auto storage = MakeStorageBackend();
  ASSERT_NE(storage, nullptr);
  EXPECT_THAT(Entries(dir_ + "/tmp"), IsEmpty());
  EXPECT_THAT(Entries(dir_ + "/volumes"), ElementsAre("kept.json", "kept.qcow2"));
  EXPECT_THAT(Entries(dir_ + "/snapshots"), IsEmpty());
  auto list = storage->ListVolumes(v1::ListVolumesRequest());
  ASSERT_EQ(list->volumes_size(), 1);
  EXPECT_EQ(list->volumes(0).status().phase(), v1::VOLUME_PHASE_AVAILABLE);
  // The orphan's name is free again.
  EXPECT_TRUE(storage->CreateVolume(VolumeRequest("orphan", kMiB)).ok());
}

TEST_F(StoreTest, UnreadableRecordsAndMissingFilesShowAsFailed) {
  {
    auto storage = MakeStorageBackend();
    ASSERT_TRUE(storage->CreateVolume(VolumeRequest("corrupt", kMiB)).ok());
    ASSERT_TRUE(storage->CreateVolume(VolumeRequest("lost", kMiB)).ok());
  }
  std::ofstream(dir_ + "/volumes/corrupt.json", std::ios::trunc) << "{\"version\": 1";
  std::filesystem::remove(dir_ + "/volumes/lost.qcow2");

  auto storage = MakeStorageBackend();
  auto corrupt = storage->GetVolume(Named<v1::GetVolumeRequest>("corrupt"));
  ASSERT_TRUE(corrupt.ok());
  EXPECT_EQ(corrupt->status().phase(), v1::VOLUME_PHASE_FAILED);
  EXPECT_THAT(corrupt->status().message(), HasSubstr("unreadable"));
  // Its data is kept, and its name is not reused, until it is deleted.
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/volumes/corrupt.qcow2"));
  EXPECT_EQ(storage->CreateVolume(VolumeRequest("corrupt", kMiB)).status().code(),
            StatusCode::kAlreadyExists);
  auto lost = storage->GetVolume(Named<v1::GetVolumeRequest>("lost"));
  EXPECT_EQ(lost->status().phase(), v1::VOLUME_PHASE_FAILED);
  v1::AttachVolumeRequest attach;
  attach.set_name("lost");
  attach.set_attacher("vm-1");
  EXPECT_EQ(storage->AttachVolume(attach).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(storage->DeleteVolume(Named<v1::DeleteVolumeRequest>("corrupt")).ok());
  EXPECT_TRUE(storage->DeleteVolume(Named<v1::DeleteVolumeRequest>("lost")).ok());
  EXPECT_THAT(Entries(dir_ + "/volumes"), IsEmpty());
}

TEST_F(StoreTest, StorageAndImageBackendsShareOneStore) {
  auto storage = MakeStorageBackend();
  auto image = MakeImage(*context_);
  ASSERT_TRUE(image.ok()) << image.status();
  std::string raw = dir_ + "/src.raw";
  ASSERT_TRUE(testing::RunTool({"qemu-img", "create", "-q", "-f", "raw", raw, "1M"}).success());
  v1::ImportImageRequest req;
  req.mutable_metadata()->set_name("base");
  req.mutable_spec()->set_file(raw);
  auto op = (*image)->ImportImage(req);
  ASSERT_TRUE(op.ok()) << op.status();
  ASSERT_TRUE(op->Wait(std::chrono::seconds(60)).ok()) << op->status().error();
  auto vol = VolumeRequest("disk", 0);
  vol.mutable_spec()->mutable_source()->set_image("base");
  vol.mutable_spec()->set_linked_clone(true);
  ASSERT_TRUE(storage->CreateVolume(vol).ok());
  EXPECT_EQ((*image)->DeleteImage(Named<v1::DeleteImageRequest>("base")).code(),
            StatusCode::kFailedPrecondition);
  std::filesystem::remove(raw);
}

TEST_F(StoreTest, ConcurrentCreatesOfOneNameMakeOneVolume) {
  auto storage = MakeStorageBackend();
  std::vector<std::thread> threads;
  std::atomic<int> ok{0}, aborted{0};
  std::set<std::string> uids;
  std::mutex mu;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      auto r = storage->CreateVolume(VolumeRequest("same", kMiB));
      if (r.ok()) {
        ++ok;
        std::lock_guard lock(mu);
        uids.insert(r->metadata().uid());
      } else if (r.status().code() == StatusCode::kAborted) {
        ++aborted;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok + aborted, 4);
  EXPECT_GE(ok.load(), 1);
  EXPECT_EQ(uids.size(), 1u);
  EXPECT_THAT(Entries(dir_ + "/volumes"), ElementsAre("same.json", "same.qcow2"));
  EXPECT_THAT(Entries(dir_ + "/tmp"), IsEmpty());
}

}  // namespace
}  // namespace hci::local
