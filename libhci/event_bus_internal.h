// The core's event bus: queues events and delivers them, in order, from one dispatch thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "hci/events.h"
#include "hci/logging.h"

namespace hci::internal {

// Shared-owned so that a Subscription can outlive the Host: it holds a weak reference.
class EventBus final : public EventSink, public std::enable_shared_from_this<EventBus> {
 public:
  EventBus(std::string node, Logger logger);
  ~EventBus() override;  // Delivers what is queued, then stops.

  void Publish(const v1::Event& event) override;
  Subscription Subscribe(EventCallback callback);
  // Blocks until every event published before the call has been delivered.
  void Flush();

 private:
  void Run();
  void Unsubscribe(std::uint64_t id);

  const std::string node_;
  Logger logger_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::Event> queue_;
  std::uint64_t published_ = 0;
  std::uint64_t delivered_ = 0;
  bool stopping_ = false;
  // Held while delivering one event, so Unsubscribe can wait out a running callback.
  std::mutex deliver_mu_;
  std::map<std::uint64_t, EventCallback> subscribers_;  // guarded by mu_
  std::uint64_t next_subscriber_ = 1;
  std::thread thread_;
};

// Fills `source` with the plugin name before forwarding to the bus.
class SourceEventSink final : public EventSink {
 public:
  SourceEventSink(std::string source, EventSink* bus) : source_(std::move(source)), bus_(bus) {}
  void Publish(const v1::Event& event) override;

 private:
  std::string source_;
  EventSink* bus_;
};

}  // namespace hci::internal
