// Backup checks: targets, backups, incremental chains, restore, delete, idempotency, bad
// requests, races.
#include <algorithm>

#include "conformance_internal.h"

namespace hci::conformance::internal {
namespace {

std::string Op(std::string_view op) { return OpKey(BackendKind::kBackup, op); }

BackupBackend& B(Context& ctx) { return *ctx.env.backup; }

Result<v1::BackupTarget> GetTarget(Context& ctx, const std::string& name) {
  v1::GetBackupTargetRequest r;
  r.set_name(name);
  return B(ctx).GetBackupTarget(r);
}
Status DeleteTarget(Context& ctx, const std::string& name) {
  v1::DeleteBackupTargetRequest r;
  r.set_name(name);
  return B(ctx).DeleteBackupTarget(r);
}
Result<v1::Backup> GetBackup(Context& ctx, const std::string& target, const std::string& name) {
  v1::GetBackupRequest r;
  r.set_target(target);
  r.set_name(name);
  return B(ctx).GetBackup(r);
}
Result<v1::ListBackupsResponse> ListBackups(Context& ctx, const std::string& target,
                                            const std::string& volume = {}) {
  v1::ListBackupsRequest r;
  r.set_target(target);
  r.set_volume(volume);
  return B(ctx).ListBackups(r);
}
Status DeleteBackup(Context& ctx, const std::string& target, const std::string& name) {
  v1::DeleteBackupRequest r;
  r.set_target(target);
  r.set_name(name);
  return B(ctx).DeleteBackup(r);
}
Result<Operation> Restore(Context& ctx, const std::string& target, const std::string& backup,
                          const std::string& volume) {
  ctx.tracker.Volume(volume);
  v1::RestoreBackupRequest r;
  r.set_target(target);
  r.set_backup(backup);
  *r.mutable_volume() = ctx.Meta(volume);
  auto op = B(ctx).RestoreBackup(r);
  if (op.ok()) ctx.tracker.Op(*op);
  return op;
}
Result<Operation> StartBackup(Context& ctx, const v1::CreateBackupRequest& request) {
  ctx.tracker.Backup(request.spec().target(), request.metadata().name());
  auto op = B(ctx).CreateBackup(request);
  if (op.ok()) ctx.tracker.Op(*op);
  return op;
}

bool Listed(const v1::ListBackupsResponse& list, const std::string& name) {
  return std::any_of(list.backups().begin(), list.backups().end(),
                     [&](const auto& b) { return b.metadata().name() == name; });
}

int CountTargets(Context& ctx, const std::string& name) {
  auto list = B(ctx).ListBackupTargets({});
  if (!list.ok()) return -1;
  return static_cast<int>(
      std::count_if(list->targets().begin(), list->targets().end(),
                    [&](const auto& t) { return t.metadata().name() == name; }));
}

testing::AssertionResult TargetAbsent(Context& ctx, const std::string& name) {
  auto t = GetTarget(ctx, name);
  if (t.status().code() == StatusCode::kNotFound) return testing::AssertionSuccess();
  return testing::AssertionFailure()
         << "backup target " << name << " exists (GetBackupTarget answers " << t.status() << ")";
}

}  // namespace

void AddBackupTests(Env& env, std::vector<TestDef>& tests) {
  const auto& caps = env.backup_caps;
  const int repeat = env.fixtures.repeat;
  const int threads = env.fixtures.concurrency;
  const std::string lifecycle = "BackupLifecycle";
  const std::string capabilities = "BackupCapabilities";

  tests.push_back({lifecycle,
                   "TargetCreateGetListDelete",
                   {Op("CreateBackupTarget"), Op("GetBackupTarget"), Op("ListBackupTargets"),
                    Op("DeleteBackupTarget")},
                   [](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
                     const std::string name = target.metadata().name();
                     EXPECT_FALSE(target.metadata().uid().empty());
                     EXPECT_EQ(target.spec().url(), ctx.fx().backup_target_url);
                     EXPECT_EQ(target.status().phase(), v1::BACKUP_TARGET_PHASE_AVAILABLE)
                         << target.status().message();
                     CONF_ASSIGN_OR_FAIL(auto got, GetTarget(ctx, name));
                     EXPECT_EQ(got.metadata().uid(), target.metadata().uid());
                     EXPECT_EQ(CountTargets(ctx, name), 1);
                     EXPECT_TRUE(IsOk(DeleteTarget(ctx, name)));
                     EXPECT_TRUE(TargetAbsent(ctx, name));
                   }});

  tests.push_back(
      {lifecycle,
       "BackupCreateGetList",
       {Op("CreateBackup"), Op("GetBackup"), Op("ListBackups")},
       [](Context& ctx) {
         CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
         const std::string t = target.metadata().name();
         CONF_ASSIGN_OR_FAIL(auto volume, ctx.BackupVolume());
         CONF_ASSIGN_OR_FAIL(auto backup, ctx.NewBackup(t, volume));
         const std::string name = backup.metadata().name();
         EXPECT_EQ(backup.status().phase(), v1::BACKUP_PHASE_COMPLETED)
             << "GetBackup after its operation succeeded: " << backup.status().message();
         EXPECT_EQ(backup.spec().volume(), volume);
         EXPECT_FALSE(backup.metadata().uid().empty());
         CONF_ASSIGN_OR_FAIL(auto all, ListBackups(ctx, t));
         EXPECT_TRUE(Listed(all, name)) << "ListBackups of the target";
         CONF_ASSIGN_OR_FAIL(auto of_volume, ListBackups(ctx, t, volume));
         EXPECT_TRUE(Listed(of_volume, name)) << "ListBackups of the volume";
         CONF_ASSIGN_OR_FAIL(auto of_other, ListBackups(ctx, t, ctx.Name("other")));
         EXPECT_FALSE(Listed(of_other, name)) << "ListBackups of another volume lists it";
         // A backup needs its target.
         auto orphan = ctx.BackupRequest(ctx.Name("orphan"), ctx.Name("missing"), volume);
         EXPECT_TRUE(HasCode(StartBackup(ctx, orphan), StatusCode::kNotFound))
             << "CreateBackup on a target that does not exist";
       }});

  tests.push_back(
      {lifecycle,
       "DeletedTargetKeepsBackups",
       {Op("DeleteBackupTarget"), Op("ListBackups")},
       [](Context& ctx) {
         CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
         const std::string t = target.metadata().name();
         CONF_ASSIGN_OR_FAIL(auto volume, ctx.BackupVolume());
         CONF_ASSIGN_OR_FAIL(auto backup, ctx.NewBackup(t, volume));
         // Documented: forgets the target; its backups stay on it.
         CONF_ASSERT_OK(DeleteTarget(ctx, t));
         EXPECT_TRUE(TargetAbsent(ctx, t));
         CONF_ASSIGN_OR_FAIL(auto again, ctx.NewTarget("tgt-again"));
         CONF_ASSIGN_OR_FAIL(auto listed, ListBackups(ctx, again.metadata().name()));
         EXPECT_TRUE(Listed(listed, backup.metadata().name()))
             << "a new target on the same URL does not find the backup of a deleted one";
         ctx.tracker.Backup(again.metadata().name(), backup.metadata().name());
       }});

  if (caps.incremental()) {
    tests.push_back({lifecycle, "Incremental", {Op("CreateBackup")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
                       const std::string t = target.metadata().name();
                       CONF_ASSIGN_OR_FAIL(auto volume, ctx.BackupVolume());
                       CONF_ASSIGN_OR_FAIL(auto first, ctx.NewBackup(t, volume, "full"));
                       CONF_ASSIGN_OR_FAIL(auto second, ctx.NewBackup(t, volume, "incr"));
                       EXPECT_EQ(second.status().base_backup(), first.metadata().name())
                           << "incremental is claimed: a second backup of the volume builds on "
                              "the first";
                       CONF_ASSIGN_OR_FAIL(auto full, ctx.NewBackup(t, volume, "forced", true));
                       EXPECT_TRUE(full.status().base_backup().empty())
                           << "spec.full asks for a full backup";
                     }});
  } else {
    tests.push_back({capabilities, "NotIncremental", {Op("CreateBackup")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
                       const std::string t = target.metadata().name();
                       CONF_ASSIGN_OR_FAIL(auto volume, ctx.BackupVolume());
                       CONF_ASSERT_OK(ctx.NewBackup(t, volume, "one"));
                       CONF_ASSIGN_OR_FAIL(auto second, ctx.NewBackup(t, volume, "two"));
                       EXPECT_TRUE(second.status().base_backup().empty())
                           << "incremental is not claimed, but a backup names a base";
                     }});
  }

  if (caps.delete_()) {
    tests.push_back({lifecycle, "DeleteBackup", {Op("DeleteBackup")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
                       const std::string t = target.metadata().name();
                       CONF_ASSIGN_OR_FAIL(auto volume, ctx.BackupVolume());
                       CONF_ASSIGN_OR_FAIL(auto backup, ctx.NewBackup(t, volume));
                       const std::string name = backup.metadata().name();
                       EXPECT_TRUE(IsOk(DeleteBackup(ctx, t, name)));
                       EXPECT_TRUE(HasCode(GetBackup(ctx, t, name), StatusCode::kNotFound));
                       CONF_ASSIGN_OR_FAIL(auto listed, ListBackups(ctx, t));
                       EXPECT_FALSE(Listed(listed, name));
                     }});
    tests.push_back(
        {"BackupIdempotency", "DeleteBackup", {Op("DeleteBackup")}, [repeat](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
           const std::string t = target.metadata().name();
           CONF_ASSIGN_OR_FAIL(auto volume, ctx.BackupVolume());
           CONF_ASSIGN_OR_FAIL(auto backup, ctx.NewBackup(t, volume));
           for (int i = 0; i < repeat; ++i) {
             EXPECT_TRUE(IsOk(DeleteBackup(ctx, t, backup.metadata().name())))
                 << "DeleteBackup, try " << i + 1;
           }
           EXPECT_TRUE(IsOk(DeleteBackup(ctx, t, ctx.Name("never"))));
         }});
    tests.push_back(
        {"BackupNegative", "DeleteBackup_target", {Op("DeleteBackup")}, [](Context& ctx) {
           EXPECT_TRUE(HasCode(DeleteBackup(ctx, "", ctx.Name("bak")), StatusCode::kInvalidArgument,
                               "target"));
         }});
    tests.push_back({"BackupNegative", "DeleteBackup_name", {Op("DeleteBackup")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
                       EXPECT_TRUE(HasCode(DeleteBackup(ctx, target.metadata().name(), ""),
                                           StatusCode::kInvalidArgument, "name"));
                     }});
  } else {
    tests.push_back(
        {capabilities, "DeleteBackupUnimplemented", {Op("DeleteBackup")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
           const std::string t = target.metadata().name();
           CONF_ASSIGN_OR_FAIL(auto volume, ctx.BackupVolume());
           CONF_ASSIGN_OR_FAIL(auto backup, ctx.NewBackup(t, volume));
           EXPECT_TRUE(
               HasCode(DeleteBackup(ctx, t, backup.metadata().name()), StatusCode::kUnimplemented));
           EXPECT_TRUE(IsOk(GetBackup(ctx, t, backup.metadata().name())));
         }});
  }

  if (caps.restore()) {
    tests.push_back(
        {lifecycle, "Restore", {Op("RestoreBackup")}, [](Context& ctx) {
           if (ctx.env.storage == nullptr) {
             GTEST_SKIP() << "restore is claimed but no storage backend is configured: bind one "
                             "in the config (host.backends.storage) to exercise it";
           }
           CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
           const std::string t = target.metadata().name();
           CONF_ASSIGN_OR_FAIL(auto volume, ctx.BackupVolume());
           CONF_ASSIGN_OR_FAIL(auto backup, ctx.NewBackup(t, volume));
           const std::string restored = ctx.Name("restored");
           CONF_ASSIGN_OR_FAIL(auto op, Restore(ctx, t, backup.metadata().name(), restored));
           ASSERT_TRUE(IsOk(ctx.Wait(op))) << "the RestoreBackup operation";
           v1::GetVolumeRequest get;
           get.set_name(restored);
           CONF_ASSIGN_OR_FAIL(auto made, ctx.env.storage->GetVolume(get));
           get.set_name(volume);
           CONF_ASSIGN_OR_FAIL(auto source, ctx.env.storage->GetVolume(get));
           EXPECT_EQ(made.spec().size_bytes(), source.spec().size_bytes())
               << "a restored volume has the backed-up volume's size";
           // The same restore again is idempotent; a restore into another existing volume is
           // refused.
           auto repeated = Restore(ctx, t, backup.metadata().name(), restored);
           ASSERT_TRUE(IsOk(repeated)) << "the same RestoreBackup again";
           EXPECT_TRUE(IsOk(ctx.Wait(*repeated)));
           CONF_ASSIGN_OR_FAIL(auto other, ctx.NewVolume("occupied"));
           EXPECT_TRUE(HasCode(Restore(ctx, t, backup.metadata().name(), other.metadata().name()),
                               StatusCode::kAlreadyExists))
               << "RestoreBackup into a volume that exists";
           EXPECT_TRUE(HasCode(Restore(ctx, t, ctx.Name("missing"), ctx.Name("nowhere")),
                               StatusCode::kNotFound))
               << "RestoreBackup of a backup that does not exist";
         }});
    for (const char* field : {"target", "backup", "volume.name"}) {
      std::string f = field;
      std::string test = "RestoreBackup_" + f.substr(0, f.find('.'));
      tests.push_back({"BackupNegative", test, {Op("RestoreBackup")}, [f](Context& ctx) {
                         std::string target = ctx.Name("tgt");
                         std::string backup = ctx.Name("bak");
                         std::string volume = ctx.Name("vol");
                         (f == "target" ? target : f == "backup" ? backup : volume).clear();
                         EXPECT_TRUE(HasCode(Restore(ctx, target, backup, volume),
                                             StatusCode::kInvalidArgument, f));
                       }});
    }
  } else {
    tests.push_back({capabilities, "RestoreUnimplemented", {Op("RestoreBackup")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
                       CONF_ASSIGN_OR_FAIL(auto volume, ctx.BackupVolume());
                       CONF_ASSIGN_OR_FAIL(auto backup,
                                           ctx.NewBackup(target.metadata().name(), volume));
                       EXPECT_TRUE(HasCode(Restore(ctx, target.metadata().name(),
                                                   backup.metadata().name(), ctx.Name("restored")),
                                           StatusCode::kUnimplemented));
                     }});
  }

  // ---------------------------------------------------------------------------------------
  // Idempotency

  tests.push_back(
      {"BackupIdempotency",
       "CreateBackupTarget",
       {Op("CreateBackupTarget")},
       [repeat](Context& ctx) {
         auto request = ctx.TargetRequest(ctx.Name("tgt"));
         ctx.tracker.BackupTarget(request.metadata().name());
         CONF_ASSIGN_OR_FAIL(auto first, B(ctx).CreateBackupTarget(request));
         for (int i = 1; i < repeat; ++i) {
           auto again = B(ctx).CreateBackupTarget(request);
           ASSERT_TRUE(IsOk(again)) << "CreateBackupTarget, try " << i + 1;
           EXPECT_EQ(again->metadata().uid(), first.metadata().uid());
         }
         EXPECT_EQ(CountTargets(ctx, request.metadata().name()), 1);
         auto other = request;
         other.mutable_spec()->set_url(request.spec().url() + "-other");
         EXPECT_TRUE(HasCode(B(ctx).CreateBackupTarget(other), StatusCode::kAlreadyExists))
             << "CreateBackupTarget of an existing name with another URL";
       }});
  tests.push_back({"BackupIdempotency",
                   "DeleteBackupTarget",
                   {Op("DeleteBackupTarget")},
                   [repeat](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
                     for (int i = 0; i < repeat; ++i) {
                       EXPECT_TRUE(IsOk(DeleteTarget(ctx, target.metadata().name())))
                           << "DeleteBackupTarget, try " << i + 1;
                     }
                     EXPECT_TRUE(TargetAbsent(ctx, target.metadata().name()));
                     EXPECT_TRUE(IsOk(DeleteTarget(ctx, ctx.Name("never"))));
                   }});
  tests.push_back(
      {"BackupIdempotency", "CreateBackup", {Op("CreateBackup")}, [repeat](Context& ctx) {
         CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
         const std::string t = target.metadata().name();
         CONF_ASSIGN_OR_FAIL(auto volume, ctx.BackupVolume());
         auto request = ctx.BackupRequest(ctx.Name("bak"), t, volume);
         CONF_ASSIGN_OR_FAIL(auto op, StartBackup(ctx, request));
         ASSERT_TRUE(IsOk(ctx.Wait(op)));
         CONF_ASSIGN_OR_FAIL(auto first, GetBackup(ctx, t, request.metadata().name()));
         for (int i = 1; i < repeat; ++i) {
           auto again = StartBackup(ctx, request);
           ASSERT_TRUE(IsOk(again)) << "CreateBackup with the same spec, try " << i + 1;
           EXPECT_TRUE(IsOk(ctx.Wait(*again)));
         }
         CONF_ASSIGN_OR_FAIL(auto now, GetBackup(ctx, t, request.metadata().name()));
         EXPECT_EQ(now.metadata().uid(), first.metadata().uid())
             << "a repeated CreateBackup made a new backup";
         CONF_ASSIGN_OR_FAIL(auto listed, ListBackups(ctx, t, volume));
         EXPECT_EQ(listed.backups_size(), 1) << "a repeated CreateBackup made more backups";
       }});

  // ---------------------------------------------------------------------------------------
  // Bad requests

  tests.push_back({"BackupNegative",
                   "CreateBackupTarget_metadata_name",
                   {Op("CreateBackupTarget")},
                   [](Context& ctx) {
                     auto request = ctx.TargetRequest("");
                     EXPECT_TRUE(HasCode(B(ctx).CreateBackupTarget(request),
                                         StatusCode::kInvalidArgument, "metadata.name"));
                   }});
  tests.push_back({"BackupNegative",
                   "CreateBackupTarget_spec_url",
                   {Op("CreateBackupTarget")},
                   [](Context& ctx) {
                     auto request = ctx.TargetRequest(ctx.Name("tgt"));
                     request.mutable_spec()->clear_url();
                     ctx.tracker.BackupTarget(request.metadata().name());
                     EXPECT_TRUE(HasCode(B(ctx).CreateBackupTarget(request),
                                         StatusCode::kInvalidArgument, "spec.url"));
                     EXPECT_TRUE(TargetAbsent(ctx, request.metadata().name()));
                   }});
  for (const char* field : {"metadata.name", "spec.target", "spec.volume"}) {
    std::string f = field;
    std::string test = "CreateBackup_" + f.substr(0, f.find('.')) + "_" + f.substr(f.find('.') + 1);
    tests.push_back(
        {"BackupNegative", test, {Op("CreateBackup")}, [f](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
           auto request =
               ctx.BackupRequest(ctx.Name("bak"), target.metadata().name(), ctx.Name("vol"));
           if (f == "metadata.name") request.mutable_metadata()->clear_name();
           if (f == "spec.target") request.mutable_spec()->clear_target();
           if (f == "spec.volume") request.mutable_spec()->clear_volume();
           EXPECT_TRUE(HasCode(StartBackup(ctx, request), StatusCode::kInvalidArgument, f));
         }});
  }
  tests.push_back(
      {"BackupNegative", "GetBackupTarget_name", {Op("GetBackupTarget")}, [](Context& ctx) {
         EXPECT_TRUE(HasCode(GetTarget(ctx, ""), StatusCode::kInvalidArgument, "name"));
       }});
  tests.push_back({"BackupNegative", "GetBackup_name", {Op("GetBackup")}, [](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
                     EXPECT_TRUE(HasCode(GetBackup(ctx, target.metadata().name(), ""),
                                         StatusCode::kInvalidArgument, "name"));
                   }});
  tests.push_back(
      {"BackupNegative", "DeleteBackupTarget_name", {Op("DeleteBackupTarget")}, [](Context& ctx) {
         EXPECT_TRUE(HasCode(DeleteTarget(ctx, ""), StatusCode::kInvalidArgument, "name"));
       }});
  tests.push_back({"BackupNegative", "GetBackup_target", {Op("GetBackup")}, [](Context& ctx) {
                     EXPECT_TRUE(HasCode(GetBackup(ctx, "", ctx.Name("bak")),
                                         StatusCode::kInvalidArgument, "target"));
                   }});
  tests.push_back({"BackupNegative", "ListBackups_target", {Op("ListBackups")}, [](Context& ctx) {
                     EXPECT_TRUE(
                         HasCode(ListBackups(ctx, ""), StatusCode::kInvalidArgument, "target"));
                   }});
  tests.push_back({"BackupNotFound", "GetBackupTarget", {Op("GetBackupTarget")}, [](Context& ctx) {
                     EXPECT_TRUE(
                         HasCode(GetTarget(ctx, ctx.Name("missing")), StatusCode::kNotFound));
                   }});
  tests.push_back({"BackupNotFound", "GetBackup", {Op("GetBackup")}, [](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
                     EXPECT_TRUE(
                         HasCode(GetBackup(ctx, target.metadata().name(), ctx.Name("missing")),
                                 StatusCode::kNotFound));
                   }});

  // ---------------------------------------------------------------------------------------
  // Races

  tests.push_back({"BackupConcurrency",
                   "CreateBackupTarget",
                   {Op("CreateBackupTarget")},
                   [threads](Context& ctx) {
                     auto request = ctx.TargetRequest(ctx.Name("tgt"));
                     ctx.tracker.BackupTarget(request.metadata().name());
                     bool slowed = SlowNextCall(ctx.env.backup, "CreateBackupTarget");
                     auto results = ctx.Race<Result<v1::BackupTarget>>(
                         threads, [&](int) { return B(ctx).CreateBackupTarget(request); });
                     ClearFaults(ctx.env.backup);
                     EXPECT_TRUE(OneWinsOthersAborted(Count(results), slowed));
                     EXPECT_EQ(CountTargets(ctx, request.metadata().name()), 1);
                   }});
  tests.push_back(
      {"BackupConcurrency", "CreateBackup", {Op("CreateBackup")}, [threads](Context& ctx) {
         CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
         const std::string t = target.metadata().name();
         CONF_ASSIGN_OR_FAIL(auto volume, ctx.BackupVolume());
         auto request = ctx.BackupRequest(ctx.Name("bak"), t, volume);
         ctx.tracker.Backup(t, request.metadata().name());
         bool slowed = SlowNextCall(ctx.env.backup, "CreateBackup");
         auto results = ctx.Race<Result<Operation>>(
             threads, [&](int) { return B(ctx).CreateBackup(request); });
         ClearFaults(ctx.env.backup);
         EXPECT_TRUE(OneWinsOthersAborted(Count(results), slowed));
         for (const auto& r : results) {
           if (!r.ok()) continue;
           ctx.tracker.Op(*r);
           EXPECT_TRUE(IsOk(ctx.Wait(*r)));
         }
         CONF_ASSIGN_OR_FAIL(auto listed, ListBackups(ctx, t, volume));
         EXPECT_EQ(listed.backups_size(), 1) << "concurrent creates made several backups";
       }});
  tests.push_back({"BackupConcurrency",
                   "DeleteBackupTarget",
                   {Op("DeleteBackupTarget")},
                   [threads](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto target, ctx.NewTarget());
                     const std::string name = target.metadata().name();
                     bool slowed = SlowNextCall(ctx.env.backup, "DeleteBackupTarget");
                     auto results =
                         ctx.Race<Status>(threads, [&](int) { return DeleteTarget(ctx, name); });
                     ClearFaults(ctx.env.backup);
                     EXPECT_TRUE(OneWinsOthersAborted(Count(results), slowed));
                     EXPECT_TRUE(TargetAbsent(ctx, name));
                   }});
}

}  // namespace hci::conformance::internal
