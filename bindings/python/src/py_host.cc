// hci._hci.Host, Subscription and Console.
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "py_objects_internal.h"

namespace hci::python {
namespace {

// Runs `fn` without the GIL, whether or not this thread holds it.
template <typename Fn>
void WithoutGil(Fn&& fn) {
  if (PyGILState_Check()) {
    py::gil_scoped_release nogil;
    fn();
  } else {
    fn();
  }
}

class PyLogSink final : public LogSink {
 public:
  explicit PyLogSink(PyCallback callback) : callback_(std::move(callback)) {}
  void Write(const LogRecord& r) override {
    callback_.Call([&] {
      return py::make_tuple(static_cast<int>(r.level), Utf8(r.component), Utf8(r.object_kind),
                            Utf8(r.object_name), Utf8(r.message));
    });
  }

 private:
  PyCallback callback_;
};

EventCallback MakeEventCallback(PyCallback callback) {
  return [callback = std::move(callback)](const v1::Event& event) {
    std::string wire = event.SerializeAsString();
    callback.Call([&] { return py::make_tuple(py::bytes(wire)); });
  };
}

class PyEventSink final : public EventSink {
 public:
  explicit PyEventSink(PyCallback callback) : deliver_(MakeEventCallback(std::move(callback))) {}
  void Publish(const v1::Event& event) override { deliver_(event); }

 private:
  EventCallback deliver_;
};

/// hci._hci.Subscription.
struct PySubscription {
  Subscription subscription;
  ~PySubscription() {
    // Reset() waits for a callback in progress, which may be waiting for the GIL.
    WithoutGil([this] { subscription.Reset(); });
  }
};

std::shared_ptr<HostBox> Open(const std::string& config_bytes, py::object on_log,
                              py::object on_event) {
  auto config = ParseOrThrow<v1::HostConfig>(config_bytes, "config");
  HostOptions options;
  if (!on_log.is_none()) options.log_sink = std::make_shared<PyLogSink>(PyCallback(on_log));
  if (!on_event.is_none()) {
    options.event_sink = std::make_shared<PyEventSink>(PyCallback(on_event));
  }
  Result<std::unique_ptr<Host>> host = Internal("Host::Open did not run");
  {
    py::gil_scoped_release nogil;
    host = Host::Open(config, std::move(options));
  }
  return std::make_shared<HostBox>(ValueOrThrow(std::move(host)));
}

void Close(HostBox& box) {
  if (InCallback()) {
    throw StatusError(FailedPrecondition(
        "Host.close() cannot run inside an hci callback (event, progress or log): closing joins "
        "the threads that run those callbacks"));
  }
  py::gil_scoped_release nogil;
  box.Close();
}

}  // namespace

HostBox::~HostBox() {
  if (!host_) return;
  std::unique_ptr<Host> host = std::move(host_);
  if (InCallback()) {
    // The last reference went away inside a callback, on a thread the Host joins when destroyed:
    // destroy it on a thread of its own.
    std::thread([h = std::move(host)]() mutable { h.reset(); }).detach();
    return;
  }
  WithoutGil([&] { host.reset(); });
}

HostBox::Lease HostBox::Acquire() {
  std::shared_lock lock(mu_);
  if (!host_) throw StatusError(FailedPrecondition("the Host is closed"));
  return Lease(std::move(lock), host_.get());
}

void HostBox::Close() {
  std::unique_ptr<Host> host;
  {
    // Exclusive: waits for the calls in flight; later calls see the Host closed.
    std::unique_lock lock(mu_);
    std::lock_guard consoles(consoles_mu_);
    for (auto& weak : consoles_) {
      if (auto console = weak.lock()) console->Close();
    }
    consoles_.clear();
    host = std::move(host_);
  }
  // Outside the lock: callbacks that run while the Host shuts down may still call it (and get
  // FailedPrecondition) instead of blocking the threads that the destructor joins.
  host.reset();
}

bool HostBox::closed() {
  std::shared_lock lock(mu_);
  return host_ == nullptr;
}

void HostBox::AddConsole(const std::shared_ptr<ConsoleBox>& console) {
  std::lock_guard lock(consoles_mu_);
  std::erase_if(consoles_, [](const auto& weak) { return weak.expired(); });
  consoles_.push_back(console);
}

ConsoleStream& ConsoleBox::Get(std::unique_lock<std::mutex>& lock) {
  (void)lock;
  if (!stream_) throw StatusError(FailedPrecondition("the console is closed"));
  return *stream_;
}

void ConsoleBox::Close() {
  std::unique_ptr<ConsoleStream> stream;
  {
    std::lock_guard lock(mu_);
    stream = std::move(stream_);
  }
}

void BindHost(py::module_& m) {
  using Release = py::call_guard<py::gil_scoped_release>;

  py::class_<PySubscription>(m, "Subscription", "Keeps an event callback registered.")
      .def_property_readonly(
          "active", [](const PySubscription& self) { return self.subscription.active(); },
          "False once closed.")
      .def(
          "close", [](PySubscription& self) { self.subscription.Reset(); }, Release(),
          "Unsubscribes; afterwards the callback is not running and never runs again.");

  py::class_<PyConsole>(m, "Console", "A live serial console (hci::ConsoleStream).")
      .def(
          "read",
          [](PyConsole& self, double timeout_s) {
            if (!(timeout_s >= 0)) {
              throw StatusError(InvalidArgument("timeout: must be a number of seconds >= 0"));
            }
            auto lease = self.host->Acquire();
            auto lock = self.console->Lock();
            ConsoleStream& stream = self.console->Get(lock);
            return Wire{ValueOrThrow(stream.Read(
                std::chrono::milliseconds(static_cast<std::int64_t>(timeout_s * 1000.0))))};
          },
          py::arg("timeout"), Release(),
          "Bytes the guest printed within `timeout` seconds (maybe b\"\"); Unavailable once the "
          "console closed.")
      .def(
          "write",
          [](PyConsole& self, const std::string& data) {
            auto lease = self.host->Acquire();
            auto lock = self.console->Lock();
            ThrowIfError(self.console->Get(lock).Write(data));
          },
          py::arg("data"), Release(), "Sends bytes to the guest's serial port.")
      .def(
          "close", [](PyConsole& self) { self.console->Close(); }, Release(),
          "Detaches from the console. Idempotent.");

  py::class_<HostBox, std::shared_ptr<HostBox>>(m, "Host", "An open hci::Host. Use hci.Host.")
      .def_static("open", &Open, py::arg("config"), py::arg("on_log") = py::none(),
                  py::arg("on_event") = py::none(),
                  "Opens a host from serialized hci.v1.HostConfig bytes. on_log(level, "
                  "component, object_kind, object_name, message) and on_event(event bytes) are "
                  "the HostOptions sinks (None: stderr / none).")
      .def("close", &Close,
           "Destroys the host (GIL released): joins the backends' threads, delivers queued "
           "events. Idempotent.")
      .def_property_readonly("closed", &HostBox::closed, Release(), "True after close().")
      .def(
          "config", [](HostBox& self) { return ToWire(self.Acquire().host().config()); }, Release(),
          "Serialized effective hci.v1.HostConfig.")
      .def(
          "plugins",
          [](HostBox& self) {
            std::vector<Wire> out;
            for (const auto& info : self.Acquire().host().plugins()) {
              out.push_back(ToWire(info));
            }
            return out;
          },
          Release(), "Serialized hci.v1.PluginInfo of every plugin file the loader looked at.")
      .def(
          "subscribe",
          [](HostBox& self, py::function callback) {
            EventCallback deliver = MakeEventCallback(PyCallback(std::move(callback)));
            py::gil_scoped_release nogil;
            auto sub = std::make_unique<PySubscription>();
            sub->subscription = self.Acquire().host().Subscribe(std::move(deliver));
            return sub;
          },
          py::arg("callback"),
          "Registers callback(event bytes) for every event from now on; returns a Subscription.")
      .def(
          "flush_events", [](HostBox& self) { self.Acquire().host().FlushEvents(); }, Release(),
          "Blocks until every event published before the call was delivered to every "
          "subscriber; returns at once from an event callback.")
      .def(
          "list_operations",
          [](HostBox& self) {
            std::vector<Wire> out;
            for (const auto& op : self.Acquire().host().ListOperations()) {
              out.push_back(ToWire(op));
            }
            return out;
          },
          Release(), "Serialized hci.v1.OperationStatus of tracked operations, oldest first.")
      .def(
          "get_operation",
          [](HostBox& self, const std::string& id) {
            return PyOperation{ValueOrThrow(self.Acquire().host().GetOperation(id))};
          },
          py::arg("id"), Release(), "The tracked operation `id`; NotFound otherwise.")
      .def(
          "metrics", [](HostBox& self) { return Text{self.Acquire().host().Metrics()}; }, Release(),
          "Prometheus text of the core's and the backends' metrics.");
}

}  // namespace hci::python
