// ScrubVolume's operations: the engine compares and repairs (engine/engine_scrub.cc); the plugin
// follows it through the engine's control socket, reports progress and mismatches, and records
// the result (docs/replicated-plugin.md, "Scrub").
#include <google/protobuf/util/time_util.h>

#include <condition_variable>

#include "replicated_internal.h"

namespace hci::replicated::plugin {
namespace {

using std::chrono::milliseconds;

constexpr char kVolumeKind[] = "Volume";
// How often the engine is asked how the scrub goes.
constexpr milliseconds kPollInterval{200};
// Status requests in a row that may go unanswered before the scrub is given up.
constexpr int kMissedPolls = 5;

google::protobuf::Timestamp FromUnixMs(std::int64_t ms) {
  return google::protobuf::util::TimeUtil::MillisecondsToTimestamp(ms);
}

std::int64_t NowUnixMs() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

api::Event VolumeEvent(api::EventType type, const std::string& volume, std::string_view reason,
                       std::string message) {
  api::Event event;
  event.set_type(type);
  event.mutable_object()->set_kind(kVolumeKind);
  event.mutable_object()->set_name(volume);
  event.set_reason(std::string(reason));
  event.set_message(std::move(message));
  return event;
}

std::string Range(std::uint64_t offset, std::uint64_t length) {
  return "[" + std::to_string(offset) + ", +" + std::to_string(length) + ")";
}

}  // namespace

api::ScrubResult ToScrubResult(const rpb::ScrubStatus& s, bool report_only) {
  api::ScrubResult r;
  if (s.started_unix_ms() != 0) *r.mutable_start_time() = FromUnixMs(s.started_unix_ms());
  if (s.finished_unix_ms() != 0) *r.mutable_end_time() = FromUnixMs(s.finished_unix_ms());
  r.set_bytes_compared(s.done_bytes());
  r.set_mismatched_bytes(s.mismatched_bytes());
  r.set_repaired_bytes(s.repaired_bytes());
  for (const auto& m : s.mismatches()) {
    auto* out = r.add_mismatches();
    out->set_replica(m.replica());
    out->set_offset(m.offset());
    out->set_length(m.length());
    out->set_repaired(m.repaired());
  }
  r.set_report_only(report_only);
  r.set_code(s.code());
  r.set_error(s.message());
  return r;
}

struct Scrubs::Job {
  std::string volume;
  std::string control_socket;
  std::uint64_t id = 0;
  bool report_only = false;
  // Guarded by Scrubs::mu_.
  bool own_engine = false;
  OperationControl control;
  std::mutex mu;
  std::condition_variable cv;
  bool cancel = false;  // guarded by `mu`
  // The backend is going away: a scrub in an attached volume's engine goes on without us.
  bool closing = false;  // guarded by `mu`
};

Scrubs::Scrubs(PluginContext& context, milliseconds io_timeout, Finished finished)
    : ctx_(context), io_timeout_(io_timeout), finished_(std::move(finished)) {}

Scrubs::~Scrubs() { Shutdown(); }

bool Scrubs::Running(const std::string& volume) {
  std::lock_guard lock(mu_);
  return jobs_.count(volume) > 0;
}

bool Scrubs::Adopt(const std::string& volume) {
  std::lock_guard lock(mu_);
  auto it = jobs_.find(volume);
  if (it == jobs_.end() || !it->second->own_engine) return false;
  it->second->own_engine = false;
  return true;
}

bool Scrubs::Release(const std::string& volume) {
  std::lock_guard lock(mu_);
  auto it = jobs_.find(volume);
  if (it == jobs_.end()) return false;
  const bool own = it->second->own_engine;
  jobs_.erase(it);
  return own;
}

Operation Scrubs::Track(const std::string& volume, const std::string& control_socket,
                        std::uint64_t id, bool report_only, bool own_engine) {
  OperationInfo info;
  info.kind = "ScrubVolume";
  info.object.set_kind(kVolumeKind);
  info.object.set_name(volume);
  info.cancellable = true;
  auto job = std::make_shared<Job>();
  job->volume = volume;
  job->control_socket = control_socket;
  job->id = id;
  job->report_only = report_only;
  job->own_engine = own_engine;
  job->control = ctx_.operations().Start(info);
  Operation handle = job->control.handle();
  std::weak_ptr<Job> weak = job;
  job->control.OnCancel([weak] {
    if (auto j = weak.lock()) {
      std::lock_guard lock(j->mu);
      j->cancel = true;
      j->cv.notify_all();
    }
  });
  std::lock_guard lock(mu_);
  jobs_[volume] = job;
  threads_.emplace_back([this, job] { Poll(job); });
  return handle;
}

void Scrubs::Shutdown() {
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(mu_);
    shutdown_ = true;
    for (auto& [volume, job] : jobs_) {
      std::lock_guard job_lock(job->mu);
      // An engine started for the scrub alone must not outlive the backend: that scrub ends.
      if (job->own_engine) {
        job->cancel = true;
      } else {
        job->closing = true;
      }
      job->cv.notify_all();
    }
    threads.swap(threads_);
  }
  for (auto& t : threads) t.join();
}

void Scrubs::Poll(const std::shared_ptr<Job>& job) {
  rpb::EngineRequest ask;
  ask.set_status(true);
  rpb::ScrubStatus last;
  Status failure;
  int missed = 0;
  int published = 0;
  bool cancel_sent = false;
  for (;;) {
    bool cancel = false;
    bool closing = false;
    {
      std::lock_guard lock(job->mu);
      cancel = job->cancel;
      closing = job->closing;
    }
    if (closing && !cancel) {
      // Not recorded here: GetVolume shows the engine's newest scrub once it finished.
      {
        std::lock_guard lock(mu_);
        jobs_.erase(job->volume);
      }
      job->control.Finish(Aborted("volume \"" + job->volume +
                                  "\": the backend closed while the scrub ran; it goes on in the "
                                  "volume's engine and GetVolume shows its result"));
      return;
    }
    if (cancel && !cancel_sent) {
      rpb::EngineRequest stop;
      stop.mutable_scrub()->set_cancel(true);
      cancel_sent = CallEngine(job->control_socket, stop, io_timeout_).ok();
    }
    auto answer = CallEngine(job->control_socket, ask, io_timeout_);
    if (!answer.ok()) {
      if (++missed >= kMissedPolls || cancel) {
        failure = Unavailable("volume \"" + job->volume +
                              "\": the engine stopped answering before the scrub finished (" +
                              answer.status().message() + ")");
        break;
      }
    } else {
      missed = 0;
      const rpb::ScrubStatus& s = answer->status().scrub();
      if (s.id() != job->id) {
        failure = Aborted("volume \"" + job->volume +
                          "\": the engine was restarted before the scrub finished");
        break;
      }
      last = s;
      for (; published < s.mismatches_size(); ++published) {
        const auto& m = s.mismatches(published);
        ctx_.events().Publish(VolumeEvent(
            api::EVENT_TYPE_WARNING, job->volume, "ScrubMismatch",
            "replica " + m.replica() + " differs " +
                (m.unresolved() ? "from the other replicas, with no majority to tell which is "
                                  "right, at " +
                                      Range(m.offset(), m.length()) + "; not repaired"
                                : "from the majority at " + Range(m.offset(), m.length()) +
                                      (job->report_only ? "; report only, not repaired"
                                       : m.repaired()   ? "; repaired and verified"
                                                        : "; the repair failed"))));
      }
      job->control.SetProgress(s.done_bytes(), s.total_bytes());
      if (!s.running()) break;
    }
    std::unique_lock lock(job->mu);
    job->cv.wait_for(lock, kPollInterval,
                     [&] { return (job->cancel && !cancel_sent) || job->closing; });
  }

  api::ScrubResult result = ToScrubResult(last, job->report_only);
  if (!failure.ok()) {
    result.set_code(static_cast<int>(failure.code()));
    result.set_error(failure.message());
    if (!result.has_start_time()) *result.mutable_start_time() = FromUnixMs(NowUnixMs());
    *result.mutable_end_time() = FromUnixMs(NowUnixMs());
  }
  finished_(job->volume, result);
  const Status outcome = result.code() == 0
                             ? Status()
                             : Status(static_cast<StatusCode>(result.code()), result.error());
  if (outcome.ok()) {
    std::string message = "compared " + std::to_string(last.done_bytes()) + " bytes in " +
                          std::to_string(last.finished_unix_ms() - last.started_unix_ms()) +
                          " ms: ";
    if (last.mismatch_count() == 0) {
      message += "every replica agrees";
    } else {
      message += std::to_string(last.mismatch_count()) + " mismatched extent(s), " +
                 std::to_string(last.mismatched_bytes()) + " bytes; " +
                 std::to_string(last.repaired_bytes()) + " bytes repaired";
      if (last.unresolved_bytes() != 0) {
        message += "; " + std::to_string(last.unresolved_bytes()) +
                   " bytes where the replicas disagree with no majority (not repaired)";
      }
      if (job->report_only) message += " (report only)";
    }
    ctx_.events().Publish(
        VolumeEvent(api::EVENT_TYPE_NORMAL, job->volume, "ScrubCompleted", std::move(message)));
  } else {
    ctx_.events().Publish(VolumeEvent(
        api::EVENT_TYPE_WARNING, job->volume, "ScrubFailed",
        "after " + std::to_string(last.done_bytes()) + " bytes compared: " + outcome.message()));
  }
  job->control.Finish(outcome);
}

}  // namespace hci::replicated::plugin
