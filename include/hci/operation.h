// Long operations: progress, wait with a deadline, cancel.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "hci/events.h"
#include "hci/export.h"
#include "hci/status.h"
#include "hci/v1/operation.pb.h"

namespace hci {

namespace internal {
class OperationState;
}  // namespace internal

/// The caller's handle on a long operation (image import, migration, rebuild, backup, restore).
/// Copies share the same operation. Thread-safe. A default-constructed Operation is invalid.
class HCI_EXPORT Operation {
 public:
  /// Receives the operation's status; see OnProgress().
  using ProgressCallback = std::function<void(const v1::OperationStatus&)>;

  Operation() = default;
  /// Used by OperationTracker implementations; plugins get handles from
  /// OperationControl::handle().
  explicit Operation(std::shared_ptr<internal::OperationState> state);

  /// False for a default-constructed Operation, which must not be used otherwise.
  bool valid() const { return state_ != nullptr; }
  /// Unique within the process, e.g. "op-42".
  std::string id() const;
  /// Phase, progress (bytes done / total), message, final code.
  v1::OperationStatus status() const;
  /// True once the operation finished (succeeded, failed or was cancelled).
  bool done() const;

  /// Blocks until the operation finishes or `timeout` passes. Returns the final status
  /// (Cancelled if it was cancelled) or DeadlineExceeded if it is still running; the operation
  /// goes on after a DeadlineExceeded.
  Status Wait(std::chrono::milliseconds timeout) const;
  /// Blocks until the operation finishes; returns its final status.
  Status Wait() const;

  /// Asks the operation to stop; returns at once. OK when the request was recorded (the final
  /// status becomes Cancelled unless the operation finished first); FailedPrecondition when it
  /// has already finished; Unimplemented when the operation cannot be cancelled.
  Status Cancel() const;

  /// Calls `callback` with the status after every progress update and once at the end, from the
  /// thread that made the update. If already finished, calls it once at once. The callback must
  /// be quick and must not call Wait() on this operation.
  void OnProgress(ProgressCallback callback) const;

 private:
  std::shared_ptr<internal::OperationState> state_;
};

/// The producer's side of an operation, held by the plugin thread doing the work.
/// Move-only. If destroyed before Finish(), the operation finishes as Internal
/// ("abandoned"), so a caller never waits forever.
class HCI_EXPORT OperationControl {
 public:
  OperationControl() = default;
  /// Used by OperationTracker implementations; plugins get controls from
  /// OperationTracker::Start().
  explicit OperationControl(std::shared_ptr<internal::OperationState> state);
  ///@{
  /// Moves the producer's side; assigning over a control that did not Finish() finishes its
  /// operation as Internal ("abandoned").
  OperationControl(OperationControl&&) noexcept = default;
  OperationControl& operator=(OperationControl&&) noexcept;
  ///@}
  OperationControl(const OperationControl&) = delete;
  OperationControl& operator=(const OperationControl&) = delete;
  ~OperationControl();

  /// Reports progress: `done` of `total` (bytes unless the unit was set otherwise) and an
  /// optional step message. Publishes a progress event (throttled to one per 100 ms).
  void SetProgress(std::uint64_t done, std::uint64_t total, std::string_view message = {});
  /// True once the caller asked to cancel. Poll it between steps.
  bool cancel_requested() const;
  /// Runs `on_cancel` once when cancellation is requested (at once if it already was), on the
  /// cancelling thread; for unblocking a wait.
  void OnCancel(std::function<void()> on_cancel);
  /// Finishes the operation with `result` (OK: Succeeded; Cancelled: Cancelled; else Failed).
  /// Only the first call counts.
  void Finish(Status result);

  /// The caller's handle.
  Operation handle() const;

 private:
  std::shared_ptr<internal::OperationState> state_;
};

/// Describes an operation being started.
struct OperationInfo {
  /// CamelCase verb, e.g. "ImportImage".
  std::string kind;
  /// The object the operation works on.
  v1::ObjectRef object;
  /// False: Operation::Cancel() answers Unimplemented.
  bool cancellable = true;
  /// "bytes" (default) or "items".
  std::string progress_unit;
};

/// Creates and tracks operations. The Host's tracker is shared by all backends
/// (PluginContext::operations()) so the embedder can list them (Host::ListOperations).
class HCI_EXPORT OperationTracker {
 public:
  virtual ~OperationTracker();
  /// Starts tracking a new running operation; the plugin keeps the control and returns
  /// control.handle() to its caller.
  virtual OperationControl Start(const OperationInfo& info) = 0;
};

/// A standalone tracker, for plugin unit tests and embedders' own long tasks: publishes progress
/// and completion events to `events` when it is not nullptr (it must then outlive every operation
/// the tracker starts).
HCI_EXPORT std::unique_ptr<OperationTracker> MakeOperationTracker(EventSink* events = nullptr);

}  // namespace hci
