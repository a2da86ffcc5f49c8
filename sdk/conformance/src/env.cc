// The run's environment: config, fixtures, the Host with the plugin under test, and teardown.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <utility>

#include "conformance_internal.h"

namespace hci::conformance::internal {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// LogCapture

void LogCapture::Write(const LogRecord& record) {
  std::string line =
      "[" + std::string(LogLevelName(record.level)) + "] [" + std::string(record.component) + "] ";
  if (!record.object_kind.empty() || !record.object_name.empty()) {
    line += std::string(record.object_kind) + "/" + std::string(record.object_name) + ": ";
  }
  line += record.message;
  std::lock_guard lock(mu_);
  if (verbose_) {
    std::fprintf(stderr, "%s\n", line.c_str());
    return;
  }
  if (lines_.size() >= kMaxLines) {
    lines_.erase(lines_.begin());
    ++dropped_;
  }
  lines_.push_back(std::move(line));
}

std::vector<std::string> LogCapture::Take() {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  if (dropped_ > 0) out.push_back("(" + std::to_string(dropped_) + " earlier lines dropped)");
  out.insert(out.end(), lines_.begin(), lines_.end());
  lines_.clear();
  dropped_ = 0;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Env

std::string Env::NewName(std::string_view what) {
  std::string head = prefix() + std::to_string(counter.fetch_add(1) + 1) + "-";
  std::string tail(what.substr(0, kMaxNameLength - head.size()));
  while (!tail.empty() && tail.back() == '-') tail.pop_back();
  return head + (tail.empty() ? "x" : tail);
}

namespace {

std::string TempRoot() {
  const char* tmp = std::getenv("TMPDIR");
  return tmp != nullptr && *tmp == '/' ? tmp : "/tmp";
}

Result<std::string> MakeWorkDir() {
  std::string pattern = TempRoot() + "/hci-conformance-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    return ErrnoStatus(errno, "creating the kit's work directory under " + TempRoot());
  }
  return pattern;
}

Status WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  out.close();
  if (!out) return Internal("cannot write \"" + path + "\"");
  return Status();
}

// 1 MiB whose every 4 KiB block starts with its number, so that its SHA-256 is not that of
// zeros and a raw image of it is not all holes.
std::string SampleImage() {
  std::string data(1 << 20, '\0');
  for (std::size_t block = 0; block < data.size() / 4096; ++block) {
    std::string tag = "hci-conformance block " + std::to_string(block) + "\n";
    data.replace(block * 4096, tag.size(), tag);
  }
  return data;
}

std::string RunId() {
  std::random_device rd;
  char buf[8];
  std::snprintf(buf, sizeof(buf), "%04x", static_cast<unsigned>(rd() & 0xffffu));
  return buf;
}

Status ResolveFixtures(Env& env) {
  const auto& in = env.config.fixtures();
  Fixtures& fx = env.fixtures;
  if (in.repeat() > 0) fx.repeat = static_cast<int>(in.repeat());
  if (in.concurrency() > 0) fx.concurrency = static_cast<int>(in.concurrency());
  if (in.concurrency() == 1) {
    return InvalidArgument("fixtures.concurrency: 1 thread cannot race (use 2 or more)");
  }
  if (in.timeout_ms() > 0) fx.timeout = std::chrono::milliseconds(in.timeout_ms());

  const auto& compute = in.compute();
  if (compute.has_vm_spec()) {
    fx.vm_spec = compute.vm_spec();
    auto strategy = fx.vm_spec.run_strategy();
    if (strategy != v1::RUN_STRATEGY_UNSPECIFIED && strategy != v1::RUN_STRATEGY_MANUAL) {
      return InvalidArgument(
          "fixtures.compute.vm_spec.run_strategy: the template must be Manual (the lifecycle "
          "checks start and stop VMs themselves; run strategies have their own check)");
    }
    if (fx.vm_spec.disks_size() > 0) {
      return InvalidArgument(
          "fixtures.compute.vm_spec.disks: the kit gives VMs their disks (see "
          "fixtures.compute.no_volume); leave disks out of the template");
    }
  } else {
    fx.vm_spec.set_vcpus(1);
    fx.vm_spec.set_memory_mib(64);
    fx.vm_spec.set_stop_grace_period_ms(500);
  }
  fx.vm_volume = !compute.no_volume();
  if (compute.volume_size_bytes() > 0) fx.vm_volume_size = compute.volume_size_bytes();
  if (compute.stop_grace_period_ms() > 0) fx.stop_grace_period_ms = compute.stop_grace_period_ms();
  if (!compute.kernel_path().empty()) {
    if (compute.kernel_path().front() != '/') {
      return InvalidArgument("fixtures.compute.kernel_path: \"" + compute.kernel_path() +
                             "\" must be an absolute path");
    }
    fx.kernel_path = compute.kernel_path();
    fx.initrd_path = compute.initrd_path();
    fx.bootable_kernel = true;
  } else {
    fx.kernel_path = env.work_dir + "/placeholder-kernel";
    HCI_RETURN_NOT_OK(WriteFile(fx.kernel_path, "not a kernel: hci-conformance placeholder\n"));
  }

  if (in.storage().volume_size_bytes() > 0) {
    fx.volume_size = in.storage().volume_size_bytes();
    if (fx.volume_size % 4096 != 0) {
      return InvalidArgument("fixtures.storage.volume_size_bytes: " +
                             std::to_string(fx.volume_size) + " is not a multiple of 4096");
    }
  }
  if (in.network().vlan_id() > 0) fx.vlan_id = in.network().vlan_id();
  if (fx.vlan_id > 4094) {
    return InvalidArgument("fixtures.network.vlan_id: " + std::to_string(fx.vlan_id) +
                           " is outside 1-4094");
  }
  fx.cluster_network = in.network().cluster_network();

  const std::string http_dir = env.work_dir + "/http";
  fs::create_directories(http_dir);
  if (!in.image().file().empty()) {
    std::error_code ec;
    fs::path file = fs::absolute(in.image().file(), ec);
    if (ec || !fs::is_regular_file(file, ec)) {
      return NotFound("fixtures.image.file: \"" + in.image().file() +
                      "\" is not an existing regular file");
    }
    fx.image_file = file.string();
    fs::create_symlink(file, http_dir + "/" + file.filename().string(), ec);
    if (ec) return Internal("fixtures.image.file: cannot link it for HTTP: " + ec.message());
  } else {
    fx.image_file = http_dir + "/conformance.raw";
    HCI_RETURN_NOT_OK(WriteFile(fx.image_file, SampleImage()));
  }

  fx.backup_target_url = in.backup().target_url().empty() ? "file://" + env.work_dir + "/backups"
                                                          : in.backup().target_url();
  if (in.backup().target_url().empty()) fs::create_directories(env.work_dir + "/backups");
  fx.backup_target_options = in.backup().target_options();
  fx.backup_volume = in.backup().volume();
  return Status();
}

// The report entry of the file the loader was given as `path`.
const v1::PluginInfo* FindPlugin(const std::vector<v1::PluginInfo>& report,
                                 const std::string& path) {
  for (const auto& info : report) {
    if (info.path() == path) return &info;
  }
  return nullptr;
}

v1::BackendBinding* Binding(v1::HostConfig& config, BackendKind kind) {
  auto* b = config.mutable_backends();
  switch (kind) {
    case BackendKind::kCompute:
      return b->mutable_compute();
    case BackendKind::kStorage:
      return b->mutable_storage();
    case BackendKind::kNetwork:
      return b->mutable_network();
    case BackendKind::kImage:
      return b->mutable_image();
    case BackendKind::kBackup:
      return b->mutable_backup();
  }
  return b->mutable_compute();
}

std::string JoinKinds(const google::protobuf::RepeatedPtrField<std::string>& kinds) {
  std::string out;
  for (const auto& k : kinds) out += (out.empty() ? "" : ", ") + k;
  return out.empty() ? "nothing" : out;
}

// Opens the Host with the plugin bound and reads the backends and their capabilities.
void OpenHost(Env& env, const v1::HostConfig& config) {
  HostOptions host_options;
  host_options.log_sink = env.logs;
  auto host = Host::Open(config, host_options);
  if (!host.ok()) {
    env.load_error = host.status();
    return;
  }
  env.host = std::move(host).MoveValueUnsafe();
  if (auto c = env.host->compute(); c.ok()) {
    env.compute = *c;
    env.compute_caps = env.compute->Capabilities();
  }
  if (auto s = env.host->storage(); s.ok()) {
    env.storage = *s;
    env.storage_caps = env.storage->Capabilities();
  }
  if (auto n = env.host->network(); n.ok()) {
    env.network = *n;
    env.network_caps = env.network->Capabilities();
  }
  if (auto i = env.host->image(); i.ok()) {
    env.image = *i;
    env.image_caps = env.image->Capabilities();
  }
  if (auto b = env.host->backup(); b.ok()) {
    env.backup = *b;
    env.backup_caps = env.backup->Capabilities();
  }
}

}  // namespace

Result<std::unique_ptr<Env>> MakeEnv(const Options& options) {
  if (options.plugin_path.empty()) {
    return InvalidArgument("--plugin: the plugin shared object to test is required");
  }
  std::error_code ec;
  const fs::path plugin = fs::absolute(options.plugin_path, ec);
  if (ec || !fs::exists(plugin, ec)) {
    return NotFound("--plugin: \"" + options.plugin_path + "\" does not exist");
  }

  auto env = std::make_unique<Env>();
  env->options = options;
  env->options.plugin_path = plugin.string();
  env->run_id = RunId();
  env->logs = std::make_shared<LogCapture>(options.verbose);
  if (!options.config_path.empty()) {
    HCI_RETURN_NOT_OK(LoadYamlFile(options.config_path, &env->config));
  }
  HCI_ASSIGN_OR_RAISE(env->work_dir, MakeWorkDir());
  // From here on a failure must not leave the work directory behind.
  auto fail = [&](Status s) {
    DestroyEnv(*env);
    return s;
  };
  if (Status s = ResolveFixtures(*env); !s.ok()) return fail(std::move(s));

  v1::HostConfig config = env->config.host();
  if (config.state_dir().empty()) {
    config.set_state_dir(env->work_dir + "/state");
    env->own_state_dir = true;
  }
  env->state_dir = config.state_dir();
  config.add_plugin_files(env->options.plugin_path);

  // First look at the plugin without creating any backend: its name and kinds decide the
  // bindings. The loader's verdict is part of the result either way.
  v1::HostConfig probe = config;
  probe.clear_backends();
  {
    HostOptions host_options;
    host_options.log_sink = env->logs;
    auto host = Host::Open(probe, host_options);
    if (!host.ok()) return fail(host.status().WithContext("opening the Host"));
    const std::vector<v1::PluginInfo> report = (*host)->plugins();
    const v1::PluginInfo* info = FindPlugin(report, env->options.plugin_path);
    if (info == nullptr) {
      return fail(Internal("the loader did not report \"" + env->options.plugin_path + "\""));
    }
    env->plugin = *info;
  }
  if (env->plugin.state() != v1::PLUGIN_STATE_LOADED) {
    env->load_error = FailedPrecondition("the loader refused the plugin: " + env->plugin.reason());
    return env;
  }

  std::set<BackendKind> provided;
  for (const auto& k : env->plugin.kinds()) {
    if (auto kind = ParseKind(k)) provided.insert(*kind);
  }
  if (options.kinds.empty()) {
    env->kinds = provided;
  } else {
    for (BackendKind kind : options.kinds) {
      if (provided.count(kind) == 0) {
        return fail(InvalidArgument("--kind: plugin \"" + env->plugin.name() +
                                    "\" does not provide a " + std::string(BackendKindName(kind)) +
                                    " backend (it provides: " + JoinKinds(env->plugin.kinds()) +
                                    ")"));
      }
      env->kinds.insert(kind);
    }
  }
  for (BackendKind kind : env->kinds) {
    v1::BackendBinding* binding = Binding(config, kind);
    if (binding->plugin() != env->plugin.name()) {
      binding->Clear();
      binding->set_plugin(env->plugin.name());
    }
  }
  OpenHost(*env, config);
  if (env->host && (env->tested(BackendKind::kImage) || env->image != nullptr)) {
    auto server = StartHttpFileServer(env->work_dir + "/http");
    if (!server.ok()) return fail(server.status().WithContext("starting the HTTP file server"));
    env->http = std::move(server).MoveValueUnsafe();
  }
  return env;
}

void DestroyEnv(Env& env) {
  if (env.host) {
    // Whatever a crashed or interrupted test left behind: the kit's names carry its prefix.
    Tracker sweep(env);
    const std::string prefix = env.prefix();
    auto mine = [&](const std::string& name) { return name.rfind(prefix, 0) == 0; };
    if (env.compute != nullptr) {
      if (auto list = env.compute->ListVms({}); list.ok()) {
        for (const auto& vm : list->vms()) {
          if (mine(vm.metadata().name())) sweep.Vm(vm.metadata().name());
        }
      }
    }
    if (env.network != nullptr) {
      if (env.network_caps.ports()) {
        if (auto list = env.network->ListPorts({}); list.ok()) {
          for (const auto& p : list->ports()) {
            if (mine(p.metadata().name())) sweep.Port(p.metadata().name());
          }
        }
      }
      if (auto list = env.network->ListNetworks({}); list.ok()) {
        for (const auto& n : list->networks()) {
          if (mine(n.metadata().name())) sweep.Network(n.metadata().name());
        }
      }
    }
    if (env.backup != nullptr) {
      if (auto list = env.backup->ListBackupTargets({}); list.ok()) {
        for (const auto& t : list->targets()) {
          if (mine(t.metadata().name())) sweep.BackupTarget(t.metadata().name());
        }
      }
    }
    if (env.storage != nullptr) {
      if (auto list = env.storage->ListVolumes({}); list.ok()) {
        for (const auto& v : list->volumes()) {
          if (mine(v.metadata().name())) sweep.Volume(v.metadata().name());
        }
      }
    }
    if (env.image != nullptr) {
      if (auto list = env.image->ListImages({}); list.ok()) {
        for (const auto& i : list->images()) {
          if (mine(i.metadata().name())) sweep.Image(i.metadata().name());
        }
      }
    }
    for (const auto& problem : sweep.CleanUp()) {
      std::fprintf(stderr, "hci-conformance: final cleanup: %s\n", problem.c_str());
    }
  }
  env.host.reset();
  env.http.reset();
  if (!env.work_dir.empty()) {
    std::error_code ec;
    fs::remove_all(env.work_dir, ec);
    if (ec) {
      std::fprintf(stderr, "hci-conformance: cannot remove %s: %s\n", env.work_dir.c_str(),
                   ec.message().c_str());
    }
    env.work_dir.clear();
  }
}

}  // namespace hci::conformance::internal
