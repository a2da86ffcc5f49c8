// The engine against real replica servers (each in its own network namespace when the test runs
// as root) through a real nbdkit process and libnbd: acknowledged writes survive replica
// kill -9, SIGSTOP and link cuts, engine kill -9, and quorum loss; stale replicas are never read;
// replicas end up identical.
#include "engine/engine.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <libnbd.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "cluster.h"
#include "engine/scrub_internal.h"
#include "wire/replica_wire.h"

namespace hci::replicated::testing {
namespace {

using namespace std::chrono_literals;
constexpr std::uint64_t kBlock = 4096;

// Block content: the sequence number and block index, repeated; 0 for a never-written block.
void Stamp(std::uint8_t* buf, std::uint64_t seq, std::uint64_t block) {
  for (std::size_t i = 0; i < kBlock; i += 16) {
    std::memcpy(buf + i, &seq, 8);
    std::memcpy(buf + i + 8, &block, 8);
  }
}

// Sequence number a block holds; -1 when it is not a well-formed stamp of `block`.
std::int64_t ReadStamp(const std::uint8_t* buf, std::uint64_t block) {
  std::uint64_t seq = 0, idx = 0;
  std::memcpy(&seq, buf, 8);
  std::memcpy(&idx, buf + 8, 8);
  if (seq == 0 && idx == 0) {
    for (std::size_t i = 0; i < kBlock; ++i) {
      if (buf[i] != 0) return -1;
    }
    return 0;
  }
  if (idx != block) return -1;
  for (std::size_t i = 16; i < kBlock; i += 16) {
    if (std::memcmp(buf, buf + i, 16) != 0) return -1;
  }
  return static_cast<std::int64_t>(seq);
}

// What each block may read back: the last acknowledged stamp, plus the stamps of writes that
// failed afterwards (they may or may not have landed).
class Ledger {
 public:
  void Acked(std::uint64_t block, std::uint64_t seq) {
    std::lock_guard lock(mu_);
    acked_[block] = seq;
    maybe_[block].clear();
  }
  void Failed(std::uint64_t block, std::uint64_t seq) {
    std::lock_guard lock(mu_);
    maybe_[block].insert(seq);
  }
  // Empty when every block reads back something allowed.
  std::string Check(nbd_handle* h, std::uint64_t blocks) {
    std::lock_guard lock(mu_);
    std::vector<std::uint8_t> buf(kBlock);
    int bad = 0;
    std::string report;
    for (std::uint64_t b = 0; b < blocks; ++b) {
      if (nbd_pread(h, buf.data(), kBlock, b * kBlock, 0) != 0) {
        return "read of block " + std::to_string(b) + " failed: " + nbd_get_error();
      }
      const std::int64_t got = ReadStamp(buf.data(), b);
      const auto it = acked_.find(b);
      const std::int64_t want = it == acked_.end() ? 0 : static_cast<std::int64_t>(it->second);
      if (got == want || (got > 0 && maybe_[b].count(got) > 0)) continue;
      if (++bad <= 5) {
        report += "block " + std::to_string(b) + ": read stamp " + std::to_string(got) +
                  ", acknowledged " + std::to_string(want) + "; ";
      }
    }
    return bad == 0 ? "" : std::to_string(bad) + " blocks lost acknowledged writes: " + report;
  }
  std::size_t acked() {
    std::lock_guard lock(mu_);
    return acked_.size();
  }

 private:
  std::mutex mu_;
  std::map<std::uint64_t, std::uint64_t> acked_;
  std::map<std::uint64_t, std::set<std::uint64_t>> maybe_;
};

// Threads writing stamped blocks (each its own blocks) through their own NBD connections, with a
// flush every few writes, until stopped.
class Writers {
 public:
  Writers(const std::string& socket, std::uint64_t blocks, Ledger* ledger, int threads = 4)
      : blocks_(blocks), ledger_(ledger) {
    for (int t = 0; t < threads; ++t) {
      threads_.emplace_back([this, socket, t, threads] { Run(socket, t, threads); });
    }
  }
  ~Writers() { Stop(); }
  void Stop() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  std::uint64_t ok() const { return ok_; }
  std::uint64_t failed() const { return failed_; }

 private:
  void Run(const std::string& socket, int t, int threads) {
    auto client = NbdClient::Connect(socket, 10000);
    if (!client.ok()) {
      failed_ += 1;
      return;
    }
    std::mt19937_64 rng(t * 7919 + 1);
    std::vector<std::uint8_t> buf(kBlock);
    int since_flush = 0;
    while (!stop_) {
      const std::uint64_t block = (rng() % (blocks_ / threads)) * threads + t;
      const std::uint64_t seq = ++next_seq_;
      Stamp(buf.data(), seq, block);
      if (nbd_pwrite((*client)->get(), buf.data(), kBlock, block * kBlock, 0) == 0) {
        ledger_->Acked(block, seq);
        ++ok_;
      } else {
        ledger_->Failed(block, seq);
        ++failed_;
        std::this_thread::sleep_for(20ms);
      }
      if (++since_flush == 16) {
        since_flush = 0;
        if (nbd_flush((*client)->get(), 0) != 0) ++failed_;
      }
    }
  }

  std::uint64_t blocks_;
  Ledger* ledger_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> next_seq_{0};
  std::atomic<std::uint64_t> ok_{0};
  std::atomic<std::uint64_t> failed_{0};
  std::vector<std::thread> threads_;
};

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cluster_ = Cluster::Create(3);
    ASSERT_NE(cluster_, nullptr) << "could not start the storage nodes";
    if (!cluster_->partitions()) std::cout << "[ NOTE ] " << cluster_->note() << "\n";
  }

  void StartEngine(std::uint64_t size, std::uint64_t rebuild_rate = 0) {
    config_ = cluster_->EngineConfigFor("vol1", size);
    config_.set_rebuild_bytes_per_second(rebuild_rate);
    const Status created = cluster_->CreateReplicas(config_);
    ASSERT_TRUE(created.ok()) << created;
    auto engine = EngineProcess::Start(*cluster_, config_);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(engine).MoveValueUnsafe();
  }

  // Every replica's content, extent by extent, is the same.
  void ExpectReplicasIdentical() {
    std::vector<std::string> first;
    for (int i = 0; i < cluster_->size(); ++i) {
      auto h = cluster_->Hashes(i, config_.replicas(i).name(), config_.size_bytes());
      ASSERT_TRUE(h.ok()) << h.status();
      if (i == 0) {
        first = *h;
        continue;
      }
      ASSERT_EQ(h->size(), first.size());
      std::string differ;
      for (std::size_t e = 0; e < first.size(); ++e) {
        if ((*h)[e] != first[e]) differ += " " + std::to_string(e);
      }
      EXPECT_EQ(differ, "") << "replica " << i << " differs from replica 0 in these 1 MiB extents";
    }
  }

  void FlushAll() {
    auto c = NbdClient::Connect(engine_->socket(), 5000);
    ASSERT_TRUE(c.ok());
    ASSERT_EQ(nbd_flush((*c)->get(), 0), 0) << nbd_get_error();
  }

  std::unique_ptr<Cluster> cluster_;
  v1::EngineConfig config_;
  std::unique_ptr<EngineProcess> engine_;
};

TEST_F(EngineTest, WritesReachEveryReplicaAndReadBack) {
  ASSERT_NO_FATAL_FAILURE(StartEngine(16 << 20));
  Ledger ledger;
  {
    Writers writers(engine_->socket(), 4096, &ledger);
    std::this_thread::sleep_for(1500ms);
    writers.Stop();
    EXPECT_GT(writers.ok(), 100u);
    EXPECT_EQ(writers.failed(), 0u);
  }
  auto c = NbdClient::Connect(engine_->socket(), 5000);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(ledger.Check((*c)->get(), 4096), "");
  // TRIM and WRITE_ZEROES read back as zeros on every replica.
  ASSERT_EQ(nbd_trim((*c)->get(), 1 << 20, 0, 0), 0) << nbd_get_error();
  ASSERT_EQ(nbd_zero((*c)->get(), 1 << 20, 1 << 20, 0), 0) << nbd_get_error();
  std::vector<std::uint8_t> buf(2 << 20, 0xff);
  ASSERT_EQ(nbd_pread((*c)->get(), buf.data(), buf.size(), 0, 0), 0);
  EXPECT_TRUE(std::all_of(buf.begin(), buf.end(), [](std::uint8_t b) { return b == 0; }));
  // Unaligned requests are refused, not half-done.
  EXPECT_NE(nbd_pwrite((*c)->get(), buf.data(), 512, 0, 0), 0);
  ASSERT_EQ(nbd_flush((*c)->get(), 0), 0);
  auto status = engine_->GetStatus();
  ASSERT_TRUE(status.ok());
  EXPECT_TRUE(status->writable());
  EXPECT_GT(status->generation(), 1u);
  ExpectReplicasIdentical();
}

// The randomized fault suite: HCI_FAULT_TRIALS trials (default 8; the full run is 50, see
// docs/replicated-design.md), each failing one node at a random moment while four writers go on.
TEST_F(EngineTest, AcknowledgedWritesSurviveRandomFaults) {
  const char* env = getenv("HCI_FAULT_TRIALS");
  const int trials = env != nullptr ? atoi(env) : 8;
  ASSERT_NO_FATAL_FAILURE(StartEngine(16 << 20));
  Ledger ledger;
  std::mt19937 rng(getenv("HCI_FAULT_SEED") ? atoi(getenv("HCI_FAULT_SEED")) : 12345);
  Writers writers(engine_->socket(), 4096, &ledger);
  std::map<std::string, int> kinds;
  for (int trial = 0; trial < trials; ++trial) {
    const int node = static_cast<int>(rng() % 3);
    const int kind = static_cast<int>(rng() % (cluster_->partitions() ? 3 : 2));
    std::this_thread::sleep_for(std::chrono::milliseconds(50 + rng() % 400));
    const char* what = kind == 0 ? "kill -9" : kind == 1 ? "SIGSTOP" : "link cut";
    ++kinds[what];
    if (kind == 0) cluster_->Kill(node);
    if (kind == 1) cluster_->Pause(node);
    if (kind == 2) cluster_->Cut(node);
    std::this_thread::sleep_for(std::chrono::milliseconds(200 + rng() % 2500));
    if (kind == 0) {
      ASSERT_EQ(cluster_->StartServer(node), Status::OK());
    }
    if (kind == 1) cluster_->Resume(node);
    if (kind == 2) cluster_->Heal(node);
    const auto healthy = engine_->WaitHealthy(120000);
    ASSERT_TRUE(healthy.ok()) << "trial " << trial << " (" << what << " of node " << node
                              << "): " << healthy;
  }
  writers.Stop();
  std::cout << "[ FAULTS ] " << trials << " trials:";
  for (auto& [k, n] : kinds) std::cout << " " << k << " x" << n;
  std::cout << "; " << writers.ok() << " writes acknowledged, " << writers.failed() << " failed\n";
  EXPECT_GT(writers.ok(), 100u);
  auto c = NbdClient::Connect(engine_->socket(), 5000);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(ledger.Check((*c)->get(), 4096), "");
  FlushAll();
  ExpectReplicasIdentical();
}

TEST_F(EngineTest, StaleReplicaIsNeverReadAndRebuildCopiesOnlyChanges) {
  // 256 KiB/s: the rebuild of what changed takes seconds, long enough to read during it.
  ASSERT_NO_FATAL_FAILURE(StartEngine(64 << 20, 256 << 10));
  auto c = NbdClient::Connect(engine_->socket(), 5000);
  ASSERT_TRUE(c.ok());
  std::vector<std::uint8_t> buf(kBlock);
  // Old content everywhere, then node 0 goes away and 16 blocks change.
  for (std::uint64_t b = 0; b < 64; ++b) {
    Stamp(buf.data(), 1, b * 256);
    ASSERT_EQ(nbd_pwrite((*c)->get(), buf.data(), kBlock, b * 256 * kBlock, 0), 0);
  }
  ASSERT_EQ(nbd_flush((*c)->get(), 0), 0);
  // A flush after the epoch (1 s) starts a generation: the old blocks are behind it.
  std::this_thread::sleep_for(1100ms);
  ASSERT_EQ(nbd_flush((*c)->get(), 0), 0);
  cluster_->Kill(0);
  for (std::uint64_t b = 0; b < 16; ++b) {
    Stamp(buf.data(), 2, b * 256);
    ASSERT_EQ(nbd_pwrite((*c)->get(), buf.data(), kBlock, b * 256 * kBlock, 0), 0)
        << nbd_get_error();
  }
  ASSERT_EQ(cluster_->StartServer(0), Status::OK());
  bool saw_rebuilding = false;
  std::uint64_t rebuild_total = 0;
  for (int round = 0; round < 2000; ++round) {
    auto s = engine_->GetStatus();
    ASSERT_TRUE(s.ok());
    const auto& m0 = s->members(0);
    if (m0.state() == v1::MEMBER_STATE_REBUILDING) {
      saw_rebuilding = true;
      rebuild_total = m0.rebuild_total_bytes();
    }
    if (saw_rebuilding && m0.state() == v1::MEMBER_STATE_HEALTHY) break;
    for (std::uint64_t b = 0; b < 16; ++b) {
      ASSERT_EQ(nbd_pread((*c)->get(), buf.data(), kBlock, b * 256 * kBlock, 0), 0);
      ASSERT_EQ(ReadStamp(buf.data(), b * 256), 2) << "block " << b * 256 << " read stale data";
    }
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(saw_rebuilding);
  ASSERT_TRUE(engine_->WaitHealthy(60000).ok());
  // 16 changed 64 KiB chunks (1 MiB), not the 64 MiB volume.
  EXPECT_GT(rebuild_total, 0u);
  EXPECT_LE(rebuild_total, 16u * 64 * 1024);
  FlushAll();
  ExpectReplicasIdentical();
}

TEST_F(EngineTest, EngineKilledDuringWritesLosesNothingAcknowledged) {
  ASSERT_NO_FATAL_FAILURE(StartEngine(16 << 20));
  Ledger ledger;
  {
    Writers writers(engine_->socket(), 4096, &ledger);
    std::this_thread::sleep_for(800ms);
    engine_->Kill();
    writers.Stop();
  }
  ASSERT_GT(ledger.acked(), 0u);
  ASSERT_TRUE(engine_->Restart().ok());
  ASSERT_TRUE(engine_->WaitHealthy(60000).ok());
  auto c = NbdClient::Connect(engine_->socket(), 5000);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(ledger.Check((*c)->get(), 4096), "");
  auto status = engine_->GetStatus();
  ASSERT_TRUE(status.ok());
  for (const auto& m : status->members()) EXPECT_EQ(m.generation(), status->generation());
  FlushAll();
  ExpectReplicasIdentical();
}

TEST_F(EngineTest, BelowWriteQuorumNothingIsAcknowledged) {
  ASSERT_NO_FATAL_FAILURE(StartEngine(16 << 20));
  auto c = NbdClient::Connect(engine_->socket(), 5000);
  ASSERT_TRUE(c.ok());
  Ledger ledger;
  std::vector<std::uint8_t> buf(kBlock);
  for (std::uint64_t b = 0; b < 32; ++b) {
    Stamp(buf.data(), 100 + b, b);
    ASSERT_EQ(nbd_pwrite((*c)->get(), buf.data(), kBlock, b * kBlock, 0), 0);
    ledger.Acked(b, 100 + b);
  }
  cluster_->Kill(1);
  cluster_->Kill(2);
  int refused = 0;
  for (std::uint64_t b = 0; b < 32; ++b) {
    Stamp(buf.data(), 200 + b, b);
    if (nbd_pwrite((*c)->get(), buf.data(), kBlock, b * kBlock, 0) == 0) {
      ledger.Acked(b, 200 + b);
    } else {
      ++refused;
      ledger.Failed(b, 200 + b);
    }
  }
  EXPECT_EQ(refused, 32) << "writes were acknowledged by a single replica";
  EXPECT_NE(nbd_flush((*c)->get(), 0), 0);
  auto status = engine_->GetStatus();
  ASSERT_TRUE(status.ok());
  EXPECT_FALSE(status->writable());
  ASSERT_EQ(cluster_->StartServer(1), Status::OK());
  ASSERT_EQ(cluster_->StartServer(2), Status::OK());
  ASSERT_TRUE(engine_->WaitHealthy(60000).ok());
  EXPECT_EQ(ledger.Check((*c)->get(), 64), "");
  FlushAll();
  ExpectReplicasIdentical();
}

// Every node down at once (all members failed): nothing is acknowledged meanwhile, and once the
// nodes are back the engine chooses a replica of the highest generation again and rebuilds the
// others.
TEST_F(EngineTest, EveryReplicaLostThenBackLosesNothing) {
  ASSERT_NO_FATAL_FAILURE(StartEngine(16 << 20));
  auto c = NbdClient::Connect(engine_->socket(), 5000);
  ASSERT_TRUE(c.ok());
  Ledger ledger;
  std::vector<std::uint8_t> buf(kBlock);
  for (std::uint64_t b = 0; b < 32; ++b) {
    Stamp(buf.data(), 300 + b, b);
    ASSERT_EQ(nbd_pwrite((*c)->get(), buf.data(), kBlock, b * kBlock, 0), 0);
    ledger.Acked(b, 300 + b);
  }
  for (int i = 0; i < 3; ++i) cluster_->Kill(i);
  for (std::uint64_t b = 0; b < 8; ++b) {
    Stamp(buf.data(), 400 + b, b);
    EXPECT_NE(nbd_pwrite((*c)->get(), buf.data(), kBlock, b * kBlock, 0), 0);
    ledger.Failed(b, 400 + b);
  }
  for (int i = 0; i < 3; ++i) ASSERT_EQ(cluster_->StartServer(i), Status::OK());
  ASSERT_TRUE(engine_->WaitHealthy(60000).ok());
  EXPECT_EQ(ledger.Check((*c)->get(), 64), "");
  FlushAll();
  ExpectReplicasIdentical();
}

// ---- Scrub ----

// Overwrites `bytes` bytes at volume offset `offset` of the replica's head layer file on its node,
// behind the server's back (bit rot): the server keeps running and its block map is untouched.
void CorruptReplica(Cluster& cluster, int node, const std::string& replica, std::uint64_t offset,
                    std::size_t bytes) {
  auto meta = cluster.Meta(node, replica);
  ASSERT_TRUE(meta.ok()) << meta.status();
  const std::string path = cluster.node(node).data_dir + "/" + replica + "/layer-" +
                           std::to_string(meta->head_layer()) + ".img";
  const int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  std::vector<std::uint8_t> junk(bytes, 0xa5);
  ASSERT_EQ(pwrite(fd, junk.data(), junk.size(), static_cast<off_t>(offset)),
            static_cast<ssize_t>(bytes));
  close(fd);
}

class ScrubTest : public EngineTest {
 protected:
  // Starts a scrub through the engine's control socket and waits until it finished.
  v1::ScrubStatus Scrub(bool report_only, int timeout_ms = 120000) {
    v1::EngineRequest request;
    request.mutable_scrub()->set_report_only(report_only);
    auto started = wire::CallEngine(config_.control_socket(), request, 5000);
    EXPECT_TRUE(started.ok()) << started.status();
    if (!started.ok()) return {};
    EXPECT_EQ(started->code(), 0) << started->message();
    const std::uint64_t id = started->status().scrub().id();
    EXPECT_GT(id, 0u);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline) {
      auto s = engine_->GetStatus();
      if (s.ok() && s->scrub().id() == id && !s->scrub().running()) return s->scrub();
      std::this_thread::sleep_for(20ms);
    }
    ADD_FAILURE() << "scrub " << id << " did not finish within " << timeout_ms << " ms";
    return {};
  }

  // Writes stamped blocks: every 8th block of the volume's first `blocks`.
  void WriteStamps(std::uint64_t blocks, std::uint64_t seq) {
    auto c = NbdClient::Connect(engine_->socket(), 5000);
    ASSERT_TRUE(c.ok());
    std::vector<std::uint8_t> buf(kBlock);
    for (std::uint64_t b = 0; b < blocks; b += 8) {
      Stamp(buf.data(), seq, b);
      ASSERT_EQ(nbd_pwrite((*c)->get(), buf.data(), kBlock, b * kBlock, 0), 0) << nbd_get_error();
    }
    ASSERT_EQ(nbd_flush((*c)->get(), 0), 0) << nbd_get_error();
  }

  // Every stamped block reads back through NBD, from whichever replica serves the read.
  void ExpectStamps(std::uint64_t blocks, std::uint64_t seq) {
    auto c = NbdClient::Connect(engine_->socket(), 5000);
    ASSERT_TRUE(c.ok());
    std::vector<std::uint8_t> buf(kBlock);
    // Several rounds: reads go round robin over the healthy replicas.
    for (int round = 0; round < 3; ++round) {
      for (std::uint64_t b = 0; b < blocks; b += 8) {
        ASSERT_EQ(nbd_pread((*c)->get(), buf.data(), kBlock, b * kBlock, 0), 0);
        ASSERT_EQ(ReadStamp(buf.data(), b), static_cast<std::int64_t>(seq)) << "block " << b;
      }
    }
  }

  bool HashesDiffer(int node_a, int node_b) {
    auto a = cluster_->Hashes(node_a, config_.replicas(node_a).name(), config_.size_bytes());
    auto b = cluster_->Hashes(node_b, config_.replicas(node_b).name(), config_.size_bytes());
    EXPECT_TRUE(a.ok() && b.ok());
    return a.ok() && b.ok() && *a != *b;
  }
};

TEST(ScrubJudgeTest, MajorityRule) {
  using H = std::optional<std::string>;
  auto v = JudgeExtent({H("a"), H("a"), H("a")});
  EXPECT_EQ(v.compared, 3u);
  EXPECT_TRUE(v.differing.empty());
  v = JudgeExtent({H("a"), H("b"), H("a")});
  ASSERT_TRUE(v.majority.has_value());
  EXPECT_EQ(*v.majority, "a");
  EXPECT_EQ(v.differing, std::vector<std::size_t>{1});
  EXPECT_FALSE(v.unresolved);
  // Two replicas that disagree: no majority, both reported, nothing chosen.
  v = JudgeExtent({H("a"), H("b")});
  EXPECT_FALSE(v.majority.has_value());
  EXPECT_TRUE(v.unresolved);
  EXPECT_EQ(v.differing, (std::vector<std::size_t>{0, 1}));
  v = JudgeExtent({H("a"), H("b"), H("c")});
  EXPECT_TRUE(v.unresolved);
  EXPECT_EQ(v.differing.size(), 3u);
  v = JudgeExtent({H("a"), H("a"), H("b"), H("b")});
  EXPECT_TRUE(v.unresolved);
  // A member that did not answer is not compared; one answer alone judges nothing.
  v = JudgeExtent({H("a"), std::nullopt, H("b")});
  EXPECT_EQ(v.compared, 2u);
  EXPECT_TRUE(v.unresolved);
  v = JudgeExtent({H("a"), std::nullopt});
  EXPECT_EQ(v.compared, 1u);
  EXPECT_TRUE(v.differing.empty());
}

TEST_F(ScrubTest, RepairsACorruptedReplica) {
  constexpr std::uint64_t kSize = 64 << 20;
  ASSERT_NO_FATAL_FAILURE(StartEngine(kSize));
  constexpr std::uint64_t kBlocks = kSize / kBlock;
  ASSERT_NO_FATAL_FAILURE(WriteStamps(kBlocks, 7));
  // 100 bytes inside block 5 MiB + 8 blocks (a stamped one) of replica 1.
  constexpr std::uint64_t kBad = (5 << 20) + 8 * kBlock + 100;
  ASSERT_NO_FATAL_FAILURE(CorruptReplica(*cluster_, 1, config_.replicas(1).name(), kBad, 100));
  ASSERT_TRUE(HashesDiffer(0, 1));

  // Report only: exactly that extent of exactly that replica, left as it is.
  v1::ScrubStatus report = Scrub(/*report_only=*/true);
  EXPECT_EQ(report.code(), 0) << report.message();
  EXPECT_TRUE(report.report_only());
  EXPECT_EQ(report.done_bytes(), kSize);
  ASSERT_EQ(report.mismatch_count(), 1u) << report.DebugString();
  ASSERT_EQ(report.mismatches_size(), 1);
  EXPECT_EQ(report.mismatches(0).replica(), config_.replicas(1).name());
  EXPECT_EQ(report.mismatches(0).offset(), 5u << 20);
  EXPECT_EQ(report.mismatches(0).length(), 1u << 20);
  EXPECT_FALSE(report.mismatches(0).repaired());
  EXPECT_EQ(report.repaired_bytes(), 0u);
  EXPECT_TRUE(HashesDiffer(0, 1)) << "a report-only scrub changed the replica";

  const auto began = std::chrono::steady_clock::now();
  v1::ScrubStatus repair = Scrub(/*report_only=*/false);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  EXPECT_EQ(repair.code(), 0) << repair.message();
  ASSERT_EQ(repair.mismatch_count(), 1u) << repair.DebugString();
  EXPECT_EQ(repair.mismatches(0).replica(), config_.replicas(1).name());
  EXPECT_EQ(repair.mismatches(0).offset(), 5u << 20);
  EXPECT_TRUE(repair.mismatches(0).repaired());
  EXPECT_EQ(repair.mismatched_bytes(), 1u << 20);
  EXPECT_EQ(repair.repaired_bytes(), 1u << 20);
  EXPECT_EQ(repair.unresolved_bytes(), 0u);
  std::cout << "[ SCRUB ] 64 MiB, 3 replicas, 1 extent repaired in " << seconds << " s ("
            << 64 / seconds << " MiB/s)\n";
  ExpectReplicasIdentical();
  ExpectStamps(kBlocks, 7);
  // The repair is durable and nothing else differs: a second scrub is clean.
  v1::ScrubStatus again = Scrub(/*report_only=*/true);
  EXPECT_EQ(again.mismatch_count(), 0u) << again.DebugString();
  auto status = engine_->GetStatus();
  ASSERT_TRUE(status.ok());
  for (const auto& m : status->members()) EXPECT_EQ(m.state(), v1::MEMBER_STATE_HEALTHY);
}

TEST_F(ScrubTest, ScrubWhileWritingFindsNothingAndLosesNothing) {
  ASSERT_NO_FATAL_FAILURE(StartEngine(16 << 20));
  Ledger ledger;
  Writers writers(engine_->socket(), 4096, &ledger);
  std::this_thread::sleep_for(200ms);
  // Small extents: more of them, so more chances for a write to race a comparison.
  for (int round = 0; round < 3; ++round) {
    v1::EngineRequest request;
    request.mutable_scrub()->set_extent_bytes(64 << 10);
    auto started = wire::CallEngine(config_.control_socket(), request, 5000);
    ASSERT_TRUE(started.ok());
    ASSERT_EQ(started->code(), 0) << started->message();
    v1::ScrubStatus s;
    for (int t = 0; t < 6000; ++t) {
      auto st = engine_->GetStatus();
      ASSERT_TRUE(st.ok());
      s = st->scrub();
      if (!s.running()) break;
      std::this_thread::sleep_for(20ms);
    }
    EXPECT_FALSE(s.running());
    EXPECT_EQ(s.code(), 0) << s.message();
    EXPECT_EQ(s.done_bytes(), 16u << 20);
    EXPECT_EQ(s.mismatch_count(), 0u) << "false mismatches while writing: " << s.DebugString();
  }
  writers.Stop();
  EXPECT_GT(writers.ok(), 100u);
  EXPECT_EQ(writers.failed(), 0u);
  auto c = NbdClient::Connect(engine_->socket(), 5000);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(ledger.Check((*c)->get(), 4096), "");
  FlushAll();
  ExpectReplicasIdentical();
}

TEST_F(ScrubTest, TwoReplicasThatDisagreeAreReportedNotRepaired) {
  config_ = cluster_->EngineConfigFor("vol2", 8 << 20);
  config_.mutable_replicas()->RemoveLast();
  ASSERT_TRUE(cluster_->CreateReplicas(config_).ok());
  auto engine = EngineProcess::Start(*cluster_, config_);
  ASSERT_TRUE(engine.ok()) << engine.status();
  engine_ = std::move(engine).MoveValueUnsafe();
  ASSERT_NO_FATAL_FAILURE(WriteStamps(2048, 9));
  ASSERT_NO_FATAL_FAILURE(CorruptReplica(*cluster_, 0, config_.replicas(0).name(), 3 << 20, 4096));
  v1::ScrubStatus s = Scrub(/*report_only=*/false);
  EXPECT_EQ(s.code(), 0) << s.message();
  ASSERT_EQ(s.mismatch_count(), 2u) << s.DebugString();
  for (const auto& m : s.mismatches()) {
    EXPECT_EQ(m.offset(), 3u << 20);
    EXPECT_TRUE(m.unresolved());
    EXPECT_FALSE(m.repaired());
  }
  EXPECT_NE(s.mismatches(0).replica(), s.mismatches(1).replica());
  EXPECT_EQ(s.repaired_bytes(), 0u);
  EXPECT_EQ(s.unresolved_bytes(), 2u << 20);
  EXPECT_TRUE(HashesDiffer(0, 1)) << "a guess was written";
}

TEST_F(ScrubTest, RefusedWithOneHealthyReplicaAndWhileRunning) {
  // 4 MiB/s (the rebuild rate limits the scrub too): long enough to ask again while it runs.
  ASSERT_NO_FATAL_FAILURE(StartEngine(16 << 20, 4 << 20));
  v1::EngineRequest request;
  request.mutable_scrub();
  auto first = wire::CallEngine(config_.control_socket(), request, 5000);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->code(), 0) << first->message();
  auto second = wire::CallEngine(config_.control_socket(), request, 5000);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->code(), static_cast<int>(StatusCode::kAborted)) << second->message();
  v1::EngineRequest cancel;
  cancel.mutable_scrub()->set_cancel(true);
  ASSERT_TRUE(wire::CallEngine(config_.control_socket(), cancel, 5000).ok());
  v1::ScrubStatus s;
  for (int t = 0; t < 500; ++t) {
    auto st = engine_->GetStatus();
    ASSERT_TRUE(st.ok());
    s = st->scrub();
    if (!s.running()) break;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_FALSE(s.running());
  EXPECT_EQ(s.code(), static_cast<int>(StatusCode::kCancelled)) << s.message();
  EXPECT_LT(s.done_bytes(), 16u << 20);

  cluster_->Kill(1);
  cluster_->Kill(2);
  // A write makes the engine notice.
  auto c = NbdClient::Connect(engine_->socket(), 5000);
  ASSERT_TRUE(c.ok());
  std::vector<std::uint8_t> buf(kBlock, 1);
  EXPECT_NE(nbd_pwrite((*c)->get(), buf.data(), kBlock, 0, 0), 0);
  auto refused = wire::CallEngine(config_.control_socket(), request, 5000);
  ASSERT_TRUE(refused.ok());
  EXPECT_EQ(refused->code(), static_cast<int>(StatusCode::kFailedPrecondition))
      << refused->message();
}

// ---- Snapshot layers in rebuilds; spare nodes ----

class LayerTest : public EngineTest {
 protected:
  void Write(nbd_handle* h, std::uint64_t block, std::uint64_t seq) {
    std::vector<std::uint8_t> buf(kBlock);
    Stamp(buf.data(), seq, block);
    ASSERT_EQ(nbd_pwrite(h, buf.data(), kBlock, block * kBlock, 0), 0) << nbd_get_error();
  }

  void Snapshot(const std::string& name) {
    v1::EngineRequest request;
    request.set_snapshot(name);
    const Status st = engine_->Request(request);
    ASSERT_TRUE(st.ok()) << st;
  }

  // The snapshot's view and the blocks its layer and the head own are the same on every
  // replica; returns replica 0's view hashes.
  std::vector<std::string> ExpectSnapshotIdentical(const std::string& snapshot,
                                                   const std::string& below) {
    std::vector<std::string> first;
    v1::ExtentList first_own, first_head;
    for (int i = 0; i < cluster_->size(); ++i) {
      const std::string& replica = config_.replicas(i).name();
      auto h = cluster_->SnapshotHashes(i, replica, snapshot);
      EXPECT_TRUE(h.ok()) << "replica " << i << ": " << h.status();
      if (!h.ok()) return {};
      v1::ControlRequest own;
      own.mutable_changed_between()->set_replica(replica);
      own.mutable_changed_between()->set_from_snapshot(below);
      own.mutable_changed_between()->set_to_snapshot(snapshot);
      v1::ControlResponse owned;
      EXPECT_TRUE(cluster_->Control(i, own, &owned).ok());
      own.mutable_changed_between()->set_from_snapshot(snapshot);
      own.mutable_changed_between()->set_to_snapshot("");
      v1::ControlResponse head;
      EXPECT_TRUE(cluster_->Control(i, own, &head).ok());
      if (i == 0) {
        first = *h;
        first_own = owned.extents();
        first_head = head.extents();
        EXPECT_GT(first.size(), 0u);
        continue;
      }
      EXPECT_EQ(*h == first, true) << "replica " << i << " differs at snapshot " << snapshot;
      EXPECT_EQ(owned.extents().DebugString(), first_own.DebugString())
          << "replica " << i << ": the blocks snapshot " << snapshot << "'s layer owns";
      EXPECT_EQ(head.extents().DebugString(), first_head.DebugString())
          << "replica " << i << ": the blocks the layers above " << snapshot << " own";
    }
    return first;
  }

  // Waits for member `i` to rebuild and be healthy again; returns the bytes its rebuild copied.
  std::uint64_t WaitRebuilt(int i) {
    std::uint64_t total = 0;
    bool seen = false;
    for (int round = 0; round < 6000; ++round) {
      auto s = engine_->GetStatus();
      if (!s.ok()) break;
      const auto& m = s->members(i);
      if (m.state() == v1::MEMBER_STATE_REBUILDING) {
        seen = true;
        total = m.rebuild_total_bytes();
      }
      if (seen && m.state() == v1::MEMBER_STATE_HEALTHY) break;
      std::this_thread::sleep_for(10ms);
    }
    EXPECT_TRUE(seen) << "member " << i << " was never seen rebuilding";
    EXPECT_TRUE(engine_->WaitHealthy(60000).ok());
    return total;
  }
};

// A snapshot taken while a replica was down exists on it after its (delta) rebuild, with the
// same content and the same block ownership as everywhere else; only what changed is copied;
// a revert to it afterwards leaves every replica identical.
TEST_F(LayerTest, SnapshotTakenWhileReplicaDownIsRebuilt) {
  ASSERT_NO_FATAL_FAILURE(StartEngine(64 << 20, 4 << 20));
  auto c = NbdClient::Connect(engine_->socket(), 5000);
  ASSERT_TRUE(c.ok());
  nbd_handle* h = (*c)->get();
  // 64 blocks, 1 MiB apart, before anything fails; a first snapshot every replica takes.
  for (std::uint64_t b = 0; b < 64; ++b) ASSERT_NO_FATAL_FAILURE(Write(h, b * 256, 1));
  ASSERT_NO_FATAL_FAILURE(Snapshot("s0"));
  for (std::uint64_t b = 0; b < 32; ++b) ASSERT_NO_FATAL_FAILURE(Write(h, b * 256 + 1, 2));
  ASSERT_EQ(nbd_flush(h, 0), 0);
  std::this_thread::sleep_for(1100ms);
  ASSERT_EQ(nbd_flush(h, 0), 0);  // a new epoch: the blocks above are behind it
  cluster_->Kill(0);
  // While node 0 is away: 8 blocks change, snapshot s1, 8 more change (4 of them again).
  for (std::uint64_t b = 0; b < 8; ++b) ASSERT_NO_FATAL_FAILURE(Write(h, b * 256, 3));
  ASSERT_NO_FATAL_FAILURE(Snapshot("s1"));
  for (std::uint64_t b = 4; b < 12; ++b) ASSERT_NO_FATAL_FAILURE(Write(h, b * 256, 4));
  ASSERT_EQ(cluster_->StartServer(0), Status::OK());
  const std::uint64_t copied = WaitRebuilt(0);
  FlushAll();
  ExpectReplicasIdentical();
  auto meta = cluster_->Meta(0, config_.replicas(0).name());
  ASSERT_TRUE(meta.ok());
  EXPECT_NE(meta->DebugString().find("snapshot: \"s1\""), std::string::npos) << meta->DebugString();
  ExpectSnapshotIdentical("s0", "");
  const auto s1 = ExpectSnapshotIdentical("s1", "s0");
  // The changed 64 KiB chunks (12) clipped to the blocks each layer owns: into s1's layer the
  // 8 blocks changed before s1 and the 12 older ones that share a chunk with a change; into the
  // head the 8 written after s1. Never the volume, never s0's layer.
  std::cout << "[ LAYERS ] delta rebuild with a missed snapshot copied " << copied << " bytes\n";
  EXPECT_GT(copied, 0u);
  EXPECT_LE(copied, 28u * kBlock);

  // Revert (detached: the engine is gone) to s1 on every replica: all identical, and s1's view.
  engine_->Kill();
  for (int i = 0; i < cluster_->size(); ++i) {
    v1::ControlRequest revert;
    revert.mutable_revert()->set_replica(config_.replicas(i).name());
    revert.mutable_revert()->set_snapshot("s1");
    v1::ControlResponse response;
    ASSERT_TRUE(cluster_->Control(i, revert, &response).ok()) << response.message();
  }
  ExpectReplicasIdentical();
  auto head = cluster_->Hashes(0, config_.replicas(0).name(), config_.size_bytes());
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(*head == s1, true) << "the reverted head is not snapshot s1's content";
  ASSERT_TRUE(engine_->Restart().ok());
  ASSERT_TRUE(engine_->WaitHealthy(60000).ok());
  auto c2 = NbdClient::Connect(engine_->socket(), 5000);
  ASSERT_TRUE(c2.ok());
  std::vector<std::uint8_t> buf(kBlock);
  for (std::uint64_t b = 0; b < 12; ++b) {
    ASSERT_EQ(nbd_pread((*c2)->get(), buf.data(), kBlock, b * 256 * kBlock, 0), 0);
    EXPECT_EQ(ReadStamp(buf.data(), b * 256), b < 8 ? 3 : 1) << "block " << b * 256;
  }
}

// A replica emptied (a new disk) is rebuilt with every snapshot layer.
TEST_F(LayerTest, FullRebuildReproducesEverySnapshot) {
  ASSERT_NO_FATAL_FAILURE(StartEngine(32 << 20));
  auto c = NbdClient::Connect(engine_->socket(), 5000);
  ASSERT_TRUE(c.ok());
  nbd_handle* h = (*c)->get();
  for (std::uint64_t b = 0; b < 32; ++b) ASSERT_NO_FATAL_FAILURE(Write(h, b * 64, 1));
  ASSERT_NO_FATAL_FAILURE(Snapshot("s1"));
  for (std::uint64_t b = 0; b < 16; ++b) ASSERT_NO_FATAL_FAILURE(Write(h, b * 64 + 1, 2));
  ASSERT_EQ(nbd_trim(h, 4 * kBlock, 0, 0), 0);  // owned-as-zeros in s2's layer
  ASSERT_NO_FATAL_FAILURE(Snapshot("s2"));
  for (std::uint64_t b = 0; b < 8; ++b) ASSERT_NO_FATAL_FAILURE(Write(h, b * 64, 3));
  ASSERT_EQ(nbd_flush(h, 0), 0);
  cluster_->Kill(0);
  std::filesystem::remove_all(cluster_->node(0).data_dir + "/" + config_.replicas(0).name());
  ASSERT_EQ(cluster_->StartServer(0), Status::OK());
  v1::ControlRequest create;
  create.mutable_create()->set_replica(config_.replicas(0).name());
  create.mutable_create()->set_volume(config_.volume());
  create.mutable_create()->set_size_bytes(config_.size_bytes());
  create.mutable_create()->set_generation(1);
  create.mutable_create()->set_rebuilding(true);
  v1::ControlResponse created;
  ASSERT_TRUE(cluster_->Control(0, create, &created).ok()) << created.message();
  Write(h, 5000, 4);  // fails replica 0 (its generation is gone) if nothing else did
  const std::uint64_t copied = WaitRebuilt(0);
  std::cout << "[ LAYERS ] full rebuild with 2 snapshots copied " << copied << " bytes\n";
  EXPECT_GE(copied, (32u + 16u + 1u + 8u) * kBlock);
  FlushAll();
  ExpectReplicasIdentical();
  ExpectSnapshotIdentical("s1", "");
  ExpectSnapshotIdentical("s2", "s1");
}

// Snapshots are no longer refused while a replica rebuilds: the rebuilding replica takes it
// at the same point, and its rebuild fills that snapshot's layer.
TEST_F(LayerTest, SnapshotWhileRebuildingIsTakenEverywhere) {
  // 512 KiB/s against 4 MiB changed: the rebuild lasts seconds.
  ASSERT_NO_FATAL_FAILURE(StartEngine(32 << 20, 512 << 10));
  auto c = NbdClient::Connect(engine_->socket(), 5000);
  ASSERT_TRUE(c.ok());
  nbd_handle* h = (*c)->get();
  ASSERT_EQ(nbd_flush(h, 0), 0);
  std::this_thread::sleep_for(1100ms);
  ASSERT_EQ(nbd_flush(h, 0), 0);
  cluster_->Kill(0);
  for (std::uint64_t b = 0; b < 64; ++b) ASSERT_NO_FATAL_FAILURE(Write(h, b * 16, 1));
  ASSERT_EQ(cluster_->StartServer(0), Status::OK());
  bool rebuilding = false;
  for (int i = 0; i < 3000 && !rebuilding; ++i) {
    auto s = engine_->GetStatus();
    ASSERT_TRUE(s.ok());
    rebuilding = s->members(0).state() == v1::MEMBER_STATE_REBUILDING;
    if (!rebuilding) std::this_thread::sleep_for(10ms);
  }
  ASSERT_TRUE(rebuilding);
  ASSERT_NO_FATAL_FAILURE(Snapshot("during"));
  for (std::uint64_t b = 0; b < 64; b += 2) ASSERT_NO_FATAL_FAILURE(Write(h, b * 16, 2));
  auto s = engine_->GetStatus();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->members(0).state(), v1::MEMBER_STATE_REBUILDING) << "the rebuild ended too soon";
  ASSERT_TRUE(engine_->WaitHealthy(60000).ok());
  FlushAll();
  ExpectReplicasIdentical();
  ExpectSnapshotIdentical("during", "");
}

class SpareTest : public ::testing::Test {
 protected:
  // Replicas on nodes 0..2, node 3 (when there is one) a spare; replenish wait `wait_ms`.
  void Start(int nodes, std::uint64_t wait_ms) {
    cluster_ = Cluster::Create(nodes);
    ASSERT_NE(cluster_, nullptr);
    config_ = cluster_->EngineConfigFor("vol1", 16 << 20);
    while (config_.replicas_size() > 3) {
      *config_.add_spares() = config_.replicas(config_.replicas_size() - 1);
      config_.mutable_replicas()->RemoveLast();
    }
    config_.set_replica_replenish_wait_ms(wait_ms);
    ASSERT_TRUE(cluster_->CreateReplicas(config_).ok());
    auto engine = EngineProcess::Start(*cluster_, config_);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(engine).MoveValueUnsafe();
  }
  std::unique_ptr<Cluster> cluster_;
  v1::EngineConfig config_;
  std::unique_ptr<EngineProcess> engine_;
};

// With 4 nodes and 3 replicas, a node gone for longer than the replenish wait loses its replica
// to the fourth node while a writer goes on; the volume is healthy again, the replicas are
// identical, the new membership is in the engine's config file, and the old replica is deleted
// once its node is back.
TEST_F(SpareTest, SpareNodeTakesOverALostReplica) {
  ASSERT_NO_FATAL_FAILURE(Start(4, 3000));
  Ledger ledger;
  Writers writers(engine_->socket(), 4096, &ledger);
  std::this_thread::sleep_for(500ms);
  cluster_->Kill(1);
  const auto killed = std::chrono::steady_clock::now();
  v1::EngineStatus status;
  bool replaced = false;
  for (int i = 0; i < 1200 && !replaced; ++i) {
    std::this_thread::sleep_for(50ms);
    auto s = engine_->GetStatus();
    ASSERT_TRUE(s.ok());
    status = *s;
    replaced = status.members(1).node() == "node3" &&
               status.members(1).state() == v1::MEMBER_STATE_HEALTHY;
  }
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - killed)
                        .count();
  ASSERT_TRUE(replaced) << status.DebugString();
  std::cout << "[ SPARE ] replica on node1 replaced by " << status.members(1).name()
            << " on node3 and healthy " << took << " ms after node1 died (wait 3000 ms)\n";
  EXPECT_GE(took, 3000);
  EXPECT_TRUE(engine_->WaitHealthy(30000).ok());
  std::this_thread::sleep_for(300ms);
  writers.Stop();
  EXPECT_GT(writers.ok(), 100u);
  EXPECT_EQ(writers.failed(), 0u);
  auto c = NbdClient::Connect(engine_->socket(), 5000);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(ledger.Check((*c)->get(), 4096), "");
  ASSERT_EQ(nbd_flush((*c)->get(), 0), 0);
  auto s = engine_->GetStatus();
  ASSERT_TRUE(s.ok());
  std::vector<std::string> first;
  std::set<std::string> nodes;
  for (const auto& m : s->members()) {
    nodes.insert(m.node());
    auto h = cluster_->Hashes(cluster_->NodeIndex(m.node()), m.name(), config_.size_bytes());
    ASSERT_TRUE(h.ok()) << h.status();
    if (first.empty()) first = *h;
    EXPECT_EQ(*h == first, true) << m.name() << " differs";
  }
  EXPECT_EQ(nodes, (std::set<std::string>{"node0", "node2", "node3"}));
  EXPECT_EQ(s->membership_version(), 1u);
  ASSERT_EQ(s->retired_size(), 1);
  EXPECT_EQ(s->retired(0).name(), "vol1-r1");
  // Persisted: what a restarted engine (and the plugin) reads.
  std::ifstream in(engine_->config_file(), std::ios::binary);
  v1::EngineConfig persisted;
  ASSERT_TRUE(persisted.ParseFromIstream(&in));
  EXPECT_EQ(persisted.membership_version(), 1u);
  EXPECT_EQ(persisted.replicas(1).node(), "node3");
  // The old node comes back: its replica is deleted, the volume stays healthy.
  ASSERT_EQ(cluster_->StartServer(1), Status::OK());
  bool deleted = false;
  for (int i = 0; i < 300 && !deleted; ++i) {
    std::this_thread::sleep_for(100ms);
    // Gone from the node, and from the engine's persisted retired list (written after the
    // delete: a restart in between would only delete it again).
    auto now = engine_->GetStatus();
    deleted = cluster_->Meta(1, "vol1-r1").status().code() == StatusCode::kNotFound && now.ok() &&
              now->retired_size() == 0;
  }
  EXPECT_TRUE(deleted);
  // A restarted engine uses the persisted membership.
  ASSERT_TRUE(engine_->Restart().ok());
  ASSERT_TRUE(engine_->WaitHealthy(60000).ok());
  s = engine_->GetStatus();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->members(1).node(), "node3");
  EXPECT_EQ(s->retired_size(), 0);
}

// Without a spare node the volume stays degraded, and the member says why.
TEST_F(SpareTest, WithoutASpareTheVolumeStaysDegraded) {
  ASSERT_NO_FATAL_FAILURE(Start(3, 1000));
  cluster_->Kill(0);
  auto c = NbdClient::Connect(engine_->socket(), 5000);
  ASSERT_TRUE(c.ok());
  std::vector<std::uint8_t> buf(kBlock);
  Stamp(buf.data(), 1, 0);
  ASSERT_EQ(nbd_pwrite((*c)->get(), buf.data(), kBlock, 0, 0), 0) << nbd_get_error();
  v1::EngineStatus status;
  bool said = false;
  for (int i = 0; i < 200 && !said; ++i) {
    std::this_thread::sleep_for(100ms);
    auto s = engine_->GetStatus();
    ASSERT_TRUE(s.ok());
    status = *s;
    said = status.members(0).message().find("no spare") != std::string::npos;
  }
  EXPECT_TRUE(said) << status.DebugString();
  EXPECT_EQ(status.members(0).state(), v1::MEMBER_STATE_FAILED);
  EXPECT_EQ(status.members(0).node(), "node0");
  EXPECT_TRUE(status.writable());
  EXPECT_EQ(status.membership_version(), 0u);
}

TEST(EngineStartTest, WrongSecretIsRefused) {
  auto cluster = Cluster::Create(1);
  ASSERT_NE(cluster, nullptr);
  auto config = cluster->EngineConfigFor("vol1", 1 << 20);
  ASSERT_TRUE(cluster->CreateReplicas(config).ok());
  config.set_start_timeout_ms(1000);
  auto engine = Engine::Start(config, "not-the-secret");
  ASSERT_FALSE(engine.ok());
  EXPECT_NE(engine.status().message().find("answered"), std::string::npos) << engine.status();
}

TEST(EngineStartTest, BadConfigNamesTheField) {
  v1::EngineConfig config;
  config.set_volume("v");
  config.set_size_bytes(4097);
  auto engine = Engine::Start(config, "s");
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(engine.status().message().find("size_bytes"), std::string::npos);
  config.set_size_bytes(4096);
  config.add_replicas()->set_name("a");
  config.set_write_quorum(2);
  engine = Engine::Start(config, "s");
  ASSERT_FALSE(engine.ok());
  EXPECT_NE(engine.status().message().find("write_quorum"), std::string::npos);
}

}  // namespace
}  // namespace hci::replicated::testing
