#include "hci/host.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>

#include "event_bus_internal.h"
#include "guarded_backends_internal.h"
#include "hci/names.h"
#include "hci/plugin.h"
#include "hci/yaml.h"
#include "metrics_internal.h"
#include "operation_internal.h"
#include "plugin_loader_internal.h"

namespace hci {

namespace fs = std::filesystem;

PluginContext::~PluginContext() = default;

namespace {

LogLevel FromProto(v1::LogLevel level) {
  switch (level) {
    case v1::LOG_LEVEL_TRACE: return LogLevel::kTrace;
    case v1::LOG_LEVEL_DEBUG: return LogLevel::kDebug;
    case v1::LOG_LEVEL_WARN: return LogLevel::kWarn;
    case v1::LOG_LEVEL_ERROR: return LogLevel::kError;
    case v1::LOG_LEVEL_CRITICAL: return LogLevel::kCritical;
    case v1::LOG_LEVEL_OFF: return LogLevel::kOff;
    default: return LogLevel::kInfo;
  }
}

std::string DefaultNodeName() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "localhost";
  std::string name(buf);
  // Keep the first DNS label only, lowercased.
  name = name.substr(0, name.find('.'));
  for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return IsValidName(name) ? name : "localhost";
}

std::vector<std::string> DefaultPluginDirs() {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("HCI_PLUGIN_PATH"); env != nullptr && *env != '\0') {
    std::string_view rest(env);
    while (!rest.empty()) {
      auto colon = rest.find(':');
      auto dir = rest.substr(0, colon);
      if (!dir.empty()) dirs.emplace_back(dir);
      if (colon == std::string_view::npos) break;
      rest.remove_prefix(colon + 1);
    }
    return dirs;
  }
  dirs.emplace_back(HCI_DEFAULT_PLUGIN_DIR);
  return dirs;
}

// Creates `dir` and its parents; the last component gets mode 0700 (state can hold secrets).
Status MakePrivateDir(const std::string& dir, std::string_view field) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return Status(ec.value() == EACCES ? StatusCode::kPermissionDenied : StatusCode::kInternal,
                  std::string(field) + ": cannot create \"" + dir + "\": " + ec.message());
  }
  if (::chmod(dir.c_str(), 0700) != 0) {
    return ErrnoStatus(errno, std::string(field) + ": chmod 0700 \"" + dir + "\"");
  }
  return Status();
}

// Takes an exclusive flock on <state_dir>/host.lock so that only one Host manages a state
// directory. The kernel drops the lock when the process dies, so a crashed embedder never blocks
// the next one (which must reattach to what the first left running).
Result<int> LockStateDir(const std::string& state_dir) {
  std::string path = state_dir + "/host.lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus(errno, "state_dir: open \"" + path + "\"");
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    char buf[32] = {};
    ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
    ::close(fd);
    if (err != EWOULDBLOCK) return ErrnoStatus(err, "state_dir: flock \"" + path + "\"");
    std::string holder = n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : "unknown";
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    return FailedPrecondition("state_dir: \"" + state_dir +
                              "\" is in use by another hci::Host (pid " + holder +
                              "); one Host manages a state directory at a time");
  }
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus(err, "state_dir: write \"" + path + "\"");
  }
  return fd;
}

}  // namespace

struct Host::Impl {
  class Context;

  v1::HostConfig config;
  std::shared_ptr<LogSink> log_sink;
  std::shared_ptr<EventSink> embedder_sink;
  Logger logger;
  internal::CoreMetrics metrics;
  std::shared_ptr<internal::EventBus> bus;
  Subscription embedder_subscription;
  std::unique_ptr<internal::OperationTrackerImpl> tracker;
  std::unique_ptr<internal::PluginLoader> loader;
  std::vector<std::unique_ptr<Context>> contexts;
  std::unique_ptr<ComputeBackend> compute;
  std::unique_ptr<StorageBackend> storage;
  std::unique_ptr<NetworkBackend> network;
  std::unique_ptr<ImageBackend> image;
  std::unique_ptr<BackupBackend> backup;
  int lock_fd = -1;

  ~Impl() {
    // Backends first (they may still publish events or finish operations), then the bus.
    // A backend's threads may call the kinds it uses through PluginContext until it is
    // destroyed, so users go before what they use: compute (volumes, networks) before storage.
    backup.reset();
    compute.reset();
    image.reset();
    network.reset();
    storage.reset();
    contexts.clear();
    tracker.reset();
    // The embedder's sink is promised every event (HostOptions::event_sink): deliver what is
    // still queued before unsubscribing it.
    if (bus) bus->Flush();
    embedder_subscription.Reset();
    bus.reset();
    if (lock_fd >= 0) ::close(lock_fd);
  }

  Status CreateBackends();
  template <typename Backend, typename Factory>
  Status CreateOne(BackendKind kind, const v1::BackendBinding& binding,
                   Factory PluginFactories::*factory, std::unique_ptr<Backend>* out,
                   std::unique_ptr<Backend> (*guard)(std::unique_ptr<Backend>, std::string,
                                                     Logger, internal::CoreMetrics*));
};

class Host::Impl::Context final : public PluginContext {
 public:
  Context(Host::Impl* host, std::string plugin, std::string state_dir,
          google::protobuf::Struct options)
      : host_(host),
        plugin_(std::move(plugin)),
        state_dir_(std::move(state_dir)),
        options_(std::move(options)),
        logger_(host->logger.WithComponent(plugin_)),
        events_(plugin_, host->bus.get()) {}

  const std::string& plugin_name() const override { return plugin_; }
  const std::string& node_name() const override { return host_->config.node_name(); }
  const std::string& state_dir() const override { return state_dir_; }
  const google::protobuf::Struct& options() const override { return options_; }
  const Logger& logger() const override { return logger_; }
  EventSink& events() override { return events_; }
  OperationTracker& operations() override { return *host_->tracker; }
  ComputeBackend* compute() override { return host_->compute.get(); }
  StorageBackend* storage() override { return host_->storage.get(); }
  NetworkBackend* network() override { return host_->network.get(); }
  ImageBackend* image() override { return host_->image.get(); }
  BackupBackend* backup() override { return host_->backup.get(); }

 private:
  Host::Impl* host_;
  std::string plugin_;
  std::string state_dir_;
  google::protobuf::Struct options_;
  Logger logger_;
  internal::SourceEventSink events_;
};

template <typename Backend, typename Factory>
Status Host::Impl::CreateOne(BackendKind kind, const v1::BackendBinding& binding,
                             Factory PluginFactories::*factory, std::unique_ptr<Backend>* out,
                             std::unique_ptr<Backend> (*guard)(std::unique_ptr<Backend>,
                                                               std::string, Logger,
                                                               internal::CoreMetrics*)) {
  std::string field = "backends." + std::string(BackendKindName(kind));
  if (binding.plugin().empty()) {
    if (binding.has_options()) {
      return InvalidArgument(field + ".plugin: is required when options are given");
    }
    return Status();  // Not configured.
  }
  const std::string& name = binding.plugin();
  const PluginDescriptor* descriptor = loader->Find(name);
  if (descriptor == nullptr) {
    std::string dirs;
    for (const auto& f : config.plugin_files()) dirs += (dirs.empty() ? "" : ", ") + f;
    for (const auto& d : config.plugin_dirs()) dirs += (dirs.empty() ? "" : ", ") + d;
    if (const v1::PluginInfo* info = loader->FindInfo(name); info != nullptr) {
      // The reason already starts with the plugin's path.
      return NotFound(field + ".plugin: plugin \"" + name + "\" was refused: " + info->reason());
    }
    return NotFound(field + ".plugin: no plugin named \"" + name + "\" in " +
                    (dirs.empty() ? std::string("(no plugin directories)") : dirs));
  }
  Factory make = descriptor->factories.*factory;
  if (make == nullptr) {
    std::string kinds;
    for (const auto& k : loader->FindInfo(name)->kinds()) kinds += (kinds.empty() ? "" : ", ") + k;
    return InvalidArgument(field + ".plugin: plugin \"" + name + "\" does not provide a " +
                           std::string(BackendKindName(kind)) + " backend (it provides: " +
                           (kinds.empty() ? "nothing" : kinds) + ")");
  }
  std::string state_dir = config.state_dir() + "/plugins/" + name;
  HCI_RETURN_NOT_OK(MakePrivateDir(state_dir, "state_dir"));
  contexts.push_back(std::make_unique<Context>(this, name, state_dir, binding.options()));
  Context& context = *contexts.back();

  Result<std::unique_ptr<Backend>> made = Internal("factory did not run");
  try {
    made = make(context);
  } catch (const std::exception& e) {
    made = Internal(std::string("factory threw: ") + e.what());
  } catch (...) {
    made = Internal("factory threw a non-standard exception");
  }
  if (!made.ok()) {
    return made.status().WithContext(field + " (plugin \"" + name + "\")");
  }
  if (*made == nullptr) {
    return Internal(field + " (plugin \"" + name + "\"): factory returned no backend");
  }
  *out = guard(std::move(made).MoveValueUnsafe(), name, context.logger(), &metrics);
  logger.Info("", "", "using plugin \"" + name + "\" for the " +
                          std::string(BackendKindName(kind)) + " backend");
  return Status();
}

Status Host::Impl::CreateBackends() {
  const auto& b = config.backends();
  HCI_RETURN_NOT_OK(CreateOne<ComputeBackend>(BackendKind::kCompute, b.compute(),
                                              &PluginFactories::compute, &compute,
                                              &internal::GuardCompute));
  HCI_RETURN_NOT_OK(CreateOne<StorageBackend>(BackendKind::kStorage, b.storage(),
                                              &PluginFactories::storage, &storage,
                                              &internal::GuardStorage));
  HCI_RETURN_NOT_OK(CreateOne<NetworkBackend>(BackendKind::kNetwork, b.network(),
                                              &PluginFactories::network, &network,
                                              &internal::GuardNetwork));
  HCI_RETURN_NOT_OK(CreateOne<ImageBackend>(BackendKind::kImage, b.image(),
                                            &PluginFactories::image, &image,
                                            &internal::GuardImage));
  HCI_RETURN_NOT_OK(CreateOne<BackupBackend>(BackendKind::kBackup, b.backup(),
                                             &PluginFactories::backup, &backup,
                                             &internal::GuardBackup));
  return Status();
}

Host::Host(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Host::~Host() = default;

std::string Host::DefaultStateDir() {
  if (const char* env = std::getenv("HCI_STATE_DIR"); env != nullptr && *env != '\0') return env;
  if (::geteuid() == 0) return "/var/lib/hci";
  if (const char* xdg = std::getenv("XDG_STATE_HOME"); xdg != nullptr && *xdg == '/') {
    return std::string(xdg) + "/hci";
  }
  if (const char* home = std::getenv("HOME"); home != nullptr && *home == '/') {
    return std::string(home) + "/.local/state/hci";
  }
  return "/tmp/hci-" + std::to_string(::geteuid());
}

Result<v1::HostConfig> Host::LoadConfig(const std::string& path) {
  v1::HostConfig config;
  HCI_RETURN_NOT_OK(LoadYamlFile(path, &config));
  return config;
}

Result<std::unique_ptr<Host>> Host::Open(const v1::HostConfig& config, HostOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  auto& cfg = impl->config;
  if (cfg.node_name().empty()) cfg.set_node_name(DefaultNodeName());
  HCI_RETURN_NOT_OK(ValidateName("node_name", cfg.node_name()));
  if (cfg.state_dir().empty()) cfg.set_state_dir(DefaultStateDir());
  if (cfg.state_dir().front() != '/') {
    return InvalidArgument("state_dir: \"" + cfg.state_dir() + "\" must be an absolute path");
  }
  if (cfg.plugin_dirs().empty()) {
    for (auto& d : DefaultPluginDirs()) cfg.add_plugin_dirs(d);
  }
  for (int i = 0; i < cfg.plugin_files_size(); ++i) {
    if (cfg.plugin_files(i).empty() || cfg.plugin_files(i).front() != '/') {
      return InvalidArgument("plugin_files[" + std::to_string(i) + "]: \"" + cfg.plugin_files(i) +
                             "\" must be an absolute path");
    }
  }
  HCI_RETURN_NOT_OK(MakePrivateDir(cfg.state_dir(), "state_dir"));
  HCI_ASSIGN_OR_RAISE(impl->lock_fd, LockStateDir(cfg.state_dir()));

  impl->log_sink = options.log_sink ? options.log_sink : MakeStderrLogSink();
  impl->logger = Logger(impl->log_sink, "core", FromProto(cfg.log_level()));
  impl->bus = std::make_shared<internal::EventBus>(cfg.node_name(), impl->logger);
  if (options.event_sink) {
    impl->embedder_sink = options.event_sink;
    EventSink* sink = impl->embedder_sink.get();
    impl->embedder_subscription =
        impl->bus->Subscribe([sink](const v1::Event& event) { sink->Publish(event); });
  }
  impl->tracker = std::make_unique<internal::OperationTrackerImpl>(impl->bus.get());
  impl->loader = std::make_unique<internal::PluginLoader>(impl->logger.WithComponent("loader"));
  // Explicit files first: they are what the embedder asked for by name, so they win a name
  // clash with a file found by scanning.
  for (const auto& file : cfg.plugin_files()) impl->loader->LoadFile(file);
  impl->loader->ScanDirectories({cfg.plugin_dirs().begin(), cfg.plugin_dirs().end()});
  HCI_RETURN_NOT_OK(impl->CreateBackends());
  return std::unique_ptr<Host>(new Host(std::move(impl)));
}

const v1::HostConfig& Host::config() const { return impl_->config; }

namespace {
template <typename B>
Result<B*> Configured(const std::unique_ptr<B>& backend, BackendKind kind) {
  if (!backend) {
    return FailedPrecondition("no " + std::string(BackendKindName(kind)) +
                              " backend is configured (set backends." +
                              std::string(BackendKindName(kind)) +
                              ".plugin in the host config)");
  }
  return backend.get();
}
}  // namespace

Result<ComputeBackend*> Host::compute() const {
  return Configured(impl_->compute, BackendKind::kCompute);
}
Result<StorageBackend*> Host::storage() const {
  return Configured(impl_->storage, BackendKind::kStorage);
}
Result<NetworkBackend*> Host::network() const {
  return Configured(impl_->network, BackendKind::kNetwork);
}
Result<ImageBackend*> Host::image() const { return Configured(impl_->image, BackendKind::kImage); }
Result<BackupBackend*> Host::backup() const {
  return Configured(impl_->backup, BackendKind::kBackup);
}

std::vector<v1::PluginInfo> Host::plugins() const { return impl_->loader->report(); }

Subscription Host::Subscribe(EventCallback callback) {
  return impl_->bus->Subscribe(std::move(callback));
}

void Host::FlushEvents() const { impl_->bus->Flush(); }

std::vector<v1::OperationStatus> Host::ListOperations() const { return impl_->tracker->List(); }

Result<Operation> Host::GetOperation(std::string_view id) const {
  auto state = impl_->tracker->Find(id);
  if (!state) return NotFound("operation \"" + std::string(id) + "\" is not tracked");
  return Operation(std::move(state));
}

const Logger& Host::logger() const { return impl_->logger; }

std::string Host::Metrics() const {
  std::string out = impl_->metrics.Text();
  auto append = [&](Backend* b) {
    if (b == nullptr) return;
    auto text = b->Metrics();
    if (text.ok()) out += *text;
  };
  append(impl_->compute.get());
  append(impl_->storage.get());
  append(impl_->network.get());
  append(impl_->image.get());
  append(impl_->backup.get());
  return out;
}

}  // namespace hci
