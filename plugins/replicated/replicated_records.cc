// Volume records: `<state_dir>/volumes/<name>.json`, written atomically.
#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "hci/names.h"
#include "replicated_internal.h"

namespace hci::replicated::plugin {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;

// Records carry this tag so that a future layout can tell them apart.
constexpr char kRecordVersion[] = "replicated.hci/v1";

json::value ToJson(const google::protobuf::Message& message) {
  std::string out;
  // Only fails for messages with unresolvable Any fields, which these do not have.
  (void)google::protobuf::util::MessageToJsonString(message, &out);
  return json::parse(out);
}

Status FromJson(const json::value* v, google::protobuf::Message* out, const std::string& what) {
  if (v == nullptr || !v->is_object()) return DataLoss(what + " is missing");
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;  // written by a newer version: keep what we know
  auto st = google::protobuf::util::JsonStringToMessage(json::serialize(*v), out, options);
  if (!st.ok()) return DataLoss(what + ": " + std::string(st.message()));
  return Status();
}

void SyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

std::string RecordPath(const std::string& dir, const std::string& name) {
  return dir + "/" + name + ".json";
}

Result<VolumeRecord> ParseRecord(const std::string& path, const std::string& text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec) return DataLoss("\"" + path + "\" is not JSON: " + ec.message());
  const json::object* obj = v.if_object();
  if (obj == nullptr) return DataLoss("\"" + path + "\" is not a JSON object");
  const json::value* version = obj->if_contains("version");
  if (version == nullptr || !version->is_string() || version->get_string() != kRecordVersion) {
    return DataLoss("\"" + path + "\" is not a " + std::string(kRecordVersion) + " record");
  }
  VolumeRecord r;
  HCI_RETURN_NOT_OK(FromJson(obj->if_contains("volume"), &r.obj, path + ": volume"));
  HCI_RETURN_NOT_OK(
      FromJson(obj->if_contains("requestedSpec"), &r.requested, path + ": requestedSpec"));
  if (!IsValidName(r.obj.metadata().name())) {
    return DataLoss(path + ": volume.metadata.name is not a valid name");
  }
  if (const json::value* q = obj->if_contains("writeQuorum"); q != nullptr && q->is_int64()) {
    r.write_quorum = static_cast<std::uint32_t>(q->get_int64());
  }
  if (const json::value* c = obj->if_contains("engineClean"); c != nullptr && c->is_bool()) {
    r.engine_clean = c->get_bool();
  }
  if (const json::value* p = obj->if_contains("pendingRevert"); p != nullptr && p->is_string()) {
    r.pending_revert = std::string(p->get_string());
  }
  const json::value* members = obj->if_contains("members");
  if (members == nullptr || !members->is_array() || members->get_array().empty()) {
    return DataLoss(path + ": members is missing");
  }
  for (const json::value& m : members->get_array()) {
    const json::object* mo = m.if_object();
    auto str = [&](const char* key) -> std::string {
      const json::value* s = mo != nullptr ? mo->if_contains(key) : nullptr;
      return s != nullptr && s->is_string() ? std::string(s->get_string()) : std::string();
    };
    Member member{str("name"), str("node"), str("address")};
    if (member.name.empty() || member.node.empty()) {
      return DataLoss(path + ": a member without a name or node");
    }
    r.members.push_back(std::move(member));
  }
  if (const json::value* v = obj->if_contains("membershipVersion");
      v != nullptr && v->is_number()) {
    r.membership_version = v->to_number<std::uint64_t>();
  }
  if (const json::value* retired = obj->if_contains("retired");
      retired != nullptr && retired->is_array()) {
    for (const json::value& m : retired->get_array()) {
      const json::object* mo = m.if_object();
      auto str = [&](const char* key) -> std::string {
        const json::value* s = mo != nullptr ? mo->if_contains(key) : nullptr;
        return s != nullptr && s->is_string() ? std::string(s->get_string()) : std::string();
      };
      if (!str("name").empty()) r.retired.push_back({str("name"), str("node"), str("address")});
    }
  }
  if (r.write_quorum == 0 || r.write_quorum > r.members.size()) {
    r.write_quorum = static_cast<std::uint32_t>(r.members.size() / 2 + 1);
  }
  if (const json::value* s = obj->if_contains("snapshots"); s != nullptr && s->is_object()) {
    for (const auto& [name, meta] : s->get_object()) {
      api::ObjectMeta m;
      HCI_RETURN_NOT_OK(FromJson(&meta, &m, path + ": snapshots." + std::string(name)));
      r.snapshots.emplace(std::string(name), std::move(m));
    }
  }
  return r;
}

}  // namespace

Status MakeDirs(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) return ErrnoStatus(ec.value(), "mkdir \"" + path + "\"");
  // create_directories uses 0777 & ~umask; what we create holds sockets and secrets' users.
  ::chmod(path.c_str(), 0700);
  return Status();
}

Status SaveRecord(const std::string& dir, const VolumeRecord& record) {
  json::object obj;
  obj["version"] = kRecordVersion;
  // The observed parts of the status are not state: keep only what the plugin decides.
  api::Volume volume = record.obj;
  volume.mutable_status()->clear_replicas();
  volume.mutable_status()->clear_robustness();
  volume.mutable_status()->clear_actual_size_bytes();
  volume.mutable_status()->clear_conditions();
  volume.mutable_status()->clear_message();
  obj["volume"] = ToJson(volume);
  obj["requestedSpec"] = ToJson(record.requested);
  obj["writeQuorum"] = record.write_quorum;
  obj["engineClean"] = record.engine_clean;
  obj["pendingRevert"] = record.pending_revert;
  json::array members;
  for (const Member& m : record.members) {
    members.push_back(json::object{{"name", m.name}, {"node", m.node}, {"address", m.address}});
  }
  obj["members"] = std::move(members);
  obj["membershipVersion"] = record.membership_version;
  json::array retired;
  for (const Member& m : record.retired) {
    retired.push_back(json::object{{"name", m.name}, {"node", m.node}, {"address", m.address}});
  }
  obj["retired"] = std::move(retired);
  json::object snapshots;
  for (const auto& [name, meta] : record.snapshots) snapshots[name] = ToJson(meta);
  obj["snapshots"] = std::move(snapshots);
  return WriteFileAtomically(RecordPath(dir, record.obj.metadata().name()),
                             json::serialize(obj) + "\n");
}

Status NoPendingRevert(const VolumeRecord& record) {
  if (record.pending_revert.empty()) return Status();
  return FailedPrecondition("volume \"" + record.obj.metadata().name() +
                            "\": a revert to snapshot \"" + record.pending_revert +
                            "\" has not reached every replica; retry RevertVolume first");
}

Status RemoveRecord(const std::string& dir, const std::string& name) {
  const std::string path = RecordPath(dir, name);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, "unlink \"" + path + "\"");
  }
  SyncDir(dir);
  return Status();
}

std::vector<VolumeRecord> LoadRecords(const std::string& dir, std::vector<std::string>* errors) {
  std::vector<VolumeRecord> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string file = it->path().filename();
    if (file.starts_with(".")) {
      // A temporary file of an interrupted write.
      if (file.find(".tmp.") != std::string::npos) fs::remove(it->path(), ec);
      continue;
    }
    if (!file.ends_with(".json")) continue;
    std::ifstream in(it->path(), std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    auto record = ParseRecord(it->path(), ss.str());
    if (!record.ok()) {
      errors->push_back(record.status().message());
      continue;
    }
    if (file != record->obj.metadata().name() + ".json") {
      errors->push_back(it->path().string() + ": holds volume " + record->obj.metadata().name());
      continue;
    }
    out.push_back(std::move(record).MoveValueUnsafe());
  }
  return out;
}

}  // namespace hci::replicated::plugin
