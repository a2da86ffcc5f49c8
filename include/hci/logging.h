// Logging: every line names its component (core or plugin) and the object concerned.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "hci/export.h"

namespace hci {

/// Severity of a log line, lowest first; kOff as a minimum level drops everything.
enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kCritical, kOff };

/// "trace", "debug", "info", "warn", "error", "critical", "off".
HCI_EXPORT std::string_view LogLevelName(LogLevel level);

/// One log line. The views are valid only during LogSink::Write.
struct LogRecord {
  /// Severity.
  LogLevel level = LogLevel::kInfo;
  /// "core" or the plugin name.
  std::string_view component;
  ///@{
  /// Kind and name of the object concerned ("vm", "demo"); both empty when none.
  std::string_view object_kind;
  std::string_view object_name;
  ///@}
  /// The line itself, a sentence without a trailing newline.
  std::string_view message;
};

/// Where log lines go. The embedder may supply its own (HostOptions::log_sink). Write is called
/// from any thread, concurrently; implementations must be thread-safe and must not call back
/// into libhci.
class HCI_EXPORT LogSink {
 public:
  virtual ~LogSink();
  /// Writes one line; `record`'s views are valid only during the call.
  virtual void Write(const LogRecord& record) = 0;
};

/// The default sink: spdlog to stderr, "[time] [level] [component] kind/name: message".
HCI_EXPORT std::shared_ptr<LogSink> MakeStderrLogSink();

/// A cheap, copyable handle that logs for one component at or above a minimum level.
class HCI_EXPORT Logger {
 public:
  /// A logger that drops everything.
  Logger() = default;
  /// Logs to `sink` as `component` (e.g. the plugin name) the lines at or above `min_level`.
  Logger(std::shared_ptr<LogSink> sink, std::string component, LogLevel min_level);

  /// True when a line at `level` would be written: check it before building a costly message.
  bool enabled(LogLevel level) const { return sink_ && level >= min_level_ && level != LogLevel::kOff; }
  /// "core" or the plugin name.
  const std::string& component() const { return component_; }
  /// The lowest level written.
  LogLevel min_level() const { return min_level_; }

  /// Logs `message` about the object `kind`/`name` (pass empty views for none).
  void Log(LogLevel level, std::string_view kind, std::string_view name,
           std::string_view message) const;

  ///@{
  /// Log() at kDebug, kInfo, kWarn and kError.
  void Debug(std::string_view kind, std::string_view name, std::string_view message) const {
    Log(LogLevel::kDebug, kind, name, message);
  }
  void Info(std::string_view kind, std::string_view name, std::string_view message) const {
    Log(LogLevel::kInfo, kind, name, message);
  }
  void Warn(std::string_view kind, std::string_view name, std::string_view message) const {
    Log(LogLevel::kWarn, kind, name, message);
  }
  void Error(std::string_view kind, std::string_view name, std::string_view message) const {
    Log(LogLevel::kError, kind, name, message);
  }
  ///@}

  /// The same sink and level for another component.
  Logger WithComponent(std::string component) const;

 private:
  std::shared_ptr<LogSink> sink_;
  std::string component_;
  LogLevel min_level_ = LogLevel::kOff;
};

}  // namespace hci
