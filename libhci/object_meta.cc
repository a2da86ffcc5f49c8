#include "hci/object_meta.h"

#include <google/protobuf/util/message_differencer.h>
#include <google/protobuf/util/time_util.h>

#include <atomic>
#include <boost/uuid/random_generator.hpp>
#include <boost/uuid/uuid_io.hpp>
#include <cstdint>
#include <cstdio>
#include <exception>

namespace hci {
namespace {

std::string NewUid() {
  // random_generator is not thread-safe, hence one per thread. It throws only when the OS has
  // no entropy to give; no exception may leave libhci, so fall back to a process-unique id.
  try {
    thread_local boost::uuids::random_generator generator;
    return boost::uuids::to_string(generator());
  } catch (const std::exception&) {
    static std::atomic<std::uint64_t> counter{0};
    char buf[40];
    std::snprintf(buf, sizeof(buf), "00000000-0000-4000-8000-%012llx",
                  static_cast<unsigned long long>(++counter));
    return buf;
  }
}

}  // namespace

v1::ObjectMeta NewObjectMeta(const v1::ObjectMeta& requested) {
  v1::ObjectMeta meta;
  meta.set_name(requested.name());
  *meta.mutable_labels() = requested.labels();
  *meta.mutable_annotations() = requested.annotations();
  meta.set_uid(NewUid());
  *meta.mutable_creation_time() = google::protobuf::util::TimeUtil::GetCurrentTime();
  return meta;
}

bool MatchesLabels(const google::protobuf::Map<std::string, std::string>& labels,
                   const google::protobuf::Map<std::string, std::string>& selector) {
  for (const auto& [key, value] : selector) {
    auto it = labels.find(key);
    if (it == labels.end() || it->second != value) return false;
  }
  return true;
}

std::string DescribeSpecDifference(const google::protobuf::Message& existing,
                                   const google::protobuf::Message& requested) {
  using google::protobuf::util::MessageDifferencer;
  std::string report;
  MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&report);
  if (differencer.Compare(existing, requested)) return "";
  auto newline = report.find('\n');
  if (newline != std::string::npos) report.resize(newline);
  return report.empty() ? "specs differ" : report;
}

}  // namespace hci
