#include "cluster.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "plugin_test_nodes.h"
#include "process/process.h"
#include "wire/replica_wire.h"

namespace hci::replicated::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

bool Ip(const std::vector<std::string>& args) {
  process::RunOptions run;
  run.argv = {"ip"};
  run.argv.insert(run.argv.end(), args.begin(), args.end());
  run.timeout = std::chrono::milliseconds(10000);
  auto r = process::Run(run);
  return r.ok() && r->success();
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// True once `pid` is gone or a zombie. (Not process::ProcessAlive: its empty-cmdline rule also
// answers false while the process is between fork and exec.)
bool Exited(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() || stat[close + 2] == 'Z';
}

using plugin_testing::KillAndWait;

// A pid we started is signalled only while it still runs our program: once that exited, the
// pid may belong to another test's process (pids wrap at pid_max, 32768 here, and parallel
// tests start thousands of threads and processes).
bool Ours(pid_t pid, const std::string& cmdline_part) {
  return pid > 0 && process::ProcessAlive(pid, cmdline_part);
}

}  // namespace

std::unique_ptr<Cluster> Cluster::Create(int nodes) {
  std::unique_ptr<Cluster> c(new Cluster());
  char tmpl[] = "/tmp/hci-replicated-XXXXXX";
  c->dir_ = mkdtemp(tmpl);
  c->secret_ = "test-secret-" + std::to_string(getpid()) + "-" + std::to_string(time(nullptr));
  c->secret_file_ = c->dir_ + "/secret";
  {
    std::ofstream out(c->secret_file_);
    out << c->secret_;
  }
  chmod(c->secret_file_.c_str(), 0600);
  // A subnet of its own (ctest runs several clusters at once): 10.<subnet>.0.0/16 is held by an
  // flock on a file named after it, released when this process ends, however it ends.
  for (int subnet = 64; subnet < 192 && c->subnet_ == 0; ++subnet) {
    const std::string lock = "/tmp/hci-replicated-subnet-" + std::to_string(subnet) + ".lock";
    const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) continue;
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
      c->subnet_ = subnet;
      c->subnet_lock_fd_ = fd;
    } else {
      ::close(fd);
    }
  }
  const std::string tag = std::to_string(getpid() % 100000);
  c->partitions_ = geteuid() == 0 && Ip({"netns", "add", "hci-probe-" + tag});
  if (c->partitions_) {
    Ip({"netns", "del", "hci-probe-" + tag});
  } else {
    c->note_ =
        "network namespaces are not available (needs root and iproute2): nodes share "
        "127.0.0.1 and link cuts are not tested";
  }
  for (int i = 0; i < nodes; ++i) {
    Node n;
    n.name = "node" + std::to_string(i);
    n.data_dir = c->dir_ + "/" + n.name;
    n.log_file = c->dir_ + "/" + n.name + ".log";
    fs::create_directories(n.data_dir);
    if (c->partitions_) {
      n.netns = "hci-" + tag + "-" + std::to_string(i);
      n.host_if = "h" + tag + "n" + std::to_string(i);
      const std::string net = "10." + std::to_string(c->subnet_) + "." + std::to_string(i);
      const bool ok = Ip({"netns", "add", n.netns}) &&
                      Ip({"link", "add", n.host_if, "type", "veth", "peer", "name", "eth0", "netns",
                          n.netns}) &&
                      Ip({"addr", "add", net + ".1/24", "dev", n.host_if}) &&
                      Ip({"link", "set", n.host_if, "up"}) &&
                      Ip({"-n", n.netns, "addr", "add", net + ".2/24", "dev", "eth0"}) &&
                      Ip({"-n", n.netns, "link", "set", "eth0", "up"}) &&
                      Ip({"-n", n.netns, "link", "set", "lo", "up"});
      if (!ok) {
        std::cerr << "cluster: could not set up the namespace of " << n.name << "\n";
        return nullptr;
      }
      n.address = net + ".2:7400";
    } else {
      n.address = "127.0.0.1:0";
    }
    c->nodes_.push_back(n);
    if (Status st = c->StartServer(i); !st.ok()) {
      std::cerr << "cluster: " << st << "\n";
      return nullptr;
    }
  }
  return c;
}

Cluster::~Cluster() {
  for (auto& n : nodes_) {
    KillAndWait(n.pid, n.data_dir);
    if (!n.host_if.empty()) Ip({"link", "del", n.host_if});
    if (!n.netns.empty()) Ip({"netns", "del", n.netns});
  }
  if (subnet_lock_fd_ >= 0) ::close(subnet_lock_fd_);
  if (getenv("HCI_KEEP_TEST_DIR") == nullptr) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  } else {
    std::cerr << "cluster: kept " << dir_ << "\n";
  }
}

Status Cluster::StartServer(int i) {
  Node& n = nodes_.at(i);
  const std::string ready = dir_ + "/" + n.name + ".ready";
  fs::remove(ready);
  process::DaemonOptions d;
  if (!n.netns.empty()) d.argv = {"ip", "netns", "exec", n.netns};
  for (const char* a : {HCI_REPLICA_SERVER, "--node"}) d.argv.push_back(a);
  d.argv.insert(d.argv.end(), {n.name, "--listen", n.address, "--data-dir", n.data_dir,
                               "--secret-file", secret_file_, "--ready-file", ready});
  d.log_file = n.log_file;
  d.pid_file = dir_ + "/" + n.name + ".pid";
  HCI_ASSIGN_OR_RAISE(n.pid, process::SpawnDaemon(d));
  n.stopped = false;
  for (int t = 0; t < 1000; ++t) {
    if (fs::exists(ready)) {
      std::string addr = ReadAll(ready);
      while (!addr.empty() && (addr.back() == '\n' || addr.back() == ' ')) addr.pop_back();
      if (n.netns.empty()) n.address = addr;  // the port chosen at the first start is kept
      return Status::OK();
    }
    if (Exited(n.pid)) break;
    std::this_thread::sleep_for(10ms);
  }
  return Unavailable("replica server " + n.name +
                     " did not start: " + process::Tail(ReadAll(n.log_file)));
}

void Cluster::Kill(int i) {
  Node& n = nodes_.at(i);
  KillAndWait(n.pid, n.data_dir);
  n.pid = -1;
  n.stopped = false;
}

void Cluster::Pause(int i) {
  if (Ours(nodes_.at(i).pid, nodes_.at(i).data_dir)) kill(nodes_.at(i).pid, SIGSTOP);
  nodes_.at(i).stopped = true;
}

void Cluster::Resume(int i) {
  if (Ours(nodes_.at(i).pid, nodes_.at(i).data_dir)) kill(nodes_.at(i).pid, SIGCONT);
  nodes_.at(i).stopped = false;
}

void Cluster::Cut(int i) { Ip({"link", "set", nodes_.at(i).host_if, "down"}); }

void Cluster::Heal(int i) { Ip({"link", "set", nodes_.at(i).host_if, "up"}); }

v1::EngineConfig Cluster::EngineConfigFor(const std::string& volume, std::uint64_t size_bytes,
                                          std::uint32_t write_quorum) {
  v1::EngineConfig config;
  config.set_volume(volume);
  config.set_size_bytes(size_bytes);
  config.set_write_quorum(write_quorum);
  config.set_secret_file(secret_file_);
  config.set_control_socket(dir_ + "/" + volume + ".control");
  config.set_io_timeout_ms(2000);
  config.set_start_timeout_ms(20000);
  for (int i = 0; i < size(); ++i) {
    auto* r = config.add_replicas();
    r->set_name(volume + "-r" + std::to_string(i));
    r->set_node(nodes_[i].name);
    r->set_address(nodes_[i].address);
  }
  return config;
}

Status Cluster::CreateReplicas(const v1::EngineConfig& config) {
  for (int i = 0; i < config.replicas_size(); ++i) {
    HCI_ASSIGN_OR_RAISE(auto conn, wire::Dial(config.replicas(i).address(), secret_, "test", 5000));
    v1::ControlRequest request;
    auto* create = request.mutable_create();
    create->set_replica(config.replicas(i).name());
    create->set_volume(config.volume());
    create->set_size_bytes(config.size_bytes());
    create->set_generation(1);
    v1::ControlResponse response;
    HCI_RETURN_NOT_OK(wire::Call(*conn, request, &response));
  }
  return Status::OK();
}

Result<std::vector<std::string>> Cluster::Hashes(int node, const std::string& replica,
                                                 std::uint64_t size_bytes) {
  HCI_ASSIGN_OR_RAISE(auto conn, wire::Dial(nodes_.at(node).address, secret_, "test", 5000));
  v1::ControlRequest request;
  auto* hash = request.mutable_hash_extents();
  hash->set_replica(replica);
  hash->set_offset(0);
  hash->set_length(size_bytes);
  hash->set_extent_bytes(1u << 20);
  v1::ControlResponse response;
  HCI_RETURN_NOT_OK(wire::Call(*conn, request, &response));
  return std::vector<std::string>(response.hashes().begin(), response.hashes().end());
}

Result<v1::ReplicaMeta> Cluster::Meta(int node, const std::string& replica) {
  HCI_ASSIGN_OR_RAISE(auto conn, wire::Dial(nodes_.at(node).address, secret_, "test", 5000));
  v1::ControlRequest request;
  request.mutable_get()->set_replica(replica);
  v1::ControlResponse response;
  HCI_RETURN_NOT_OK(wire::Call(*conn, request, &response));
  return response.info().meta();
}

Status Cluster::Control(int node, const v1::ControlRequest& request,
                        v1::ControlResponse* response) {
  HCI_ASSIGN_OR_RAISE(auto conn, wire::Dial(nodes_.at(node).address, secret_, "test", 5000));
  return wire::Call(*conn, request, response);
}

Result<std::vector<std::string>> Cluster::SnapshotHashes(int node, const std::string& replica,
                                                         const std::string& snapshot) {
  HCI_ASSIGN_OR_RAISE(auto conn, wire::Dial(nodes_.at(node).address, secret_, "test", 5000));
  v1::ControlRequest open;
  open.mutable_open()->set_replica(replica);
  open.mutable_open()->set_snapshot(snapshot);
  v1::ControlResponse opened;
  HCI_RETURN_NOT_OK(wire::Call(*conn, open, &opened));
  std::uint64_t size = 0;
  for (const auto& layer : opened.info().meta().layers()) {
    if (layer.snapshot() == snapshot && !layer.removed()) size = layer.size_bytes();
  }
  std::vector<std::string> out;
  std::vector<std::uint8_t> buf(1 << 20);
  for (std::uint64_t off = 0; off < size; off += buf.size()) {
    wire::Header h;
    h.type = wire::MsgType::kRead;
    h.handle = 1;
    h.offset = off;
    h.count = static_cast<std::uint32_t>(std::min<std::uint64_t>(buf.size(), size - off));
    h.generation = opened.info().meta().generation();
    HCI_RETURN_NOT_OK(conn->Send(h));
    wire::Header answer;
    std::string data;
    HCI_RETURN_NOT_OK(conn->Receive(&answer, &data));
    if (answer.status != 0) return wire::ErrnoToStatus(answer.status, "snapshot read");
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
    out.emplace_back(reinterpret_cast<const char*>(md), len);
  }
  return out;
}

int Cluster::NodeIndex(const std::string& name) const {
  for (int i = 0; i < size(); ++i) {
    if (nodes_[i].name == name) return i;
  }
  return -1;
}

// ---- EngineProcess ----

Result<std::unique_ptr<EngineProcess>> EngineProcess::Start(Cluster& cluster,
                                                            v1::EngineConfig config) {
  std::unique_ptr<EngineProcess> e(new EngineProcess());
  e->cluster_ = &cluster;
  e->config_ = std::move(config);
  e->config_file_ = cluster.dir() + "/" + e->config_.volume() + ".engine";
  e->socket_ = cluster.dir() + "/" + e->config_.volume() + ".nbd";
  e->log_file_ = cluster.dir() + "/" + e->config_.volume() + ".engine.log";
  {
    std::ofstream out(e->config_file_, std::ios::binary);
    out << e->config_.SerializeAsString();
  }
  HCI_RETURN_NOT_OK(e->Restart());
  return e;
}

EngineProcess::~EngineProcess() { Kill(); }

void EngineProcess::Kill() {
  KillAndWait(pid_, config_file_);
  pid_ = -1;
}

Status EngineProcess::Restart() {
  Kill();
  fs::remove(socket_);
  process::DaemonOptions d;
  d.argv = {"nbdkit", "--foreground",    "--verbose",
            "--unix", socket_,           "--threads",
            "16",     HCI_ENGINE_PLUGIN, "config=" + config_file_};
  d.log_file = log_file_;
  d.pid_file = config_file_ + ".pid";
#ifdef HCI_SANITIZER_PRELOAD
  d.env = {{"LD_PRELOAD", HCI_SANITIZER_PRELOAD}, {"ASAN_OPTIONS", "detect_leaks=0"}};
#endif
  HCI_ASSIGN_OR_RAISE(pid_, process::SpawnDaemon(d));
  // nbdkit binds the socket before the engine has started: the control socket appears once it
  // has (after_fork), or the process exits.
  for (int t = 0; t < 3000; ++t) {
    if (fs::exists(config_.control_socket()) && fs::exists(socket_)) {
      auto st = GetStatus();
      if (st.ok()) return hci::Status::OK();
    }
    if (Exited(pid_)) break;
    std::this_thread::sleep_for(10ms);
  }
  return Unavailable("engine did not start: " + process::Tail(ReadAll(log_file_), 3000));
}

Result<v1::EngineStatus> EngineProcess::GetStatus() {
  v1::EngineRequest request;
  request.set_status(true);
  HCI_ASSIGN_OR_RAISE(auto response, wire::CallEngine(config_.control_socket(), request, 5000));
  return response.status();
}

hci::Status EngineProcess::Request(const v1::EngineRequest& request, v1::EngineResponse* response) {
  HCI_ASSIGN_OR_RAISE(auto answer, wire::CallEngine(config_.control_socket(), request, 30000));
  if (response != nullptr) *response = answer;
  if (answer.code() != 0) {
    return Status(static_cast<StatusCode>(answer.code()), answer.message());
  }
  return hci::Status::OK();
}

hci::Status EngineProcess::WaitHealthy(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string last;
  for (;;) {
    auto s = GetStatus();
    if (s.ok()) {
      bool all = true;
      for (const auto& m : s->members()) all &= m.state() == v1::MEMBER_STATE_HEALTHY;
      if (all) return hci::Status::OK();
      last = s->DebugString();
    } else {
      last = s.status().ToString();
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return DeadlineExceeded("engine not healthy after " + std::to_string(timeout_ms) +
                              " ms: " + last);
    }
    std::this_thread::sleep_for(50ms);
  }
}

// ---- NbdClient ----

Result<std::unique_ptr<NbdClient>> NbdClient::Connect(const std::string& socket, int timeout_ms) {
  std::unique_ptr<NbdClient> c(new NbdClient());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    c->h_ = nbd_create();
    if (nbd_connect_unix(c->h_, socket.c_str()) == 0) return c;
    std::string error = nbd_get_error() ? nbd_get_error() : "unknown error";
    nbd_close(c->h_);
    c->h_ = nullptr;
    if (std::chrono::steady_clock::now() > deadline) {
      return Unavailable("nbd connect " + socket + ": " + error);
    }
    std::this_thread::sleep_for(20ms);
  }
}

NbdClient::~NbdClient() {
  if (h_ != nullptr) nbd_close(h_);
}

}  // namespace hci::replicated::testing
