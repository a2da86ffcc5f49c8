// libFuzzer target for hci::ParseYaml and hci::ToYaml. For each input and each of HostConfig,
// VirtualMachine and the test-only KitchenSink (every field kind), it checks that:
// - ParseYaml does not crash, and fails only with InvalidArgument, a message, and an empty result;
// - what ParseYaml accepts, ToYaml writes so that ParseYaml reads back the same message, and
//   writing that again gives the same text.
// A broken check aborts, which libFuzzer (and the replay test) reports as a crash.
#include <google/protobuf/message.h>
#include <google/protobuf/util/field_comparator.h>
#include <google/protobuf/util/message_differencer.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "hci/v1/compute.pb.h"
#include "hci/v1/host.pb.h"
#include "hci/yaml.h"
#include "yaml_kitchen_sink.h"

namespace {

namespace pb = google::protobuf;

[[noreturn]] void Fail(std::string_view what, const pb::Message& type, std::string_view input,
                       std::string_view detail) {
  std::fprintf(stderr, "yaml_fuzzer: %.*s (%s)\n--- input ---\n%.*s\n--- detail ---\n%.*s\n",
               static_cast<int>(what.size()), what.data(), type.GetTypeName().c_str(),
               static_cast<int>(input.size()), input.data(), static_cast<int>(detail.size()),
               detail.data());
  std::abort();
}

void Check(const pb::Message& prototype, std::string_view input) {
  std::unique_ptr<pb::Message> message(prototype.New());
  const hci::Status status = hci::ParseYaml(input, message.get());
  if (!status.ok()) {
    if (status.code() != hci::StatusCode::kInvalidArgument || status.message().empty()) {
      Fail("ParseYaml failed with something other than an InvalidArgument sentence", prototype,
           input, status.ToString());
    }
    if (message->ByteSizeLong() != 0) {
      Fail("ParseYaml left a half-filled message after an error", prototype, input,
           message->DebugString());
    }
    return;
  }
  const std::string yaml = hci::ToYaml(*message);
  std::unique_ptr<pb::Message> again(prototype.New());
  const hci::Status reparsed = hci::ParseYaml(yaml, again.get());
  if (!reparsed.ok()) {
    Fail("ParseYaml rejects what ToYaml wrote", prototype, input,
         reparsed.ToString() + "\n--- ToYaml ---\n" + yaml);
  }
  pb::util::DefaultFieldComparator comparator;
  comparator.set_treat_nan_as_equal(true);
  pb::util::MessageDifferencer differencer;
  differencer.set_field_comparator(&comparator);
  std::string diff;
  differencer.ReportDifferencesToString(&diff);
  if (!differencer.Compare(*message, *again)) {
    Fail("ParseYaml(ToYaml(m)) != m", prototype, input, diff + "\n--- ToYaml ---\n" + yaml);
  }
  const std::string yaml_again = hci::ToYaml(*again);
  if (yaml_again != yaml) {
    Fail("ToYaml is not stable across a round trip", prototype, input,
         yaml + "\n--- then ---\n" + yaml_again);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  Check(hci::v1::HostConfig::default_instance(), input);
  Check(hci::v1::VirtualMachine::default_instance(), input);
  Check(hci::testing::KitchenSinkPrototype(), input);
  return 0;
}
