#include "hci/prometheus.h"

#include <gtest/gtest.h>

#include <string>

namespace hci {
namespace {

TEST(PrometheusTest, EscapesLabelValues) {
  EXPECT_EQ(EscapePrometheusLabel("vol-1"), "vol-1");
  EXPECT_EQ(EscapePrometheusLabel("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  EXPECT_EQ(EscapePrometheusLabel("é"), "é");
  EXPECT_EQ(EscapePrometheusLabel(""), "");
}

TEST(PrometheusTest, HeaderHasHelpThenType) {
  std::string out = "x 1\n";
  AppendPrometheusHeader(&out, "longhorn_volume_robustness", "gauge",
                         "Robustness of this volume: 0=unknown, 1=healthy \"sic\"\\\n");
  EXPECT_EQ(out,
            "x 1\n"
            "# HELP longhorn_volume_robustness Robustness of this volume: 0=unknown, 1=healthy "
            "\"sic\"\\\\\\n\n"
            "# TYPE longhorn_volume_robustness gauge\n");
}

}  // namespace
}  // namespace hci
