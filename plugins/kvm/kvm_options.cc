// Parsing of the kvm plugin's binding options (backends.compute.options in the host config).
#include <string>

#include "hci/options.h"
#include "kvm_internal.h"

namespace hci::kvm {
namespace {

using std::chrono::milliseconds;

// Milliseconds in [min, max] as the uint32 the Options fields hold.
Status ReadMillis(OptionsReader& reader, std::string_view key, std::uint32_t* value,
                  milliseconds min, milliseconds max) {
  HCI_ASSIGN_OR_RAISE(auto ms, reader.Millis(key, milliseconds(*value), min, max));
  *value = static_cast<std::uint32_t>(ms.count());
  return Status();
}

}  // namespace

Result<Options> ParseOptions(const google::protobuf::Struct& options) {
  Options out;
  OptionsReader reader(options, "");
  HCI_ASSIGN_OR_RAISE(out.accel, reader.String("accel", out.accel));
  if (out.accel != "auto" && out.accel != "kvm" && out.accel != "tcg") {
    return InvalidArgument(reader.Field("accel") + ": \"" + out.accel +
                           "\" is not an accelerator (expected auto, kvm or tcg)");
  }
  HCI_ASSIGN_OR_RAISE(out.qemu_binary, reader.String("qemu_binary", out.qemu_binary));
  HCI_ASSIGN_OR_RAISE(out.machine_type, reader.String("machine_type", out.machine_type));
  const auto& m = out.machine_type;
  if (m != "q35" && m != "pc" && !m.starts_with("pc-q35-") && !m.starts_with("pc-i440fx-")) {
    return InvalidArgument(reader.Field("machine_type") + ": \"" + m +
                           "\" is not a machine type (expected q35, pc, pc-q35-* or "
                           "pc-i440fx-*)");
  }
  constexpr milliseconds kHour = std::chrono::hours(1);
  HCI_RETURN_NOT_OK(
      ReadMillis(reader, "start_timeout_ms", &out.start_timeout_ms, milliseconds(1'000), kHour));
  HCI_RETURN_NOT_OK(ReadMillis(reader, "kvm_probe_timeout_ms", &out.kvm_probe_timeout_ms,
                               milliseconds(100), milliseconds(600'000)));
  HCI_RETURN_NOT_OK(ReadMillis(reader, "restart_backoff_initial_ms",
                               &out.restart_backoff_initial_ms, milliseconds(0), kHour));
  HCI_RETURN_NOT_OK(ReadMillis(reader, "restart_backoff_max_ms", &out.restart_backoff_max_ms,
                               milliseconds(0), kHour));
  HCI_RETURN_NOT_OK(ReadMillis(reader, "restart_backoff_reset_ms", &out.restart_backoff_reset_ms,
                               milliseconds(0), 24 * kHour));
  HCI_RETURN_NOT_OK(ReadMillis(reader, "powerdown_retry_ms", &out.powerdown_retry_ms,
                               milliseconds(0), kHour));
  HCI_RETURN_NOT_OK(reader.RejectUnknown());
  if (out.restart_backoff_max_ms < out.restart_backoff_initial_ms) {
    return InvalidArgument(reader.Field("restart_backoff_max_ms") + ": " +
                           std::to_string(out.restart_backoff_max_ms) +
                           " is less than restart_backoff_initial_ms (" +
                           std::to_string(out.restart_backoff_initial_ms) + ")");
  }
  return out;
}

}  // namespace hci::kvm
