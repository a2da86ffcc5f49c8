// `hcictl vm start|stop|restart|pause|resume|console`.
#include <fmt/format.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <boost/regex.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <limits>
#include <optional>
#include <thread>

#include "hcictl_internal.h"

namespace hcictl {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::uint32_t kReadChunk = 64 * 1024;
// A "line" longer than this is matched and dropped in pieces: a serial log is not bounded.
constexpr size_t kMaxLine = 1 << 20;
constexpr auto kPoll = std::chrono::milliseconds(200);
constexpr auto kPhaseCheck = std::chrono::seconds(1);
constexpr char kEscape = 0x1d;  // Ctrl-], as virsh console

const Resource& VmResource() { return *FindResource("vm"); }

void WriteOut(std::string_view data) {
  std::fwrite(data.data(), 1, data.size(), stdout);
  std::fflush(stdout);
}

// Phases in which the VM has (or is getting) a process, so its console may still grow.
bool MayWrite(v1::VmPhase phase) {
  switch (phase) {
    case v1::VM_PHASE_STARTING:
    case v1::VM_PHASE_RUNNING:
    case v1::VM_PHASE_PAUSED:
    case v1::VM_PHASE_STOPPING:
    case v1::VM_PHASE_MIGRATING:
      return true;
    default:
      return false;
  }
}

// Puts the terminal on stdin in raw mode for the object's lifetime (when stdin is one).
class RawTerminal {
 public:
  RawTerminal() {
    if (::isatty(STDIN_FILENO) != 1 || ::tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    struct termios raw = saved_;
    ::cfmakeraw(&raw);
    active_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
  }
  ~RawTerminal() {
    if (active_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;
  bool active() const { return active_; }

 private:
  struct termios saved_ = {};
  bool active_ = false;
};

hci::Status Attach(hci::ComputeBackend* compute, const std::string& name) {
  v1::AttachConsoleRequest request;
  request.set_name(name);
  HCI_ASSIGN_OR_RAISE(std::unique_ptr<hci::ConsoleStream> stream, compute->AttachConsole(request));
  InterruptScope interrupts;
  RawTerminal terminal;
  std::fprintf(stderr, "Connected to vm/%s (escape character is ^])%s\n", name.c_str(),
               terminal.active() ? "\r" : "");
  bool stdin_open = true;
  auto quiet_since = Clock::now();
  hci::Status result;
  while (!Interrupted()) {
    if (stdin_open) {
      struct pollfd fd = {STDIN_FILENO, POLLIN, 0};
      if (::poll(&fd, 1, 50) > 0) {
        char buffer[4096];
        const ssize_t n = ::read(STDIN_FILENO, buffer, sizeof(buffer));
        if (n <= 0) {
          stdin_open = false;
          quiet_since = Clock::now();
        } else {
          std::string_view data(buffer, static_cast<size_t>(n));
          const size_t escape = data.find(kEscape);
          if (escape != std::string_view::npos) data = data.substr(0, escape);
          if (!data.empty()) HCI_RETURN_NOT_OK(stream->Write(data));
          if (escape != std::string_view::npos) break;
        }
      }
    }
    hci::Result<std::string> output = stream->Read(std::chrono::milliseconds(50));
    if (!output.ok()) {
      if (output.status().code() != hci::StatusCode::kUnavailable) result = output.status();
      break;  // the VM stopped or the console closed
    }
    if (!output->empty()) {
      WriteOut(*output);
      quiet_since = Clock::now();
    }
    // Input came from a pipe or file and has ended: leave once the guest has been quiet for a
    // second, so that its answer to the last input is shown.
    if (!stdin_open && Clock::now() - quiet_since > std::chrono::seconds(1)) break;
  }
  std::fprintf(stderr, "%sDisconnected from vm/%s\n", terminal.active() ? "\r\n" : "",
               name.c_str());
  return result;
}

}  // namespace

hci::Status RunVmAction(Context& ctx, const VmActionOptions& options) {
  HCI_ASSIGN_OR_RAISE(hci::ComputeBackend * compute, ctx.compute());
  const std::string& name = options.name;
  hci::Result<v1::VirtualMachine> vm = hci::Internal("no action");
  std::string verb;
  if (options.action == "start") {
    v1::StartVmRequest request;
    request.set_name(name);
    vm = compute->StartVm(request);
    verb = "started";
  } else if (options.action == "stop") {
    v1::StopVmRequest request;
    request.set_name(name);
    request.set_force(options.force);
    if (!options.grace_period.empty()) {
      HCI_ASSIGN_OR_RAISE(std::chrono::milliseconds grace,
                          ctx.Usage(ParseDuration(options.grace_period, "--grace-period")));
      if (grace.count() <= 0 || grace.count() > std::numeric_limits<std::uint32_t>::max()) {
        return ctx.UsageError(
            fmt::format("--grace-period: {} is not between 1ms and 49 days", options.grace_period));
      }
      request.set_grace_period_ms(static_cast<std::uint32_t>(grace.count()));
    }
    vm = compute->StopVm(request);
    verb = "stopped";
  } else if (options.action == "restart") {
    v1::RestartVmRequest request;
    request.set_name(name);
    request.set_force(options.force);
    vm = compute->RestartVm(request);
    verb = "restarted";
  } else if (options.action == "pause") {
    v1::PauseVmRequest request;
    request.set_name(name);
    vm = compute->PauseVm(request);
    verb = "paused";
  } else if (options.action == "resume") {
    v1::ResumeVmRequest request;
    request.set_name(name);
    vm = compute->ResumeVm(request);
    verb = "resumed";
  } else {
    return ctx.UsageError("unknown vm action \"" + options.action + "\"");
  }
  HCI_RETURN_NOT_OK(vm.status());
  if (!vm->status().reason().empty() && options.action == "stop") {
    verb += " (" + vm->status().reason() + ")";
  }
  return PrintResult(ctx, VmResource(), *vm, verb);
}

hci::Status RunConsole(Context& ctx, const ConsoleOptions& options) {
  if (options.attach && (options.follow || !options.until.empty() || options.skip_existing)) {
    return ctx.UsageError("--attach cannot be combined with --follow, --until or --skip-existing");
  }
  std::optional<boost::regex> until;
  if (!options.until.empty()) {
    try {
      until.emplace(options.until, boost::regex::perl);
    } catch (const std::exception& e) {
      return ctx.UsageError(fmt::format("--until: \"{}\" is not a valid regular expression: {}",
                                        options.until, e.what()));
    }
  }
  std::optional<Clock::time_point> deadline;
  if (!options.timeout.empty()) {
    if (!options.follow && !until) {
      return ctx.UsageError("--timeout needs --until or --follow");
    }
    HCI_ASSIGN_OR_RAISE(std::chrono::milliseconds timeout,
                        ctx.Usage(ParseDuration(options.timeout, "--timeout")));
    deadline = Clock::now() + timeout;
  }
  HCI_ASSIGN_OR_RAISE(hci::ComputeBackend * compute, ctx.compute());
  if (options.attach) return Attach(compute, options.name);

  InterruptScope interrupts;
  v1::ReadConsoleRequest request;
  request.set_name(options.name);
  request.set_max_bytes(kReadChunk);
  const bool streaming = options.follow || until.has_value();
  if (options.skip_existing) {
    while (true) {
      HCI_ASSIGN_OR_RAISE(v1::ConsoleOutput output, compute->ReadConsole(request));
      request.set_offset(output.next_offset());
      if (output.data().empty()) break;
    }
  }
  std::string partial;  // the unfinished last line, for --until
  auto next_phase_check = Clock::now();
  while (true) {
    if (Interrupted()) return InterruptedStatus();
    if (deadline && Clock::now() >= *deadline) {
      if (!until) return hci::Status::OK();
      return hci::DeadlineExceeded(fmt::format("vm/{}: no console line matched \"{}\" within {}",
                                               options.name, options.until, options.timeout));
    }
    hci::Result<v1::ConsoleOutput> output = compute->ReadConsole(request);
    if (!output.ok() && output.status().code() == hci::StatusCode::kOutOfRange &&
        request.offset() != 0) {
      // The log was truncated (a new one for a new run): start over.
      request.set_offset(0);
      partial.clear();
      continue;
    }
    HCI_RETURN_NOT_OK(output.status());
    request.set_offset(output->next_offset());
    const std::string& data = output->data();
    if (!data.empty()) {
      if (!until) {
        WriteOut(data);
        continue;
      }
      partial += data;
      size_t start = 0;
      while (true) {
        const size_t newline = partial.find('\n', start);
        const bool overlong = newline == std::string::npos && partial.size() - start > kMaxLine;
        if (newline == std::string::npos && !overlong) break;
        const size_t end = overlong ? start + kMaxLine : newline;
        std::string_view line(partial.data() + start, end - start);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        start = overlong ? end : end + 1;
        if (options.follow) WriteOut(std::string(line) + "\n");
        bool matched = false;
        try {
          matched = boost::regex_search(line.begin(), line.end(), *until);
        } catch (const std::exception& e) {
          return hci::InvalidArgument(
              fmt::format("--until: matching \"{}\" failed: {}", options.until, e.what()));
        }
        if (matched) {
          if (!options.follow) WriteOut(std::string(line) + "\n");
          return hci::Status::OK();
        }
      }
      partial.erase(0, start);
      continue;
    }
    // Nothing new.
    if (!streaming) return hci::Status::OK();
    if (Clock::now() >= next_phase_check) {
      next_phase_check = Clock::now() + kPhaseCheck;
      v1::GetVmRequest get;
      get.set_name(options.name);
      HCI_ASSIGN_OR_RAISE(v1::VirtualMachine vm, compute->GetVm(get));
      if (!MayWrite(vm.status().phase())) {
        // One more read: what the guest wrote before it stopped.
        HCI_ASSIGN_OR_RAISE(v1::ConsoleOutput last, compute->ReadConsole(request));
        if (!last.data().empty()) continue;
        if (!until) return hci::Status::OK();
        return hci::FailedPrecondition(fmt::format(
            "vm/{} is {}{} and no console line matched \"{}\"", options.name,
            Word(vm.status().phase()),
            vm.status().reason().empty() ? "" : " (" + vm.status().reason() + ")", options.until));
      }
    }
    std::this_thread::sleep_for(kPoll);
  }
}

}  // namespace hcictl
