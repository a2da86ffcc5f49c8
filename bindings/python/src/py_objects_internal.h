// The C++ objects behind the extension's Python classes, and the functions that register them.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "hci/compute.h"
#include "hci/host.h"
#include "hci/operation.h"
#include "py_support_internal.h"

namespace hci::python {

class ConsoleBox;

/// Owns a Host for Python. Backend, console and host objects share it, so that Host.close() can
/// destroy the Host while Python still holds references to them: calls made after the close
/// raise FailedPrecondition instead of touching a destroyed backend.
class HostBox {
 public:
  explicit HostBox(std::unique_ptr<Host> host) : host_(std::move(host)) {}
  ~HostBox();

  /// A shared hold on the open Host: Close() waits until every lease is gone.
  class Lease {
   public:
    Host& host() const { return *host_; }

   private:
    friend class HostBox;
    Lease(std::shared_lock<std::shared_mutex> lock, Host* host)
        : lock_(std::move(lock)), host_(host) {}
    std::shared_lock<std::shared_mutex> lock_;
    Host* host_;
  };

  /// Throws StatusError(FailedPrecondition) once the Host is closed. No GIL needed.
  Lease Acquire();

  /// Closes the live consoles, then destroys the Host (its backends' threads are joined and the
  /// event bus delivers what is queued). Waits for calls in flight. Idempotent. Call it without
  /// the GIL: the threads it joins may be waiting for it in a Python callback.
  void Close();
  bool closed();

  /// Registers a console to be closed before the Host goes.
  void AddConsole(const std::shared_ptr<ConsoleBox>& console);

 private:
  std::shared_mutex mu_;
  std::unique_ptr<Host> host_;  // guarded by mu_
  std::mutex consoles_mu_;
  std::vector<std::weak_ptr<ConsoleBox>> consoles_;  // guarded by consoles_mu_
};

/// A live console: the stream is dropped by Console.close() or when its Host closes.
class ConsoleBox {
 public:
  explicit ConsoleBox(std::unique_ptr<ConsoleStream> stream) : stream_(std::move(stream)) {}
  /// The stream, or FailedPrecondition when closed. Hold `lock` while using it.
  ConsoleStream& Get(std::unique_lock<std::mutex>& lock);
  std::unique_lock<std::mutex> Lock() { return std::unique_lock(mu_); }
  void Close();

 private:
  std::mutex mu_;
  std::unique_ptr<ConsoleStream> stream_;
};

/// hci._hci.Operation.
struct PyOperation {
  Operation op;
};

/// hci._hci.Console.
struct PyConsole {
  std::shared_ptr<HostBox> host;
  std::shared_ptr<ConsoleBox> console;
};

void BindOperation(py::module_& m);
void BindHost(py::module_& m);
void BindBackends(py::module_& m);
void BindFunctions(py::module_& m);

}  // namespace hci::python
