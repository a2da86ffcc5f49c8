#include "hci/operation.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "hci/events.h"

namespace hci {
namespace {

using namespace std::chrono_literals;

class RecordingSink : public EventSink {
 public:
  void Publish(const v1::Event& event) override {
    std::lock_guard lock(mu);
    events.push_back(event);
  }
  std::vector<v1::Event> Events() {
    std::lock_guard lock(mu);
    return events;
  }
  std::mutex mu;
  std::vector<v1::Event> events;
};

OperationInfo ImportInfo() {
  OperationInfo info;
  info.kind = "ImportImage";
  info.object.set_kind("Image");
  info.object.set_name("debian");
  return info;
}

TEST(OperationTest, ProgressWaitAndSuccess) {
  RecordingSink sink;
  auto tracker = MakeOperationTracker(&sink);
  OperationControl control = tracker->Start(ImportInfo());
  Operation op = control.handle();
  ASSERT_TRUE(op.valid());
  EXPECT_FALSE(op.id().empty());
  EXPECT_EQ(op.status().phase(), v1::OPERATION_PHASE_RUNNING);
  EXPECT_EQ(op.status().kind(), "ImportImage");
  EXPECT_EQ(op.status().object().name(), "debian");

  std::vector<std::uint64_t> seen;
  std::mutex mu;
  op.OnProgress([&](const v1::OperationStatus& st) {
    std::lock_guard lock(mu);
    seen.push_back(st.progress().done());
  });

  // Not finished: Wait returns DeadlineExceeded, and the operation goes on.
  Status early = op.Wait(10ms);
  EXPECT_EQ(early.code(), StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(op.done());

  std::thread worker([c = std::move(control)]() mutable {
    c.SetProgress(100, 300, "copying");
    c.SetProgress(200, 300);
    c.SetProgress(300, 300);
    c.Finish(Status());
  });
  EXPECT_TRUE(op.Wait(10s).ok());
  worker.join();
  EXPECT_TRUE(op.done());
  v1::OperationStatus st = op.status();
  EXPECT_EQ(st.phase(), v1::OPERATION_PHASE_SUCCEEDED);
  EXPECT_EQ(st.progress().done(), 300u);
  EXPECT_EQ(st.progress().total(), 300u);
  EXPECT_EQ(st.message(), "copying");
  EXPECT_TRUE(st.has_end_time());
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(seen, (std::vector<std::uint64_t>{100, 200, 300, 300}));
  }
  // The last event says it finished; intermediate ones are throttled, the first is not.
  auto events = sink.Events();
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.front().reason(), "OperationProgress");
  EXPECT_EQ(events.back().reason(), "OperationFinished");
  EXPECT_EQ(events.back().operation_id(), op.id());
  EXPECT_EQ(events.back().object().name(), "debian");
}

TEST(OperationTest, WaitReturnsOnlyAfterFinalCallbackAndEvent) {
  // A caller whose Wait() returned must already have the final update and OperationFinished.
  for (int i = 0; i < 200; ++i) {
    RecordingSink sink;
    auto tracker = MakeOperationTracker(&sink);
    OperationControl control = tracker->Start(ImportInfo());
    Operation op = control.handle();
    std::atomic<int> final_updates{0};
    op.OnProgress([&](const v1::OperationStatus& st) {
      if (st.phase() == v1::OPERATION_PHASE_SUCCEEDED) {
        std::this_thread::sleep_for(std::chrono::microseconds(50));  // Widen the window.
        ++final_updates;
      }
    });
    std::thread worker([c = std::move(control)]() mutable { c.Finish(Status()); });
    ASSERT_TRUE(op.Wait(10s).ok());
    EXPECT_TRUE(op.done());
    EXPECT_EQ(final_updates.load(), 1);
    auto events = sink.Events();
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events.back().reason(), "OperationFinished");
    worker.join();
  }
}

TEST(OperationTest, FailureCarriesCodeAndMessage) {
  auto tracker = MakeOperationTracker();
  OperationControl control = tracker->Start(ImportInfo());
  Operation op = control.handle();
  control.Finish(DataLoss("sha256 mismatch"));
  control.Finish(Status());  // Only the first Finish counts.
  Status s = op.Wait(1s);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_EQ(op.status().phase(), v1::OPERATION_PHASE_FAILED);
  EXPECT_EQ(op.status().code(), static_cast<int>(StatusCode::kDataLoss));
  EXPECT_EQ(op.status().error(), "sha256 mismatch");
}

TEST(OperationTest, CancelRunsHookAndEndsCancelled) {
  auto tracker = MakeOperationTracker();
  OperationControl control = tracker->Start(ImportInfo());
  Operation op = control.handle();
  std::atomic<bool> hook_ran{false};
  control.OnCancel([&] { hook_ran = true; });
  std::thread worker([c = std::move(control)]() mutable {
    while (!c.cancel_requested()) std::this_thread::sleep_for(1ms);
    c.Finish(Cancelled("import cancelled"));
  });
  EXPECT_TRUE(op.Cancel().ok());
  EXPECT_TRUE(op.Cancel().ok());  // Idempotent while running.
  EXPECT_TRUE(hook_ran);
  EXPECT_EQ(op.Wait(10s).code(), StatusCode::kCancelled);
  worker.join();
  EXPECT_EQ(op.status().phase(), v1::OPERATION_PHASE_CANCELLED);
  EXPECT_TRUE(op.status().cancel_requested());
  EXPECT_EQ(op.Cancel().code(), StatusCode::kFailedPrecondition);
}

TEST(OperationTest, NonCancellableRefusesCancel) {
  auto tracker = MakeOperationTracker();
  OperationInfo info = ImportInfo();
  info.cancellable = false;
  OperationControl control = tracker->Start(info);
  EXPECT_EQ(control.handle().Cancel().code(), StatusCode::kUnimplemented);
  EXPECT_FALSE(control.cancel_requested());
}

TEST(OperationTest, AbandonedControlFinishesAsInternal) {
  auto tracker = MakeOperationTracker();
  Operation op;
  {
    OperationControl control = tracker->Start(ImportInfo());
    op = control.handle();
  }
  Status s = op.Wait(1s);
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_NE(s.message().find("abandoned"), std::string::npos);
}

TEST(OperationTest, OnProgressAfterFinishCallsOnce) {
  auto tracker = MakeOperationTracker();
  OperationControl control = tracker->Start(ImportInfo());
  control.Finish(Status());
  int calls = 0;
  control.handle().OnProgress([&](const v1::OperationStatus& st) {
    ++calls;
    EXPECT_EQ(st.phase(), v1::OPERATION_PHASE_SUCCEEDED);
  });
  EXPECT_EQ(calls, 1);
}

TEST(OperationTest, IdsAreUnique) {
  auto tracker = MakeOperationTracker();
  OperationControl a = tracker->Start(ImportInfo());
  OperationControl b = tracker->Start(ImportInfo());
  EXPECT_NE(a.handle().id(), b.handle().id());
}

TEST(OperationTest, InvalidHandleIsHarmless) {
  Operation op;
  EXPECT_FALSE(op.valid());
  EXPECT_FALSE(op.done());
  EXPECT_EQ(op.Wait(1ms).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(op.Cancel().code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace hci
