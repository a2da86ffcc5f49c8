#include "hci/logging.h"

#include <spdlog/logger.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <string>
#include <utility>

namespace hci {

std::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace: return "trace";
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
    case LogLevel::kCritical: return "critical";
    case LogLevel::kOff: return "off";
  }
  return "?";
}

LogSink::~LogSink() = default;

namespace {

spdlog::level::level_enum ToSpdlog(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace: return spdlog::level::trace;
    case LogLevel::kDebug: return spdlog::level::debug;
    case LogLevel::kInfo: return spdlog::level::info;
    case LogLevel::kWarn: return spdlog::level::warn;
    case LogLevel::kError: return spdlog::level::err;
    case LogLevel::kCritical: return spdlog::level::critical;
    case LogLevel::kOff: return spdlog::level::off;
  }
  return spdlog::level::info;
}

// Deliberately not registered in spdlog's global registry, so an embedder's own spdlog setup
// (and its "default logger") is left alone.
class StderrLogSink final : public LogSink {
 public:
  StderrLogSink()
      : logger_("hci", std::make_shared<spdlog::sinks::stderr_color_sink_mt>()) {
    logger_.set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
    logger_.set_level(spdlog::level::trace);
  }

  void Write(const LogRecord& r) override {
    if (r.object_kind.empty() && r.object_name.empty()) {
      logger_.log(ToSpdlog(r.level), "[{}] {}", r.component, r.message);
    } else {
      logger_.log(ToSpdlog(r.level), "[{}] {}/{}: {}", r.component, r.object_kind,
                  r.object_name, r.message);
    }
  }

 private:
  spdlog::logger logger_;
};

}  // namespace

std::shared_ptr<LogSink> MakeStderrLogSink() { return std::make_shared<StderrLogSink>(); }

Logger::Logger(std::shared_ptr<LogSink> sink, std::string component, LogLevel min_level)
    : sink_(std::move(sink)), component_(std::move(component)), min_level_(min_level) {}

void Logger::Log(LogLevel level, std::string_view kind, std::string_view name,
                 std::string_view message) const {
  if (!enabled(level)) return;
  LogRecord record;
  record.level = level;
  record.component = component_;
  record.object_kind = kind;
  record.object_name = name;
  record.message = message;
  sink_->Write(record);
}

Logger Logger::WithComponent(std::string component) const {
  return Logger(sink_, std::move(component), min_level_);
}

}  // namespace hci
