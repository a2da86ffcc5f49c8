// STUB: replaced by the real YAML <-> protobuf mapping.
#include "hci/yaml.h"

namespace hci {
Status ParseYaml(std::string_view, google::protobuf::Message* message) {
  message->Clear();
  return Unimplemented("ParseYaml");
}
Status LoadYamlFile(const std::string&, google::protobuf::Message* message) {
  message->Clear();
  return Unimplemented("LoadYamlFile");
}
std::string ToYaml(const google::protobuf::Message&) { return ""; }
}  // namespace hci
