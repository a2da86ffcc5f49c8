// Helpers shared by the mock backends: worker threads, per-backend plumbing, metadata.
#include <google/protobuf/util/time_util.h>

#include <cctype>
#include <cstdio>
#include <utility>

#include "hci/object_meta.h"
#include "mock_internal.h"

namespace hci::mock {

// ---------------------------------------------------------------------------------------------
// Workers

Workers::~Workers() { Stop(); }

bool Workers::Spawn(std::function<void()> fn) {
  std::list<Worker> finished;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return false;
    for (auto it = workers_.begin(); it != workers_.end();) {
      auto next = std::next(it);
      if (*it->done) finished.splice(finished.end(), workers_, it);
      it = next;
    }
    auto done = std::make_shared<bool>(false);
    workers_.push_back(Worker{std::thread([this, fn = std::move(fn), done] {
                                fn();
                                std::lock_guard lock(mu_);
                                *done = true;
                              }),
                              done});
  }
  // Finished threads have at most their final unlock left.
  for (auto& w : finished) w.thread.join();
  return true;
}

bool Workers::SleepFor(std::chrono::milliseconds duration, const std::function<bool()>& cancelled) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, duration, [&] { return stopping_ || cancelled(); });
  return !stopping_ && !cancelled();
}

void Workers::Wake() {
  { std::lock_guard lock(mu_); }
  cv_.notify_all();
}

bool Workers::stopping() const {
  std::lock_guard lock(mu_);
  return stopping_;
}

void Workers::Stop() {
  std::list<Worker> all;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    all.swap(workers_);
  }
  cv_.notify_all();
  for (auto& w : all) w.thread.join();
}

// ---------------------------------------------------------------------------------------------
// BackendEnv

Result<std::shared_ptr<BackendEnv>> BackendEnv::Make(PluginContext& context, BackendKind kind) {
  HCI_ASSIGN_OR_RAISE(Options options, ParseOptions(context.options()));
  auto faults = SharedFaults(context);
  for (const auto& fault : options.faults) faults->AddScoped(kind, fault);
  return std::make_shared<BackendEnv>(context, kind, std::move(options), std::move(faults));
}

BackendEnv::BackendEnv(PluginContext& context, BackendKind kind, Options options,
                       std::shared_ptr<MockFaults> faults)
    : context_(context), kind_(kind), options_(std::move(options)), faults_(std::move(faults)) {}

v1::Event BackendEnv::MakeEvent(v1::EventType type, std::string_view kind, std::string_view name,
                                std::string_view reason, std::string message,
                                std::string_view parent) const {
  return ::hci::MakeEvent(type, kind, name, reason, std::move(message), parent);
}

void BackendEnv::Publish(v1::Event event) const { context_.events().Publish(event); }

// ---------------------------------------------------------------------------------------------
// Helpers

google::protobuf::Timestamp Now() { return google::protobuf::util::TimeUtil::GetCurrentTime(); }

Status SpecConflict(std::string_view kind, std::string_view name,
                    const google::protobuf::Message& existing,
                    const google::protobuf::Message& requested) {
  return AlreadyExists(std::string(kind) + " " + Quote(name) +
                       " already exists with a different spec (" +
                       DescribeSpecDifference(existing, requested) + ")");
}

Status Missing(std::string_view kind, std::string_view name, std::string_view field) {
  std::string message;
  if (!field.empty()) message = std::string(field) + ": ";
  message += std::string(kind) + " " + Quote(name) + " does not exist";
  return NotFound(std::move(message));
}

std::string Quote(std::string_view name) { return "\"" + std::string(name) + "\""; }

std::uint64_t Fnv1a(std::string_view data) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : data) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string StableMac(std::string_view key, unsigned attempt) {
  std::string salted(key);
  if (attempt > 0) salted += "#" + std::to_string(attempt);
  std::uint64_t h = Fnv1a(salted);
  char buf[18];
  std::snprintf(buf, sizeof(buf), "52:54:00:%02x:%02x:%02x", static_cast<unsigned>(h & 0xff),
                static_cast<unsigned>((h >> 8) & 0xff), static_cast<unsigned>((h >> 16) & 0xff));
  return buf;
}

bool IsValidMac(std::string_view mac) {
  if (mac.size() != 17) return false;
  for (std::size_t i = 0; i < mac.size(); ++i) {
    if (i % 3 == 2) {
      if (mac[i] != ':') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(mac[i]))) {
      return false;
    }
  }
  // The I/G bit of the first octet set means a multicast address, which no NIC may use.
  auto first = std::stoul(std::string(mac.substr(0, 2)), nullptr, 16);
  return (first & 1u) == 0;
}

}  // namespace hci::mock
