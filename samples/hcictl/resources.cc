// The resource kinds get, describe and delete work on, and those three commands.
#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <optional>
#include <utility>

#include "hcictl_internal.h"

namespace hcictl {
namespace {

template <typename M>
MessagePtr Own(M message) {
  return std::make_unique<M>(std::move(message));
}

template <typename M>
std::vector<MessagePtr> OwnAll(const pb::RepeatedPtrField<M>& items) {
  std::vector<MessagePtr> out;
  for (const M& item : items) out.push_back(Own(item));
  return out;
}

template <typename M>
const M& As(const pb::Message& m) {
  return static_cast<const M&>(m);
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string JoinWords(const pb::RepeatedPtrField<std::string>& items, std::string_view separator) {
  std::string out;
  for (const std::string& item : items) {
    if (!out.empty()) out += separator;
    out += item;
  }
  return out;
}

std::string ProgressText(const v1::Progress& progress) {
  if (progress.total() == 0) return "";
  return fmt::format(
      "{}%", std::min<std::uint64_t>(progress.done(), progress.total()) * 100 / progress.total());
}

std::string VolumeSource(const v1::VolumeSource& source) {
  switch (source.source_case()) {
    case v1::VolumeSource::kImage:
      return "image/" + source.image();
    case v1::VolumeSource::kVolume:
      return "volume/" + source.volume();
    case v1::VolumeSource::kSnapshot:
      return "snapshot/" + source.snapshot().volume() + "/" + source.snapshot().snapshot();
    default:
      return "";
  }
}

std::vector<Resource> MakeResources() {
  std::vector<Resource> r;

  Resource vm;
  vm.name = "vm";
  vm.manifest_kind = "VirtualMachine";
  vm.aliases = {"vms", "virtualmachine", "virtualmachines"};
  vm.columns = {"NAME", "PHASE", "REASON", "VCPUS", "MEMORY", "ACCEL", "AGE"};
  vm.get = [](Context& ctx, const std::string&,
              const std::string& name) -> hci::Result<MessagePtr> {
    HCI_ASSIGN_OR_RAISE(hci::ComputeBackend * compute, ctx.compute());
    v1::GetVmRequest request;
    request.set_name(name);
    HCI_ASSIGN_OR_RAISE(v1::VirtualMachine vm, compute->GetVm(request));
    return Own(std::move(vm));
  };
  vm.list = [](Context& ctx, const std::string&) -> hci::Result<std::vector<MessagePtr>> {
    HCI_ASSIGN_OR_RAISE(hci::ComputeBackend * compute, ctx.compute());
    HCI_ASSIGN_OR_RAISE(v1::ListVmsResponse response, compute->ListVms({}));
    return OwnAll(response.vms());
  };
  vm.remove = [](Context& ctx, const std::string&, const std::string& name, bool force) {
    HCI_ASSIGN_OR_RAISE(hci::ComputeBackend * compute, ctx.compute());
    v1::DeleteVmRequest request;
    request.set_name(name);
    request.set_force(force);
    return compute->DeleteVm(request);
  };
  vm.row = [](const pb::Message& m) -> std::vector<std::string> {
    const auto& v = As<v1::VirtualMachine>(m);
    return {v.metadata().name(),
            Word(v.status().phase()),
            v.status().reason(),
            std::to_string(v.spec().vcpus()),
            HumanBytes(v.spec().memory_mib() << 20),
            v.status().accelerator().empty() ? v.spec().accelerator() : v.status().accelerator(),
            HumanAge(v.metadata().creation_time())};
  };
  vm.object_name = [](const pb::Message& m) { return As<v1::VirtualMachine>(m).metadata().name(); };
  r.push_back(std::move(vm));

  Resource volume;
  volume.name = "volume";
  volume.manifest_kind = "Volume";
  volume.aliases = {"volumes", "vol", "vols"};
  volume.columns = {"NAME", "PHASE", "SIZE", "ALLOCATED", "SOURCE", "ATTACHED-TO", "AGE"};
  volume.get = [](Context& ctx, const std::string&,
                  const std::string& name) -> hci::Result<MessagePtr> {
    HCI_ASSIGN_OR_RAISE(hci::StorageBackend * storage, ctx.storage());
    v1::GetVolumeRequest request;
    request.set_name(name);
    HCI_ASSIGN_OR_RAISE(v1::Volume volume, storage->GetVolume(request));
    return Own(std::move(volume));
  };
  volume.list = [](Context& ctx, const std::string&) -> hci::Result<std::vector<MessagePtr>> {
    HCI_ASSIGN_OR_RAISE(hci::StorageBackend * storage, ctx.storage());
    HCI_ASSIGN_OR_RAISE(v1::ListVolumesResponse response, storage->ListVolumes({}));
    return OwnAll(response.volumes());
  };
  volume.remove = [](Context& ctx, const std::string&, const std::string& name, bool) {
    HCI_ASSIGN_OR_RAISE(hci::StorageBackend * storage, ctx.storage());
    v1::DeleteVolumeRequest request;
    request.set_name(name);
    return storage->DeleteVolume(request);
  };
  volume.row = [](const pb::Message& m) -> std::vector<std::string> {
    const auto& v = As<v1::Volume>(m);
    const std::uint64_t size =
        v.status().capacity_bytes() != 0 ? v.status().capacity_bytes() : v.spec().size_bytes();
    return {v.metadata().name(),
            Word(v.status().phase()),
            HumanBytes(size),
            HumanBytes(v.status().actual_size_bytes()),
            VolumeSource(v.spec().source()),
            v.status().attached_to(),
            HumanAge(v.metadata().creation_time())};
  };
  volume.object_name = [](const pb::Message& m) { return As<v1::Volume>(m).metadata().name(); };
  r.push_back(std::move(volume));

  Resource image;
  image.name = "image";
  image.manifest_kind = "Image";
  image.aliases = {"images", "img"};
  image.columns = {"NAME", "PHASE", "FORMAT", "SIZE", "STORED", "AGE"};
  image.get = [](Context& ctx, const std::string&,
                 const std::string& name) -> hci::Result<MessagePtr> {
    HCI_ASSIGN_OR_RAISE(hci::ImageBackend * images, ctx.image());
    v1::GetImageRequest request;
    request.set_name(name);
    HCI_ASSIGN_OR_RAISE(v1::Image image, images->GetImage(request));
    return Own(std::move(image));
  };
  image.list = [](Context& ctx, const std::string&) -> hci::Result<std::vector<MessagePtr>> {
    HCI_ASSIGN_OR_RAISE(hci::ImageBackend * images, ctx.image());
    HCI_ASSIGN_OR_RAISE(v1::ListImagesResponse response, images->ListImages({}));
    return OwnAll(response.images());
  };
  image.remove = [](Context& ctx, const std::string&, const std::string& name, bool) {
    HCI_ASSIGN_OR_RAISE(hci::ImageBackend * images, ctx.image());
    v1::DeleteImageRequest request;
    request.set_name(name);
    return images->DeleteImage(request);
  };
  image.row = [](const pb::Message& m) -> std::vector<std::string> {
    const auto& i = As<v1::Image>(m);
    std::string phase = Word(i.status().phase());
    if (i.status().phase() == v1::IMAGE_PHASE_IMPORTING) {
      phase += " " + ProgressText(i.status().progress());
    }
    return {i.metadata().name(),
            phase,
            Lower(Word(i.status().stored_format())),
            HumanBytes(i.status().virtual_size_bytes()),
            HumanBytes(i.status().actual_size_bytes()),
            HumanAge(i.metadata().creation_time())};
  };
  image.object_name = [](const pb::Message& m) { return As<v1::Image>(m).metadata().name(); };
  r.push_back(std::move(image));

  Resource network;
  network.name = "network";
  network.manifest_kind = "Network";
  network.aliases = {"networks", "net", "nets"};
  network.columns = {"NAME", "TYPE", "VLAN", "MTU", "BRIDGE", "PHASE", "AGE"};
  network.get = [](Context& ctx, const std::string&,
                   const std::string& name) -> hci::Result<MessagePtr> {
    HCI_ASSIGN_OR_RAISE(hci::NetworkBackend * networks, ctx.network());
    v1::GetNetworkRequest request;
    request.set_name(name);
    HCI_ASSIGN_OR_RAISE(v1::Network network, networks->GetNetwork(request));
    return Own(std::move(network));
  };
  network.list = [](Context& ctx, const std::string&) -> hci::Result<std::vector<MessagePtr>> {
    HCI_ASSIGN_OR_RAISE(hci::NetworkBackend * networks, ctx.network());
    HCI_ASSIGN_OR_RAISE(v1::ListNetworksResponse response, networks->ListNetworks({}));
    return OwnAll(response.networks());
  };
  network.remove = [](Context& ctx, const std::string&, const std::string& name, bool) {
    HCI_ASSIGN_OR_RAISE(hci::NetworkBackend * networks, ctx.network());
    v1::DeleteNetworkRequest request;
    request.set_name(name);
    return networks->DeleteNetwork(request);
  };
  network.row = [](const pb::Message& m) -> std::vector<std::string> {
    const auto& n = As<v1::Network>(m);
    std::string vlan = n.spec().vlan_id() != 0 ? std::to_string(n.spec().vlan_id()) : "";
    for (const v1::VlanRange& range : n.spec().trunks()) {
      vlan +=
          (vlan.empty() ? "" : ",") + (range.min_id() == range.max_id()
                                           ? std::to_string(range.min_id())
                                           : fmt::format("{}-{}", range.min_id(), range.max_id()));
    }
    return {n.metadata().name(),
            Word(n.spec().type()),
            vlan,
            std::to_string(n.spec().mtu() == 0 ? 1500 : n.spec().mtu()),
            n.status().bridge(),
            Word(n.status().phase()),
            HumanAge(n.metadata().creation_time())};
  };
  network.object_name = [](const pb::Message& m) { return As<v1::Network>(m).metadata().name(); };
  r.push_back(std::move(network));

  Resource port;
  port.name = "port";
  port.manifest_kind = "Port";
  port.aliases = {"ports"};
  port.parent_flag = "network";
  port.columns = {"NAME", "NETWORK", "MAC", "INTERFACE", "OWNER", "PHASE", "AGE"};
  port.get = [](Context& ctx, const std::string&,
                const std::string& name) -> hci::Result<MessagePtr> {
    HCI_ASSIGN_OR_RAISE(hci::NetworkBackend * networks, ctx.network());
    v1::GetPortRequest request;
    request.set_name(name);
    HCI_ASSIGN_OR_RAISE(v1::Port port, networks->GetPort(request));
    return Own(std::move(port));
  };
  port.list = [](Context& ctx, const std::string& network) -> hci::Result<std::vector<MessagePtr>> {
    HCI_ASSIGN_OR_RAISE(hci::NetworkBackend * networks, ctx.network());
    v1::ListPortsRequest request;
    request.set_network(network);
    HCI_ASSIGN_OR_RAISE(v1::ListPortsResponse response, networks->ListPorts(request));
    return OwnAll(response.ports());
  };
  port.remove = [](Context& ctx, const std::string&, const std::string& name, bool) {
    HCI_ASSIGN_OR_RAISE(hci::NetworkBackend * networks, ctx.network());
    v1::DeletePortRequest request;
    request.set_name(name);
    return networks->DeletePort(request);
  };
  port.row = [](const pb::Message& m) -> std::vector<std::string> {
    const auto& p = As<v1::Port>(m);
    return {p.metadata().name(),
            p.spec().network(),
            p.status().mac_address().empty() ? p.spec().mac_address() : p.status().mac_address(),
            p.status().interface_name(),
            p.spec().owner(),
            Word(p.status().phase()),
            HumanAge(p.metadata().creation_time())};
  };
  port.object_name = [](const pb::Message& m) { return As<v1::Port>(m).metadata().name(); };
  r.push_back(std::move(port));

  Resource snapshot;
  snapshot.name = "snapshot";
  snapshot.aliases = {"snapshots", "snap", "snaps"};
  snapshot.parent_flag = "volume";
  snapshot.parent_required = true;
  snapshot.columns = {"NAME", "VOLUME", "READY", "SIZE", "AGE"};
  snapshot.list = [](Context& ctx,
                     const std::string& volume) -> hci::Result<std::vector<MessagePtr>> {
    HCI_ASSIGN_OR_RAISE(hci::StorageBackend * storage, ctx.storage());
    std::vector<std::string> volumes;
    if (!volume.empty()) {
      volumes.push_back(volume);
    } else {
      HCI_ASSIGN_OR_RAISE(v1::ListVolumesResponse all, storage->ListVolumes({}));
      for (const v1::Volume& v : all.volumes()) volumes.push_back(v.metadata().name());
    }
    std::vector<MessagePtr> out;
    for (const std::string& name : volumes) {
      v1::ListSnapshotsRequest request;
      request.set_volume(name);
      HCI_ASSIGN_OR_RAISE(v1::ListSnapshotsResponse response, storage->ListSnapshots(request));
      for (MessagePtr& s : OwnAll(response.snapshots())) out.push_back(std::move(s));
    }
    return out;
  };
  snapshot.get = [list = snapshot.list](Context& ctx, const std::string& volume,
                                        const std::string& name) -> hci::Result<MessagePtr> {
    HCI_ASSIGN_OR_RAISE(std::vector<MessagePtr> snapshots, list(ctx, volume));
    for (MessagePtr& s : snapshots) {
      if (As<v1::Snapshot>(*s).metadata().name() == name) return std::move(s);
    }
    return hci::NotFound(
        fmt::format("snapshot \"{}\" of volume \"{}\" does not exist", name, volume));
  };
  snapshot.remove = [](Context& ctx, const std::string& volume, const std::string& name, bool) {
    HCI_ASSIGN_OR_RAISE(hci::StorageBackend * storage, ctx.storage());
    v1::DeleteSnapshotRequest request;
    request.set_volume(volume);
    request.set_name(name);
    return storage->DeleteSnapshot(request);
  };
  snapshot.row = [](const pb::Message& m) -> std::vector<std::string> {
    const auto& s = As<v1::Snapshot>(m);
    const pb::Timestamp& created = s.metadata().has_creation_time() ? s.metadata().creation_time()
                                                                    : s.status().creation_time();
    return {s.metadata().name(), s.volume(), s.status().ready_to_use() ? "true" : "false",
            HumanBytes(s.status().size_bytes()), HumanAge(created)};
  };
  snapshot.object_name = [](const pb::Message& m) { return As<v1::Snapshot>(m).metadata().name(); };
  r.push_back(std::move(snapshot));

  Resource target;
  target.name = "backuptarget";
  target.manifest_kind = "BackupTarget";
  target.aliases = {"backuptargets", "bt"};
  target.columns = {"NAME", "URL", "PHASE", "AGE"};
  target.get = [](Context& ctx, const std::string&,
                  const std::string& name) -> hci::Result<MessagePtr> {
    HCI_ASSIGN_OR_RAISE(hci::BackupBackend * backups, ctx.backup());
    v1::GetBackupTargetRequest request;
    request.set_name(name);
    HCI_ASSIGN_OR_RAISE(v1::BackupTarget t, backups->GetBackupTarget(request));
    return Own(std::move(t));
  };
  target.list = [](Context& ctx, const std::string&) -> hci::Result<std::vector<MessagePtr>> {
    HCI_ASSIGN_OR_RAISE(hci::BackupBackend * backups, ctx.backup());
    HCI_ASSIGN_OR_RAISE(v1::ListBackupTargetsResponse response, backups->ListBackupTargets({}));
    return OwnAll(response.targets());
  };
  target.remove = [](Context& ctx, const std::string&, const std::string& name, bool) {
    HCI_ASSIGN_OR_RAISE(hci::BackupBackend * backups, ctx.backup());
    v1::DeleteBackupTargetRequest request;
    request.set_name(name);
    return backups->DeleteBackupTarget(request);
  };
  target.row = [](const pb::Message& m) -> std::vector<std::string> {
    const auto& t = As<v1::BackupTarget>(m);
    return {t.metadata().name(), t.spec().url(), Word(t.status().phase()),
            HumanAge(t.metadata().creation_time())};
  };
  target.object_name = [](const pb::Message& m) {
    return As<v1::BackupTarget>(m).metadata().name();
  };
  r.push_back(std::move(target));

  Resource backup;
  backup.name = "backup";
  backup.manifest_kind = "Backup";
  backup.aliases = {"backups"};
  backup.parent_flag = "target";
  backup.parent_required = true;
  backup.columns = {"NAME", "TARGET", "VOLUME", "PHASE", "SIZE", "STORED", "BASE", "AGE"};
  backup.get = [](Context& ctx, const std::string& target,
                  const std::string& name) -> hci::Result<MessagePtr> {
    HCI_ASSIGN_OR_RAISE(hci::BackupBackend * backups, ctx.backup());
    v1::GetBackupRequest request;
    request.set_target(target);
    request.set_name(name);
    HCI_ASSIGN_OR_RAISE(v1::Backup b, backups->GetBackup(request));
    return Own(std::move(b));
  };
  backup.list = [](Context& ctx,
                   const std::string& target) -> hci::Result<std::vector<MessagePtr>> {
    HCI_ASSIGN_OR_RAISE(hci::BackupBackend * backups, ctx.backup());
    std::vector<std::string> targets;
    if (!target.empty()) {
      targets.push_back(target);
    } else {
      HCI_ASSIGN_OR_RAISE(v1::ListBackupTargetsResponse all, backups->ListBackupTargets({}));
      for (const v1::BackupTarget& t : all.targets()) targets.push_back(t.metadata().name());
    }
    std::vector<MessagePtr> out;
    for (const std::string& name : targets) {
      v1::ListBackupsRequest request;
      request.set_target(name);
      HCI_ASSIGN_OR_RAISE(v1::ListBackupsResponse response, backups->ListBackups(request));
      for (MessagePtr& b : OwnAll(response.backups())) out.push_back(std::move(b));
    }
    return out;
  };
  backup.remove = [](Context& ctx, const std::string& target, const std::string& name, bool) {
    HCI_ASSIGN_OR_RAISE(hci::BackupBackend * backups, ctx.backup());
    v1::DeleteBackupRequest request;
    request.set_target(target);
    request.set_name(name);
    return backups->DeleteBackup(request);
  };
  backup.row = [](const pb::Message& m) -> std::vector<std::string> {
    const auto& b = As<v1::Backup>(m);
    std::string phase = Word(b.status().phase());
    if (b.status().phase() == v1::BACKUP_PHASE_IN_PROGRESS) {
      phase += " " + ProgressText(b.status().progress());
    }
    return {b.metadata().name(),
            b.spec().target(),
            b.spec().volume(),
            phase,
            HumanBytes(b.status().volume_size_bytes()),
            HumanBytes(b.status().stored_bytes()),
            b.status().base_backup(),
            HumanAge(b.metadata().creation_time())};
  };
  backup.object_name = [](const pb::Message& m) { return As<v1::Backup>(m).metadata().name(); };
  r.push_back(std::move(backup));

  Resource operation;
  operation.name = "operation";
  operation.aliases = {"operations", "op", "ops"};
  operation.columns = {"ID", "KIND", "OBJECT", "PHASE", "PROGRESS", "AGE", "MESSAGE"};
  operation.get = [](Context& ctx, const std::string&,
                     const std::string& id) -> hci::Result<MessagePtr> {
    HCI_ASSIGN_OR_RAISE(hci::Host * host, ctx.host());
    HCI_ASSIGN_OR_RAISE(hci::Operation op, host->GetOperation(id));
    return Own(op.status());
  };
  operation.list = [](Context& ctx, const std::string&) -> hci::Result<std::vector<MessagePtr>> {
    HCI_ASSIGN_OR_RAISE(hci::Host * host, ctx.host());
    std::vector<MessagePtr> out;
    for (v1::OperationStatus& op : host->ListOperations()) out.push_back(Own(std::move(op)));
    return out;
  };
  operation.row = [](const pb::Message& m) -> std::vector<std::string> {
    const auto& o = As<v1::OperationStatus>(m);
    std::string object = Lower(o.object().kind());
    if (!o.object().parent().empty()) object += "/" + o.object().parent();
    object += "/" + o.object().name();
    return {o.id(),
            o.kind(),
            object,
            Word(o.phase()),
            ProgressText(o.progress()),
            HumanAge(o.start_time()),
            o.error().empty() ? o.message() : o.error()};
  };
  operation.object_name = [](const pb::Message& m) { return As<v1::OperationStatus>(m).id(); };
  r.push_back(std::move(operation));

  Resource plugin;
  plugin.name = "plugin";
  plugin.aliases = {"plugins"};
  plugin.columns = {"NAME", "VERSION", "ABI", "STATE", "KINDS", "PATH", "REASON"};
  plugin.list = [](Context& ctx, const std::string&) -> hci::Result<std::vector<MessagePtr>> {
    HCI_ASSIGN_OR_RAISE(std::vector<v1::PluginInfo> report, PluginReport(ctx));
    std::vector<MessagePtr> out;
    for (v1::PluginInfo& info : report) out.push_back(Own(std::move(info)));
    return out;
  };
  plugin.get = [list = plugin.list](Context& ctx, const std::string&,
                                    const std::string& name) -> hci::Result<MessagePtr> {
    HCI_ASSIGN_OR_RAISE(std::vector<MessagePtr> plugins, list(ctx, ""));
    for (MessagePtr& p : plugins) {
      const auto& info = As<v1::PluginInfo>(*p);
      if (info.name() == name || info.path() == name) return std::move(p);
    }
    return hci::NotFound(
        fmt::format("plugin \"{}\" was not found in the plugin directories "
                    "(`hcictl get plugin` lists them)",
                    name));
  };
  plugin.row = [](const pb::Message& m) -> std::vector<std::string> {
    const auto& p = As<v1::PluginInfo>(m);
    return {p.name(),
            p.version(),
            p.abi_version() == 0 ? "" : std::to_string(p.abi_version()),
            Word(p.state()),
            JoinWords(p.kinds(), ","),
            p.path(),
            p.reason()};
  };
  plugin.object_name = [](const pb::Message& m) {
    const auto& p = As<v1::PluginInfo>(m);
    return p.name().empty() ? p.path() : p.name();
  };
  r.push_back(std::move(plugin));
  return r;
}

const std::vector<Resource>& Resources() {
  static const auto* const resources = new std::vector<Resource>(MakeResources());
  return *resources;
}

// The parent named by the flag this resource uses; usage errors for flags it does not take.
hci::Result<std::string> ParentOf(Context& ctx, const Resource& resource,
                                  const ParentFlags& flags) {
  const std::pair<const char*, const std::string*> given[] = {
      {"volume", &flags.volume}, {"target", &flags.target}, {"network", &flags.network}};
  std::string parent;
  for (const auto& [flag, value] : given) {
    if (value->empty()) continue;
    if (resource.parent_flag != flag) {
      return ctx.UsageError(
          fmt::format("--{} does not apply to {}", flag,
                      resource.parent_flag.empty()
                          ? resource.name + " objects"
                          : resource.name + " objects (use --" + resource.parent_flag + ")"));
    }
    parent = *value;
  }
  return parent;
}

hci::Result<const Resource*> Lookup(Context& ctx, const std::string& kind) {
  const Resource* resource = FindResource(kind);
  if (resource == nullptr) {
    return ctx.UsageError(
        fmt::format("unknown resource kind \"{}\" (expected one of: {})", kind, ResourceList()));
  }
  return resource;
}

std::string Indent(std::string_view text, std::string_view prefix) {
  std::string out;
  bool line_start = true;
  for (const char c : text) {
    if (line_start) out += prefix;
    out += c;
    line_start = c == '\n';
  }
  if (!out.empty() && out.back() != '\n') out += '\n';
  return out;
}

std::string Field(std::string_view label, std::string_view value) {
  return fmt::format("{:<14}{}\n", std::string(label) + ":", value.empty() ? "<none>" : value);
}

std::string MapText(const pb::Map<std::string, std::string>& map) {
  std::map<std::string, std::string> sorted(map.begin(), map.end());
  std::string out;
  for (const auto& [key, value] : sorted) {
    out += (out.empty() ? "" : "\n" + std::string(14, ' ')) + key + "=" + value;
  }
  return out;
}

std::string Capitalized(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
  return s;
}

hci::Status Describe(Context& ctx, const Resource& resource, const pb::Message& object) {
  std::string out;
  const pb::Descriptor* d = object.GetDescriptor();
  const pb::Reflection* r = object.GetReflection();
  out += Field(
      "Kind", resource.manifest_kind.empty() ? Capitalized(resource.name) : resource.manifest_kind);
  const pb::FieldDescriptor* metadata_field = d->FindFieldByName("metadata");
  if (metadata_field != nullptr) {
    const auto& meta = static_cast<const v1::ObjectMeta&>(r->GetMessage(object, metadata_field));
    out += Field("Name", meta.name());
    out += Field("UID", meta.uid());
    out += Field("Created", meta.has_creation_time()
                                ? fmt::format("{} ({} ago)",
                                              pb::util::TimeUtil::ToString(meta.creation_time()),
                                              HumanAge(meta.creation_time()))
                                : "");
    out += Field("Labels", MapText(meta.labels()));
    out += Field("Annotations", MapText(meta.annotations()));
  } else {
    // Operations and plugins: flat records, best read whole.
    HCI_ASSIGN_OR_RAISE(std::string yaml, hci::ToYaml(object));
    std::cout << out << yaml << std::flush;
    return hci::Status::OK();
  }
  std::vector<const pb::FieldDescriptor*> fields;
  r->ListFields(object, &fields);
  std::optional<std::vector<v1::Condition>> conditions;
  for (const pb::FieldDescriptor* f : fields) {
    if (f == metadata_field) continue;
    const std::string title = Capitalized(f->json_name());
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING && !f->is_repeated()) {
      out += Field(title, r->GetString(object, f));  // a snapshot's volume
      continue;
    }
    if (f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE || f->is_repeated()) {
      // Other top-level scalars and lists: as YAML.
      std::unique_ptr<pb::Message> only(object.New());
      only->CopyFrom(object);
      for (const pb::FieldDescriptor* other : fields) {
        if (other != f) only->GetReflection()->ClearField(only.get(), other);
      }
      HCI_ASSIGN_OR_RAISE(std::string yaml, hci::ToYaml(*only));
      out += yaml;
      continue;
    }
    std::unique_ptr<pb::Message> section(r->GetMessage(object, f).New());
    section->CopyFrom(r->GetMessage(object, f));
    const pb::FieldDescriptor* conditions_field =
        section->GetDescriptor()->FindFieldByName("conditions");
    if (conditions_field != nullptr && conditions_field->is_repeated() &&
        conditions_field->message_type() == v1::Condition::descriptor()) {
      conditions.emplace();
      const pb::Reflection* sr = section->GetReflection();
      for (int i = 0; i < sr->FieldSize(*section, conditions_field); ++i) {
        conditions->push_back(static_cast<const v1::Condition&>(
            sr->GetRepeatedMessage(*section, conditions_field, i)));
      }
      sr->ClearField(section.get(), conditions_field);
    }
    HCI_ASSIGN_OR_RAISE(std::string yaml, hci::ToYaml(*section));
    out += title + ":\n" + (yaml == "{}\n" ? "  <none>\n" : Indent(yaml, "  "));
  }
  if (conditions) {
    out += "Conditions:\n";
    if (conditions->empty()) out += "  <none>\n";
    std::vector<std::vector<std::string>> rows;
    for (const v1::Condition& c : *conditions) {
      rows.push_back({c.type(), Word(c.status()), c.reason(), HumanAge(c.last_transition_time()),
                      c.message()});
    }
    if (!rows.empty()) {
      out += FormatTable({"TYPE", "STATUS", "REASON", "AGE", "MESSAGE"}, rows, "  ");
    }
  }
  if (metadata_field != nullptr && !resource.manifest_kind.empty()) {
    out += "Events:\n";
    const std::vector<v1::Event> events =
        ctx.EventsFor(resource.manifest_kind, resource.object_name(object));
    if (events.empty()) out += "  <none> (events are only seen while hcictl runs)\n";
    std::vector<std::vector<std::string>> rows;
    for (const v1::Event& e : events) {
      rows.push_back({HumanAge(e.time()), Word(e.type()), e.reason(), e.source(), e.message()});
    }
    if (!rows.empty()) {
      out += FormatTable({"AGE", "TYPE", "REASON", "FROM", "MESSAGE"}, rows, "  ");
    }
  }
  std::cout << out << std::flush;
  return hci::Status::OK();
}

}  // namespace

const Resource* FindResource(std::string_view spelling) {
  const std::string lower = Lower(std::string(spelling));
  for (const Resource& r : Resources()) {
    if (r.name == lower || Lower(r.manifest_kind) == lower) return &r;
    for (const std::string& alias : r.aliases) {
      if (alias == lower) return &r;
    }
  }
  return nullptr;
}

const Resource* ResourceOfManifestKind(std::string_view kind) {
  for (const Resource& r : Resources()) {
    if (r.manifest_kind == kind) return &r;
  }
  return nullptr;
}

std::string ResourceList() {
  std::string out;
  for (const Resource& r : Resources()) out += (out.empty() ? "" : ", ") + r.name;
  return out;
}

hci::Status RunGet(Context& ctx, const GetOptions& options) {
  HCI_ASSIGN_OR_RAISE(const Resource* resource, Lookup(ctx, options.kind));
  HCI_ASSIGN_OR_RAISE(std::string parent, ParentOf(ctx, *resource, options.parent));
  std::vector<MessagePtr> objects;
  if (options.names.empty()) {
    HCI_ASSIGN_OR_RAISE(objects, resource->list(ctx, parent));
  } else {
    if (resource->parent_required && parent.empty()) {
      return ctx.UsageError(fmt::format("{} objects are named within a {}: add --{}",
                                        resource->name, resource->parent_flag,
                                        resource->parent_flag));
    }
    for (const std::string& name : options.names) {
      HCI_ASSIGN_OR_RAISE(MessagePtr object, resource->get(ctx, parent, name));
      objects.push_back(std::move(object));
    }
  }
  return PrintObjects(ctx, *resource, objects, options.names.size() == 1);
}

hci::Status RunDescribe(Context& ctx, const GetOptions& options) {
  HCI_ASSIGN_OR_RAISE(const Resource* resource, Lookup(ctx, options.kind));
  HCI_ASSIGN_OR_RAISE(std::string parent, ParentOf(ctx, *resource, options.parent));
  std::vector<MessagePtr> objects;
  if (options.names.empty()) {
    HCI_ASSIGN_OR_RAISE(objects, resource->list(ctx, parent));
  } else {
    if (resource->parent_required && parent.empty()) {
      return ctx.UsageError(fmt::format("{} objects are named within a {}: add --{}",
                                        resource->name, resource->parent_flag,
                                        resource->parent_flag));
    }
    for (const std::string& name : options.names) {
      HCI_ASSIGN_OR_RAISE(MessagePtr object, resource->get(ctx, parent, name));
      objects.push_back(std::move(object));
    }
  }
  for (size_t i = 0; i < objects.size(); ++i) {
    if (i > 0) std::cout << "\n";
    HCI_RETURN_NOT_OK(Describe(ctx, *resource, *objects[i]));
  }
  return hci::Status::OK();
}

hci::Status RunDelete(Context& ctx, const DeleteOptions& options) {
  if (!options.files.empty()) {
    if (!options.kind.empty()) {
      return ctx.UsageError("give either -f FILE or KIND NAME..., not both");
    }
    return RunDeleteFiles(ctx, options);
  }
  if (options.kind.empty() || options.names.empty()) {
    return ctx.UsageError("delete needs KIND and NAME (or -f FILE)");
  }
  HCI_ASSIGN_OR_RAISE(const Resource* resource, Lookup(ctx, options.kind));
  if (!resource->remove) {
    return ctx.UsageError(fmt::format("{} objects cannot be deleted", resource->name));
  }
  HCI_ASSIGN_OR_RAISE(std::string parent, ParentOf(ctx, *resource, options.parent));
  if (resource->parent_required && parent.empty()) {
    return ctx.UsageError(fmt::format("{} objects are named within a {}: add --{}", resource->name,
                                      resource->parent_flag, resource->parent_flag));
  }
  hci::Status first_error;
  for (const std::string& name : options.names) {
    // The backends answer OK for what does not exist; a user is told, as kubectl does.
    hci::Result<MessagePtr> existing = resource->get(ctx, parent, name);
    hci::Status status = existing.status();
    if (status.code() == hci::StatusCode::kNotFound && options.ignore_not_found) continue;
    if (status.ok()) status = resource->remove(ctx, parent, name, options.force);
    if (status.ok()) {
      std::cout << resource->name << '/' << name << " deleted" << std::endl;
      continue;
    }
    std::cerr << "error: " << resource->name << '/' << name << ": " << status.message()
              << std::endl;
    if (first_error.ok()) first_error = status;
  }
  // Already printed; the caller prints nothing more but exits with its code.
  return first_error.ok() ? first_error : hci::Status(first_error.code(), "");
}

}  // namespace hcictl
