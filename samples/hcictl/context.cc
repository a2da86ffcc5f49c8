// The command context: exit codes, interrupts, config resolution and the Host.
#include <fmt/format.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <system_error>
#include <utility>

#include "hcictl_internal.h"

namespace hcictl {
namespace {

namespace fs = std::filesystem;

// Events kept for `describe`: plenty for one command or one batch.
constexpr size_t kMaxEvents = 1000;

std::atomic<bool> g_interrupted{false};
std::atomic<int> g_interrupt_scopes{0};
struct sigaction g_old_int;
struct sigaction g_old_term;

void OnInterrupt(int) { g_interrupted.store(true); }

// A relative path from the command line or the environment, made absolute: the Host wants one.
std::string Absolute(const std::string& path) {
  std::error_code ec;
  const fs::path absolute = fs::absolute(path, ec);
  return ec ? path : absolute.lexically_normal().string();
}

std::string EnvOrEmpty(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

}  // namespace

int ExitCode(const hci::Status& status) {
  if (status.ok()) return kExitOk;
  return kExitStatusBase + static_cast<int>(status.code());
}

std::string ExitCodeHelp() {
  std::string out =
      "Exit codes:\n"
      "  0    success\n"
      "  2    usage error (unknown command or flag, missing argument, bad flag value)\n";
  for (int code = 1; code <= static_cast<int>(hci::StatusCode::kUnauthenticated); ++code) {
    out += fmt::format("  {:<4} {}\n", kExitStatusBase + code,
                       hci::StatusCodeName(static_cast<hci::StatusCode>(code)));
  }
  out += fmt::format("  {:<4} interrupted (SIGINT/SIGTERM) while waiting\n", kExitInterrupted);
  return out;
}

InterruptScope::InterruptScope() {
  if (g_interrupt_scopes.fetch_add(1) != 0) return;
  g_interrupted.store(false);
  struct sigaction action = {};
  action.sa_handler = &OnInterrupt;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, &g_old_int);
  sigaction(SIGTERM, &action, &g_old_term);
}

InterruptScope::~InterruptScope() {
  if (g_interrupt_scopes.fetch_sub(1) != 1) return;
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
}

bool Interrupted() { return g_interrupted.load(); }

hci::Status InterruptedStatus() { return hci::Cancelled("interrupted"); }

v1::HostConfig DefaultHostConfig() {
  v1::HostConfig config;
  config.mutable_backends()->mutable_compute()->set_plugin("kvm");
  config.mutable_backends()->mutable_storage()->set_plugin("local");
  config.mutable_backends()->mutable_image()->set_plugin("local");
  return config;
}

Context::Context(GlobalOptions options) : options_(std::move(options)) {}

Context::~Context() {
  // Stop the callback before the Host (and its event thread) goes.
  subscription_.Reset();
  host_.reset();
}

hci::Result<v1::HostConfig> Context::ResolveConfig() const {
  std::string path = options_.config;
  if (path.empty()) path = EnvOrEmpty("HCI_CONFIG");
  v1::HostConfig config;
  if (path.empty()) {
    config = DefaultHostConfig();
  } else {
    HCI_ASSIGN_OR_RAISE(config, hci::Host::LoadConfig(path));
  }
  if (!options_.state_dir.empty()) {
    config.set_state_dir(Absolute(options_.state_dir));
  } else if (const std::string env = EnvOrEmpty("HCI_STATE_DIR"); !env.empty()) {
    config.set_state_dir(Absolute(env));
  } else if (config.state_dir().empty()) {
    config.set_state_dir(hci::Host::DefaultStateDir());
  }
  // hcictl is a command, not a daemon: its log is for trouble only, unless asked for.
  switch (options_.verbosity) {
    case 0:
      config.set_log_level(v1::LOG_LEVEL_WARN);
      break;
    case 1:
      config.set_log_level(v1::LOG_LEVEL_INFO);
      break;
    case 2:
      config.set_log_level(v1::LOG_LEVEL_DEBUG);
      break;
    default:
      config.set_log_level(v1::LOG_LEVEL_TRACE);
      break;
  }
  return config;
}

hci::Result<hci::Host*> Context::host() {
  if (host_) return host_.get();
  HCI_ASSIGN_OR_RAISE(v1::HostConfig config, ResolveConfig());
  hci::Result<std::unique_ptr<hci::Host>> host = hci::Host::Open(config);
  if (!host.ok()) {
    const hci::Status& status = host.status();
    if (status.code() == hci::StatusCode::kFailedPrecondition) {
      return status.WithContext(
          fmt::format("cannot open the state directory {} (another hcictl or program may be "
                      "using it; --state-dir or $HCI_STATE_DIR selects another one)",
                      config.state_dir()));
    }
    if (status.code() == hci::StatusCode::kNotFound) {
      return hci::Status(status.code(),
                         status.message() + " (`hcictl plugins` lists what the loader found)");
    }
    return status;
  }
  host_ = std::move(host).ValueOrDie();
  subscription_ = host_->Subscribe([this](const v1::Event& event) {
    std::lock_guard<std::mutex> lock(events_mu_);
    events_.push_back(event);
    if (events_.size() > kMaxEvents) events_.pop_front();
  });
  return host_.get();
}

hci::Result<hci::ComputeBackend*> Context::compute() {
  HCI_ASSIGN_OR_RAISE(hci::Host * h, host());
  return h->compute();
}
hci::Result<hci::StorageBackend*> Context::storage() {
  HCI_ASSIGN_OR_RAISE(hci::Host * h, host());
  return h->storage();
}
hci::Result<hci::NetworkBackend*> Context::network() {
  HCI_ASSIGN_OR_RAISE(hci::Host * h, host());
  return h->network();
}
hci::Result<hci::ImageBackend*> Context::image() {
  HCI_ASSIGN_OR_RAISE(hci::Host * h, host());
  return h->image();
}
hci::Result<hci::BackupBackend*> Context::backup() {
  HCI_ASSIGN_OR_RAISE(hci::Host * h, host());
  return h->backup();
}

std::vector<v1::Event> Context::EventsFor(std::string_view kind, std::string_view name) const {
  // Events are delivered on the core's thread: wait for those of the calls made so far.
  if (host_) host_->FlushEvents();
  std::lock_guard<std::mutex> lock(events_mu_);
  std::vector<v1::Event> out;
  for (const v1::Event& event : events_) {
    if (event.object().kind() == kind && event.object().name() == name) out.push_back(event);
  }
  return out;
}

hci::Status Context::UsageError(std::string message) {
  usage_error_ = true;
  return hci::InvalidArgument(std::move(message));
}

hci::Result<std::vector<v1::PluginInfo>> PluginReport(Context& ctx) {
  HCI_ASSIGN_OR_RAISE(v1::HostConfig config, ctx.ResolveConfig());
  config.clear_backends();
  std::string dir = (fs::temp_directory_path() / "hcictl-plugins-XXXXXX").string();
  if (::mkdtemp(dir.data()) == nullptr) {
    return hci::ErrnoStatus(errno, "cannot create a temporary state directory");
  }
  config.set_state_dir(dir);
  std::vector<v1::PluginInfo> report;
  hci::Status status;
  {
    hci::Result<std::unique_ptr<hci::Host>> host = hci::Host::Open(config);
    if (host.ok()) {
      report = (*host)->plugins();
    } else {
      status = host.status();
    }
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  HCI_RETURN_NOT_OK(status);
  return report;
}

}  // namespace hcictl
