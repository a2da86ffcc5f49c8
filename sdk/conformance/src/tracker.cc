// The resource tracker: removes everything a test created, whatever the test's outcome.
#include <algorithm>
#include <thread>

#include "conformance_internal.h"

namespace hci::conformance::internal {
namespace {

using namespace std::chrono_literals;

// Codes worth retrying during cleanup: another call still holds the object, or a transient
// failure.
bool Retryable(const Status& s) {
  return s.code() == StatusCode::kAborted || s.code() == StatusCode::kUnavailable;
}

template <typename Fn>
Status WithRetries(Fn&& fn) {
  Status s;
  for (int attempt = 0; attempt < 50; ++attempt) {
    s = fn();
    if (!Retryable(s)) return s;
    std::this_thread::sleep_for(100ms);
  }
  return s;
}

}  // namespace

void Tracker::Add(Kind kind, std::string name, std::string parent) {
  // A request with a bad name was refused before anything existed (the negative checks).
  if (!IsValidName(name) || (!parent.empty() && !IsValidName(parent))) return;
  if ((kind == Kind::kAttachment || kind == Kind::kSnapshot || kind == Kind::kBackup) &&
      parent.empty()) {
    return;
  }
  std::lock_guard lock(mu_);
  for (const auto& e : entries_) {
    if (e.kind == kind && e.name == name && e.parent == parent) return;
  }
  entries_.push_back(Entry{kind, std::move(name), std::move(parent)});
}

void Tracker::Op(const Operation& op) {
  if (!op.valid()) return;
  std::lock_guard lock(mu_);
  ops_.push_back(op);
}

Status Tracker::Remove(const Entry& e) {
  Env& env = env_;
  switch (e.kind) {
    case Kind::kVm: {
      if (env.compute == nullptr) return Status();
      v1::DeleteVmRequest r;
      r.set_name(e.name);
      r.set_force(true);
      return WithRetries([&] { return env.compute->DeleteVm(r); });
    }
    case Kind::kAttachment: {
      if (env.storage == nullptr) return Status();
      v1::DetachVolumeRequest r;
      r.set_name(e.name);
      r.set_attacher(e.parent);
      return WithRetries([&] { return env.storage->DetachVolume(r); });
    }
    case Kind::kPort: {
      if (env.network == nullptr || !env.network_caps.ports()) return Status();
      v1::DeletePortRequest r;
      r.set_name(e.name);
      return WithRetries([&] { return env.network->DeletePort(r); });
    }
    case Kind::kNetwork: {
      if (env.network == nullptr) return Status();
      v1::DeleteNetworkRequest r;
      r.set_name(e.name);
      return WithRetries([&] { return env.network->DeleteNetwork(r); });
    }
    case Kind::kBackup: {
      // Without the `delete` capability a backup cannot be removed; it goes with the kit's
      // target directory.
      if (env.backup == nullptr || !env.backup_caps.delete_()) return Status();
      v1::DeleteBackupRequest r;
      r.set_target(e.parent);
      r.set_name(e.name);
      Status s = WithRetries([&] { return env.backup->DeleteBackup(r); });
      return s.code() == StatusCode::kNotFound ? Status() : s;  // the target is gone
    }
    case Kind::kBackupTarget: {
      if (env.backup == nullptr) return Status();
      v1::DeleteBackupTargetRequest r;
      r.set_name(e.name);
      return WithRetries([&] { return env.backup->DeleteBackupTarget(r); });
    }
    case Kind::kSnapshot: {
      if (env.storage == nullptr || !env.storage_caps.snapshots()) return Status();
      v1::DeleteSnapshotRequest r;
      r.set_volume(e.parent);
      r.set_name(e.name);
      Status s = WithRetries([&] { return env.storage->DeleteSnapshot(r); });
      return s.code() == StatusCode::kNotFound ? Status() : s;  // the volume is gone
    }
    case Kind::kVolume: {
      if (env.storage == nullptr) return Status();
      v1::DeleteVolumeRequest r;
      r.set_name(e.name);
      Status s = WithRetries([&] { return env.storage->DeleteVolume(r); });
      if (s.code() != StatusCode::kFailedPrecondition) return s;
      // Attached by someone the tracker did not see (a VM's start, a broken detach): detach it.
      v1::GetVolumeRequest get;
      get.set_name(e.name);
      auto volume = env.storage->GetVolume(get);
      if (!volume.ok() || volume->status().attached_to().empty()) return s;
      v1::DetachVolumeRequest detach;
      detach.set_name(e.name);
      detach.set_attacher(volume->status().attached_to());
      HCI_RETURN_NOT_OK(WithRetries([&] { return env.storage->DetachVolume(detach); }));
      return WithRetries([&] { return env.storage->DeleteVolume(r); });
    }
    case Kind::kImage: {
      if (env.image == nullptr) return Status();
      v1::DeleteImageRequest r;
      r.set_name(e.name);
      return WithRetries([&] { return env.image->DeleteImage(r); });
    }
  }
  return Status();
}

Status Tracker::CheckGone(const Entry& e) {
  Env& env = env_;
  Status s;
  switch (e.kind) {
    case Kind::kVm: {
      if (env.compute == nullptr) return Status();
      v1::GetVmRequest r;
      r.set_name(e.name);
      s = env.compute->GetVm(r).status();
      break;
    }
    case Kind::kPort: {
      if (env.network == nullptr || !env.network_caps.ports()) return Status();
      v1::GetPortRequest r;
      r.set_name(e.name);
      s = env.network->GetPort(r).status();
      break;
    }
    case Kind::kNetwork: {
      if (env.network == nullptr) return Status();
      v1::GetNetworkRequest r;
      r.set_name(e.name);
      s = env.network->GetNetwork(r).status();
      break;
    }
    case Kind::kBackupTarget: {
      if (env.backup == nullptr) return Status();
      v1::GetBackupTargetRequest r;
      r.set_name(e.name);
      s = env.backup->GetBackupTarget(r).status();
      break;
    }
    case Kind::kVolume: {
      if (env.storage == nullptr) return Status();
      v1::GetVolumeRequest r;
      r.set_name(e.name);
      s = env.storage->GetVolume(r).status();
      break;
    }
    case Kind::kImage: {
      if (env.image == nullptr) return Status();
      v1::GetImageRequest r;
      r.set_name(e.name);
      s = env.image->GetImage(r).status();
      break;
    }
    default:
      return Status();
  }
  if (s.code() == StatusCode::kNotFound) return Status();
  return FailedPrecondition("still there after its delete answered OK (Get answers " +
                            s.ToString() + ")");
}

std::vector<std::string> Tracker::CleanUp() {
  std::vector<Entry> entries;
  std::vector<Operation> ops;
  {
    std::lock_guard lock(mu_);
    entries.swap(entries_);
    ops.swap(ops_);
  }
  std::vector<std::string> problems;
  // Running operations first: a backup or import in flight would hold its objects.
  for (const auto& op : ops) {
    if (op.done()) continue;
    op.Cancel().IgnoreError();
    Status s = op.Wait(env_.fixtures.timeout);
    if (s.code() == StatusCode::kDeadlineExceeded) {
      problems.push_back("operation " + op.id() + " (" + op.status().kind() +
                         ") did not finish within the timeout after a cancel");
    }
  }
  // The enum's order is the removal order: users before what they use.
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& a, const Entry& b) { return a.kind < b.kind; });
  auto describe = [](const Entry& e) {
    static const char* const kNames[] = {"vm",     "attachment of volume", "port",     "network",
                                         "backup", "backup target",        "snapshot", "volume",
                                         "image"};
    std::string text = std::string(kNames[static_cast<int>(e.kind)]) + " \"" + e.name + "\"";
    if (!e.parent.empty()) text += " (" + e.parent + ")";
    return text;
  };
  for (const auto& e : entries) {
    if (Status s = Remove(e); !s.ok()) {
      problems.push_back("removing " + describe(e) + ": " + s.ToString());
    }
  }
  for (const auto& e : entries) {
    if (Status s = CheckGone(e); !s.ok()) {
      problems.push_back(describe(e) + ": " + s.message());
    }
  }
  return problems;
}

}  // namespace hci::conformance::internal
