// The engine as an nbdkit plugin (nbdkit-plugin(3), API version 2): nbdkit does the NBD protocol
// (handshake, unix socket or TCP, FUA/FLUSH/TRIM/WRITE_ZEROES flags, multi-conn) and this file
// maps its callbacks onto hci::replicated::Engine. Started by the replicated plugin as
//   nbdkit --foreground --unix SOCK --threads 32 nbdkit-hci-engine-plugin.so config=FILE
// where FILE holds a binary EngineConfig (proto/hci/replicated/v1/replica.proto).
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstdint>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "engine/engine.h"
#include "wire/replica_wire.h"

namespace {

using hci::replicated::ControlServer;
using hci::replicated::Engine;

std::string g_config_path;
hci::replicated::v1::EngineConfig g_config;
std::string g_secret;
std::unique_ptr<Engine> g_engine;
std::unique_ptr<ControlServer> g_control;

int Fail(const hci::Status& st) {
  nbdkit_error("%s", st.ToString().c_str());
  nbdkit_set_error(st.code() == hci::StatusCode::kInvalidArgument ? EINVAL : EIO);
  return -1;
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

int Config(const char* key, const char* value) {
  if (std::string_view(key) == "config") {
    g_config_path = value;
    return 0;
  }
  nbdkit_error("unknown parameter '%s' (this plugin takes config=FILE)", key);
  return -1;
}

int ConfigComplete() {
  if (g_config_path.empty()) {
    nbdkit_error("config=FILE is required");
    return -1;
  }
  std::string bytes;
  if (!ReadFile(g_config_path, &bytes) || !g_config.ParseFromString(bytes)) {
    nbdkit_error("config: %s cannot be read as an EngineConfig", g_config_path.c_str());
    return -1;
  }
  // Membership changes (a replica replaced by one on a spare node) are written back here.
  if (g_config.config_file().empty()) g_config.set_config_file(g_config_path);
  auto secret = hci::replicated::wire::ReadSecretFile("secret_file", g_config.secret_file());
  if (!secret.ok()) {
    nbdkit_error("%s", secret.status().ToString().c_str());
    return -1;
  }
  g_secret = *secret;
  return 0;
}

// Threads start after nbdkit forked into the background (if it does).
int AfterFork() {
  // nbdkit's stdout is not the log: the engine logs to stderr, which the plugin sends to the
  // engine's log file.
  spdlog::set_default_logger(spdlog::stderr_logger_mt("engine"));
  auto engine = Engine::Start(g_config, g_secret);
  if (!engine.ok()) return Fail(engine.status());
  g_engine = std::move(engine).MoveValueUnsafe();
  if (!g_config.control_socket().empty()) {
    auto control = ControlServer::Start(g_engine.get(), g_config.control_socket());
    if (!control.ok()) return Fail(control.status());
    g_control = std::move(control).MoveValueUnsafe();
  }
  nbdkit_debug("volume %s: engine started", g_config.volume().c_str());
  return 0;
}

void Unload() {
  g_control.reset();
  g_engine.reset();
}

void* Open(int /*readonly*/) { return g_engine.get(); }

int64_t GetSize(void* /*handle*/) { return static_cast<int64_t>(g_engine->size_bytes()); }

int BlockSize(void* /*handle*/, uint32_t* minimum, uint32_t* preferred, uint32_t* maximum) {
  *minimum = 4096;
  *preferred = 4096;
  *maximum = 32u << 20;
  return 0;
}

int One(void* /*handle*/) { return 1; }
int CanFua(void* /*handle*/) { return NBDKIT_FUA_NATIVE; }
int ThreadModel() { return NBDKIT_THREAD_MODEL_PARALLEL; }

int Pread(void* /*handle*/, void* buf, uint32_t count, uint64_t offset, uint32_t /*flags*/) {
  hci::Status st = g_engine->Read(offset, {static_cast<std::uint8_t*>(buf), count});
  return st.ok() ? 0 : Fail(st);
}

int Pwrite(void* /*handle*/, const void* buf, uint32_t count, uint64_t offset, uint32_t flags) {
  hci::Status st = g_engine->Write(offset, {static_cast<const std::uint8_t*>(buf), count},
                                   (flags & NBDKIT_FLAG_FUA) != 0);
  return st.ok() ? 0 : Fail(st);
}

int Flush(void* /*handle*/, uint32_t /*flags*/) {
  hci::Status st = g_engine->Flush();
  return st.ok() ? 0 : Fail(st);
}

int Trim(void* /*handle*/, uint32_t count, uint64_t offset, uint32_t flags) {
  hci::Status st = g_engine->WriteZeroes(offset, count, true, (flags & NBDKIT_FLAG_FUA) != 0);
  return st.ok() ? 0 : Fail(st);
}

int Zero(void* /*handle*/, uint32_t count, uint64_t offset, uint32_t flags) {
  hci::Status st = g_engine->WriteZeroes(offset, count, (flags & NBDKIT_FLAG_MAY_TRIM) != 0,
                                         (flags & NBDKIT_FLAG_FUA) != 0);
  return st.ok() ? 0 : Fail(st);
}

nbdkit_plugin MakePlugin() {
  nbdkit_plugin p{};
  p.name = "hci-engine";
  p.longname = "libhci replicated volume engine";
  p.version = "1";
  p.description = "Replicates every write to a quorum of hci-replica-server replicas";
  p.unload = Unload;
  p.config = Config;
  p.config_complete = ConfigComplete;
  p.config_help = "config=FILE   binary EngineConfig written by the replicated plugin";
  p.after_fork = AfterFork;
  p.open = Open;
  p.get_size = GetSize;
  p.block_size = BlockSize;
  p.can_write = One;
  p.can_flush = One;
  p.can_trim = One;
  p.can_zero = One;
  p.can_fua = CanFua;
  p.can_multi_conn = One;
  p.thread_model = ThreadModel;
  p.pread = Pread;
  p.pwrite = Pwrite;
  p.flush = Flush;
  p.trim = Trim;
  p.zero = Zero;
  return p;
}

nbdkit_plugin g_plugin = MakePlugin();

}  // namespace

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
NBDKIT_REGISTER_PLUGIN(g_plugin)
