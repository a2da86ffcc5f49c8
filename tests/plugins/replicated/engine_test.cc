// The engine against real replica servers (each in its own network namespace when the test runs
// as root) through a real nbdkit process and libnbd: acknowledged writes survive replica
// kill -9, SIGSTOP and link cuts, engine kill -9, and quorum loss; stale replicas are never read;
// replicas end up identical.
#include "engine/engine.h"

#include <gtest/gtest.h>
#include <libnbd.h>
#include <signal.h>

#include <atomic>
#include <cstring>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "cluster.h"

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
      ASSERT_TRUE(cluster_->StartServer(node).ok());
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
  ASSERT_TRUE(cluster_->StartServer(0).ok());
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
  ASSERT_TRUE(cluster_->StartServer(1).ok());
  ASSERT_TRUE(cluster_->StartServer(2).ok());
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
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(cluster_->StartServer(i).ok());
  ASSERT_TRUE(engine_->WaitHealthy(60000).ok());
  EXPECT_EQ(ledger.Check((*c)->get(), 64), "");
  FlushAll();
  ExpectReplicasIdentical();
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
