#include <atomic>
#include <string>

#include "py_support_internal.h"

namespace hci::python {
namespace {

std::atomic<bool> g_gone{false};
// Depth of hci callbacks running on this thread (a callback may call hci, which may call back).
thread_local int t_callback_depth = 0;

}  // namespace

py::str Utf8(std::string_view text) {
  PyObject* str =
      PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "replace");
  if (str == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(str);
}

bool PythonGone() {
  if (g_gone.load(std::memory_order_acquire)) return true;
#if PY_VERSION_HEX >= 0x030D0000
  return !Py_IsInitialized() || Py_IsFinalizing();
#else
  return !Py_IsInitialized() || _Py_IsFinalizing();
#endif
}

void MarkPythonGone() { g_gone.store(true, std::memory_order_release); }

bool InCallback() { return t_callback_depth > 0; }

// Set once by hci/__init__.py (_set_error_factory) and deliberately never released: it is needed
// until the interpreter is gone, and releasing it at exit would need the GIL.
py::object* g_error_factory = nullptr;

void SetPythonError(const Status& status) {
  if (g_error_factory == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, status.ToString().c_str());
    return;
  }
  try {
    py::object error = (*g_error_factory)(static_cast<int>(status.code()), Utf8(status.message()));
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())), error.ptr());
  } catch (py::error_already_set& e) {
    e.restore();
  }
}

void SetErrorFactory(py::object factory) {
  delete g_error_factory;
  g_error_factory = new py::object(std::move(factory));
}

PyCallback::PyCallback(py::object callable)
    : callable_(new py::object(std::move(callable)), Release{}) {}

void PyCallback::Release::operator()(py::object* object) const {
  if (PythonGone()) {
    // Leak the reference: asking for the GIL now could block this thread for good.
    (void)object->release();
    delete object;
    return;
  }
  py::gil_scoped_acquire gil;
  delete object;
}

void PyCallback::CallLocked(const py::tuple& args) const {
  ++t_callback_depth;
  try {
    (*callable_)(*args);
  } catch (py::error_already_set& e) {
    // The Python layer prints its callbacks' exceptions itself; this is the last resort.
    e.discard_as_unraisable(*callable_);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    PyErr_WriteUnraisable(callable_->ptr());
  }
  --t_callback_depth;
}

}  // namespace hci::python
