// What the core's wrapper around plugin backends guarantees, observed through a real plugin
// (test_plugins/core_probe_plugin.cc) loaded by a real Host.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "hci/host.h"

namespace hci {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct CapturedLine {
  LogLevel level;
  std::string component, kind, name, message;
};

class CapturingLogSink : public LogSink {
 public:
  void Write(const LogRecord& r) override {
    std::lock_guard lock(mu_);
    lines_.push_back({r.level, std::string(r.component), std::string(r.object_kind),
                      std::string(r.object_name), std::string(r.message)});
  }
  std::vector<CapturedLine> lines() {
    std::lock_guard lock(mu_);
    return lines_;
  }

 private:
  std::mutex mu_;
  std::vector<CapturedLine> lines_;
};

class RecordingEventSink : public EventSink {
 public:
  void Publish(const v1::Event& e) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms.load()));
    std::lock_guard lock(mu_);
    events_.push_back(e);
  }
  std::atomic<int> delay_ms = 0;  // a slow embedder
  std::vector<v1::Event> events() {
    std::lock_guard lock(mu_);
    return events_;
  }

 private:
  std::mutex mu_;
  std::vector<v1::Event> events_;
};

class GuardedBackendsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    state_ = fs::path(::testing::TempDir()) /
             ("guarded_" + std::to_string(::getpid()) + "_" +
              ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(state_);
    v1::HostConfig config;
    config.set_node_name("node-a");
    config.set_state_dir(state_.string());
    config.add_plugin_dirs(HCI_TEST_PROBE_PLUGIN_DIR);
    config.set_log_level(v1::LOG_LEVEL_DEBUG);
    config.mutable_backends()->mutable_storage()->set_plugin("core-probe");
    HostOptions options;
    options.log_sink = log_;
    options.event_sink = events_;
    auto host = Host::Open(config, options);
    ASSERT_TRUE(host.ok()) << host.status();
    host_ = std::move(*host);
    storage_ = *host_->storage();
  }
  void TearDown() override {
    host_.reset();
    fs::remove_all(state_);
  }

  // Calls that reached the plugin, as it counts them.
  int PluginCalls() {
    auto text = storage_->Metrics();
    EXPECT_TRUE(text.ok()) << text.status();
    return std::stoi(text->substr(text->find(' ') + 1));
  }

  static v1::CreateVolumeRequest Create(const std::string& name) {
    v1::CreateVolumeRequest r;
    r.mutable_metadata()->set_name(name);
    r.mutable_spec()->set_size_bytes(4096);
    return r;
  }

  fs::path state_;
  std::shared_ptr<CapturingLogSink> log_ = std::make_shared<CapturingLogSink>();
  std::shared_ptr<RecordingEventSink> events_ = std::make_shared<RecordingEventSink>();
  std::unique_ptr<Host> host_;
  StorageBackend* storage_ = nullptr;
};

TEST_F(GuardedBackendsTest, ExceptionsBecomeInternal) {
  auto r = storage_->CreateVolume(Create("throws"));
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
  EXPECT_NE(r.status().message().find("plugin \"core-probe\" threw from CreateVolume: boom"),
            std::string::npos)
      << r.status();
  r = storage_->CreateVolume(Create("throws-int"));
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
  EXPECT_NE(r.status().message().find("non-standard exception"), std::string::npos);
  // The backend still works afterwards.
  EXPECT_TRUE(storage_->CreateVolume(Create("fine")).ok());
  EXPECT_NE(host_->Metrics().find("operation=\"CreateVolume\",code=\"Internal\"} 2"),
            std::string::npos)
      << host_->Metrics();
}

TEST_F(GuardedBackendsTest, BadNamesNeverReachThePlugin) {
  int before = PluginCalls();
  for (const char* bad : {"../x", "a/b", "", "Vm1"}) {
    auto r = storage_->CreateVolume(Create(bad));
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(r.status().message().find("metadata.name: "), std::string::npos) << r.status();
  }
  v1::CreateVolumeRequest clone = Create("ok-name");
  clone.mutable_spec()->mutable_source()->mutable_snapshot()->set_volume("src");
  clone.mutable_spec()->mutable_source()->mutable_snapshot()->set_snapshot("Snap/1");
  auto r = storage_->CreateVolume(clone);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("spec.source.snapshot.snapshot: "), std::string::npos);
  v1::AttachVolumeRequest attach;
  attach.set_name("ok-name");
  attach.set_attacher("vm 1");
  EXPECT_EQ(storage_->AttachVolume(attach).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PluginCalls(), before);
}

TEST_F(GuardedBackendsTest, SecondMutationOfOneObjectIsAbortedReadsAreNot) {
  std::atomic<bool> started{false};
  Result<v1::Volume> slow = Internal("not run");
  std::thread creator([&] {
    started = true;
    slow = storage_->CreateVolume(Create("slow"));
  });
  while (!started) std::this_thread::yield();
  std::this_thread::sleep_for(100ms);  // Well inside the plugin's 500 ms sleep.

  v1::DeleteVolumeRequest del;
  del.set_name("slow");
  Status aborted = storage_->DeleteVolume(del);
  EXPECT_EQ(aborted.code(), StatusCode::kAborted);
  EXPECT_NE(aborted.message().find("CreateVolume has been in progress"), std::string::npos)
      << aborted;
  // Another object, and reads of the same one, go through.
  EXPECT_TRUE(storage_->CreateVolume(Create("other")).ok());
  v1::GetVolumeRequest get;
  get.set_name("slow");
  EXPECT_TRUE(storage_->GetVolume(get).ok());

  creator.join();
  EXPECT_TRUE(slow.ok()) << slow.status();
  EXPECT_TRUE(storage_->DeleteVolume(del).ok());  // Free again once the first call returned.
}

TEST_F(GuardedBackendsTest, LogLinesNameComponentAndObject) {
  v1::GetVolumeRequest get;
  get.set_name("data");
  ASSERT_TRUE(storage_->GetVolume(get).ok());
  bool plugin_line = false, core_line = false;
  for (const auto& l : log_->lines()) {
    if (l.component == "core-probe" && l.kind == "volume" && l.name == "data" &&
        l.message == "probe looked it up") {
      plugin_line = true;
    }
    if (l.component == "core-probe" && l.kind == "volume" && l.name == "data" &&
        l.message.rfind("GetVolume: ok", 0) == 0 && l.level == LogLevel::kDebug) {
      core_line = true;
    }
  }
  EXPECT_TRUE(plugin_line);
  EXPECT_TRUE(core_line);
}

TEST_F(GuardedBackendsTest, EventsReachSinkAndSubscribersWithSourceAndNode) {
  std::mutex mu;
  std::vector<v1::Event> seen;
  Subscription sub = host_->Subscribe([&](const v1::Event& e) {
    std::lock_guard lock(mu);
    seen.push_back(e);
  });
  v1::GetVolumeRequest get;
  get.set_name("first");
  ASSERT_TRUE(storage_->GetVolume(get).ok());
  get.set_name("second");
  ASSERT_TRUE(storage_->GetVolume(get).ok());

  auto deadline = std::chrono::steady_clock::now() + 5s;
  for (;;) {
    {
      std::lock_guard lock(mu);
      if (seen.size() >= 2) break;
    }
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "events not delivered";
    std::this_thread::sleep_for(5ms);
  }
  sub.Reset();
  {
    std::lock_guard lock(mu);
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_EQ(seen[0].object().name(), "first");  // In publication order.
    EXPECT_EQ(seen[1].object().name(), "second");
    EXPECT_EQ(seen[0].source(), "core-probe");
    EXPECT_EQ(seen[0].node(), "node-a");
    EXPECT_TRUE(seen[0].has_time());
    EXPECT_EQ(seen[0].type(), v1::EVENT_TYPE_NORMAL);
  }
  // After Reset, the subscriber hears nothing more; the embedder's sink still does.
  get.set_name("third");
  ASSERT_TRUE(storage_->GetVolume(get).ok());
  deadline = std::chrono::steady_clock::now() + 5s;
  while (events_->events().size() < 3) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "sink did not get the third event";
    std::this_thread::sleep_for(5ms);
  }
  std::lock_guard lock(mu);
  EXPECT_EQ(seen.size(), 2u);
}

TEST_F(GuardedBackendsTest, FlushEventsReturnsAfterEarlierEventsWereDelivered) {
  std::atomic<int> seen = 0;
  std::atomic<bool> flushed_in_callback = false;
  // A slow subscriber: without the flush, the count below would still be 0 or 1.
  Subscription sub = host_->Subscribe([&](const v1::Event&) {
    std::this_thread::sleep_for(100ms);
    host_->FlushEvents();  // from the delivering thread: must return, not deadlock
    flushed_in_callback = true;
    ++seen;
  });
  v1::GetVolumeRequest get;
  get.set_name("first");
  ASSERT_TRUE(storage_->GetVolume(get).ok());
  get.set_name("second");
  ASSERT_TRUE(storage_->GetVolume(get).ok());
  host_->FlushEvents();
  EXPECT_EQ(seen.load(), 2);
  EXPECT_TRUE(flushed_in_callback.load());
}

TEST_F(GuardedBackendsTest, ClosingTheHostDeliversQueuedEventsToTheEmbedderSink) {
  events_->delay_ms = 100;
  v1::GetVolumeRequest get;
  for (const char* name : {"first", "second", "third"}) {
    get.set_name(name);
    ASSERT_TRUE(storage_->GetVolume(get).ok());
  }
  host_.reset();  // while the sink is still busy with the first event
  ASSERT_EQ(events_->events().size(), 3u);
  EXPECT_EQ(events_->events()[2].object().name(), "third");
}

TEST_F(GuardedBackendsTest, SubscriptionMayOutliveTheHost) {
  Subscription sub = host_->Subscribe([](const v1::Event&) {});
  host_.reset();
  sub.Reset();  // Must not touch the destroyed Host (ASan would report a use after free).
  EXPECT_FALSE(sub.active());
}

TEST(GuardedFactoryTest, FactoryErrorsAndExceptionsNameTheBinding) {
  fs::path state = fs::path(::testing::TempDir()) / ("factory_" + std::to_string(::getpid()));
  v1::HostConfig config;
  config.set_state_dir(state.string());
  config.add_plugin_dirs(HCI_TEST_PROBE_PLUGIN_DIR);
  config.set_log_level(v1::LOG_LEVEL_OFF);
  auto* compute = config.mutable_backends()->mutable_compute();
  compute->set_plugin("core-probe");
  (*compute->mutable_options()->mutable_fields())["fail"].set_bool_value(true);
  auto host = Host::Open(config);
  EXPECT_EQ(host.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(host.status().message(),
            "backends.compute (plugin \"core-probe\"): options.fail: the probe was asked to fail");

  compute->clear_options();
  host = Host::Open(config);
  EXPECT_EQ(host.status().code(), StatusCode::kInternal);
  EXPECT_NE(host.status().message().find("factory threw"), std::string::npos) << host.status();
  fs::remove_all(state);
}

}  // namespace
}  // namespace hci
