// The `hci._hci` extension module: libhci for the pure-Python `hci` package, which converts the
// bytes it takes and returns to and from the generated hci.v1 message classes.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "hci/host.h"
#include "hci/names.h"
#include "hci/plugin.h"
#include "hci/version.h"
#include "hci/yaml.h"
#include "py_objects_internal.h"

namespace hci::python {
namespace {

using google::protobuf::Message;

// An empty message of the generated type `full_name` (hci.v1.* or a well-known type).
std::unique_ptr<Message> NewMessage(const std::string& full_name) {
  const auto* descriptor =
      google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(full_name);
  if (descriptor == nullptr) {
    throw StatusError(InvalidArgument("message type: \"" + full_name +
                                      "\" is not a message type libhci was built with"));
  }
  const Message* prototype =
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(descriptor);
  return std::unique_ptr<Message>(prototype->New());
}

Wire ParseYamlText(const std::string& text, const std::string& full_name) {
  auto message = NewMessage(full_name);
  ThrowIfError(ParseYaml(text, message.get()));
  return Wire{message->SerializeAsString()};
}

Wire LoadYaml(const std::string& path, const std::string& full_name) {
  auto message = NewMessage(full_name);
  ThrowIfError(LoadYamlFile(path, message.get()));
  return Wire{message->SerializeAsString()};
}

Text ToYamlText(const std::string& full_name, const std::string& data) {
  auto message = NewMessage(full_name);
  if (!message->ParseFromString(data)) {
    throw StatusError(InvalidArgument("message: cannot parse the bytes as " + full_name));
  }
  return Text{ValueOrThrow(ToYaml(*message))};
}

std::vector<std::tuple<std::string, Wire, int, int>> ParseManifestText(const std::string& text) {
  std::vector<std::tuple<std::string, Wire, int, int>> out;
  for (const auto& object : ValueOrThrow(ParseManifests(text))) {
    out.emplace_back(object.kind, Wire{object.object->SerializeAsString()}, object.line,
                     object.document);
  }
  return out;
}

}  // namespace

void BindFunctions(py::module_& m) {
  using Release = py::call_guard<py::gil_scoped_release>;
  m.attr("VERSION") = HCI_VERSION_STRING;
  m.attr("PLUGIN_ABI_VERSION") = kPluginAbiVersion;
  m.attr("MAX_NAME_LENGTH") = kMaxNameLength;
  m.def(
      "status_code_name",
      [](int code) { return std::string(StatusCodeName(static_cast<StatusCode>(code))); },
      py::arg("code"), "\"InvalidArgument\", \"NotFound\", ...; \"Code(N)\" outside the enum.");
  m.def(
      "is_valid_name", [](const std::string& name) { return IsValidName(name); }, py::arg("name"),
      "True for an RFC 1123 label (hci::IsValidName).");
  m.def(
      "validate_name",
      [](const std::string& field, const std::string& name) {
        ThrowIfError(ValidateName(field, name));
      },
      py::arg("field"), py::arg("name"), "hci::ValidateName: raises InvalidArgument naming field.");
  m.def(
      "load_config",
      [](const std::string& path) { return ToWire(ValueOrThrow(Host::LoadConfig(path))); },
      py::arg("path"), Release(), "Host::LoadConfig: serialized hci.v1.HostConfig.");
  m.def(
      "default_state_dir", [] { return Text{Host::DefaultStateDir()}; }, Release(),
      "Host::DefaultStateDir.");
  m.def("parse_yaml", &ParseYamlText, py::arg("text"), py::arg("type"), Release(),
        "hci::ParseYaml into a new message of the type named `type`; serialized.");
  m.def("load_yaml_file", &LoadYaml, py::arg("path"), py::arg("type"), Release(),
        "hci::LoadYamlFile into a new message of the type named `type`; serialized.");
  m.def("to_yaml", &ToYamlText, py::arg("type"), py::arg("data"), Release(),
        "hci::ToYaml of the serialized message of the type named `type`.");
  m.def("parse_manifests", &ParseManifestText, py::arg("text"), Release(),
        "hci::ParseManifests: a list of (kind, serialized hci.v1.<kind>, line, document).");
  m.def("_set_error_factory", &SetErrorFactory, py::arg("factory"),
        "Registers factory(code, message) -> exception, used for every non-OK status.");
  m.def("_shutdown", &MarkPythonGone,
        "Called at exit: callbacks from libhci threads are dropped from now on.");
  m.def(
      "_in_callback", [] { return InCallback(); },
      "True inside an hci callback on this thread (for tests).");
}

}  // namespace hci::python

PYBIND11_MODULE(_hci, m) {
  using namespace hci::python;  // NOLINT(build/namespaces): the module's own namespace
  m.doc() =
      "libhci's C++ core for the `hci` package: takes and returns serialized hci.v1 messages. "
      "Use `import hci`, not this module.";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      SetPythonError(e.status());
    }
  });
  BindFunctions(m);
  BindOperation(m);
  BindHost(m);
  BindBackends(m);
}
