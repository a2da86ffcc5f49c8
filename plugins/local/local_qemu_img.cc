// qemu-img, run with an argv through hci::process, and the parser of its JSON output.
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <utility>

#include "local_internal.h"
#include "process/process.h"

namespace hci::local {
namespace {

namespace json = boost::json;

// Metadata commands on a local file finish in well under a second; a minute means qemu-img is
// stuck (e.g. on a hung file system), which must not hang the caller forever.
constexpr std::chrono::milliseconds kMetadataTimeout = std::chrono::minutes(1);
// Resizes and snapshots touch only metadata too, but may have to write refcount tables.
constexpr std::chrono::milliseconds kUpdateTimeout = std::chrono::minutes(10);

Result<std::uint64_t> Unsigned(const json::object& obj, std::string_view key, bool required) {
  const json::value* v = obj.if_contains(key);
  if (v == nullptr) {
    if (required) return InvalidArgument(std::string(key) + ": missing in qemu-img's output");
    return std::uint64_t{0};
  }
  if (const auto* u = v->if_uint64()) return *u;
  if (const auto* i = v->if_int64(); i != nullptr && *i >= 0) {
    return static_cast<std::uint64_t>(*i);
  }
  return InvalidArgument(std::string(key) + ": not a non-negative integer in qemu-img's output");
}

std::string String(const json::object& obj, std::string_view key) {
  const json::value* v = obj.if_contains(key);
  if (v == nullptr || !v->is_string()) return "";
  return std::string(v->get_string());
}

}  // namespace

Result<ImageInfo> ParseImageInfo(std::string_view text) {
  boost::system::error_code ec;
  json::value root = json::parse(text, ec);
  if (ec) return InvalidArgument("qemu-img info: output is not JSON: " + ec.message());
  const json::object* obj = root.if_object();
  if (obj == nullptr) return InvalidArgument("qemu-img info: output is not a JSON object");
  ImageInfo info;
  info.format = String(*obj, "format");
  if (info.format.empty()) return InvalidArgument("format: missing in qemu-img's output");
  HCI_ASSIGN_OR_RAISE(info.virtual_size, Unsigned(*obj, "virtual-size", true));
  HCI_ASSIGN_OR_RAISE(info.actual_size, Unsigned(*obj, "actual-size", false));
  info.backing_filename = String(*obj, "backing-filename");
  if (const json::value* snaps = obj->if_contains("snapshots")) {
    if (const json::array* list = snaps->if_array()) {
      for (const auto& s : *list) {
        if (const json::object* so = s.if_object()) info.snapshots.push_back(String(*so, "name"));
      }
    }
  }
  // VMDK descriptors name their extent files; the import refuses any that is not the image.
  if (const json::value* fs = obj->if_contains("format-specific")) {
    const json::object* fso = fs->if_object();
    const json::value* data = fso != nullptr ? fso->if_contains("data") : nullptr;
    const json::object* datao = data != nullptr ? data->if_object() : nullptr;
    const json::value* extents = datao != nullptr ? datao->if_contains("extents") : nullptr;
    if (datao != nullptr) info.data_file = String(*datao, "data-file");
    if (extents != nullptr && extents->is_array()) {
      for (const auto& e : extents->get_array()) {
        if (const json::object* eo = e.if_object()) {
          info.extent_files.push_back(String(*eo, "filename"));
        }
      }
    }
  }
  return info;
}

Status QemuImg::RunChecked(std::vector<std::string> args, std::string_view what,
                           std::chrono::milliseconds timeout, std::function<bool()> cancelled,
                           std::string* stdout_data) const {
  process::RunOptions options;
  options.argv.reserve(args.size() + 1);
  options.argv.push_back(program_);
  for (auto& a : args) options.argv.push_back(std::move(a));
  options.timeout = timeout;
  options.cancel_requested = std::move(cancelled);
  // qemu-img's messages are parsed for the lock case: keep them in English.
  options.env = {{"LC_ALL", "C"}};
  HCI_ASSIGN_OR_RAISE(process::RunResult result, process::Run(options));
  Status status = process::CheckExit(result, what);
  if (!status.ok()) {
    const std::string& err = result.stderr_data;
    // "Failed to get "write" lock" / "Failed to get shared "write" lock": a running QEMU (or
    // another qemu-img) has the image open.
    if (err.find("Failed to get") != std::string::npos && err.find("lock") != std::string::npos) {
      return FailedPrecondition(
          std::string(what) +
          ": the image is in use by another process (a running VM?): " + process::Tail(err, 300));
    }
    return status;
  }
  if (stdout_data != nullptr) *stdout_data = std::move(result.stdout_data);
  return Status();
}

Result<ImageInfo> QemuImg::Info(const std::string& path, std::string_view format,
                                bool force_share) const {
  std::vector<std::string> args = {"info", "--output=json"};
  if (!format.empty()) {
    args.push_back("-f");
    args.push_back(std::string(format));
  }
  if (force_share) args.push_back("-U");
  args.push_back(path);
  std::string out;
  HCI_RETURN_NOT_OK(RunChecked(std::move(args), "qemu-img info", kMetadataTimeout, nullptr, &out));
  auto info = ParseImageInfo(out);
  if (!info.ok()) return Internal(info.status().message() + " (for \"" + path + "\")");
  return info;
}

Status QemuImg::Create(const std::string& path, std::uint64_t size, const std::string& backing,
                       std::string_view backing_format) const {
  std::vector<std::string> args = {"create", "-q", "-f", "qcow2"};
  if (!backing.empty()) {
    args.insert(args.end(), {"-b", backing, "-F", std::string(backing_format)});
  }
  args.push_back(path);
  args.push_back(std::to_string(size));
  return RunChecked(std::move(args), "qemu-img create", kMetadataTimeout, nullptr, nullptr);
}

Status QemuImg::Convert(const std::string& src, std::string_view src_format, const std::string& dst,
                        const std::string& snapshot, std::function<bool()> cancelled) const {
  std::vector<std::string> args = {"convert", "-q", "-f", std::string(src_format), "-O", "qcow2"};
  if (!snapshot.empty()) args.insert(args.end(), {"-l", "snapshot.name=" + snapshot});
  args.push_back(src);
  args.push_back(dst);
  // Copies data: as long as it takes, but cancellable.
  return RunChecked(std::move(args), "qemu-img convert", std::chrono::milliseconds(0),
                    std::move(cancelled), nullptr);
}

Status QemuImg::Resize(const std::string& path, std::uint64_t size) const {
  return RunChecked({"resize", "-q", "-f", "qcow2", path, std::to_string(size)}, "qemu-img resize",
                    kUpdateTimeout, nullptr, nullptr);
}

Status QemuImg::Snapshot(char op, const std::string& name, const std::string& path) const {
  return RunChecked({"snapshot", std::string("-") + op, name, path},
                    std::string("qemu-img snapshot -") + op, kUpdateTimeout, nullptr, nullptr);
}

}  // namespace hci::local
