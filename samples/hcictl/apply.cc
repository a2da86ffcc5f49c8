// `hcictl apply -f` and `hcictl delete -f`: manifests in dependency order.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <utility>

#include "hcictl_internal.h"

namespace hcictl {
namespace {

// Creation order: what an object refers to comes first (an image before the volume made from it,
// a volume before the VM using it and before its backups). Deletion goes the other way.
constexpr std::pair<std::string_view, int> kRanks[] = {
    {"Image", 0},        {"Network", 1}, {"Port", 2},           {"Volume", 3},
    {"BackupTarget", 4}, {"Backup", 5},  {"VirtualMachine", 6},
};

int Rank(std::string_view kind) {
  for (const auto& [k, rank] : kRanks) {
    if (k == kind) return rank;
  }
  return 100;
}

struct Item {
  std::string source;  // file name, "stdin" for "-"
  hci::ManifestObject object;
  const Resource* resource = nullptr;
  std::string name;
  size_t position = 0;  // across all files, for a stable order
};

std::string Where(const Item& item) {
  return fmt::format("{}: document {} (line {}): {}/{}", item.source, item.object.document,
                     item.object.line, item.resource->name, item.name);
}

hci::Status Located(const Item& item, const hci::Status& status) {
  return status.WithContext(Where(item));
}

std::string NameOf(const pb::Message& object) {
  const pb::Message& meta = object.GetReflection()->GetMessage(
      object, object.GetDescriptor()->FindFieldByName("metadata"));
  return static_cast<const v1::ObjectMeta&>(meta).name();
}

// The backend a kind needs, so that a missing one is reported before anything is created.
hci::Status CheckBackend(Context& ctx, std::string_view kind) {
  if (kind == "VirtualMachine") return ctx.compute().status();
  if (kind == "Volume") return ctx.storage().status();
  if (kind == "Image") return ctx.image().status();
  if (kind == "Network" || kind == "Port") return ctx.network().status();
  return ctx.backup().status();
}

// The manifests of `files`, checked for duplicates, in creation order.
hci::Result<std::vector<Item>> LoadItems(Context& ctx, const std::vector<std::string>& files) {
  std::vector<Item> items;
  std::map<std::string, std::string> seen;  // "vm/demo" -> where
  for (const std::string& file : files) {
    const std::string source = file == "-" ? "stdin" : file;
    HCI_ASSIGN_OR_RAISE(std::string text, ReadInput(file));
    hci::Result<std::vector<hci::ManifestObject>> objects = hci::ParseManifests(text);
    if (!objects.ok()) return objects.status().WithContext(source);
    for (hci::ManifestObject& object : *objects) {
      Item item;
      item.source = source;
      item.resource = ResourceOfManifestKind(object.kind);
      if (item.resource == nullptr) {
        return hci::Internal(fmt::format("{}: kind {} has no resource", source, object.kind));
      }
      item.name = NameOf(*object.object);
      item.object = std::move(object);
      item.position = items.size();
      std::string key = item.resource->name + "/" + item.name;
      if (item.object.kind == "Backup") {
        key += "@" + static_cast<const v1::Backup&>(*item.object.object).spec().target();
      }
      if (const auto [it, inserted] = seen.emplace(key, Where(item)); !inserted) {
        return ctx.UsageError(
            fmt::format("{}: defined twice (first at {})", Where(item), it->second));
      }
      items.push_back(std::move(item));
    }
  }
  if (items.empty()) {
    return ctx.UsageError(fmt::format("no objects found in {}", fmt::join(files, ", ")));
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return Rank(a.object.kind) < Rank(b.object.kind);
  });
  for (const Item& item : items) {
    if (const hci::Status status = CheckBackend(ctx, item.object.kind); !status.ok()) {
      return Located(item, status);
    }
  }
  return items;
}

// What apply did to one object.
struct Applied {
  MessagePtr object;
  std::vector<std::string> verbs;  // "created", "started" / "unchanged"
};

hci::Result<bool> Exists(Context& ctx, const Item& item, MessagePtr* existing) {
  std::string parent;
  if (item.object.kind == "Backup") {
    parent = static_cast<const v1::Backup&>(*item.object.object).spec().target();
  }
  hci::Result<MessagePtr> got = item.resource->get(ctx, parent, item.name);
  if (got.ok()) {
    *existing = std::move(got).ValueOrDie();
    return true;
  }
  if (got.status().code() == hci::StatusCode::kNotFound) return false;
  return got.status();
}

// The error a create gives when the object exists with another spec, made actionable.
hci::Status CreateError(const hci::Status& status) {
  if (status.code() != hci::StatusCode::kAlreadyExists) return status;
  return hci::Status(status.code(),
                     status.message() +
                         " (apply does not change existing objects: delete it first, or apply "
                         "the spec it was created with)");
}

template <typename Request>
Request CreateRequest(const pb::Message& object) {
  Request request;
  const pb::Reflection* r = object.GetReflection();
  const pb::Descriptor* d = object.GetDescriptor();
  request.mutable_metadata()->CopyFrom(r->GetMessage(object, d->FindFieldByName("metadata")));
  request.mutable_spec()->CopyFrom(r->GetMessage(object, d->FindFieldByName("spec")));
  return request;
}

hci::Result<Applied> ApplyImage(Context& ctx, const Item& item, bool existed,
                                const MessagePtr& before) {
  HCI_ASSIGN_OR_RAISE(hci::ImageBackend * images, ctx.image());
  const auto request = CreateRequest<v1::ImportImageRequest>(*item.object.object);
  hci::Result<hci::Operation> op = images->ImportImage(request);
  if (!op.ok()) return CreateError(op.status());
  const bool was_ready =
      existed && static_cast<const v1::Image&>(*before).status().phase() == v1::IMAGE_PHASE_READY;
  hci::Status result =
      op->done() ? op->Wait(std::chrono::milliseconds(0))
                 : WaitWithProgress(*op, item.resource->name + "/" + item.name + " importing");
  if (!result.ok()) {
    if (result.code() == hci::StatusCode::kCancelled && Interrupted()) return result;
    return result.WithContext("import failed");
  }
  v1::GetImageRequest get;
  get.set_name(item.name);
  HCI_ASSIGN_OR_RAISE(v1::Image image, images->GetImage(get));
  Applied applied;
  applied.object = std::make_unique<v1::Image>(std::move(image));
  applied.verbs = {was_ready ? "unchanged" : existed ? "imported" : "created"};
  return applied;
}

hci::Result<Applied> ApplyBackup(Context& ctx, const Item& item, bool existed,
                                 const MessagePtr& before) {
  HCI_ASSIGN_OR_RAISE(hci::BackupBackend * backups, ctx.backup());
  const auto request = CreateRequest<v1::CreateBackupRequest>(*item.object.object);
  hci::Result<hci::Operation> op = backups->CreateBackup(request);
  if (!op.ok()) return CreateError(op.status());
  const bool was_done = existed && static_cast<const v1::Backup&>(*before).status().phase() ==
                                       v1::BACKUP_PHASE_COMPLETED;
  hci::Status result =
      op->done() ? op->Wait(std::chrono::milliseconds(0))
                 : WaitWithProgress(*op, item.resource->name + "/" + item.name + " backing up");
  if (!result.ok()) {
    if (result.code() == hci::StatusCode::kCancelled && Interrupted()) return result;
    return result.WithContext("backup failed");
  }
  v1::GetBackupRequest get;
  get.set_target(request.spec().target());
  get.set_name(item.name);
  HCI_ASSIGN_OR_RAISE(v1::Backup backup, backups->GetBackup(get));
  Applied applied;
  applied.object = std::make_unique<v1::Backup>(std::move(backup));
  applied.verbs = {was_done ? "unchanged" : existed ? "completed" : "created"};
  return applied;
}

hci::Result<Applied> ApplyVm(Context& ctx, const Item& item, bool existed, bool start) {
  HCI_ASSIGN_OR_RAISE(hci::ComputeBackend * compute, ctx.compute());
  const auto request = CreateRequest<v1::CreateVmRequest>(*item.object.object);
  hci::Result<v1::VirtualMachine> vm = compute->CreateVm(request);
  if (!vm.ok()) return CreateError(vm.status());
  Applied applied;
  applied.verbs = {existed ? "unchanged" : "created"};
  // A VM apply creates is started, as the user asked for it to exist and run; Halted says
  // otherwise, and an existing VM's power state is left as it is (stop/start own it).
  const v1::VmPhase phase = vm->status().phase();
  if (!existed && start && request.spec().run_strategy() != v1::RUN_STRATEGY_HALTED &&
      phase != v1::VM_PHASE_RUNNING && phase != v1::VM_PHASE_STARTING) {
    v1::StartVmRequest start_request;
    start_request.set_name(item.name);
    hci::Result<v1::VirtualMachine> started = compute->StartVm(start_request);
    if (!started.ok()) return started.status().WithContext("created, but starting it failed");
    vm = std::move(started);
    applied.verbs.push_back("started");
  }
  applied.object = std::make_unique<v1::VirtualMachine>(std::move(vm).ValueOrDie());
  return applied;
}

template <typename Request, typename Object, typename Backend, typename Method>
hci::Result<Applied> ApplySimple(hci::Result<Backend*> backend, Method method, const Item& item,
                                 bool existed) {
  HCI_ASSIGN_OR_RAISE(Backend * b, std::move(backend));
  const auto request = CreateRequest<Request>(*item.object.object);
  hci::Result<Object> created = (b->*method)(request);
  if (!created.ok()) return CreateError(created.status());
  Applied applied;
  applied.object = std::make_unique<Object>(std::move(created).ValueOrDie());
  applied.verbs = {existed ? "unchanged" : "created"};
  return applied;
}

hci::Result<Applied> ApplyOne(Context& ctx, const Item& item, bool start) {
  MessagePtr before;
  HCI_ASSIGN_OR_RAISE(bool existed, Exists(ctx, item, &before));
  const std::string& kind = item.object.kind;
  if (kind == "Image") return ApplyImage(ctx, item, existed, before);
  if (kind == "Backup") return ApplyBackup(ctx, item, existed, before);
  if (kind == "VirtualMachine") return ApplyVm(ctx, item, existed, start);
  if (kind == "Volume") {
    return ApplySimple<v1::CreateVolumeRequest, v1::Volume>(
        ctx.storage(), &hci::StorageBackend::CreateVolume, item, existed);
  }
  if (kind == "Network") {
    return ApplySimple<v1::CreateNetworkRequest, v1::Network>(
        ctx.network(), &hci::NetworkBackend::CreateNetwork, item, existed);
  }
  if (kind == "Port") {
    return ApplySimple<v1::CreatePortRequest, v1::Port>(
        ctx.network(), &hci::NetworkBackend::CreatePort, item, existed);
  }
  if (kind == "BackupTarget") {
    return ApplySimple<v1::CreateBackupTargetRequest, v1::BackupTarget>(
        ctx.backup(), &hci::BackupBackend::CreateBackupTarget, item, existed);
  }
  return hci::Internal("no apply for kind " + kind);
}

}  // namespace

hci::Status RunApply(Context& ctx, const ApplyOptions& options) {
  HCI_ASSIGN_OR_RAISE(std::vector<Item> items, LoadItems(ctx, options.files));
  std::vector<MessagePtr> results;
  for (const Item& item : items) {
    hci::Result<Applied> applied = ApplyOne(ctx, item, options.start);
    if (!applied.ok()) {
      if (Interrupted()) return applied.status();
      return Located(item, applied.status());
    }
    switch (ctx.output) {
      case OutputFormat::kTable:
        for (const std::string& verb : applied->verbs) {
          std::cout << item.resource->name << '/' << item.name << ' ' << verb << std::endl;
        }
        break;
      case OutputFormat::kName:
        std::cout << item.resource->name << '/' << item.name << std::endl;
        break;
      default:
        results.push_back(std::move(applied->object));
        break;
    }
  }
  if (ctx.output == OutputFormat::kJson || ctx.output == OutputFormat::kYaml) {
    // The objects differ in kind: the resource only matters for tables and names.
    return PrintObjects(ctx, *items.front().resource, results, /*single=*/false);
  }
  return hci::Status::OK();
}

hci::Status RunDeleteFiles(Context& ctx, const DeleteOptions& options) {
  HCI_ASSIGN_OR_RAISE(std::vector<Item> items, LoadItems(ctx, options.files));
  std::reverse(items.begin(), items.end());
  hci::Status first_error;
  for (const Item& item : items) {
    std::string parent;
    if (item.object.kind == "Backup") {
      parent = static_cast<const v1::Backup&>(*item.object.object).spec().target();
    }
    hci::Status status = item.resource->get(ctx, parent, item.name).status();
    if (status.code() == hci::StatusCode::kNotFound && options.ignore_not_found) continue;
    if (status.ok()) status = item.resource->remove(ctx, parent, item.name, options.force);
    if (status.ok()) {
      std::cout << item.resource->name << '/' << item.name << " deleted" << std::endl;
      continue;
    }
    std::cerr << "error: " << Where(item) << ": " << status.message() << std::endl;
    if (first_error.ok()) first_error = status;
  }
  // Each error was printed as it happened; the caller only takes the exit code.
  return first_error.ok() ? first_error : hci::Status(first_error.code(), "");
}

}  // namespace hcictl
