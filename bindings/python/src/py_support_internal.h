// What every part of the `hci._hci` extension shares: the bytes/str return types that are built
// only once the GIL is held again, the C++ exception that carries a non-OK hci::Status to the
// translator, and Python callables that C++ threads may call, copy and destroy.
//
// The rules these helpers enforce:
// - Every call into libhci runs with the GIL released (py::call_guard<py::gil_scoped_release> or
//   an explicit py::gil_scoped_release), so that a blocking backend call in one Python thread
//   never stops another. Functions that run without the GIL take and return plain C++ values
//   (std::string, Wire, Text) and report errors by throwing StatusError; pybind11 converts the
//   result and translates the error after it has taken the GIL back.
// - A Python object is only touched with the GIL held. Callbacks stored inside libhci (progress,
//   events, log lines) are PyCallback objects, whose last copy takes the GIL to drop the
//   reference, on whichever thread it dies.
#pragma once

#include <Python.h>
#include <pybind11/pybind11.h>

#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "hci/result.h"
#include "hci/status.h"

namespace hci::python {

namespace py = pybind11;

/// Serialized protobuf message (or any byte string) returned to Python as `bytes`.
struct Wire {
  std::string data;
};

/// Text returned to Python as `str`; bytes that are not UTF-8 (a path in an error, a guest's
/// console output in a message) become U+FFFD instead of raising UnicodeDecodeError.
struct Text {
  std::string data;
};

/// A non-OK hci::Status travelling from C++ (possibly without the GIL) to the exception
/// translator, which raises the matching hci.Error subclass.
class StatusError : public std::exception {
 public:
  explicit StatusError(Status status) : status_(std::move(status)) {}
  const Status& status() const { return status_; }
  const char* what() const noexcept override { return status_.message().c_str(); }

 private:
  Status status_;
};

/// Throws StatusError unless `status` is OK.
inline void ThrowIfError(const Status& status) {
  if (!status.ok()) throw StatusError(status);
}

/// The value of `result`, or throws StatusError.
template <typename T>
T ValueOrThrow(Result<T> result) {
  if (!result.ok()) throw StatusError(result.status());
  return std::move(result).MoveValueUnsafe();
}

/// Parses `data` into a `T`; InvalidArgument naming the message type when it is not one.
template <typename T>
T ParseOrThrow(const std::string& data, std::string_view what) {
  T message;
  if (!message.ParseFromString(data)) {
    throw StatusError(InvalidArgument(std::string(what) + ": cannot parse the bytes as " +
                                      T::descriptor()->full_name()));
  }
  return message;
}

template <typename T>
Wire ToWire(const T& message) {
  return Wire{message.SerializeAsString()};
}

/// `text` as a Python str, invalid UTF-8 replaced. Needs the GIL.
py::str Utf8(std::string_view text);

/// True once Python is shutting down (hci's atexit hook ran, or the interpreter is finalizing):
/// callbacks are then dropped instead of run, and Python references leaked instead of released,
/// because a thread that asks for the GIL during finalization never gets it back.
bool PythonGone();
/// Called by hci's atexit hook (hci._hci._shutdown).
void MarkPythonGone();

/// True on a thread that is running one of hci's Python callbacks right now (event, progress or
/// log). Host.close() refuses to run there: it joins the threads that run callbacks.
bool InCallback();

/// Raises the Python exception for `status` (through the factory registered by hci/__init__.py)
/// in the current thread. Needs the GIL.
void SetPythonError(const Status& status);
/// Registers `factory(code: int, message: str) -> hci.Error` for SetPythonError. Needs the GIL.
void SetErrorFactory(py::object factory);

/// A Python callable that C++ threads may copy, call and destroy. Calls take the GIL; an
/// exception raised by the callable is printed (sys.unraisablehook) and never propagates into
/// libhci. The last copy releases the reference under the GIL.
class PyCallback {
 public:
  PyCallback() = default;
  /// Needs the GIL.
  explicit PyCallback(py::object callable);

  explicit operator bool() const { return static_cast<bool>(callable_); }

  /// Calls the callable with `args` built under the GIL by `make_args`, a function returning a
  /// py::tuple. Does nothing once Python is shutting down.
  template <typename MakeArgs>
  void Call(MakeArgs&& make_args) const {
    if (!callable_ || PythonGone()) return;
    py::gil_scoped_acquire gil;
    try {
      CallLocked(std::forward<MakeArgs>(make_args)());
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("hci callback arguments");
    }
  }

 private:
  struct Release {
    void operator()(py::object* object) const;
  };
  void CallLocked(const py::tuple& args) const;

  std::shared_ptr<py::object> callable_;
};

}  // namespace hci::python

namespace pybind11::detail {

template <>
struct type_caster<hci::python::Wire> {
  PYBIND11_TYPE_CASTER(hci::python::Wire, const_name("bytes"));
  bool load(handle, bool) { return false; }
  static handle cast(const hci::python::Wire& wire, return_value_policy, handle) {
    return PyBytes_FromStringAndSize(wire.data.data(), static_cast<Py_ssize_t>(wire.data.size()));
  }
};

template <>
struct type_caster<hci::python::Text> {
  PYBIND11_TYPE_CASTER(hci::python::Text, const_name("str"));
  bool load(handle, bool) { return false; }
  static handle cast(const hci::python::Text& text, return_value_policy, handle) {
    return hci::python::Utf8(text.data).release();
  }
};

}  // namespace pybind11::detail
