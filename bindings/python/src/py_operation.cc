// hci._hci.Operation: a long operation's handle.
#include <algorithm>
#include <chrono>
#include <optional>
#include <string>

#include "py_objects_internal.h"

namespace hci::python {
namespace {

using std::chrono::milliseconds;

// Wait() runs in slices so that Ctrl-C (a signal handled by the main thread, between slices)
// interrupts a long wait instead of being ignored until the operation ends.
constexpr milliseconds kWaitSlice{100};

// Needs the GIL; releases it while waiting.
void Wait(const PyOperation& self, std::optional<double> timeout_s) {
  std::optional<milliseconds> timeout;
  if (timeout_s) {
    if (!(*timeout_s >= 0)) {
      throw StatusError(InvalidArgument("timeout: must be a number of seconds >= 0 or None"));
    }
    timeout = milliseconds(static_cast<std::int64_t>(*timeout_s * 1000.0));
  }
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    milliseconds step = kWaitSlice;
    if (timeout) {
      auto elapsed =
          std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start);
      step = std::clamp(*timeout - elapsed, milliseconds(0), kWaitSlice);
    }
    Status status;
    bool finished = false;
    {
      py::gil_scoped_release nogil;
      status = self.op.Wait(step);
      if (self.op.done()) {
        // Settled: this returns the final status at once (Wait(step) may have timed out just
        // before the operation finished).
        status = self.op.Wait(milliseconds(0));
        finished = true;
      }
    }
    if (finished) {
      ThrowIfError(status);
      return;
    }
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    if (timeout && std::chrono::steady_clock::now() - start >= *timeout) {
      v1::OperationStatus st;
      {
        py::gil_scoped_release nogil;
        st = self.op.status();
      }
      throw StatusError(DeadlineExceeded("operation " + st.id() + " (" + st.kind() +
                                         ") is still running after " +
                                         std::to_string(timeout->count()) + " ms"));
    }
  }
}

}  // namespace

void BindOperation(py::module_& m) {
  using Release = py::call_guard<py::gil_scoped_release>;
  py::class_<PyOperation>(m, "Operation",
                          "Handle on a long operation (hci::Operation). Use hci.Operation.")
      .def_property_readonly(
          "id", [](const PyOperation& self) { return self.op.id(); }, Release(),
          "Unique id within the process, e.g. \"op-42\".")
      .def(
          "status", [](const PyOperation& self) { return ToWire(self.op.status()); }, Release(),
          "Serialized hci.v1.OperationStatus.")
      .def(
          "done", [](const PyOperation& self) { return self.op.done(); }, Release(),
          "True once finished and the final progress callbacks ran.")
      .def("wait", &Wait, py::arg("timeout") = py::none(),
           "Blocks (GIL released) until the operation finishes or `timeout` seconds pass; raises "
           "the mapped hci.Error for a failed operation and DeadlineExceeded on timeout.")
      .def(
          "cancel", [](const PyOperation& self) { ThrowIfError(self.op.Cancel()); }, Release(),
          "Asks the operation to stop; FailedPrecondition when finished, Unimplemented when not "
          "cancellable.")
      .def(
          "on_progress",
          [](const PyOperation& self, py::function callback) {
            PyCallback cb(std::move(callback));
            py::gil_scoped_release nogil;
            self.op.OnProgress([cb](const v1::OperationStatus& status) {
              std::string wire = status.SerializeAsString();
              cb.Call([&] { return py::make_tuple(py::bytes(wire)); });
            });
          },
          py::arg("callback"),
          "Calls callback(bytes of hci.v1.OperationStatus) after every update and once at the "
          "end, from the updating thread with the GIL held.");
}

}  // namespace hci::python
