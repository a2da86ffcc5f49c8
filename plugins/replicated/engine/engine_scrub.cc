// The scrub loop (engine/scrub_internal.h): extent by extent, the healthy members' hashes are
// compared; a member that differs from the majority gets the extent rewritten from a majority
// member and hashed again to confirm. Without a majority (two members disagreeing, or three
// different answers) nothing is rewritten: guessing could destroy the good copy.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <map>

#include "engine/scrub_internal.h"
#include "wire/replica_wire.h"

namespace hci::replicated {
namespace {

using Clock = std::chrono::steady_clock;

std::int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

ScrubVerdict JudgeExtent(const std::vector<std::optional<std::string>>& hashes) {
  ScrubVerdict v;
  std::map<std::string, std::size_t> votes;
  for (const auto& h : hashes) {
    if (!h) continue;
    ++v.compared;
    ++votes[*h];
  }
  if (v.compared < 2 || votes.size() == 1) return v;
  for (const auto& [hash, n] : votes) {
    if (2 * n > v.compared) v.majority = hash;
  }
  v.unresolved = !v.majority.has_value();
  for (std::size_t i = 0; i < hashes.size(); ++i) {
    if (hashes[i] && (v.unresolved || *hashes[i] != *v.majority)) v.differing.push_back(i);
  }
  return v;
}

Scrubber::Scrubber(ScrubEngine* engine, std::string volume, std::uint64_t rate_bytes_per_second)
    : engine_(engine), volume_(std::move(volume)), rate_(rate_bytes_per_second) {}

Scrubber::~Scrubber() { Stop(); }

void Scrubber::Stop() {
  {
    std::lock_guard lock(mu_);
    cancel_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

v1::ScrubStatus Scrubber::GetStatus() const {
  std::lock_guard lock(mu_);
  return status_;
}

Status Scrubber::Start(const v1::EngineScrub& request) {
  if (request.cancel()) {
    std::lock_guard lock(mu_);
    if (status_.running()) cancel_ = true;
    cv_.notify_all();
    return Status::OK();
  }
  const std::uint64_t extent =
      request.extent_bytes() == 0 ? kScrubExtentBytes : request.extent_bytes();
  if (extent % wire::kBlockSize != 0 || extent > wire::kMaxPayload) {
    return InvalidArgument("extent_bytes: " + std::to_string(request.extent_bytes()) +
                           " is not a multiple of 4096 up to 32 MiB");
  }
  std::lock_guard lock(mu_);
  if (status_.running()) {
    return Aborted("volume " + volume_ + ": scrub " + std::to_string(status_.id()) +
                   " is running (" + std::to_string(status_.done_bytes()) + " of " +
                   std::to_string(status_.total_bytes()) + " bytes compared)");
  }
  const int healthy = engine_->HealthyMembers();
  if (healthy < 2) {
    return FailedPrecondition("volume " + volume_ + ": " + std::to_string(healthy) +
                              " healthy replica" + (healthy == 1 ? "" : "s") +
                              "; a scrub compares at least two");
  }
  if (thread_.joinable()) thread_.join();  // the previous scrub, finished
  const std::uint64_t id = status_.id() + 1;
  status_.Clear();
  status_.set_id(id);
  status_.set_running(true);
  status_.set_report_only(request.report_only());
  status_.set_total_bytes(engine_->VolumeBytes());
  status_.set_started_unix_ms(NowUnixMs());
  cancel_ = false;
  thread_ = std::thread(
      [this, report_only = request.report_only(), extent] { Run(report_only, extent); });
  return Status::OK();
}

void Scrubber::AddMismatch(const std::string& replica, std::uint64_t offset, std::uint64_t length,
                           bool repaired, bool unresolved) {
  std::lock_guard lock(mu_);
  status_.set_mismatch_count(status_.mismatch_count() + 1);
  status_.set_mismatched_bytes(status_.mismatched_bytes() + length);
  if (repaired) status_.set_repaired_bytes(status_.repaired_bytes() + length);
  if (unresolved) status_.set_unresolved_bytes(status_.unresolved_bytes() + length);
  if (status_.mismatches_size() < kScrubMismatchesListed) {
    auto* m = status_.add_mismatches();
    m->set_replica(replica);
    m->set_offset(offset);
    m->set_length(length);
    m->set_repaired(repaired);
    m->set_unresolved(unresolved);
  }
}

Status Scrubber::ScrubOne(std::uint64_t offset, std::uint64_t length, bool report_only) {
  // Reported once the extent is released: the events must not wait on the stripe lock.
  struct Found {
    std::string replica;
    bool repaired = false;
    bool unresolved = false;
  };
  std::vector<Found> found;
  Status st = engine_->WithExtent(offset, length, [&](ScrubExtent& x) -> Status {
    if (x.size() < 2) {
      return Unavailable("volume " + volume_ + ": " + std::to_string(x.size()) +
                         " healthy replica(s) left to compare at offset " + std::to_string(offset));
    }
    std::vector<std::optional<std::string>> hashes(x.size());
    auto answers = x.Hash();
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (answers[i].ok()) hashes[i] = *answers[i];
    }
    const ScrubVerdict v = JudgeExtent(hashes);
    if (v.compared < 2) {
      return Unavailable("volume " + volume_ + ": fewer than two replicas answered at offset " +
                         std::to_string(offset));
    }
    if (v.differing.empty()) return Status::OK();
    if (v.unresolved || report_only) {
      for (std::size_t i : v.differing) found.push_back({x.name(i), false, v.unresolved});
      return Status::OK();
    }
    // Read from a majority member (another one if that read fails).
    std::vector<std::uint8_t> data(length);
    bool have = false;
    for (std::size_t i = 0; i < x.size() && !have; ++i) {
      if (hashes[i] == v.majority) have = x.Read(i, data).ok();
    }
    for (std::size_t i : v.differing) {
      bool repaired = false;
      if (have && x.Write(i, data).ok()) {
        // Confirms both the write and that the majority member's read matched its own hash.
        auto again = x.HashOne(i);
        repaired = again.ok() && *again == *v.majority;
      }
      found.push_back({x.name(i), repaired, false});
    }
    return Status::OK();
  });
  for (const Found& f : found) {
    if (f.unresolved) {
      spdlog::warn(
          "volume {}: scrub: replicas disagree at [{}, +{}) with no majority ({}); "
          "not repaired",
          volume_, offset, length, f.replica);
    } else {
      spdlog::warn("volume {}: scrub: replica {} differs from the majority at [{}, +{}){}", volume_,
                   f.replica, offset, length,
                   report_only  ? ""
                   : f.repaired ? "; repaired"
                                : "; repair failed");
    }
    AddMismatch(f.replica, offset, length, f.repaired, f.unresolved);
  }
  return st;
}

void Scrubber::Run(bool report_only, std::uint64_t extent_bytes) {
  const auto began = Clock::now();
  const std::uint64_t total = GetStatus().total_bytes();
  spdlog::info("volume {}: scrub of {} bytes started{}", volume_, total,
               report_only ? " (report only)" : "");
  engine_->BeginScrub();
  Status result;
  std::uint64_t done = 0;
  for (std::uint64_t offset = 0; offset < total; offset += extent_bytes) {
    {
      std::unique_lock lock(mu_);
      if (cancel_) {
        result = Cancelled("volume " + volume_ + ": scrub cancelled after " + std::to_string(done) +
                           " of " + std::to_string(total) + " bytes");
        break;
      }
    }
    // An expansion while we run does not matter: the scrub covers the size it started with.
    const std::uint64_t length = std::min<std::uint64_t>(extent_bytes, total - offset);
    result = ScrubOne(offset, length, report_only);
    if (!result.ok()) break;
    done += length;
    {
      std::unique_lock lock(mu_);
      status_.set_done_bytes(done);
      if (rate_ > 0) {
        const auto due = began + std::chrono::microseconds(done * 1000000 / rate_);
        cv_.wait_until(lock, due, [&] { return cancel_; });
      }
    }
  }
  engine_->EndScrub();
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - began).count();
  std::lock_guard lock(mu_);
  status_.set_running(false);
  status_.set_finished_unix_ms(NowUnixMs());
  status_.set_code(static_cast<int>(result.code()));
  status_.set_message(result.message());
  spdlog::info(
      "volume {}: scrub {} after {} ms: {} of {} bytes compared, {} mismatched extents "
      "({} bytes), {} bytes repaired, {} bytes without a majority{}",
      volume_, result.ok() ? "finished" : "stopped", ms, done, total, status_.mismatch_count(),
      status_.mismatched_bytes(), status_.repaired_bytes(), status_.unresolved_bytes(),
      result.ok() ? "" : ": " + result.ToString());
}

}  // namespace hci::replicated
