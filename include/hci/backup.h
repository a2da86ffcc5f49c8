// BackupBackend: backup targets, incremental backups, restore.
#pragma once

#include "hci/backend.h"
#include "hci/export.h"
#include "hci/operation.h"
#include "hci/result.h"
#include "hci/v1/backup.pb.h"

namespace hci {

/// Backups of volumes to backup targets. Target and backup names are RFC 1123 labels
/// (validated by the core).
class HCI_EXPORT BackupBackend : public Backend {
 public:
  ~BackupBackend() override;

  /// What this backend implements; every optional method it does not claim answers
  /// Unimplemented. Cheap and constant for the backend's lifetime.
  virtual v1::BackupCapabilities Capabilities() const = 0;

  /// Registers a backup target; Unavailable when it cannot be reached. Idempotent by name.
  virtual Result<v1::BackupTarget> CreateBackupTarget(
      const v1::CreateBackupTargetRequest& request) = 0;
  /// NotFound when there is no such target.
  virtual Result<v1::BackupTarget> GetBackupTarget(const v1::GetBackupTargetRequest& request) = 0;
  /// Every registered target, in name order.
  virtual Result<v1::ListBackupTargetsResponse> ListBackupTargets(
      const v1::ListBackupTargetsRequest& request) = 0;
  /// Forgets the target (its backups stay on it). OK when it does not exist.
  virtual Status DeleteBackupTarget(const v1::DeleteBackupTargetRequest& request) = 0;

  /// Starts a backup: a long operation with progress in bytes read from the volume.
  /// Incremental to the volume's last backup on the target when possible (capability
  /// `incremental`). Idempotent by name.
  virtual Result<Operation> CreateBackup(const v1::CreateBackupRequest& request) = 0;
  /// NotFound naming `target` when there is no such target, NotFound when there is no such
  /// backup on it.
  virtual Result<v1::Backup> GetBackup(const v1::GetBackupRequest& request) = 0;
  /// The backups on `target` (of `volume` only, when set); NotFound naming `target` when there
  /// is no such target.
  virtual Result<v1::ListBackupsResponse> ListBackups(const v1::ListBackupsRequest& request) = 0;
  /// Optional (capability `delete`). OK when it does not exist.
  virtual Status DeleteBackup(const v1::DeleteBackupRequest& request);
  /// Optional (capability `restore`): restores into a new volume; a long operation.
  virtual Result<Operation> RestoreBackup(const v1::RestoreBackupRequest& request);
};

}  // namespace hci
