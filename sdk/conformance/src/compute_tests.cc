// Compute checks: lifecycle state machine, capabilities, idempotency, bad requests, races.
#include <google/protobuf/util/message_differencer.h>

#include <algorithm>

#include "conformance_internal.h"

namespace hci::conformance::internal {
namespace {

using google::protobuf::util::MessageDifferencer;

std::string Op(std::string_view op) { return OpKey(BackendKind::kCompute, op); }

ComputeBackend& C(Context& ctx) { return *ctx.env.compute; }

Result<v1::VirtualMachine> GetVm(Context& ctx, const std::string& name) {
  v1::GetVmRequest r;
  r.set_name(name);
  return C(ctx).GetVm(r);
}
Result<v1::VirtualMachine> StartVm(Context& ctx, const std::string& name) {
  v1::StartVmRequest r;
  r.set_name(name);
  return C(ctx).StartVm(r);
}
Result<v1::VirtualMachine> StopVm(Context& ctx, const std::string& name, bool force = true,
                                  std::uint32_t grace_ms = 0) {
  v1::StopVmRequest r;
  r.set_name(name);
  r.set_force(force);
  r.set_grace_period_ms(grace_ms);
  return C(ctx).StopVm(r);
}
Result<v1::VirtualMachine> PauseVm(Context& ctx, const std::string& name) {
  v1::PauseVmRequest r;
  r.set_name(name);
  return C(ctx).PauseVm(r);
}
Result<v1::VirtualMachine> ResumeVm(Context& ctx, const std::string& name) {
  v1::ResumeVmRequest r;
  r.set_name(name);
  return C(ctx).ResumeVm(r);
}
Result<v1::VirtualMachine> RestartVm(Context& ctx, const std::string& name, bool force) {
  v1::RestartVmRequest r;
  r.set_name(name);
  r.set_force(force);
  return C(ctx).RestartVm(r);
}
Status DeleteVm(Context& ctx, const std::string& name, bool force = false) {
  v1::DeleteVmRequest r;
  r.set_name(name);
  r.set_force(force);
  return C(ctx).DeleteVm(r);
}
Result<Operation> MigrateVm(Context& ctx, const std::string& name) {
  v1::MigrateVmRequest r;
  r.set_name(name);
  return C(ctx).MigrateVm(r);
}
Result<v1::ConsoleOutput> ReadConsole(Context& ctx, const std::string& name,
                                      std::uint64_t offset = 0, std::uint32_t max_bytes = 0) {
  v1::ReadConsoleRequest r;
  r.set_name(name);
  r.set_offset(offset);
  r.set_max_bytes(max_bytes);
  return C(ctx).ReadConsole(r);
}
Result<std::unique_ptr<ConsoleStream>> AttachConsole(Context& ctx, const std::string& name) {
  v1::AttachConsoleRequest r;
  r.set_name(name);
  return C(ctx).AttachConsole(r);
}
Status ResizeDisk(Context& ctx, const std::string& vm, const std::string& volume,
                  std::uint64_t size) {
  v1::ResizeDiskRequest r;
  r.set_vm(vm);
  r.set_volume(volume);
  r.set_size_bytes(size);
  return C(ctx).ResizeDisk(r);
}
Result<v1::VmMetricsResponse> VmMetrics(Context& ctx, const std::string& name) {
  v1::VmMetricsRequest r;
  r.set_name(name);
  return C(ctx).VmMetrics(r);
}

int CountListed(Context& ctx, const std::string& name) {
  auto list = C(ctx).ListVms({});
  if (!list.ok()) return -1;
  return static_cast<int>(
      std::count_if(list->vms().begin(), list->vms().end(),
                    [&](const auto& vm) { return vm.metadata().name() == name; }));
}

// An illegal call must leave the VM as it was.
testing::AssertionResult Unchanged(Context& ctx, const v1::VirtualMachine& before) {
  auto now = GetVm(ctx, before.metadata().name());
  if (!now.ok()) return testing::AssertionFailure() << "GetVm: " << now.status();
  if (VmState(*now) != VmState(before)) {
    return testing::AssertionFailure()
           << "the refused call changed the VM:\n  before: " << VmState(before)
           << "\n  after:  " << VmState(*now);
  }
  return testing::AssertionSuccess();
}

testing::AssertionResult Absent(Context& ctx, const std::string& name) {
  auto vm = GetVm(ctx, name);
  if (vm.status().code() == StatusCode::kNotFound) return testing::AssertionSuccess();
  return testing::AssertionFailure() << "vm " << name << " exists after a refused or undone "
                                     << "create (GetVm answers " << vm.status() << ")";
}

// Creates a VM with `edit` applied to a valid request and expects `code` and no VM left.
void ExpectCreateRefused(Context& ctx, const std::function<void(v1::CreateVmRequest&)>& edit,
                         StatusCode code, const std::string& field) {
  CONF_ASSIGN_OR_FAIL(auto request, ctx.PrepareVm());
  edit(request);
  ctx.tracker.Vm(request.metadata().name());
  auto made = C(ctx).CreateVm(request);
  EXPECT_TRUE(HasCode(made, code, field));
  if (IsValidName(request.metadata().name())) {
    EXPECT_TRUE(Absent(ctx, request.metadata().name()));
  }
}

// The phase checks of a running VM's illegal calls, shared by the lifecycle tests.
void ExpectRefused(Context& ctx, const std::string& name, const char* call,
                   const std::function<Status()>& fn) {
  CONF_ASSIGN_OR_FAIL(auto before, GetVm(ctx, name));
  EXPECT_TRUE(HasCode(fn(), StatusCode::kFailedPrecondition))
      << call << " on a " << v1::VmPhase_Name(before.status().phase()) << " VM";
  EXPECT_TRUE(Unchanged(ctx, before)) << call;
}

}  // namespace

void AddComputeTests(Env& env, std::vector<TestDef>& tests) {
  const auto& caps = env.compute_caps;
  const int repeat = env.fixtures.repeat;
  const int threads = env.fixtures.concurrency;
  const std::string lifecycle = "ComputeLifecycle";
  const std::string capabilities = "ComputeCapabilities";

  // ---------------------------------------------------------------------------------------
  // Lifecycle

  tests.push_back(
      {lifecycle,
       "CreateGetListDelete",
       {Op("CreateVm"), Op("GetVm"), Op("ListVms"), Op("DeleteVm")},
       [](Context& ctx) {
         CONF_ASSIGN_OR_FAIL(auto request, ctx.PrepareVm());
         const std::string& name = request.metadata().name();
         CONF_ASSIGN_OR_FAIL(auto vm, ctx.CreateVm(request));
         EXPECT_EQ(vm.metadata().name(), name);
         EXPECT_FALSE(vm.metadata().uid().empty()) << "CreateVm must set metadata.uid";
         EXPECT_TRUE(MessageDifferencer::Equals(vm.spec(), request.spec()))
             << "CreateVm returned another spec:\n  " << vm.spec().ShortDebugString();
         EXPECT_EQ(vm.status().phase(), v1::VM_PHASE_STOPPED)
             << "a VM is created Stopped (run strategy Manual)";
         CONF_ASSIGN_OR_FAIL(auto got, GetVm(ctx, name));
         EXPECT_EQ(got.metadata().uid(), vm.metadata().uid());
         EXPECT_TRUE(MessageDifferencer::Equals(got.spec(), request.spec()));
         EXPECT_EQ(CountListed(ctx, name), 1);
         v1::ListVmsRequest selected;
         (*selected.mutable_label_selector())["hci-conformance"] = ctx.env.run_id;
         CONF_ASSIGN_OR_FAIL(auto matching, C(ctx).ListVms(selected));
         EXPECT_TRUE(std::any_of(matching.vms().begin(), matching.vms().end(), [&](const auto& x) {
           return x.metadata().name() == name;
         })) << "ListVms with a label selector the VM matches does not list it";
         (*selected.mutable_label_selector())["hci-conformance"] = "no-such-run";
         CONF_ASSIGN_OR_FAIL(auto other, C(ctx).ListVms(selected));
         EXPECT_FALSE(std::any_of(other.vms().begin(), other.vms().end(), [&](const auto& x) {
           return x.metadata().name() == name;
         })) << "ListVms with a label selector the VM does not match lists it";
         EXPECT_TRUE(IsOk(DeleteVm(ctx, name)));
         EXPECT_TRUE(Absent(ctx, name));
         EXPECT_EQ(CountListed(ctx, name), 0);
       }});

  tests.push_back({lifecycle, "StartStop", {Op("StartVm"), Op("StopVm")}, [](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
                     const std::string name = vm.metadata().name();
                     CONF_ASSIGN_OR_FAIL(auto started, StartVm(ctx, name));
                     EXPECT_EQ(started.status().phase(), v1::VM_PHASE_RUNNING)
                         << "StartVm returns once the VM runs";
                     CONF_ASSIGN_OR_FAIL(auto running, ctx.WaitVmPhase(name, v1::VM_PHASE_RUNNING));
                     // Documented: OK and no change if already running.
                     CONF_ASSIGN_OR_FAIL(auto again, StartVm(ctx, name));
                     EXPECT_EQ(again.status().phase(), v1::VM_PHASE_RUNNING);
                     EXPECT_TRUE(Unchanged(ctx, running)) << "StartVm of a Running VM";
                     EXPECT_TRUE(MessageDifferencer::Equals(again.status().start_time(),
                                                            running.status().start_time()))
                         << "StartVm of a Running VM restarted it";
                     CONF_ASSIGN_OR_FAIL(auto stopped, StopVm(ctx, name, /*force=*/true));
                     EXPECT_EQ(stopped.status().phase(), v1::VM_PHASE_STOPPED);
                     EXPECT_EQ(stopped.status().reason(), "ForcedStop")
                         << "a forced stop ends with status.reason ForcedStop";
                     CONF_ASSIGN_OR_FAIL(auto stopped_now, GetVm(ctx, name));
                     // Documented: OK and no change if already stopped.
                     EXPECT_TRUE(IsOk(StopVm(ctx, name, true)));
                     EXPECT_TRUE(Unchanged(ctx, stopped_now)) << "StopVm of a Stopped VM";
                     // A stopped VM starts again.
                     CONF_ASSIGN_OR_FAIL(auto restarted, StartVm(ctx, name));
                     EXPECT_EQ(restarted.status().phase(), v1::VM_PHASE_RUNNING);
                     EXPECT_TRUE(IsOk(StopVm(ctx, name, true)));
                   }});

  if (caps.graceful_stop()) {
    tests.push_back({lifecycle, "GracefulStop", {Op("StopVm")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewRunningVm());
                       auto stopped = StopVm(ctx, vm.metadata().name(), /*force=*/false,
                                             ctx.fx().stop_grace_period_ms);
                       ASSERT_TRUE(IsOk(stopped));
                       EXPECT_EQ(stopped->status().phase(), v1::VM_PHASE_STOPPED);
                       const std::string& reason = stopped->status().reason();
                       EXPECT_TRUE(reason == "GuestShutdown" || reason == "ForcedStop")
                           << "a graceful stop ends GuestShutdown or ForcedStop, got \"" << reason
                           << "\"";
                     }});
  } else {
    tests.push_back({capabilities, "GracefulStopUnimplemented", {Op("StopVm")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewRunningVm());
                       EXPECT_TRUE(HasCode(StopVm(ctx, vm.metadata().name(), /*force=*/false),
                                           StatusCode::kUnimplemented))
                           << "graceful_stop is not claimed: StopVm without force";
                       EXPECT_TRUE(Unchanged(ctx, vm));
                     }});
  }

  tests.push_back({lifecycle, "DeleteRunningVmRefused", {Op("DeleteVm")}, [](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewRunningVm());
                     const std::string name = vm.metadata().name();
                     ExpectRefused(ctx, name, "DeleteVm without force",
                                   [&] { return DeleteVm(ctx, name, /*force=*/false); });
                     EXPECT_TRUE(IsOk(DeleteVm(ctx, name, /*force=*/true)));
                     EXPECT_TRUE(Absent(ctx, name));
                   }});

  if (env.fixtures.vm_volume && env.storage != nullptr) {
    tests.push_back(
        {lifecycle, "DiskVolumeInUseWhileRunning", {Op("StartVm"), Op("StopVm")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
           const std::string volume = vm.spec().disks(0).volume();
           v1::GetVolumeRequest get;
           get.set_name(volume);
           CONF_ASSIGN_OR_FAIL(auto before, ctx.env.storage->GetVolume(get));
           EXPECT_TRUE(before.status().attached_to().empty());
           CONF_ASSERT_OK(StartVm(ctx, vm.metadata().name()));
           CONF_ASSIGN_OR_FAIL(auto in_use, ctx.env.storage->GetVolume(get));
           EXPECT_FALSE(in_use.status().attached_to().empty())
               << "a Running VM's disk volume is not attached";
           v1::DeleteVolumeRequest del;
           del.set_name(volume);
           EXPECT_TRUE(HasCode(ctx.env.storage->DeleteVolume(del), StatusCode::kFailedPrecondition))
               << "DeleteVolume of a Running VM's disk";
           CONF_ASSERT_OK(StopVm(ctx, vm.metadata().name(), true));
           CONF_ASSIGN_OR_FAIL(auto after, ctx.env.storage->GetVolume(get));
           EXPECT_TRUE(after.status().attached_to().empty())
               << "StopVm left the disk volume attached to \"" << after.status().attached_to()
               << "\"";
         }});
  }

  if (caps.pause()) {
    tests.push_back(
        {lifecycle,
         "PauseResume",
         {Op("PauseVm"), Op("ResumeVm"), Op("StartVm")},
         [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
           const std::string name = vm.metadata().name();
           ExpectRefused(ctx, name, "PauseVm", [&] { return PauseVm(ctx, name).status(); });
           ExpectRefused(ctx, name, "ResumeVm", [&] { return ResumeVm(ctx, name).status(); });
           CONF_ASSERT_OK(StartVm(ctx, name));
           CONF_ASSIGN_OR_FAIL(auto paused, PauseVm(ctx, name));
           EXPECT_EQ(paused.status().phase(), v1::VM_PHASE_PAUSED);
           ExpectRefused(ctx, name, "PauseVm", [&] { return PauseVm(ctx, name).status(); });
           // Documented: FailedPrecondition when paused.
           ExpectRefused(ctx, name, "StartVm", [&] { return StartVm(ctx, name).status(); });
           CONF_ASSIGN_OR_FAIL(auto resumed, ResumeVm(ctx, name));
           EXPECT_EQ(resumed.status().phase(), v1::VM_PHASE_RUNNING);
           ExpectRefused(ctx, name, "ResumeVm", [&] { return ResumeVm(ctx, name).status(); });
           CONF_ASSERT_OK(PauseVm(ctx, name));
           CONF_ASSIGN_OR_FAIL(auto stopped, StopVm(ctx, name, /*force=*/true));
           EXPECT_EQ(stopped.status().phase(), v1::VM_PHASE_STOPPED)
               << "a Paused VM stops with force";
         }});
  } else {
    tests.push_back(
        {capabilities, "PauseUnimplemented", {Op("PauseVm"), Op("ResumeVm")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
           EXPECT_TRUE(HasCode(PauseVm(ctx, vm.metadata().name()), StatusCode::kUnimplemented));
           EXPECT_TRUE(HasCode(ResumeVm(ctx, vm.metadata().name()), StatusCode::kUnimplemented));
           EXPECT_TRUE(Unchanged(ctx, vm));
         }});
  }

  if (caps.restart()) {
    tests.push_back({lifecycle, "Restart", {Op("RestartVm")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
                       const std::string name = vm.metadata().name();
                       ExpectRefused(ctx, name, "RestartVm",
                                     [&] { return RestartVm(ctx, name, true).status(); });
                       CONF_ASSIGN_OR_FAIL(auto running, StartVm(ctx, name));
                       const auto count = running.status().restart_count();
                       CONF_ASSIGN_OR_FAIL(auto reset, RestartVm(ctx, name, /*force=*/true));
                       EXPECT_EQ(reset.status().phase(), v1::VM_PHASE_RUNNING);
                       EXPECT_EQ(reset.status().restart_count(), count + 1)
                           << "RestartVm counts in status.restart_count";
                       CONF_ASSIGN_OR_FAIL(auto rebooted, RestartVm(ctx, name, /*force=*/false));
                       EXPECT_EQ(rebooted.status().phase(), v1::VM_PHASE_RUNNING);
                       EXPECT_EQ(rebooted.status().restart_count(), count + 2);
                       CONF_ASSERT_OK(StopVm(ctx, name, true));
                     }});
  } else {
    tests.push_back({capabilities, "RestartUnimplemented", {Op("RestartVm")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
                       EXPECT_TRUE(HasCode(RestartVm(ctx, vm.metadata().name(), true),
                                           StatusCode::kUnimplemented));
                       EXPECT_TRUE(Unchanged(ctx, vm));
                     }});
  }

  if (caps.live_migration()) {
    tests.push_back(
        {lifecycle, "Migrate", {Op("MigrateVm")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
           const std::string name = vm.metadata().name();
           ExpectRefused(ctx, name, "MigrateVm", [&] { return MigrateVm(ctx, name).status(); });
           CONF_ASSERT_OK(StartVm(ctx, name));
           CONF_ASSIGN_OR_FAIL(auto op, MigrateVm(ctx, name));
           ctx.tracker.Op(op);
           EXPECT_TRUE(IsOk(ctx.Wait(op))) << "the MigrateVm operation";
           EXPECT_TRUE(IsOk(ctx.WaitVmPhase(name, v1::VM_PHASE_RUNNING))) << "a migrated VM runs";
         }});
  } else {
    tests.push_back(
        {capabilities, "MigrateUnimplemented", {Op("MigrateVm")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
           EXPECT_TRUE(HasCode(MigrateVm(ctx, vm.metadata().name()), StatusCode::kUnimplemented));
           EXPECT_TRUE(Unchanged(ctx, vm));
         }});
  }

  if (caps.console_log()) {
    tests.push_back({lifecycle, "ReadConsole", {Op("ReadConsole")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewRunningVm());
                       const std::string name = vm.metadata().name();
                       CONF_ASSIGN_OR_FAIL(auto all, ReadConsole(ctx, name));
                       EXPECT_EQ(all.next_offset(), all.data().size())
                           << "next_offset is the offset plus the bytes returned";
                       CONF_ASSIGN_OR_FAIL(auto rest, ReadConsole(ctx, name, all.next_offset()));
                       EXPECT_EQ(rest.next_offset(), all.next_offset() + rest.data().size());
                       CONF_ASSIGN_OR_FAIL(auto one, ReadConsole(ctx, name, 0, 1));
                       EXPECT_LE(one.data().size(), 1u) << "max_bytes 1";
                       EXPECT_EQ(one.next_offset(), one.data().size());
                       CONF_ASSERT_OK(StopVm(ctx, name, true));
                       // The log outlives the run.
                       CONF_ASSIGN_OR_FAIL(auto after, ReadConsole(ctx, name));
                       EXPECT_GE(after.data().size(), all.data().size());
                     }});
  } else {
    tests.push_back(
        {capabilities, "ReadConsoleUnimplemented", {Op("ReadConsole")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
           EXPECT_TRUE(HasCode(ReadConsole(ctx, vm.metadata().name()), StatusCode::kUnimplemented));
         }});
  }

  if (caps.console_attach()) {
    tests.push_back(
        {lifecycle, "AttachConsole", {Op("AttachConsole")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
           const std::string name = vm.metadata().name();
           EXPECT_TRUE(HasCode(AttachConsole(ctx, name), StatusCode::kFailedPrecondition))
               << "AttachConsole of a Stopped VM";
           CONF_ASSERT_OK(StartVm(ctx, name));
           CONF_ASSIGN_OR_FAIL(auto stream, AttachConsole(ctx, name));
           EXPECT_TRUE(IsOk(stream->Read(std::chrono::milliseconds(100))));
           EXPECT_TRUE(IsOk(stream->Write("\r")));
           CONF_ASSERT_OK(StopVm(ctx, name, true));
           // Documented: Unavailable once the VM stopped.
           auto deadline = std::chrono::steady_clock::now() + ctx.fx().timeout;
           Status last;
           while (std::chrono::steady_clock::now() < deadline) {
             last = stream->Read(std::chrono::milliseconds(100)).status();
             if (!last.ok()) break;
           }
           EXPECT_TRUE(HasCode(last, StatusCode::kUnavailable))
               << "ConsoleStream::Read after the VM stopped";
         }});
  } else {
    tests.push_back(
        {capabilities, "AttachConsoleUnimplemented", {Op("AttachConsole")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
           EXPECT_TRUE(
               HasCode(AttachConsole(ctx, vm.metadata().name()), StatusCode::kUnimplemented));
         }});
  }

  if (caps.metrics()) {
    tests.push_back({lifecycle, "VmMetrics", {Op("VmMetrics")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
                       const std::string name = vm.metadata().name();
                       EXPECT_TRUE(HasCode(VmMetrics(ctx, name), StatusCode::kFailedPrecondition))
                           << "VmMetrics of a Stopped VM";
                       CONF_ASSERT_OK(StartVm(ctx, name));
                       CONF_ASSIGN_OR_FAIL(auto metrics, VmMetrics(ctx, name));
                       EXPECT_NE(metrics.text().find("kubevirt_vmi_"), std::string::npos)
                           << "VmMetrics uses KubeVirt's metric names:\n"
                           << metrics.text();
                       CONF_ASSERT_OK(StopVm(ctx, name, true));
                     }});
  } else {
    tests.push_back(
        {capabilities, "VmMetricsUnimplemented", {Op("VmMetrics")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
           EXPECT_TRUE(HasCode(VmMetrics(ctx, vm.metadata().name()), StatusCode::kUnimplemented));
         }});
  }

  if (caps.resize_disk()) {
    tests.push_back({lifecycle, "ResizeDisk", {Op("ResizeDisk")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
                       const std::string name = vm.metadata().name();
                       const std::uint64_t size = ctx.fx().vm_volume_size;
                       EXPECT_TRUE(HasCode(ResizeDisk(ctx, ctx.Name("missing"), "v", size),
                                           StatusCode::kNotFound))
                           << "ResizeDisk of a VM that does not exist";
                       EXPECT_TRUE(HasCode(ResizeDisk(ctx, name, ctx.Name("other"), size),
                                           StatusCode::kNotFound, "volume"))
                           << "ResizeDisk of a volume the VM has no disk on";
                       EXPECT_TRUE(HasCode(ResizeDisk(ctx, "", "v", size),
                                           StatusCode::kInvalidArgument, "vm"));
                       EXPECT_TRUE(HasCode(ResizeDisk(ctx, name, "v", 4095),
                                           StatusCode::kInvalidArgument, "size_bytes"));
                       if (vm.spec().disks().empty()) return;
                       // A stopped VM opens its volumes at their new size when it starts.
                       EXPECT_TRUE(IsOk(ResizeDisk(ctx, name, vm.spec().disks(0).volume(), size)))
                           << "ResizeDisk of a Stopped VM is OK";
                     }});
  } else {
    tests.push_back(
        {capabilities, "ResizeDiskUnimplemented", {Op("ResizeDisk")}, [](Context& ctx) {
           CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
           const std::string volume =
               vm.spec().disks().empty() ? ctx.Name("v") : vm.spec().disks(0).volume();
           EXPECT_TRUE(HasCode(ResizeDisk(ctx, vm.metadata().name(), volume, 1 << 20),
                               StatusCode::kUnimplemented));
         }});
  }

  // Run strategies: the claimed ones behave as KubeVirt's; the others are Unimplemented.
  std::vector<v1::RunStrategy> claimed, unclaimed;
  for (int s = v1::RUN_STRATEGY_ALWAYS; s <= v1::RUN_STRATEGY_ONCE; ++s) {
    bool has = std::find(caps.run_strategies().begin(), caps.run_strategies().end(), s) !=
               caps.run_strategies().end();
    (has ? claimed : unclaimed).push_back(static_cast<v1::RunStrategy>(s));
  }
  if (!claimed.empty()) {
    tests.push_back(
        {lifecycle, "RunStrategies", {Op("CreateVm"), Op("StartVm")}, [claimed](Context& ctx) {
           for (v1::RunStrategy strategy : claimed) {
             SCOPED_TRACE("run strategy " + v1::RunStrategy_Name(strategy));
             CONF_ASSIGN_OR_FAIL(auto request, ctx.PrepareVm("rs"));
             request.mutable_spec()->set_run_strategy(strategy);
             const std::string name = request.metadata().name();
             CONF_ASSIGN_OR_FAIL(auto vm, ctx.CreateVm(request));
             if (strategy == v1::RUN_STRATEGY_ALWAYS) {
               EXPECT_TRUE(IsOk(ctx.WaitVmPhase(name, v1::VM_PHASE_RUNNING)))
                   << "run strategy Always starts the VM on create";
             } else {
               EXPECT_EQ(vm.status().phase(), v1::VM_PHASE_STOPPED);
             }
             if (strategy == v1::RUN_STRATEGY_HALTED) {
               ExpectRefused(ctx, name, "StartVm of a Halted VM",
                             [&] { return StartVm(ctx, name).status(); });
             }
             EXPECT_TRUE(IsOk(DeleteVm(ctx, name, /*force=*/true)));
           }
         }});
  }
  if (!unclaimed.empty()) {
    tests.push_back({capabilities,
                     "UnclaimedRunStrategiesUnimplemented",
                     {Op("CreateVm")},
                     [unclaimed](Context& ctx) {
                       for (v1::RunStrategy strategy : unclaimed) {
                         SCOPED_TRACE("run strategy " + v1::RunStrategy_Name(strategy));
                         ExpectCreateRefused(
                             ctx, [&](auto& r) { r.mutable_spec()->set_run_strategy(strategy); },
                             StatusCode::kUnimplemented, "");
                       }
                     }});
  }

  if (caps.accelerators_size() > 0) {
    std::vector<std::string> accels(caps.accelerators().begin(), caps.accelerators().end());
    tests.push_back(
        {lifecycle, "Accelerators", {Op("CreateVm"), Op("StartVm")}, [accels](Context& ctx) {
           for (const auto& accel : accels) {
             SCOPED_TRACE("accelerator " + accel);
             CONF_ASSIGN_OR_FAIL(auto request, ctx.PrepareVm("accel"));
             request.mutable_spec()->set_accelerator(accel);
             CONF_ASSERT_OK(ctx.CreateVm(request));
             CONF_ASSIGN_OR_FAIL(auto running, StartVm(ctx, request.metadata().name()));
             EXPECT_EQ(running.status().accelerator(), accel)
                 << "status.accelerator of a VM started with spec.accelerator " << accel;
             EXPECT_TRUE(IsOk(DeleteVm(ctx, request.metadata().name(), /*force=*/true)));
           }
         }});
  }

  if (caps.kernel_boot()) {
    tests.push_back({lifecycle, "KernelBoot", {Op("CreateVm")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto request, ctx.PrepareVm("kernel"));
                       auto* kb = request.mutable_spec()->mutable_kernel_boot();
                       kb->set_kernel_path(ctx.fx().kernel_path);
                       kb->set_initrd_path(ctx.fx().initrd_path);
                       kb->set_cmdline("console=ttyS0");
                       CONF_ASSIGN_OR_FAIL(auto vm, ctx.CreateVm(request));
                       EXPECT_TRUE(MessageDifferencer::Equals(vm.spec().kernel_boot(), *kb));
                       if (!ctx.fx().bootable_kernel) return;  // a placeholder: create only
                       CONF_ASSIGN_OR_FAIL(auto running, StartVm(ctx, request.metadata().name()));
                       EXPECT_EQ(running.status().phase(), v1::VM_PHASE_RUNNING);
                       EXPECT_TRUE(IsOk(StopVm(ctx, request.metadata().name(), true)));
                     }});
    tests.push_back({"ComputeNegative",
                     "CreateVm_spec_kernel_boot_kernel_path",
                     {Op("CreateVm")},
                     [](Context& ctx) {
                       ExpectCreateRefused(
                           ctx,
                           [](auto& r) {
                             r.mutable_spec()->mutable_kernel_boot()->set_cmdline("console=ttyS0");
                           },
                           StatusCode::kInvalidArgument, "spec.kernel_boot.kernel_path");
                     }});
  } else {
    tests.push_back({capabilities, "KernelBootUnimplemented", {Op("CreateVm")}, [](Context& ctx) {
                       ExpectCreateRefused(
                           ctx,
                           [&](auto& r) {
                             r.mutable_spec()->mutable_kernel_boot()->set_kernel_path(
                                 ctx.fx().kernel_path);
                           },
                           StatusCode::kUnimplemented, "");
                     }});
  }

  if (caps.uefi()) {
    tests.push_back({lifecycle, "Uefi", {Op("CreateVm")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto request, ctx.PrepareVm("uefi"));
                       request.mutable_spec()->set_firmware(v1::FIRMWARE_UEFI);
                       CONF_ASSIGN_OR_FAIL(auto vm, ctx.CreateVm(request));
                       EXPECT_EQ(vm.spec().firmware(), v1::FIRMWARE_UEFI);
                     }});
  } else {
    tests.push_back({capabilities, "UefiUnimplemented", {Op("CreateVm")}, [](Context& ctx) {
                       ExpectCreateRefused(
                           ctx, [](auto& r) { r.mutable_spec()->set_firmware(v1::FIRMWARE_UEFI); },
                           StatusCode::kUnimplemented, "");
                     }});
  }

  if (caps.cloud_init()) {
    tests.push_back({lifecycle, "CloudInit", {Op("CreateVm")}, [](Context& ctx) {
                       CONF_ASSIGN_OR_FAIL(auto request, ctx.PrepareVm("cidata"));
                       request.mutable_spec()->mutable_cloud_init()->set_user_data(
                           "#cloud-config\n");
                       CONF_ASSIGN_OR_FAIL(auto vm, ctx.CreateVm(request));
                       EXPECT_EQ(vm.spec().cloud_init().user_data(), "#cloud-config\n");
                     }});
  } else {
    tests.push_back({capabilities, "CloudInitUnimplemented", {Op("CreateVm")}, [](Context& ctx) {
                       ExpectCreateRefused(
                           ctx,
                           [](auto& r) {
                             r.mutable_spec()->mutable_cloud_init()->set_user_data(
                                 "#cloud-config\n");
                           },
                           StatusCode::kUnimplemented, "");
                     }});
  }

  // ---------------------------------------------------------------------------------------
  // Idempotency

  tests.push_back({"ComputeIdempotency", "CreateVm", {Op("CreateVm")}, [repeat](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto request, ctx.PrepareVm());
                     const std::string name = request.metadata().name();
                     CONF_ASSIGN_OR_FAIL(auto first, ctx.CreateVm(request));
                     for (int i = 1; i < repeat; ++i) {
                       auto again = C(ctx).CreateVm(request);
                       ASSERT_TRUE(IsOk(again)) << "CreateVm with the same spec, try " << i + 1;
                       EXPECT_EQ(again->metadata().uid(), first.metadata().uid())
                           << "a repeated create made a new VM";
                     }
                     EXPECT_EQ(CountListed(ctx, name), 1);
                     auto other = request;
                     other.mutable_spec()->set_vcpus(request.spec().vcpus() + 1);
                     EXPECT_TRUE(HasCode(C(ctx).CreateVm(other), StatusCode::kAlreadyExists))
                         << "CreateVm of an existing name with another spec";
                     EXPECT_TRUE(Unchanged(ctx, first));
                   }});

  tests.push_back({"ComputeIdempotency", "DeleteVm", {Op("DeleteVm")}, [repeat](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
                     for (int i = 0; i < repeat; ++i) {
                       EXPECT_TRUE(IsOk(DeleteVm(ctx, vm.metadata().name())))
                           << "DeleteVm, try " << i + 1;
                     }
                     EXPECT_TRUE(Absent(ctx, vm.metadata().name()));
                     EXPECT_TRUE(IsOk(DeleteVm(ctx, ctx.Name("never"))))
                         << "DeleteVm of a VM that never existed";
                   }});

  tests.push_back(
      {"ComputeIdempotency", "StartStopVm", {Op("StartVm"), Op("StopVm")}, [repeat](Context& ctx) {
         CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
         const std::string name = vm.metadata().name();
         CONF_ASSIGN_OR_FAIL(auto first, StartVm(ctx, name));
         for (int i = 1; i < repeat; ++i) {
           auto again = StartVm(ctx, name);
           ASSERT_TRUE(IsOk(again)) << "StartVm, try " << i + 1;
           EXPECT_EQ(again->status().phase(), v1::VM_PHASE_RUNNING);
           EXPECT_TRUE(MessageDifferencer::Equals(again->status().start_time(),
                                                  first.status().start_time()))
               << "a repeated StartVm restarted the VM";
         }
         for (int i = 0; i < repeat; ++i) {
           auto stopped = StopVm(ctx, name, true);
           ASSERT_TRUE(IsOk(stopped)) << "StopVm, try " << i + 1;
           EXPECT_EQ(stopped->status().phase(), v1::VM_PHASE_STOPPED);
         }
       }});

  // ---------------------------------------------------------------------------------------
  // Bad requests: InvalidArgument naming the field, and nothing created.

  struct CreateCase {
    const char* test;
    const char* field;
    std::function<void(v1::CreateVmRequest&)> edit;
  };
  std::vector<CreateCase> creates = {
      {"CreateVm_metadata_name", "metadata.name",
       [](auto& r) { r.mutable_metadata()->set_name(""); }},
      {"CreateVm_metadata_name_invalid", "metadata.name",
       [](auto& r) { r.mutable_metadata()->set_name("Not_A_Name"); }},
      {"CreateVm_spec_vcpus", "spec.vcpus", [](auto& r) { r.mutable_spec()->set_vcpus(0); }},
      {"CreateVm_spec_memory_mib", "spec.memory_mib",
       [](auto& r) { r.mutable_spec()->set_memory_mib(0); }},
      {"CreateVm_spec_disks_name", "spec.disks[0].name",
       [](auto& r) {
         if (r.spec().disks_size() == 0) r.mutable_spec()->add_disks()->set_volume("missing");
         r.mutable_spec()->mutable_disks(0)->set_name("");
       }},
      {"CreateVm_spec_disks_volume", "spec.disks[0].volume",
       [](auto& r) {
         if (r.spec().disks_size() == 0) r.mutable_spec()->add_disks()->set_name("root");
         r.mutable_spec()->mutable_disks(0)->set_volume("");
       }},
      {"CreateVm_spec_nics_name", "spec.nics[0].name",
       [](auto& r) { r.mutable_spec()->add_nics()->set_name(""); }},
  };
  for (auto& c : creates) {
    tests.push_back({"ComputeNegative",
                     c.test,
                     {Op("CreateVm")},
                     [field = std::string(c.field), edit = c.edit](Context& ctx) {
                       ExpectCreateRefused(ctx, edit, StatusCode::kInvalidArgument, field);
                     }});
  }

  // Every call on one VM names it: an empty name is InvalidArgument ("name"); a name that
  // does not exist is NotFound (except DeleteVm: OK).
  struct NamedCall {
    const char* op;
    bool claimed;
    std::function<Status(Context&, const std::string&)> call;
  };
  std::vector<NamedCall> calls = {
      {"GetVm", true, [](Context& c, const std::string& n) { return GetVm(c, n).status(); }},
      {"StartVm", true, [](Context& c, const std::string& n) { return StartVm(c, n).status(); }},
      {"StopVm", true, [](Context& c, const std::string& n) { return StopVm(c, n).status(); }},
      {"DeleteVm", true, [](Context& c, const std::string& n) { return DeleteVm(c, n); }},
      {"RestartVm", caps.restart(),
       [](Context& c, const std::string& n) { return RestartVm(c, n, true).status(); }},
      {"PauseVm", caps.pause(),
       [](Context& c, const std::string& n) { return PauseVm(c, n).status(); }},
      {"ResumeVm", caps.pause(),
       [](Context& c, const std::string& n) { return ResumeVm(c, n).status(); }},
      {"MigrateVm", caps.live_migration(),
       [](Context& c, const std::string& n) { return MigrateVm(c, n).status(); }},
      {"ReadConsole", caps.console_log(),
       [](Context& c, const std::string& n) { return ReadConsole(c, n).status(); }},
      {"AttachConsole", caps.console_attach(),
       [](Context& c, const std::string& n) { return AttachConsole(c, n).status(); }},
      {"VmMetrics", caps.metrics(),
       [](Context& c, const std::string& n) { return VmMetrics(c, n).status(); }},
  };
  for (auto& c : calls) {
    if (!c.claimed) continue;
    std::string op = c.op;
    tests.push_back({"ComputeNegative", op + "_name", {Op(op)}, [call = c.call](Context& ctx) {
                       EXPECT_TRUE(HasCode(call(ctx, ""), StatusCode::kInvalidArgument, "name"));
                     }});
    if (op == "DeleteVm") continue;  // covered by ComputeIdempotency.DeleteVm
    tests.push_back({"ComputeNotFound", op, {Op(op)}, [call = c.call](Context& ctx) {
                       EXPECT_TRUE(HasCode(call(ctx, ctx.Name("missing")), StatusCode::kNotFound));
                     }});
  }

  // ---------------------------------------------------------------------------------------
  // Races on one VM: one call wins, the others are Aborted (or succeed idempotently).

  tests.push_back({"ComputeConcurrency", "CreateVm", {Op("CreateVm")}, [threads](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto request, ctx.PrepareVm());
                     ctx.tracker.Vm(request.metadata().name());
                     auto results = ctx.Race<Result<v1::VirtualMachine>>(
                         threads, [&](int) { return C(ctx).CreateVm(request); });
                     EXPECT_TRUE(OneWinsOthersAborted(Count(results), false));
                     std::set<std::string> uids;
                     for (const auto& r : results) {
                       if (r.ok()) uids.insert(r->metadata().uid());
                     }
                     EXPECT_EQ(uids.size(), 1u) << "concurrent creates made different VMs";
                     EXPECT_EQ(CountListed(ctx, request.metadata().name()), 1);
                   }});

  tests.push_back({"ComputeConcurrency", "StartVm", {Op("StartVm")}, [threads](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewVm());
                     const std::string name = vm.metadata().name();
                     bool slowed = SlowNextCall(ctx.env.compute, "StartVm");
                     auto results = ctx.Race<Result<v1::VirtualMachine>>(
                         threads, [&](int) { return StartVm(ctx, name); });
                     ClearFaults(ctx.env.compute);
                     EXPECT_TRUE(OneWinsOthersAborted(Count(results), slowed));
                     for (const auto& r : results) {
                       if (r.ok()) {
                         EXPECT_EQ(r->status().phase(), v1::VM_PHASE_RUNNING);
                       }
                     }
                     EXPECT_TRUE(IsOk(ctx.WaitVmPhase(name, v1::VM_PHASE_RUNNING)));
                   }});

  tests.push_back({"ComputeConcurrency", "StopVm", {Op("StopVm")}, [threads](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewRunningVm());
                     const std::string name = vm.metadata().name();
                     bool slowed = SlowNextCall(ctx.env.compute, "StopVm");
                     auto results = ctx.Race<Result<v1::VirtualMachine>>(
                         threads, [&](int) { return StopVm(ctx, name, true); });
                     ClearFaults(ctx.env.compute);
                     EXPECT_TRUE(OneWinsOthersAborted(Count(results), slowed));
                     EXPECT_TRUE(IsOk(ctx.WaitVmPhase(name, v1::VM_PHASE_STOPPED)));
                   }});

  tests.push_back({"ComputeConcurrency", "DeleteVm", {Op("DeleteVm")}, [threads](Context& ctx) {
                     CONF_ASSIGN_OR_FAIL(auto vm, ctx.NewRunningVm());
                     const std::string name = vm.metadata().name();
                     bool slowed = SlowNextCall(ctx.env.compute, "DeleteVm");
                     auto results = ctx.Race<Status>(
                         threads, [&](int) { return DeleteVm(ctx, name, /*force=*/true); });
                     ClearFaults(ctx.env.compute);
                     EXPECT_TRUE(OneWinsOthersAborted(Count(results), slowed));
                     EXPECT_TRUE(Absent(ctx, name));
                   }});
}

}  // namespace hci::conformance::internal
