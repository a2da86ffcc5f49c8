#include "hci/events.h"

#include <google/protobuf/util/time_util.h>

#include <exception>
#include <utility>
#include <vector>

#include "event_bus_internal.h"

namespace hci {

EventSink::~EventSink() = default;

v1::Event MakeEvent(v1::EventType type, std::string_view kind, std::string_view name,
                    std::string_view reason, std::string message, std::string_view parent) {
  v1::Event event;
  event.set_type(type);
  event.mutable_object()->set_kind(std::string(kind));
  event.mutable_object()->set_name(std::string(name));
  if (!parent.empty()) event.mutable_object()->set_parent(std::string(parent));
  event.set_reason(std::string(reason));
  event.set_message(std::move(message));
  return event;
}

Subscription::Subscription(std::function<void()> cancel) : cancel_(std::move(cancel)) {}

Subscription::Subscription(Subscription&& other) noexcept : cancel_(std::move(other.cancel_)) {
  other.cancel_ = nullptr;
}

Subscription& Subscription::operator=(Subscription&& other) noexcept {
  if (this != &other) {
    Reset();
    cancel_ = std::move(other.cancel_);
    other.cancel_ = nullptr;
  }
  return *this;
}

Subscription::~Subscription() { Reset(); }

void Subscription::Reset() {
  if (cancel_) {
    auto cancel = std::move(cancel_);
    cancel_ = nullptr;
    cancel();
  }
}

namespace internal {

EventBus::EventBus(std::string node, Logger logger)
    : node_(std::move(node)), logger_(std::move(logger)), thread_([this] { Run(); }) {}

EventBus::~EventBus() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void EventBus::Publish(const v1::Event& event) {
  v1::Event copy = event;
  if (!copy.has_time()) {
    *copy.mutable_time() = google::protobuf::util::TimeUtil::GetCurrentTime();
  }
  if (copy.node().empty()) copy.set_node(node_);
  if (copy.type() == v1::EVENT_TYPE_UNSPECIFIED) copy.set_type(v1::EVENT_TYPE_NORMAL);
  {
    std::lock_guard lock(mu_);
    queue_.push_back(std::move(copy));
    ++published_;
  }
  cv_.notify_all();
}

Subscription EventBus::Subscribe(EventCallback callback) {
  std::uint64_t id;
  {
    std::lock_guard lock(mu_);
    id = next_subscriber_++;
    subscribers_.emplace(id, std::move(callback));
  }
  // Weak: a Subscription that outlives its Host must not touch the destroyed bus.
  return Subscription([weak = weak_from_this(), id] {
    if (auto bus = weak.lock()) bus->Unsubscribe(id);
  });
}

void EventBus::Unsubscribe(std::uint64_t id) {
  if (std::this_thread::get_id() == thread_.get_id()) {
    // From inside a callback: the dispatch loop copies subscribers per event, so removing is
    // enough (and waiting for ourselves would deadlock).
    std::lock_guard lock(mu_);
    subscribers_.erase(id);
    return;
  }
  std::lock_guard deliver(deliver_mu_);
  std::lock_guard lock(mu_);
  subscribers_.erase(id);
}

void EventBus::Flush() {
  // From a callback, the event being delivered counts as undelivered: waiting would deadlock.
  if (std::this_thread::get_id() == thread_.get_id()) return;
  std::unique_lock lock(mu_);
  auto target = published_;
  cv_.wait(lock, [&] { return delivered_ >= target; });
}

void EventBus::Run() {
  for (;;) {
    v1::Event event;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything was delivered
      event = std::move(queue_.front());
      queue_.pop_front();
    }
    {
      std::lock_guard deliver(deliver_mu_);
      std::vector<std::pair<std::uint64_t, EventCallback>> subscribers;
      {
        std::lock_guard lock(mu_);
        subscribers.assign(subscribers_.begin(), subscribers_.end());
      }
      for (auto& [id, callback] : subscribers) {
        {
          // Skip receivers that unsubscribed from an earlier callback of this event.
          std::lock_guard lock(mu_);
          if (!subscribers_.contains(id)) continue;
        }
        try {
          callback(event);
        } catch (const std::exception& e) {
          logger_.Error("event", event.reason(), std::string("event callback threw: ") + e.what());
        } catch (...) {
          logger_.Error("event", event.reason(), "event callback threw");
        }
      }
    }
    {
      std::lock_guard lock(mu_);
      ++delivered_;
    }
    cv_.notify_all();
  }
}

void SourceEventSink::Publish(const v1::Event& event) {
  if (event.source().empty()) {
    v1::Event copy = event;
    copy.set_source(source_);
    bus_->Publish(copy);
  } else {
    bus_->Publish(event);
  }
}

}  // namespace internal
}  // namespace hci
