#include "hci/operation.h"

#include <google/protobuf/util/time_util.h>

#include <utility>

#include "operation_internal.h"

namespace hci {
namespace internal {
namespace {

using google::protobuf::util::TimeUtil;

constexpr auto kProgressEventInterval = std::chrono::milliseconds(100);
constexpr auto kRetainFinished = std::chrono::minutes(10);

google::protobuf::Timestamp Now() { return TimeUtil::GetCurrentTime(); }

}  // namespace

OperationState::OperationState(std::string id, const OperationInfo& info, EventSink* events)
    : events_(events) {
  status_.set_id(std::move(id));
  status_.set_kind(info.kind);
  *status_.mutable_object() = info.object;
  status_.set_phase(v1::OPERATION_PHASE_RUNNING);
  status_.set_cancellable(info.cancellable);
  if (!info.progress_unit.empty()) status_.mutable_progress()->set_unit(info.progress_unit);
  *status_.mutable_start_time() = Now();
}

v1::OperationStatus OperationState::status() const {
  std::lock_guard lock(mu_);
  return status_;
}

bool OperationState::done() const {
  std::lock_guard lock(mu_);
  return settled_;
}

Status OperationState::Wait(std::optional<std::chrono::milliseconds> timeout) {
  std::unique_lock lock(mu_);
  if (timeout) {
    if (!cv_.wait_for(lock, *timeout, [&] { return settled_; })) {
      return DeadlineExceeded("operation " + status_.id() + " (" + status_.kind() +
                              ") is still running after " + std::to_string(timeout->count()) +
                              " ms");
    }
  } else {
    cv_.wait(lock, [&] { return settled_; });
  }
  return result_;
}

Status OperationState::Cancel() {
  std::vector<std::function<void()>> hooks;
  {
    std::lock_guard lock(mu_);
    if (done_) {
      return FailedPrecondition("operation " + status_.id() + " has already finished");
    }
    if (!status_.cancellable()) {
      return Unimplemented("operation " + status_.id() + " (" + status_.kind() +
                           ") cannot be cancelled");
    }
    if (status_.cancel_requested()) return Status();
    status_.set_cancel_requested(true);
    hooks.swap(cancel_hooks_);
  }
  for (auto& hook : hooks) hook();
  return Status();
}

void OperationState::OnProgress(Operation::ProgressCallback callback) {
  v1::OperationStatus snapshot;
  {
    std::lock_guard lock(mu_);
    if (!done_) {
      callbacks_.push_back(std::move(callback));
      return;
    }
    snapshot = status_;
  }
  callback(snapshot);
}

void OperationState::SetProgress(std::uint64_t done, std::uint64_t total,
                                 std::string_view message) {
  v1::OperationStatus snapshot;
  {
    std::lock_guard lock(mu_);
    if (done_) return;
    status_.mutable_progress()->set_done(done);
    status_.mutable_progress()->set_total(total);
    if (!message.empty()) status_.set_message(std::string(message));
    snapshot = status_;
  }
  Notify(snapshot, false);
}

bool OperationState::cancel_requested() const {
  std::lock_guard lock(mu_);
  return status_.cancel_requested();
}

void OperationState::OnCancel(std::function<void()> on_cancel) {
  {
    std::lock_guard lock(mu_);
    if (!status_.cancel_requested()) {
      cancel_hooks_.push_back(std::move(on_cancel));
      return;
    }
  }
  on_cancel();
}

void OperationState::Finish(Status result) {
  v1::OperationStatus snapshot;
  {
    std::lock_guard lock(mu_);
    if (done_) return;
    done_ = true;
    if (result.ok()) {
      status_.set_phase(v1::OPERATION_PHASE_SUCCEEDED);
    } else if (result.code() == StatusCode::kCancelled) {
      status_.set_phase(v1::OPERATION_PHASE_CANCELLED);
    } else {
      status_.set_phase(v1::OPERATION_PHASE_FAILED);
    }
    status_.set_code(static_cast<int>(result.code()));
    status_.set_error(result.message());
    *status_.mutable_end_time() = Now();
    result_ = std::move(result);
    cancel_hooks_.clear();
    snapshot = status_;
  }
  Notify(snapshot, true);
  {
    std::lock_guard lock(mu_);
    settled_ = true;
  }
  cv_.notify_all();
}

void OperationState::Notify(const v1::OperationStatus& snapshot, bool final_update) {
  std::vector<Operation::ProgressCallback> callbacks;
  bool publish = final_update;
  {
    std::lock_guard lock(mu_);
    if (final_update) {
      callbacks.swap(callbacks_);
    } else {
      callbacks = callbacks_;
      auto now = std::chrono::steady_clock::now();
      if (now - last_event_ >= kProgressEventInterval) {
        last_event_ = now;
        publish = true;
      }
    }
  }
  for (auto& cb : callbacks) cb(snapshot);
  if (publish && events_ != nullptr) {
    v1::Event event;
    event.set_type(snapshot.phase() == v1::OPERATION_PHASE_FAILED ? v1::EVENT_TYPE_WARNING
                                                                   : v1::EVENT_TYPE_NORMAL);
    *event.mutable_object() = snapshot.object();
    event.set_operation_id(snapshot.id());
    *event.mutable_progress() = snapshot.progress();
    if (final_update) {
      event.set_reason("OperationFinished");
      event.set_message(snapshot.kind() + " " +
                        (snapshot.phase() == v1::OPERATION_PHASE_SUCCEEDED ? "succeeded"
                         : snapshot.phase() == v1::OPERATION_PHASE_CANCELLED
                             ? "was cancelled"
                             : "failed: " + snapshot.error()));
    } else {
      event.set_reason("OperationProgress");
      event.set_message(snapshot.kind() + " " + std::to_string(snapshot.progress().done()) +
                        "/" + std::to_string(snapshot.progress().total()));
    }
    events_->Publish(event);
  }
}

OperationControl OperationTrackerImpl::Start(const OperationInfo& info) {
  std::lock_guard lock(mu_);
  PruneLocked();
  auto state =
      std::make_shared<OperationState>("op-" + std::to_string(next_id_++), info, events_);
  ops_.push_back(state);
  return OperationControl(state);
}

std::vector<v1::OperationStatus> OperationTrackerImpl::List() const {
  std::lock_guard lock(mu_);
  PruneLocked();
  std::vector<v1::OperationStatus> out;
  out.reserve(ops_.size());
  for (const auto& op : ops_) out.push_back(op->status());
  return out;
}

std::shared_ptr<OperationState> OperationTrackerImpl::Find(std::string_view id) const {
  std::lock_guard lock(mu_);
  for (const auto& op : ops_) {
    if (op->status().id() == id) return op;
  }
  return nullptr;
}

void OperationTrackerImpl::PruneLocked() const {
  auto cutoff = TimeUtil::GetCurrentTime() -
                TimeUtil::SecondsToDuration(
                    std::chrono::duration_cast<std::chrono::seconds>(kRetainFinished).count());
  std::erase_if(ops_, [&](const std::shared_ptr<OperationState>& op) {
    auto st = op->status();
    return st.phase() != v1::OPERATION_PHASE_RUNNING && st.has_end_time() &&
           st.end_time() < cutoff;
  });
}

}  // namespace internal

// --- Operation ---

Operation::Operation(std::shared_ptr<internal::OperationState> state) : state_(std::move(state)) {}

std::string Operation::id() const { return state_ ? state_->status().id() : std::string(); }

v1::OperationStatus Operation::status() const {
  return state_ ? state_->status() : v1::OperationStatus();
}

bool Operation::done() const { return state_ && state_->done(); }

Status Operation::Wait(std::chrono::milliseconds timeout) const {
  if (!state_) return FailedPrecondition("Wait on an invalid Operation");
  return state_->Wait(timeout);
}

Status Operation::Wait() const {
  if (!state_) return FailedPrecondition("Wait on an invalid Operation");
  return state_->Wait(std::nullopt);
}

Status Operation::Cancel() const {
  if (!state_) return FailedPrecondition("Cancel on an invalid Operation");
  return state_->Cancel();
}

void Operation::OnProgress(ProgressCallback callback) const {
  if (state_) state_->OnProgress(std::move(callback));
}

// --- OperationControl ---

OperationControl::OperationControl(std::shared_ptr<internal::OperationState> state)
    : state_(std::move(state)) {}

OperationControl& OperationControl::operator=(OperationControl&& other) noexcept {
  if (this != &other) {
    if (state_) state_->Finish(Internal("operation abandoned by its backend"));
    state_ = std::move(other.state_);
  }
  return *this;
}

OperationControl::~OperationControl() {
  if (state_) state_->Finish(Internal("operation abandoned by its backend"));
}

void OperationControl::SetProgress(std::uint64_t done, std::uint64_t total,
                                   std::string_view message) {
  if (state_) state_->SetProgress(done, total, message);
}

bool OperationControl::cancel_requested() const { return state_ && state_->cancel_requested(); }

void OperationControl::OnCancel(std::function<void()> on_cancel) {
  if (state_) state_->OnCancel(std::move(on_cancel));
}

void OperationControl::Finish(Status result) {
  if (state_) state_->Finish(std::move(result));
}

Operation OperationControl::handle() const { return Operation(state_); }

OperationTracker::~OperationTracker() = default;

std::unique_ptr<OperationTracker> MakeOperationTracker(EventSink* events) {
  return std::make_unique<internal::OperationTrackerImpl>(events);
}

}  // namespace hci
