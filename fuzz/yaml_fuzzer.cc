// libFuzzer target for hci::ParseYaml, hci::ToYaml and hci::ParseManifests. For each input and each
// of HostConfig, VirtualMachine and the test-only KitchenSink (every field kind), it checks that:
// - ParseYaml does not crash, and fails only with InvalidArgument, a message, and an empty result;
// - what ParseYaml accepts, ToYaml writes so that ParseYaml reads back the same message, and
//   writing that again gives the same text.
// It also feeds each input to hci::ParseManifests (see CheckManifests). Manifests expand
// ${NAME} from the environment; the fuzzer leaves the environment as it finds it.
// A broken check aborts, which libFuzzer (and the replay test) reports as a crash.
#include <google/protobuf/message.h>
#include <google/protobuf/util/field_comparator.h>
#include <google/protobuf/util/message_differencer.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

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
  const hci::Result<std::string> written = hci::ToYaml(*message);
  if (!written.ok()) {
    Fail("ToYaml refuses what ParseYaml accepted", prototype, input, written.status().ToString());
  }
  const std::string& yaml = *written;
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
  const hci::Result<std::string> yaml_again = hci::ToYaml(*again);
  if (!yaml_again.ok() || *yaml_again != yaml) {
    Fail("ToYaml is not stable across a round trip", prototype, input,
         yaml + "\n--- then ---\n" +
             (yaml_again.ok() ? *yaml_again : yaml_again.status().ToString()));
  }
}

// ParseManifests: fails only with an InvalidArgument sentence that names the document and line
// ("document N (line L): ...", or "line L: ..." for bytes that are not text); each object it
// returns has a known kind, a name, a document number and line within the input, no status,
// and writes out and reads back as the same message.
void CheckManifests(std::string_view input) {
  const hci::Result<std::vector<hci::ManifestObject>> objects = hci::ParseManifests(input);
  if (!objects.ok()) {
    const hci::Status& status = objects.status();
    const std::string& message = status.message();
    if (status.code() != hci::StatusCode::kInvalidArgument ||
        (message.rfind("document ", 0) != 0 && message.rfind("line ", 0) != 0)) {
      Fail("ParseManifests failed without an InvalidArgument naming the document or line",
           hci::v1::VirtualMachine::default_instance(), input, status.ToString());
    }
    return;
  }
  const auto lines = static_cast<int>(std::count(input.begin(), input.end(), '\n')) + 1;
  int previous_document = 0;
  for (const hci::ManifestObject& object : *objects) {
    const pb::Message& m = *object.object;
    const pb::Descriptor* d = m.GetDescriptor();
    if (d->full_name() != "hci.v1." + object.kind || object.line < 1 || object.line > lines ||
        object.document <= previous_document) {
      Fail("ParseManifests returned an inconsistent object", m, input,
           object.kind + " line " + std::to_string(object.line) + " document " +
               std::to_string(object.document));
    }
    previous_document = object.document;
    const pb::Reflection* r = m.GetReflection();
    const pb::Message& meta = r->GetMessage(m, d->FindFieldByName("metadata"));
    if (r->HasField(m, d->FindFieldByName("status")) ||
        meta.GetReflection()
            ->GetString(meta, meta.GetDescriptor()->FindFieldByName("name"))
            .empty()) {
      Fail("ParseManifests returned an object with a status or without a name", m, input,
           m.DebugString());
    }
    const hci::Result<std::string> yaml = hci::ToYaml(m);
    std::unique_ptr<pb::Message> again(m.New());
    if (!yaml.ok() || !hci::ParseYaml(*yaml, again.get()).ok() ||
        !pb::util::MessageDifferencer::Equals(m, *again)) {
      Fail("a manifest object does not round-trip through ToYaml", m, input,
           yaml.ok() ? *yaml : yaml.status().ToString());
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  Check(hci::v1::HostConfig::default_instance(), input);
  Check(hci::v1::VirtualMachine::default_instance(), input);
  Check(hci::testing::KitchenSinkPrototype(), input);
  CheckManifests(input);
  return 0;
}
