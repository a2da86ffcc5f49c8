// Events: backends push object changes; the embedder receives them through a sink.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "hci/export.h"
#include "hci/v1/event.pb.h"

namespace hci {

/// Receives events. Supplied by the embedder (HostOptions::event_sink) and given to plugins
/// through PluginContext::events(). Publish never blocks on the receiver: the core queues events
/// and delivers them, in publication order, from its own dispatch thread.
class HCI_EXPORT EventSink {
 public:
  virtual ~EventSink();
  /// `event.time`, `event.source` and `event.node` are filled by the core when empty.
  virtual void Publish(const v1::Event& event) = 0;
};

/// An event about object `kind`/`name` (for example "Volume"/"data"; `parent` names the owning
/// object of a sub-object such as a snapshot's volume, empty otherwise), with `type`, a CamelCase
/// `reason` (as Kubernetes events have, e.g. "VolumeDegraded") and a human-readable `message`.
/// `time`, `source` and `node` are left empty for EventSink::Publish to fill.
HCI_EXPORT v1::Event MakeEvent(v1::EventType type, std::string_view kind, std::string_view name,
                               std::string_view reason, std::string message,
                               std::string_view parent = {});

/// Receives events from Host::Subscribe, on the core's dispatch thread.
using EventCallback = std::function<void(const v1::Event&)>;

/// Keeps a Host::Subscribe callback registered; unsubscribes on destruction or Reset().
/// After Reset() returns, the callback is not running and will not run again. A Subscription may
/// outlive its Host (destroying it then does nothing).
class HCI_EXPORT Subscription {
 public:
  Subscription() = default;
  /// Keeps a registration alive; `cancel` undoes it (called once, by Reset() or the destructor).
  explicit Subscription(std::function<void()> cancel);
  ///@{
  /// Takes over `other`'s registration; `other` becomes inactive.
  Subscription(Subscription&& other) noexcept;
  Subscription& operator=(Subscription&& other) noexcept;
  ///@}
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;
  ~Subscription();

  /// Unsubscribes now; afterwards the callback is not running and will not run again.
  void Reset();
  /// True until Reset() (or a move from this Subscription).
  bool active() const { return static_cast<bool>(cancel_); }

 private:
  std::function<void()> cancel_;
};

}  // namespace hci
