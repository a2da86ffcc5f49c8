// Shared state behind Operation / OperationControl, and the Host's operation tracker.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "hci/events.h"
#include "hci/operation.h"

namespace hci::internal {

class OperationState {
 public:
  // `events` may be nullptr; otherwise it must outlive the state's last progress update.
  OperationState(std::string id, const OperationInfo& info, EventSink* events);

  v1::OperationStatus status() const;
  bool done() const;
  // nullopt: wait forever.
  Status Wait(std::optional<std::chrono::milliseconds> timeout);
  Status Cancel();
  void OnProgress(Operation::ProgressCallback callback);

  void SetProgress(std::uint64_t done, std::uint64_t total, std::string_view message);
  bool cancel_requested() const;
  void OnCancel(std::function<void()> on_cancel);
  void Finish(Status result);

 private:
  void Notify(const v1::OperationStatus& snapshot, bool final_update);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  v1::OperationStatus status_;
  Status result_;
  bool done_ = false;
  // Set after the final callbacks and event went out: Wait() returns only then, so a caller
  // whose Wait() returned has seen the final progress update and the OperationFinished event.
  bool settled_ = false;
  std::vector<Operation::ProgressCallback> callbacks_;
  std::vector<std::function<void()>> cancel_hooks_;
  EventSink* events_;
  std::chrono::steady_clock::time_point last_event_{};
};

// Creates operations with ids "op-1", "op-2", ... and remembers them for ten minutes after
// they finish.
class OperationTrackerImpl final : public OperationTracker {
 public:
  explicit OperationTrackerImpl(EventSink* events) : events_(events) {}
  OperationControl Start(const OperationInfo& info) override;
  std::vector<v1::OperationStatus> List() const;
  std::shared_ptr<OperationState> Find(std::string_view id) const;

 private:
  void PruneLocked() const;
  EventSink* events_;
  mutable std::mutex mu_;
  std::uint64_t next_id_ = 1;
  mutable std::deque<std::shared_ptr<OperationState>> ops_;
};

}  // namespace hci::internal
