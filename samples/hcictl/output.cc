// Parsing of flag values and everything hcictl prints: tables, JSON, YAML, sizes, ages, progress.
#include <fcntl.h>
#include <fmt/format.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>

#include "hcictl_internal.h"

namespace hcictl {
namespace {

constexpr size_t kMaxInputBytes = size_t{64} << 20;
constexpr int kBarWidth = 30;

std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (const char c : s.substr(0, 64)) {
    if (c == '"' || c == '\\') out += '\\';
    out += (static_cast<unsigned char>(c) < 0x20) ? '?' : c;
  }
  if (s.size() > 64) out += "...";
  return out + "\"";
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// "VmPhase" -> "VM_PHASE_": the prefix protobuf style puts on every value name.
std::string EnumValuePrefix(std::string_view type_name) {
  std::string out;
  for (size_t i = 0; i < type_name.size(); ++i) {
    const char c = type_name[i];
    if (i > 0 && std::isupper(static_cast<unsigned char>(c))) out += '_';
    out += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return out + "_";
}

std::string Amount(std::uint64_t n, const std::string& unit) {
  return unit == "items" ? std::to_string(n) : HumanBytes(n);
}

}  // namespace

hci::Result<std::chrono::milliseconds> ParseDuration(std::string_view text, std::string_view flag) {
  const auto bad = [&] {
    return hci::InvalidArgument(fmt::format(
        "{}: {} is not a duration (use e.g. 30s, 5m, 1h30m, 500ms, or a number of seconds)", flag,
        Quote(text)));
  };
  if (text.empty()) return bad();
  // Bounded well below what milliseconds in an int64 hold.
  constexpr double kMaxMs = 1e15;
  double total_ms = 0;
  std::string_view rest = text;
  bool first = true;
  while (!rest.empty()) {
    size_t digits = 0;
    while (digits < rest.size() && (IsDigit(rest[digits]) || rest[digits] == '.')) ++digits;
    if (digits == 0) return bad();
    double value = 0;
    const auto [end, ec] = std::from_chars(rest.data(), rest.data() + digits, value);
    if (ec != std::errc() || end != rest.data() + digits) return bad();
    rest.remove_prefix(digits);
    size_t unit_length = 0;
    while (unit_length < rest.size() && std::isalpha(static_cast<unsigned char>(rest[unit_length])))
      ++unit_length;
    const std::string_view unit = rest.substr(0, unit_length);
    rest.remove_prefix(unit_length);
    double scale = 0;
    if (unit == "ms") {
      scale = 1;
    } else if (unit == "s" || (unit.empty() && rest.empty() && first)) {
      scale = 1000;
    } else if (unit == "m") {
      scale = 60000;
    } else if (unit == "h") {
      scale = 3600000;
    } else {
      return bad();
    }
    total_ms += value * scale;
    if (!(total_ms <= kMaxMs)) return bad();
    first = false;
  }
  return std::chrono::milliseconds(static_cast<std::int64_t>(total_ms));
}

hci::Result<std::uint64_t> ParseSize(std::string_view text, std::string_view flag) {
  using U128 = unsigned __int128;
  const auto bad = [&](std::string_view why) {
    return hci::InvalidArgument(
        fmt::format("{}: {} {} (use bytes, or a binary quantity such as 512Mi, 10Gi, 1.5Ti)", flag,
                    Quote(text), why));
  };
  static constexpr std::pair<std::string_view, int> kSuffixes[] = {
      {"Ki", 10}, {"Mi", 20}, {"Gi", 30}, {"Ti", 40}, {"Pi", 50}, {"Ei", 60}};
  std::string_view number = text;
  int shift = 0;
  for (const auto& [suffix, bits] : kSuffixes) {
    if (number.size() > suffix.size() && number.ends_with(suffix)) {
      shift = bits;
      number.remove_suffix(suffix.size());
    }
  }
  const size_t dot = number.find('.');
  const std::string_view int_part = number.substr(0, dot);
  const std::string_view frac_part = dot == std::string_view::npos ? "" : number.substr(dot + 1);
  const bool digits = !int_part.empty() && std::all_of(int_part.begin(), int_part.end(), IsDigit) &&
                      std::all_of(frac_part.begin(), frac_part.end(), IsDigit) &&
                      (dot == std::string_view::npos || !frac_part.empty());
  if (!digits) return bad("is not a size");
  if (int_part.size() + frac_part.size() > 30) return bad("is too large");
  U128 n = 0;
  for (const std::string_view part : {int_part, frac_part}) {
    for (const char c : part) n = n * 10 + static_cast<unsigned>(c - '0');
  }
  if (n > (~U128{0} >> shift)) return bad("is too large");
  n <<= shift;
  U128 pow10 = 1;
  for (size_t i = 0; i < frac_part.size(); ++i) pow10 *= 10;
  if (n % pow10 != 0) return bad("is not a whole number of bytes");
  n /= pow10;
  if (n > std::numeric_limits<std::uint64_t>::max()) return bad("is too large");
  return static_cast<std::uint64_t>(n);
}

std::string HumanBytes(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
  if (bytes < 1024) return bytes == 0 ? "0" : fmt::format("{}B", bytes);
  int unit = -1;
  double value = static_cast<double>(bytes);
  while (value >= 1024 && unit < 5) {
    value /= 1024;
    ++unit;
  }
  std::string text = fmt::format("{:.1f}", value);
  if (text.ends_with(".0")) text.resize(text.size() - 2);
  return text + kUnits[unit];
}

// kubectl's duration.HumanDuration.
std::string HumanAge(const pb::Timestamp& time) {
  if (time.seconds() == 0 && time.nanos() == 0) return "<unknown>";
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  const std::int64_t seconds = now - time.seconds();
  if (seconds < -1) return "<invalid>";
  if (seconds < 0) return "0s";
  if (seconds < 120) return fmt::format("{}s", seconds);
  const std::int64_t minutes = seconds / 60;
  if (minutes < 10) {
    return seconds % 60 == 0 ? fmt::format("{}m", minutes)
                             : fmt::format("{}m{}s", minutes, seconds % 60);
  }
  if (minutes < 180) return fmt::format("{}m", minutes);
  const std::int64_t hours = minutes / 60;
  if (hours < 8) {
    return minutes % 60 == 0 ? fmt::format("{}h", hours)
                             : fmt::format("{}h{}m", hours, minutes % 60);
  }
  if (hours < 48) return fmt::format("{}h", hours);
  if (hours < 24 * 8) {
    return hours % 24 == 0 ? fmt::format("{}d", hours / 24)
                           : fmt::format("{}d{}h", hours / 24, hours % 24);
  }
  if (hours < 24 * 365 * 2) return fmt::format("{}d", hours / 24);
  if (hours < 24 * 365 * 8) {
    const std::int64_t days = (hours / 24) % 365;
    return days == 0 ? fmt::format("{}y", hours / 24 / 365)
                     : fmt::format("{}y{}d", hours / 24 / 365, days);
  }
  return fmt::format("{}y", hours / 24 / 365);
}

std::string EnumWord(const pb::EnumDescriptor* type, int value) {
  const pb::EnumValueDescriptor* v = type->FindValueByNumber(value);
  if (v == nullptr) return std::to_string(value);
  if (value == 0 && v->name().ends_with("_UNSPECIFIED")) return "";
  std::string_view name = v->name();
  const std::string prefix = EnumValuePrefix(type->name());
  if (name.starts_with(prefix) && name.size() > prefix.size()) name.remove_prefix(prefix.size());
  std::string out;
  bool word_start = true;
  for (const char c : name) {
    if (c == '_') {
      word_start = true;
      continue;
    }
    out += word_start ? static_cast<char>(std::toupper(static_cast<unsigned char>(c)))
                      : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    word_start = false;
  }
  return out;
}

std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows,
                        std::string_view indent) {
  std::vector<size_t> widths(header.size());
  for (size_t i = 0; i < header.size(); ++i) widths[i] = header[i].size();
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      widths[i] =
          std::max(widths[i], row[i].empty() ? std::string_view("<none>").size() : row[i].size());
    }
  }
  std::string out;
  const auto print_row = [&](const std::vector<std::string>& row) {
    std::string line(indent);
    for (size_t i = 0; i < widths.size(); ++i) {
      // kubectl's filler keeps every row the same number of words, for awk and friends.
      const std::string cell = i < row.size() && !row[i].empty() ? row[i] : "<none>";
      if (i + 1 == widths.size()) {
        line += cell;
      } else {
        line += cell + std::string(widths[i] - cell.size() + 3, ' ');
      }
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + '\n';
  };
  print_row(header);
  for (const auto& row : rows) print_row(row);
  return out;
}

void PrintTable(const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows) {
  std::cout << FormatTable(header, rows, "") << std::flush;
}

hci::Result<std::string> ToJson(const pb::Message& message) {
  pb::util::JsonPrintOptions options;
  options.add_whitespace = true;
  std::string json;
  const auto status = pb::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    return hci::InvalidArgument(
        fmt::format("cannot write {} as JSON: {}", message.GetTypeName(), status.ToString()));
  }
  while (!json.empty() && json.back() == '\n') json.pop_back();
  return json;
}

hci::Result<std::string> ReadInput(const std::string& path) {
  const bool use_stdin = path == "-";
  const int fd = use_stdin ? STDIN_FILENO : ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return hci::ErrnoStatus(errno, path);
  std::string text;
  char buffer[65536];
  hci::Status status;
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      status = errno == EISDIR ? hci::InvalidArgument(path + ": is a directory")
                               : hci::ErrnoStatus(errno, use_stdin ? "stdin" : path);
      break;
    }
    if (n == 0) break;
    if (text.size() + static_cast<size_t>(n) > kMaxInputBytes) {
      status = hci::InvalidArgument(
          fmt::format("{}: larger than {} MiB", use_stdin ? "stdin" : path, kMaxInputBytes >> 20));
      break;
    }
    text.append(buffer, static_cast<size_t>(n));
  }
  if (!use_stdin) ::close(fd);
  HCI_RETURN_NOT_OK(status);
  return text;
}

ProgressPrinter::ProgressPrinter(std::string label)
    : label_(std::move(label)), tty_(::isatty(STDERR_FILENO) == 1) {}

void ProgressPrinter::Update(const v1::OperationStatus& status) {
  const std::uint64_t done = status.progress().done();
  const std::uint64_t total = status.progress().total();
  const std::string& unit = status.progress().unit();
  if (tty_) {
    std::string line;
    if (total > 0) {
      const double fraction = std::min(1.0, static_cast<double>(done) / static_cast<double>(total));
      const int filled = static_cast<int>(fraction * kBarWidth);
      std::string bar(static_cast<size_t>(filled), '=');
      if (filled < kBarWidth) bar += '>';
      bar.resize(kBarWidth, ' ');
      line = fmt::format("{} [{}] {:3d}% {}/{}", label_, bar, static_cast<int>(fraction * 100),
                         Amount(done, unit), Amount(total, unit));
    } else {
      line = fmt::format("{} {}", label_, Amount(done, unit));
    }
    if (!status.message().empty()) line += " " + status.message();
    std::fprintf(stderr, "\r%s\x1b[K", line.c_str());
    std::fflush(stderr);
    drawn_ = true;
    return;
  }
  if (total == 0) return;
  const std::uint64_t capped = std::min(done, total);
  const int decile = static_cast<int>(capped * 10 / total);
  if (decile <= last_decile_) return;
  last_decile_ = decile;
  std::fprintf(stderr, "%s: %d%% (%s of %s)\n", label_.c_str(),
               static_cast<int>(capped * 100 / total), Amount(capped, unit).c_str(),
               Amount(total, unit).c_str());
  std::fflush(stderr);
}

void ProgressPrinter::Done() {
  if (tty_ && drawn_) {
    std::fputc('\n', stderr);
    std::fflush(stderr);
  }
  drawn_ = false;
}

hci::Status WaitWithProgress(const hci::Operation& operation, const std::string& label) {
  InterruptScope interrupts;
  // Shared with the operation's progress callback, which may outlive this call.
  struct Shared {
    explicit Shared(const std::string& label) : printer(label) {}
    std::mutex mu;
    ProgressPrinter printer;
    bool closed = false;
  };
  auto shared = std::make_shared<Shared>(label);
  // Every update, as it happens (the callback runs on the updating thread and only prints).
  operation.OnProgress([shared](const v1::OperationStatus& status) {
    std::lock_guard<std::mutex> lock(shared->mu);
    if (!shared->closed) shared->printer.Update(status);
  });
  const auto close = [&shared] {
    std::lock_guard<std::mutex> lock(shared->mu);
    shared->printer.Done();
    shared->closed = true;
  };
  while (true) {
    const hci::Status waited = operation.Wait(std::chrono::milliseconds(200));
    if (operation.done()) {
      close();
      return waited;
    }
    if (Interrupted()) {
      close();
      if (operation.Cancel().ok()) operation.Wait(std::chrono::seconds(10)).IgnoreError();
      return InterruptedStatus();
    }
  }
}

hci::Status PrintObjects(Context& ctx, const Resource& resource,
                         const std::vector<MessagePtr>& objects, bool single) {
  switch (ctx.output) {
    case OutputFormat::kTable: {
      if (objects.empty()) {
        std::cerr << "No resources found.\n";
        return hci::Status::OK();
      }
      std::vector<std::vector<std::string>> rows;
      for (const MessagePtr& object : objects) rows.push_back(resource.row(*object));
      PrintTable(resource.columns, rows);
      return hci::Status::OK();
    }
    case OutputFormat::kName:
      for (const MessagePtr& object : objects) {
        std::cout << resource.name << '/' << resource.object_name(*object) << '\n';
      }
      return hci::Status::OK();
    case OutputFormat::kJson: {
      std::string out;
      for (size_t i = 0; i < objects.size(); ++i) {
        HCI_ASSIGN_OR_RAISE(std::string json, ToJson(*objects[i]));
        if (single) {
          out += json;
          continue;
        }
        // Indent each object by two spaces inside the array.
        std::string indented = "  ";
        for (const char c : json) {
          indented += c;
          if (c == '\n') indented += "  ";
        }
        out += (i == 0 ? "" : ",\n") + indented;
      }
      std::cout << (single ? out + "\n"
                           : "[" + std::string(objects.empty() ? "" : "\n") + out +
                                 (objects.empty() ? "]\n" : "\n]\n"));
      return hci::Status::OK();
    }
    case OutputFormat::kYaml: {
      std::string out;
      for (size_t i = 0; i < objects.size(); ++i) {
        HCI_ASSIGN_OR_RAISE(std::string yaml, hci::ToYaml(*objects[i]));
        out += (i == 0 ? "" : "---\n") + yaml;
      }
      std::cout << out;
      return hci::Status::OK();
    }
  }
  return hci::Status::OK();
}

hci::Status PrintResult(Context& ctx, const Resource& resource, const pb::Message& object,
                        std::string_view verb) {
  if (ctx.output == OutputFormat::kTable) {
    std::cout << resource.name << '/' << resource.object_name(object) << ' ' << verb << std::endl;
    return hci::Status::OK();
  }
  std::vector<MessagePtr> objects;
  objects.emplace_back(object.New());
  objects.back()->CopyFrom(object);
  return PrintObjects(ctx, resource, objects, /*single=*/true);
}

}  // namespace hcictl
