// Helpers shared by the example backends.
#include <string>
#include <utility>

#include "example_internal.h"
#include "hci/object_meta.h"

namespace example {

std::string Quote(std::string_view name) { return "\"" + std::string(name) + "\""; }

hci::Status Missing(std::string_view what, std::string_view name, std::string_view field) {
  std::string message = field.empty() ? "" : std::string(field) + ": ";
  return hci::NotFound(message + std::string(what) + " " + Quote(name) + " does not exist");
}

hci::Status SpecConflict(std::string_view what, std::string_view name,
                         const google::protobuf::Message& existing,
                         const google::protobuf::Message& requested) {
  return hci::AlreadyExists(std::string(what) + " " + Quote(name) +
                            " already exists with a different spec (" +
                            hci::DescribeSpecDifference(existing, requested) + ")");
}

hci::Status NotClaimed(std::string_view field, std::string_view feature) {
  return hci::Unimplemented(std::string(field) + ": " + std::string(feature) +
                            " is not implemented by the " + kPluginName + " plugin");
}

void PublishEvent(hci::PluginContext& context, std::string_view kind, std::string_view name,
                  std::string_view reason, std::string message) {
  hci::v1::Event event;
  event.set_type(hci::v1::EVENT_TYPE_NORMAL);
  event.mutable_object()->set_kind(std::string(kind));
  event.mutable_object()->set_name(std::string(name));
  event.set_reason(std::string(reason));
  event.set_message(std::move(message));
  context.events().Publish(event);
}

}  // namespace example
