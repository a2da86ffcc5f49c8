// The on-disk store shared by the local storage and image backends: records, layout, recovery.
#include <google/protobuf/util/json_util.h>
#include <sys/stat.h>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <filesystem>
#include <system_error>

#include "hci/names.h"
#include "local_internal.h"

namespace hci::local {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;

// Records carry this tag so that a future layout can tell them apart.
constexpr char kRecordVersion[] = "local.hci/v1";

std::string ToJson(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = false;
  // Only fails for messages with unresolvable Any fields, which these do not have.
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

// Reads `path` into `out`.
Status ReadFile(const std::string& path, std::string& out) {
  FILE* f = std::fopen(path.c_str(), "rbe");
  if (f == nullptr) return ErrnoStatus(errno, "open \"" + path + "\"");
  char buf[65536];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return Internal("read \"" + path + "\" failed");
  return Status();
}

// The record file `path` parsed as a JSON object whose "version" is ours.
Result<json::object> ReadRecord(const std::string& path) {
  std::string text;
  HCI_RETURN_NOT_OK(ReadFile(path, text));
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec) return DataLoss("\"" + path + "\" is not JSON: " + ec.message());
  json::object* obj = v.if_object();
  if (obj == nullptr) return DataLoss("\"" + path + "\" is not a JSON object");
  const json::value* version = obj->if_contains("version");
  if (version == nullptr || !version->is_string() || version->get_string() != kRecordVersion) {
    return DataLoss("\"" + path + "\" is not a " + std::string(kRecordVersion) + " record");
  }
  return std::move(*obj);
}

// Member `key` of a record, as protobuf message `out`.
Status Member(const json::object& record, std::string_view key, google::protobuf::Message* out,
              const std::string& path) {
  const json::value* v = record.if_contains(key);
  if (v == nullptr || !v->is_object()) {
    return DataLoss("\"" + path + "\": member \"" + std::string(key) + "\" is missing");
  }
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;  // written by a newer version: keep what we know
  auto status = google::protobuf::util::JsonStringToMessage(json::serialize(*v), out, options);
  if (!status.ok()) {
    return DataLoss("\"" + path + "\": member \"" + std::string(key) +
                    "\": " + std::string(status.message()));
  }
  return Status();
}

Status MakeDir(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, "state_dir: mkdir \"" + path + "\"");
  }
  return Status();
}

// Entries of `dir` (none when it cannot be read).
std::vector<fs::directory_entry> List(const std::string& dir) {
  std::vector<fs::directory_entry> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    out.push_back(*it);
  }
  return out;
}

// Leftover temporary record files (".<name>.json.tmp.<pid>.<n>") from an interrupted write.
void RemoveTempRecords(const std::string& dir) {
  for (const auto& e : List(dir)) {
    std::string name = e.path().filename();
    if (!name.empty() && name.front() == '.' && name.find(".tmp.") != std::string::npos) {
      std::error_code ec;
      fs::remove(e.path(), ec);
    }
  }
}

std::mutex registry_mu;
std::map<std::string, std::weak_ptr<Store>>& Registry() {
  static auto* registry = new std::map<std::string, std::weak_ptr<Store>>();
  return *registry;
}

}  // namespace

Result<std::shared_ptr<Store>> Store::Open(PluginContext& context) {
  // One store per state directory in this process: the storage and image backends of a Host
  // share it. Keyed by the directory, which is unique per Host (one Host per state_dir).
  const std::string& root = context.state_dir();
  std::lock_guard lock(registry_mu);
  auto& registry = Registry();
  std::erase_if(registry, [](const auto& entry) { return entry.second.expired(); });
  if (auto it = registry.find(root); it != registry.end()) {
    if (auto store = it->second.lock()) return store;
  }
  auto store = std::make_shared<Store>(root, context.logger());
  HCI_RETURN_NOT_OK(store->Load());
  registry[root] = store;
  return store;
}

Store::Store(std::string root, Logger logger)
    : root_(std::move(root)), logger_(std::move(logger)) {}

std::string Store::VolumePath(std::string_view name) const {
  return root_ + "/volumes/" + std::string(name) + ".qcow2";
}

std::string Store::ImagePath(std::string_view name) const {
  return root_ + "/images/" + std::string(name) + ".qcow2";
}

std::string Store::TempPath(std::string_view stem, std::string_view suffix) {
  return root_ + "/tmp/" + std::string(stem) + "." + std::to_string(::getpid()) + "." +
         std::to_string(++temp_counter_) + std::string(suffix);
}

Status Store::Load() {
  for (const char* sub : {"/volumes", "/snapshots", "/images", "/tmp"}) {
    HCI_RETURN_NOT_OK(MakeDir(root_ + sub));
  }
  // Whatever is in tmp/ belongs to a create or import that never finished.
  for (const auto& e : List(root_ + "/tmp")) {
    std::error_code ec;
    fs::remove_all(e.path(), ec);
    logger_.Info("", "",
                 "removed the leftover of an unfinished create or import: " + e.path().string());
  }
  RemoveTempRecords(root_ + "/volumes");
  RemoveTempRecords(root_ + "/images");
  LoadVolumes();
  LoadSnapshots();
  LoadImages();
  return Status();
}

void Store::LoadVolumes() {
  const std::string dir = root_ + "/volumes";
  for (const auto& e : List(dir)) {
    const fs::path& path = e.path();
    if (path.extension() != ".json") continue;
    std::string name = path.stem();
    if (!IsValidName(name)) {
      logger_.Warn("volume", "", "ignoring \"" + path.string() + "\": not a valid volume name");
      continue;
    }
    VolumeRecord record;
    Status status;
    auto obj = ReadRecord(path);
    if (obj.ok()) {
      status = Member(*obj, "volume", &record.obj, path);
      if (status.ok()) status = Member(*obj, "requestedSpec", &record.requested, path);
      if (status.ok() && record.obj.metadata().name() != name) {
        status = DataLoss("\"" + path.string() + "\" names volume \"" +
                          record.obj.metadata().name() + "\"");
      }
    } else {
      status = obj.status();
    }
    if (!status.ok()) {
      // Kept, as Failed, rather than dropped: its qcow2 may hold data nobody else knows about,
      // and the name must not be reused before an operator looked at it.
      logger_.Error("volume", name, "unreadable record: " + status.message());
      record = VolumeRecord();
      record.obj.mutable_metadata()->set_name(name);
      record.obj.mutable_status()->set_phase(v1::VOLUME_PHASE_FAILED);
      record.obj.mutable_status()->set_message("the volume's record is unreadable: " +
                                               status.message());
    } else if (!fs::exists(VolumePath(name))) {
      record.obj.mutable_status()->set_phase(v1::VOLUME_PHASE_FAILED);
      record.obj.mutable_status()->set_message("the volume's file \"" + VolumePath(name) +
                                               "\" is missing");
    }
    volumes.emplace(name, std::move(record));
  }
  // A qcow2 without a record is a create that crashed before its commit point.
  for (const auto& e : List(dir)) {
    if (e.path().extension() != ".qcow2") continue;
    if (volumes.count(e.path().stem()) == 0) {
      std::error_code ec;
      fs::remove(e.path(), ec);
      logger_.Info("volume", e.path().stem().string(),
                   "removed \"" + e.path().string() + "\", which had no record");
    }
  }
}

void Store::LoadSnapshots() {
  const std::string dir = root_ + "/snapshots";
  for (const auto& vol_dir : List(dir)) {
    std::string volume = vol_dir.path().filename();
    if (volumes.count(volume) == 0) {
      // The volume's delete committed; its snapshots went with it.
      std::error_code ec;
      fs::remove_all(vol_dir.path(), ec);
      continue;
    }
    RemoveTempRecords(vol_dir.path());
    for (const auto& e : List(vol_dir.path())) {
      const fs::path& path = e.path();
      if (path.extension() != ".json") continue;
      SnapshotRecord record;
      auto obj = ReadRecord(path);
      Status status = obj.status();
      if (obj.ok()) status = Member(*obj, "snapshot", &record.obj, path);
      if (status.ok()) {
        const json::value* size = obj->if_contains("virtualSizeBytes");
        if (size != nullptr && size->is_uint64()) record.virtual_size = size->get_uint64();
        if (size != nullptr && size->is_int64() && size->get_int64() >= 0) {
          record.virtual_size = static_cast<std::uint64_t>(size->get_int64());
        }
      }
      if (!status.ok() || record.obj.metadata().name() != path.stem().string()) {
        logger_.Error("snapshot", path.stem().string(),
                      "ignoring unreadable record \"" + path.string() + "\": " + status.message());
        continue;
      }
      snapshots[volume].emplace(record.obj.metadata().name(), std::move(record));
    }
  }
}

void Store::LoadImages() {
  const std::string dir = root_ + "/images";
  for (const auto& e : List(dir)) {
    const fs::path& path = e.path();
    if (path.extension() != ".json") continue;
    std::string name = path.stem();
    if (!IsValidName(name)) {
      logger_.Warn("image", "", "ignoring \"" + path.string() + "\": not a valid image name");
      continue;
    }
    ImageRecord record;
    auto obj = ReadRecord(path);
    Status status = obj.status();
    if (obj.ok()) status = Member(*obj, "image", &record.obj, path);
    if (status.ok() && record.obj.metadata().name() != name) {
      status = DataLoss("\"" + path.string() + "\" names image \"" + record.obj.metadata().name() +
                        "\"");
    }
    if (!status.ok()) {
      logger_.Error("image", name, "unreadable record: " + status.message());
      record = ImageRecord();
      record.obj.mutable_metadata()->set_name(name);
      record.obj.mutable_status()->set_phase(v1::IMAGE_PHASE_FAILED);
      record.obj.mutable_status()->set_message("the image's record is unreadable: " +
                                               status.message());
    } else if (!fs::exists(ImagePath(name))) {
      record.obj.mutable_status()->set_phase(v1::IMAGE_PHASE_FAILED);
      record.obj.mutable_status()->set_message("the image's file \"" + ImagePath(name) +
                                               "\" is missing");
    }
    images.emplace(name, std::move(record));
  }
  for (const auto& e : List(dir)) {
    if (e.path().extension() != ".qcow2") continue;
    if (images.count(e.path().stem()) == 0) {
      std::error_code ec;
      fs::remove(e.path(), ec);
      logger_.Info("image", e.path().stem().string(),
                   "removed \"" + e.path().string() + "\", which had no record");
    }
  }
}

Status Store::SaveVolume(const VolumeRecord& record) {
  std::string text = std::string("{\"version\":\"") + kRecordVersion +
                     "\",\"volume\":" + ToJson(record.obj) +
                     ",\"requestedSpec\":" + ToJson(record.requested) + "}\n";
  return WriteFileAtomically(root_ + "/volumes/" + record.obj.metadata().name() + ".json", text);
}

Status Store::RemoveVolumeRecord(std::string_view name) {
  HCI_RETURN_NOT_OK(RemoveFile(root_ + "/volumes/" + std::string(name) + ".json"));
  SyncDir(root_ + "/volumes");
  return Status();
}

Status Store::SaveSnapshot(const SnapshotRecord& record) {
  std::string dir = root_ + "/snapshots/" + record.obj.volume();
  HCI_RETURN_NOT_OK(MakeDir(dir));
  std::string text = std::string("{\"version\":\"") + kRecordVersion +
                     "\",\"snapshot\":" + ToJson(record.obj) +
                     ",\"virtualSizeBytes\":" + std::to_string(record.virtual_size) + "}\n";
  return WriteFileAtomically(dir + "/" + record.obj.metadata().name() + ".json", text);
}

Status Store::RemoveSnapshotRecord(std::string_view volume, std::string_view name) {
  std::string dir = root_ + "/snapshots/" + std::string(volume);
  HCI_RETURN_NOT_OK(RemoveFile(dir + "/" + std::string(name) + ".json"));
  SyncDir(dir);
  return Status();
}

Status Store::SaveImage(const ImageRecord& record) {
  std::string text = std::string("{\"version\":\"") + kRecordVersion +
                     "\",\"image\":" + ToJson(record.obj) + "}\n";
  return WriteFileAtomically(root_ + "/images/" + record.obj.metadata().name() + ".json", text);
}

Status Store::RemoveImageRecord(std::string_view name) {
  HCI_RETURN_NOT_OK(RemoveFile(root_ + "/images/" + std::string(name) + ".json"));
  SyncDir(root_ + "/images");
  return Status();
}

std::vector<std::string> Store::VolumesUsingImageLocked(std::string_view name) const {
  std::vector<std::string> out;
  for (const auto& [vol, record] : volumes) {
    const auto& source = record.obj.spec().source();
    if (source.source_case() == v1::VolumeSource::kImage && source.image() == name) {
      out.push_back(vol);
    }
  }
  for (const auto& [vol, image] : creating) {
    if (image == name) out.push_back(vol);
  }
  return out;
}

}  // namespace hci::local
