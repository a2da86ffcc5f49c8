// The replica store on real files in a fresh temporary directory per test: data path, layers and
// snapshots, merges, changed-block history, persistence and crash (unclean) recovery.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "store/replica_store.h"

namespace hci::replicated {
namespace {

namespace fs = std::filesystem;

constexpr std::uint64_t kB = kStoreBlock;
constexpr std::uint64_t kMiB = 1 << 20;

// The content tests write into a block: `seed` in every byte but the first two, which carry the
// block number, so that a block read from the wrong offset is caught too.
std::vector<std::uint8_t> Block(std::uint64_t block, std::uint8_t seed) {
  std::vector<std::uint8_t> out(kB, seed);
  out[0] = static_cast<std::uint8_t>(block);
  out[1] = static_cast<std::uint8_t>(block >> 8);
  return out;
}
const std::vector<std::uint8_t> kZeroBlock(kB, 0);

std::string Hex(const std::string& bytes) {
  std::ostringstream out;
  for (unsigned char c : bytes) out << "0123456789abcdef"[c >> 4] << "0123456789abcdef"[c & 15];
  return out.str();
}

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/hci-store-test-XXXXXX";
    ASSERT_NE(::mkdtemp(templ.data()), nullptr) << templ;
    dir_ = templ;
    root_ = dir_ + "/nested/root";  // Open creates missing parents
    ASSERT_NO_FATAL_FAILURE(OpenStore());
  }
  void TearDown() override {
    store_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  void OpenStore() {
    auto store = ReplicaStore::Open(root_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(store).ValueOrDie();
  }
  // Destroys the store as a kill -9 would leave it: nothing is flushed.
  void Reopen() {
    store_.reset();
    ASSERT_NO_FATAL_FAILURE(OpenStore());
  }

  std::shared_ptr<Replica> Create(const std::string& name, std::uint64_t size,
                                  std::uint64_t generation = 1) {
    v1::CreateReplica req;
    req.set_replica(name);
    req.set_volume("vol1");
    req.set_size_bytes(size);
    req.set_generation(generation);
    auto replica = store_->Create(req);
    EXPECT_TRUE(replica.ok()) << replica.status();
    return replica.ok() ? *replica : nullptr;
  }
  std::shared_ptr<Replica> Get(const std::string& name) {
    auto replica = store_->Get(name);
    EXPECT_TRUE(replica.ok()) << replica.status();
    return replica.ok() ? *replica : nullptr;
  }

  static Status WriteBlocks(Replica& r, std::uint64_t first, std::uint64_t count, std::uint8_t seed,
                            bool fua = false) {
    std::vector<std::uint8_t> data;
    for (std::uint64_t b = first; b < first + count; ++b) {
      auto block = Block(b, seed);
      data.insert(data.end(), block.begin(), block.end());
    }
    return r.Write(first * kB, data, fua);
  }
  // One block as the volume shows it (or the snapshot when `snapshot` is set).
  static std::vector<std::uint8_t> ReadBlock(Replica& r, std::uint64_t block,
                                             const std::string& snapshot = "") {
    std::vector<std::uint8_t> out(kB, 0xEE);
    Status st =
        snapshot.empty() ? r.Read(block * kB, out) : r.ReadSnapshot(snapshot, block * kB, out);
    EXPECT_TRUE(st.ok()) << st;
    return out;
  }
  v1::ReplicaMeta MetaOnDisk(const std::string& name) {
    std::ifstream in(root_ + "/" + name + "/meta", std::ios::binary);
    std::stringstream data;
    data << in.rdbuf();
    v1::ReplicaMeta meta;
    EXPECT_TRUE(meta.ParseFromString(data.str()));
    return meta;
  }
  bool Exists(const std::string& name, const std::string& file) {
    return fs::exists(root_ + "/" + name + "/" + file);
  }

  std::string dir_;
  std::string root_;
  std::unique_ptr<ReplicaStore> store_;
};

TEST_F(StoreTest, ReadYourWrites) {
  auto r = Create("r1", 4 * kMiB);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(WriteBlocks(*r, 1, 2, 0xA1).ok());
  ASSERT_TRUE(WriteBlocks(*r, 600, 256, 0xB2, /*fua=*/true).ok());  // 1 MiB
  EXPECT_EQ(ReadBlock(*r, 1), Block(1, 0xA1));
  EXPECT_EQ(ReadBlock(*r, 2), Block(2, 0xA1));
  std::vector<std::uint8_t> big(256 * kB);
  ASSERT_TRUE(r->Read(600 * kB, big).ok());
  for (std::uint64_t b = 0; b < 256; ++b) {
    ASSERT_TRUE(
        std::equal(big.begin() + b * kB, big.begin() + (b + 1) * kB, Block(600 + b, 0xB2).begin()))
        << "block " << 600 + b;
  }
  EXPECT_GE(r->ActualSizeBytes(), kMiB);
  EXPECT_LT(r->ActualSizeBytes(), 4 * kMiB);  // sparse
  // Empty requests are fine.
  EXPECT_TRUE(r->Write(0, {}, false).ok());
  EXPECT_TRUE(r->Read(4 * kMiB, {}).ok());
}

// A replica left by a deleted volume is never handed to a new volume of the same name: create
// is idempotent for the same volume uid only, also after a restart of the store.
TEST_F(StoreTest, CreateIsIdempotentForTheSameVolumeUidOnly) {
  v1::CreateReplica req;
  req.set_replica("vol1-r0");
  req.set_volume("vol1");
  req.set_volume_uid("uid-old");
  req.set_size_bytes(kMiB);
  req.set_generation(1);
  auto first = store_->Create(req);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(WriteBlocks(**first, 0, 1, 0x31).ok());
  ASSERT_TRUE((*first)->Flush().ok());
  auto again = store_->Create(req);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->get(), first->get());
  EXPECT_EQ(MetaOnDisk("vol1-r0").volume_uid(), "uid-old");
  ASSERT_NO_FATAL_FAILURE(Reopen());
  req.set_volume_uid("uid-new");
  auto other = store_->Create(req);
  EXPECT_EQ(other.status().code(), StatusCode::kAlreadyExists) << other.status();
  EXPECT_THAT(other.status().message(), ::testing::HasSubstr("leftover"));
  EXPECT_THAT(other.status().message(), ::testing::HasSubstr("uid-old"));
}

TEST_F(StoreTest, HolesReadZero) {
  auto r = Create("r1", kMiB);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(WriteBlocks(*r, 3, 1, 0x33).ok());
  std::vector<std::uint8_t> all(16 * kB, 0xEE);
  ASSERT_TRUE(r->Read(0, all).ok());
  for (std::uint64_t b = 0; b < 16; ++b) {
    std::vector<std::uint8_t> block(all.begin() + b * kB, all.begin() + (b + 1) * kB);
    EXPECT_EQ(block, b == 3 ? Block(3, 0x33) : kZeroBlock) << "block " << b;
  }
  // The same through a chain of layers.
  ASSERT_TRUE(r->TakeSnapshot("s1", 1).ok());
  ASSERT_TRUE(WriteBlocks(*r, 5, 1, 0x55).ok());
  EXPECT_EQ(ReadBlock(*r, 4), kZeroBlock);
  EXPECT_EQ(ReadBlock(*r, 3), Block(3, 0x33));
  EXPECT_EQ(ReadBlock(*r, 5), Block(5, 0x55));
  EXPECT_EQ(ReadBlock(*r, 200), kZeroBlock);
}

TEST_F(StoreTest, UnalignedIsInvalidArgument) {
  auto r = Create("r1", kMiB);
  ASSERT_NE(r, nullptr);
  std::vector<std::uint8_t> buf(kB);
  Status st = r->Write(100, buf, false);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("offset"), std::string::npos) << st;
  EXPECT_NE(st.message().find("r1"), std::string::npos) << st;
  std::vector<std::uint8_t> odd(100);
  st = r->Read(0, odd);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("length"), std::string::npos) << st;
  EXPECT_EQ(r->WriteZeroes(kB, 512, true, false).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r->HashExtents(1, kB, kB).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r->HashExtents(0, kB, 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r->HashExtents(0, kB, 1000).status().code(), StatusCode::kInvalidArgument);
  // Nothing was written.
  EXPECT_EQ(ReadBlock(*r, 0), kZeroBlock);
}

TEST_F(StoreTest, BeyondSizeIsInvalidArgument) {
  auto r = Create("r1", kMiB);
  ASSERT_NE(r, nullptr);
  std::vector<std::uint8_t> two(2 * kB);
  EXPECT_EQ(r->Write(kMiB - kB, two, false).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r->Read(kMiB, two).code(), StatusCode::kInvalidArgument);
  // Must not wrap around.
  EXPECT_EQ(r->Read(~std::uint64_t{0} - kB + 1, two).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r->WriteZeroes(kMiB - kB, 2 * kB, false, false).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(r->Write(kMiB - 2 * kB, two, false).ok());
}

// A rebuild fills a snapshot layer the replica lacked: the snapshot's view gets the data, the
// head shows it only where no newer layer owns the block, the layer owns the blocks, the
// changed-chunk history records them, and a Flush makes them durable.
TEST_F(StoreTest, WriteLayerFillsASnapshotBelowTheHead) {
  auto r = Create("r1", kMiB, 7);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(WriteBlocks(*r, 0, 1, 0x10).ok());
  ASSERT_TRUE(r->TakeSnapshotAt("s1", 5, 42).ok());
  ASSERT_TRUE(WriteBlocks(*r, 1, 1, 0x20).ok());  // the head owns block 1
  std::vector<std::uint8_t> data = Block(1, 0x30);
  auto more = Block(2, 0x30);
  data.insert(data.end(), more.begin(), more.end());
  ASSERT_TRUE(r->WriteLayer("s1", kB, data).ok());
  ASSERT_TRUE(r->ZeroLayer("s1", 0, kB).ok());
  EXPECT_EQ(ReadBlock(*r, 0, "s1"), kZeroBlock);
  EXPECT_EQ(ReadBlock(*r, 1, "s1"), Block(1, 0x30));
  EXPECT_EQ(ReadBlock(*r, 2, "s1"), Block(2, 0x30));
  EXPECT_EQ(ReadBlock(*r, 0), kZeroBlock);
  EXPECT_EQ(ReadBlock(*r, 1), Block(1, 0x20));  // the head's block wins
  EXPECT_EQ(ReadBlock(*r, 2), Block(2, 0x30));
  auto owned = r->ChangedBetween("", "s1");
  ASSERT_TRUE(owned.ok());
  EXPECT_EQ(*owned, (std::vector<Extent>{{0, 3 * kB}}));
  auto changed = r->ChangedSince(7);
  ASSERT_TRUE(changed.ok());
  EXPECT_EQ(*changed, (std::vector<Extent>{{0, kDirtyChunk}}));
  bool found = false;
  const v1::ReplicaMeta meta = r->Meta();
  for (const auto& layer : meta.layers()) {
    if (layer.snapshot() == "s1") {
      found = true;
      EXPECT_EQ(layer.generation(), 42u);
    }
  }
  EXPECT_TRUE(found);
  // Errors name what is wrong.
  EXPECT_EQ(r->WriteLayer("nope", 0, data).code(), StatusCode::kNotFound);
  EXPECT_EQ(r->WriteLayer("s1", kMiB - kB, data).code(), StatusCode::kInvalidArgument);
  // Durable after a Flush, through a restart that flushes nothing else.
  ASSERT_TRUE(r->Flush().ok());
  r.reset();
  ASSERT_NO_FATAL_FAILURE(Reopen());
  r = Get("r1");
  ASSERT_NE(r, nullptr);
  EXPECT_FALSE(r->Meta().unclean());
  EXPECT_EQ(ReadBlock(*r, 2, "s1"), Block(2, 0x30));
  EXPECT_EQ(ReadBlock(*r, 0, "s1"), kZeroBlock);
  owned = r->ChangedBetween("", "s1");
  ASSERT_TRUE(owned.ok());
  EXPECT_EQ(*owned, (std::vector<Extent>{{0, 3 * kB}}));
}

// TakeSnapshot records the replica's generation in the layer.
TEST_F(StoreTest, SnapshotRecordsTheGeneration) {
  auto r = Create("r1", kMiB, 9);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(r->TakeSnapshot("s1", 1).ok());
  int found = 0;
  const v1::ReplicaMeta meta = r->Meta();
  for (const auto& layer : meta.layers()) {
    if (layer.snapshot() == "s1") {
      ++found;
      EXPECT_EQ(layer.generation(), 9u);
    }
  }
  EXPECT_EQ(found, 1);
}

TEST_F(StoreTest, SnapshotThenOverwrite) {
  auto r = Create("r1", kMiB);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(WriteBlocks(*r, 0, 2, 0xA0).ok());
  ASSERT_TRUE(r->TakeSnapshot("s1", 1234).ok());
  ASSERT_TRUE(WriteBlocks(*r, 1, 1, 0xB0).ok());
  EXPECT_EQ(ReadBlock(*r, 0), Block(0, 0xA0));
  EXPECT_EQ(ReadBlock(*r, 1), Block(1, 0xB0));
  EXPECT_EQ(ReadBlock(*r, 0, "s1"), Block(0, 0xA0));
  EXPECT_EQ(ReadBlock(*r, 1, "s1"), Block(1, 0xA0));

  // Idempotent by name: no new layer, the head keeps its data.
  ASSERT_TRUE(r->TakeSnapshot("s1", 9999).ok());
  v1::ReplicaMeta meta = r->Meta();
  ASSERT_EQ(meta.layers_size(), 2);
  EXPECT_EQ(ReadBlock(*r, 1), Block(1, 0xB0));
  const v1::Layer* s1 = nullptr;
  for (const auto& layer : meta.layers()) {
    if (layer.snapshot() == "s1") s1 = &layer;
  }
  ASSERT_NE(s1, nullptr);
  EXPECT_EQ(s1->created_unix_ms(), 1234);
  EXPECT_EQ(s1->size_bytes(), kMiB);
  EXPECT_EQ(meta.head_layer() != s1->id(), true);

  EXPECT_EQ(r->TakeSnapshot("Bad_Name", 1).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r->TakeSnapshot("", 1).code(), StatusCode::kInvalidArgument);
  std::vector<std::uint8_t> buf(kB);
  EXPECT_EQ(r->ReadSnapshot("nope", 0, buf).code(), StatusCode::kNotFound);
  EXPECT_EQ(r->ReadSnapshot("s1", kMiB, buf).code(), StatusCode::kInvalidArgument);
}

TEST_F(StoreTest, DeleteSnapshotMergesIntoTheChild) {
  auto r = Create("r1", kMiB);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(WriteBlocks(*r, 0, 4, 0xA0).ok());  // base: 0 1 2 3
  ASSERT_TRUE(r->TakeSnapshot("s1", 1).ok());
  ASSERT_TRUE(WriteBlocks(*r, 2, 4, 0xB0).ok());  // s2 layer: 2 3 4 5
  ASSERT_TRUE(r->WriteZeroes(6 * kB, kB, true, false).ok());
  ASSERT_TRUE(r->TakeSnapshot("s2", 2).ok());
  ASSERT_TRUE(WriteBlocks(*r, 3, 1, 0xC0).ok());  // head: 3 5
  ASSERT_TRUE(WriteBlocks(*r, 5, 1, 0xC0).ok());
  const std::vector<std::vector<std::uint8_t>> want_head = {
      Block(0, 0xA0), Block(1, 0xA0), Block(2, 0xB0), Block(3, 0xC0),
      Block(4, 0xB0), Block(5, 0xC0), kZeroBlock,     kZeroBlock};
  const std::vector<std::vector<std::uint8_t>> want_s2 = {
      Block(0, 0xA0), Block(1, 0xA0), Block(2, 0xB0), Block(3, 0xB0),
      Block(4, 0xB0), Block(5, 0xB0), kZeroBlock,     kZeroBlock};
  const std::uint64_t base_id = r->Meta().layers(0).id();

  // s1's only child is the frozen s2 layer.
  ASSERT_TRUE(r->DeleteSnapshot("s1").ok());
  EXPECT_EQ(r->Meta().layers_size(), 2);
  EXPECT_FALSE(Exists("r1", "layer-" + std::to_string(base_id) + ".img"));
  EXPECT_FALSE(Exists("r1", "layer-" + std::to_string(base_id) + ".map"));
  std::vector<std::uint8_t> buf(kB);
  EXPECT_EQ(r->ReadSnapshot("s1", 0, buf).code(), StatusCode::kNotFound);
  for (std::uint64_t b = 0; b < want_head.size(); ++b) {
    EXPECT_EQ(ReadBlock(*r, b), want_head[b]) << "block " << b;
    EXPECT_EQ(ReadBlock(*r, b, "s2"), want_s2[b]) << "block " << b;
  }

  // s2's only child is the head: the head's own newer blocks win.
  ASSERT_TRUE(r->DeleteSnapshot("s2").ok());
  v1::ReplicaMeta meta = r->Meta();
  ASSERT_EQ(meta.layers_size(), 1);
  EXPECT_EQ(meta.layers(0).id(), meta.head_layer());
  EXPECT_EQ(meta.layers(0).parent(), 0u);
  for (std::uint64_t b = 0; b < want_head.size(); ++b) {
    EXPECT_EQ(ReadBlock(*r, b), want_head[b]) << "block " << b;
  }
  // Gone is gone; deleting again is fine.
  EXPECT_TRUE(r->DeleteSnapshot("s2").ok());
  EXPECT_TRUE(r->DeleteSnapshot("never-was").ok());

  // The merged state survives a reopen.
  ASSERT_TRUE(r->Flush().ok());
  r.reset();
  ASSERT_NO_FATAL_FAILURE(Reopen());
  r = Get("r1");
  ASSERT_NE(r, nullptr);
  for (std::uint64_t b = 0; b < want_head.size(); ++b) {
    EXPECT_EQ(ReadBlock(*r, b), want_head[b]) << "block " << b;
  }
}

TEST_F(StoreTest, DeleteSnapshotWithSeveralChildrenIsDeferred) {
  auto r = Create("r1", kMiB);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(WriteBlocks(*r, 0, 2, 0xA0).ok());
  ASSERT_TRUE(r->TakeSnapshot("s1", 1).ok());
  ASSERT_TRUE(WriteBlocks(*r, 1, 1, 0xB0).ok());
  ASSERT_TRUE(r->TakeSnapshot("s2", 2).ok());
  ASSERT_TRUE(r->Revert("s1").ok());  // s1 now has two children: s2's layer and the head

  ASSERT_TRUE(r->DeleteSnapshot("s1").ok());
  v1::ReplicaMeta meta = r->Meta();
  int removed = 0;
  for (const auto& layer : meta.layers()) removed += layer.removed() && layer.snapshot() == "s1";
  EXPECT_EQ(removed, 1);
  std::vector<std::uint8_t> buf(kB);
  EXPECT_EQ(r->ReadSnapshot("s1", 0, buf).code(), StatusCode::kNotFound);
  EXPECT_EQ(r->ChangedBetween("s1", "").status().code(), StatusCode::kNotFound);
  // Both branches still read through it.
  EXPECT_EQ(ReadBlock(*r, 1), Block(1, 0xA0));
  EXPECT_EQ(ReadBlock(*r, 0, "s2"), Block(0, 0xA0));
  EXPECT_EQ(ReadBlock(*r, 1, "s2"), Block(1, 0xB0));
  // The name is free again.
  ASSERT_TRUE(r->TakeSnapshot("s1", 3).ok());
  ASSERT_TRUE(r->DeleteSnapshot("s1").ok());  // the new one: merged into the head

  // s2 goes (no child): the removed s1 is down to one child and gets merged.
  ASSERT_TRUE(r->DeleteSnapshot("s2").ok());
  meta = r->Meta();
  ASSERT_EQ(meta.layers_size(), 1) << meta.DebugString();
  EXPECT_EQ(ReadBlock(*r, 0), Block(0, 0xA0));
  EXPECT_EQ(ReadBlock(*r, 1), Block(1, 0xA0));
}

TEST_F(StoreTest, DeleteSnapshotWhileWriting) {
  constexpr std::uint64_t kBlocks = 4096;  // 16 MiB: many merge chunks
  auto r = Create("r1", kBlocks * kB);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(WriteBlocks(*r, 0, kBlocks, 0xA0).ok());
  ASSERT_TRUE(r->TakeSnapshot("s1", 1).ok());
  // The writer's first half lands before the merge starts, the rest while it runs; either way
  // the head's newer blocks must win over the snapshot's copied data.
  std::atomic<bool> failed{false}, half{false};
  std::thread writer([&] {
    for (std::uint64_t b = 0; b < kBlocks; b += 3) {
      if (!WriteBlocks(*r, b, 1, 0xC0).ok()) failed = true;
      if (b >= kBlocks / 2) half = true;
    }
    half = true;
  });
  while (!half) std::this_thread::yield();
  Status st = r->DeleteSnapshot("s1");
  writer.join();
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_FALSE(failed);
  EXPECT_EQ(r->Meta().layers_size(), 1);
  for (std::uint64_t b = 0; b < kBlocks; ++b) {
    ASSERT_EQ(ReadBlock(*r, b), Block(b, b % 3 == 0 ? 0xC0 : 0xA0)) << "block " << b;
  }
}

TEST_F(StoreTest, Revert) {
  auto r = Create("r1", kMiB);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(WriteBlocks(*r, 0, 2, 0xA0).ok());
  ASSERT_TRUE(r->TakeSnapshot("s1", 1).ok());
  ASSERT_TRUE(WriteBlocks(*r, 0, 1, 0xB0).ok());
  ASSERT_TRUE(WriteBlocks(*r, 7, 1, 0xB0).ok());
  ASSERT_TRUE(r->Expand(2 * kMiB).ok());
  ASSERT_TRUE(WriteBlocks(*r, 300, 1, 0xB0).ok());
  const std::uint64_t old_head = r->Meta().head_layer();
  ASSERT_TRUE(r->SetGeneration(1, 2, false).ok());
  auto before = r->ChangedSince(2);
  ASSERT_TRUE(before.ok());
  EXPECT_TRUE(before->empty());

  ASSERT_TRUE(r->Revert("s1").ok());
  v1::ReplicaMeta meta = r->Meta();
  EXPECT_EQ(meta.size_bytes(), kMiB);
  EXPECT_NE(meta.head_layer(), old_head);
  EXPECT_FALSE(Exists("r1", "layer-" + std::to_string(old_head) + ".img"));
  EXPECT_EQ(ReadBlock(*r, 0), Block(0, 0xA0));
  EXPECT_EQ(ReadBlock(*r, 1), Block(1, 0xA0));
  EXPECT_EQ(ReadBlock(*r, 7), kZeroBlock);
  std::vector<std::uint8_t> buf(kB);
  EXPECT_EQ(r->Read(300 * kB, buf).code(), StatusCode::kInvalidArgument);
  // The blocks the dropped head owned count as changed in this generation (block 300 is beyond
  // the size now).
  auto changed = r->ChangedSince(2);
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_EQ(*changed, (std::vector<Extent>{{0, kDirtyChunk}}));

  // Writes after the revert work, and the snapshot stays.
  ASSERT_TRUE(WriteBlocks(*r, 1, 1, 0xD0).ok());
  EXPECT_EQ(ReadBlock(*r, 1), Block(1, 0xD0));
  EXPECT_EQ(ReadBlock(*r, 1, "s1"), Block(1, 0xA0));
  EXPECT_EQ(r->Revert("nope").code(), StatusCode::kNotFound);
}

TEST_F(StoreTest, Expand) {
  auto r = Create("r1", kMiB);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(WriteBlocks(*r, 255, 1, 0xA0).ok());  // the last block
  ASSERT_TRUE(r->TakeSnapshot("s1", 1).ok());
  ASSERT_TRUE(WriteBlocks(*r, 0, 1, 0xB0).ok());

  EXPECT_EQ(r->Expand(kMiB / 2).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r->Expand(kMiB + 100).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(r->Expand(kMiB).ok());
  ASSERT_TRUE(r->Expand(3 * kMiB).ok());
  EXPECT_EQ(r->Meta().size_bytes(), 3 * kMiB);

  EXPECT_EQ(ReadBlock(*r, 255), Block(255, 0xA0));
  EXPECT_EQ(ReadBlock(*r, 0), Block(0, 0xB0));
  std::vector<std::uint8_t> grown(2 * kMiB, 0xEE);
  ASSERT_TRUE(r->Read(kMiB, grown).ok());
  EXPECT_TRUE(std::all_of(grown.begin(), grown.end(), [](std::uint8_t x) { return x == 0; }));
  ASSERT_TRUE(WriteBlocks(*r, 700, 1, 0xC0).ok());
  EXPECT_EQ(ReadBlock(*r, 700), Block(700, 0xC0));
  // The snapshot keeps its size.
  std::vector<std::uint8_t> buf(kB);
  EXPECT_EQ(r->ReadSnapshot("s1", kMiB, buf).code(), StatusCode::kInvalidArgument);

  // After a reopen too.
  ASSERT_TRUE(r->Flush().ok());
  r.reset();
  ASSERT_NO_FATAL_FAILURE(Reopen());
  r = Get("r1");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->Meta().size_bytes(), 3 * kMiB);
  EXPECT_EQ(ReadBlock(*r, 700), Block(700, 0xC0));
  EXPECT_EQ(ReadBlock(*r, 255), Block(255, 0xA0));
}

TEST_F(StoreTest, WriteZeroesHidesLowerLayers) {
  auto r = Create("r1", kMiB);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(WriteBlocks(*r, 0, 4, 0xA0).ok());
  ASSERT_TRUE(r->TakeSnapshot("s1", 1).ok());
  ASSERT_TRUE(r->WriteZeroes(1 * kB, kB, /*punch=*/true, /*fua=*/false).ok());
  ASSERT_TRUE(r->WriteZeroes(2 * kB, kB, /*punch=*/false, /*fua=*/true).ok());
  EXPECT_EQ(ReadBlock(*r, 0), Block(0, 0xA0));
  EXPECT_EQ(ReadBlock(*r, 1), kZeroBlock);
  EXPECT_EQ(ReadBlock(*r, 2), kZeroBlock);
  EXPECT_EQ(ReadBlock(*r, 3), Block(3, 0xA0));
  EXPECT_EQ(ReadBlock(*r, 1, "s1"), Block(1, 0xA0));
  auto changed = r->ChangedBetween("s1", "");
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_EQ(*changed, (std::vector<Extent>{{kB, 2 * kB}}));

  // On a parentless head, zeroing written data.
  auto flat = Create("r2", kMiB);
  ASSERT_NE(flat, nullptr);
  ASSERT_TRUE(WriteBlocks(*flat, 0, 2, 0xA0).ok());
  ASSERT_TRUE(flat->WriteZeroes(0, kB, true, true).ok());
  EXPECT_EQ(ReadBlock(*flat, 0), kZeroBlock);
  EXPECT_EQ(ReadBlock(*flat, 1), Block(1, 0xA0));

  // A fua zeroing over a lower layer survives a crash (no Flush).
  r.reset();
  flat.reset();
  ASSERT_NO_FATAL_FAILURE(Reopen());
  r = Get("r1");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(ReadBlock(*r, 2), kZeroBlock);
  EXPECT_EQ(ReadBlock(*r, 3), Block(3, 0xA0));
}

// A data request admitted at generation 1 finishes before the replica moves to 2: the check
// and the request are atomic (the server's fencing of a stale engine rests on it).
TEST_F(StoreTest, HoldGenerationFencesSetGeneration) {
  auto r = Create("r1", 16 * kB, /*generation=*/1);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->generation(), 1u);
  EXPECT_EQ(r->HoldGeneration(2).status().code(), StatusCode::kFailedPrecondition);
  auto hold = r->HoldGeneration(1);
  ASSERT_TRUE(hold.ok()) << hold.status();
  std::atomic<bool> moved{false};
  std::thread mover([&] {
    EXPECT_TRUE(r->SetGeneration(1, 2, false).ok());
    moved = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(moved.load()) << "SetGeneration did not wait for the held request";
  ASSERT_TRUE(WriteBlocks(*r, 0, 1, 7).ok());
  hold->unlock();
  mover.join();
  EXPECT_TRUE(moved.load());
  EXPECT_EQ(r->generation(), 2u);
  EXPECT_EQ(r->HoldGeneration(1).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(r->HoldGeneration(2).ok());
}

TEST_F(StoreTest, ChangedSinceAcrossGenerations) {
  // Not a multiple of kDirtyChunk: the last extent is clipped.
  auto r = Create("r1", 16 * kDirtyChunk + kB, /*generation=*/1);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->Meta().dirty_history_from(), 1u);
  ASSERT_TRUE(WriteBlocks(*r, 0, 1, 1).ok());
  ASSERT_TRUE(r->SetGeneration(1, 2, false).ok());
  ASSERT_TRUE(WriteBlocks(*r, 2 * kDirtyChunk / kB + 5, 1, 2).ok());
  ASSERT_TRUE(r->SetGeneration(2, 3, true).ok());
  EXPECT_TRUE(r->Meta().rebuilding());
  ASSERT_TRUE(WriteBlocks(*r, 4 * kDirtyChunk / kB, 32, 3).ok());       // chunks 4 and 5
  ASSERT_TRUE(r->WriteZeroes(16 * kDirtyChunk, kB, true, false).ok());  // the short last chunk

  auto since = [&](std::uint64_t g) {
    auto changed = r->ChangedSince(g);
    EXPECT_TRUE(changed.ok()) << changed.status();
    return changed.ok() ? *changed : std::vector<Extent>{{1, 1}};
  };
  const Extent c0{0, kDirtyChunk}, c2{2 * kDirtyChunk, kDirtyChunk},
      c45{4 * kDirtyChunk, 2 * kDirtyChunk}, last{16 * kDirtyChunk, kB};
  EXPECT_EQ(since(1), (std::vector<Extent>{c0, c2, c45, last}));
  EXPECT_EQ(since(2), (std::vector<Extent>{c2, c45, last}));
  EXPECT_EQ(since(3), (std::vector<Extent>{c45, last}));
  EXPECT_EQ(since(4), std::vector<Extent>{});

  auto too_old = r->ChangedSince(0);
  EXPECT_EQ(too_old.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(too_old.status().message().find(
                "changed-block history of replica \"r1\" starts at generation 1, asked from 0"),
            std::string::npos)
      << too_old.status();

  // The expected generation guards the move.
  EXPECT_EQ(r->SetGeneration(2, 4, false).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(r->SetGeneration(3, 2, false).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r->Meta().generation(), 3u);
  ASSERT_TRUE(r->SetGeneration(3, 3, false).ok());  // only rebuilding changes
  EXPECT_FALSE(r->Meta().rebuilding());
  EXPECT_EQ(since(1), (std::vector<Extent>{c0, c2, c45, last}));

  // Beyond kDirtyHistory generations the old bitmaps go.
  const std::uint64_t far = 3 + kDirtyHistory + 10;
  ASSERT_TRUE(r->SetGeneration(3, far, false).ok());
  EXPECT_EQ(r->Meta().dirty_history_from(), far - kDirtyHistory);
  EXPECT_EQ(r->ChangedSince(3).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_FALSE(Exists("r1", "dirty-1.map"));
  EXPECT_FALSE(Exists("r1", "dirty-3.map"));
  EXPECT_TRUE(Exists("r1", "dirty-" + std::to_string(far) + ".map"));
  EXPECT_EQ(since(far - kDirtyHistory), std::vector<Extent>{});
  ASSERT_TRUE(WriteBlocks(*r, 0, 1, 9).ok());
  EXPECT_EQ(since(far), (std::vector<Extent>{c0}));
}

TEST_F(StoreTest, ChangedBetween) {
  auto r = Create("r1", kMiB);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(WriteBlocks(*r, 0, 2, 0xA0).ok());
  ASSERT_TRUE(r->TakeSnapshot("s1", 1).ok());
  ASSERT_TRUE(WriteBlocks(*r, 1, 1, 0xB0).ok());
  ASSERT_TRUE(WriteBlocks(*r, 5, 1, 0xB0).ok());
  ASSERT_TRUE(r->TakeSnapshot("s2", 2).ok());
  ASSERT_TRUE(WriteBlocks(*r, 8, 1, 0xC0).ok());

  auto between = [&](const std::string& from, const std::string& to) {
    auto changed = r->ChangedBetween(from, to);
    EXPECT_TRUE(changed.ok()) << changed.status();
    return changed.ok() ? *changed : std::vector<Extent>{{1, 1}};
  };
  EXPECT_EQ(between("", "s1"), (std::vector<Extent>{{0, 2 * kB}}));
  EXPECT_EQ(between("s1", "s2"), (std::vector<Extent>{{kB, kB}, {5 * kB, kB}}));
  EXPECT_EQ(between("s1", ""), (std::vector<Extent>{{kB, kB}, {5 * kB, kB}, {8 * kB, kB}}));
  EXPECT_EQ(between("s2", ""), (std::vector<Extent>{{8 * kB, kB}}));
  EXPECT_EQ(between("", ""), (std::vector<Extent>{{0, 2 * kB}, {5 * kB, kB}, {8 * kB, kB}}));
  EXPECT_EQ(between("s2", "s2"), std::vector<Extent>{});
  EXPECT_EQ(r->ChangedBetween("s2", "s1").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r->ChangedBetween("nope", "").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(r->ChangedBetween("", "nope").status().code(), StatusCode::kNotFound);
}

TEST_F(StoreTest, HashExtents) {
  auto r = Create("r1", kMiB);
  ASSERT_NE(r, nullptr);
  auto hashes = r->HashExtents(0, 3 * kB, kB);
  ASSERT_TRUE(hashes.ok()) << hashes.status();
  ASSERT_EQ(hashes->size(), 3u);
  // SHA-256 of 4096 zero bytes (sha256sum).
  EXPECT_EQ(Hex((*hashes)[0]), "ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7");

  const auto content = Block(7, 0x42);
  ASSERT_TRUE(r->Write(0, content, false).ok());
  ASSERT_TRUE(r->Write(2 * kB, content, false).ok());
  hashes = r->HashExtents(0, 3 * kB, kB);
  ASSERT_TRUE(hashes.ok()) << hashes.status();
  EXPECT_EQ((*hashes)[0], (*hashes)[2]);
  EXPECT_NE((*hashes)[0], (*hashes)[1]);
  // Through layers: the same content hashes the same.
  ASSERT_TRUE(r->TakeSnapshot("s1", 1).ok());
  auto layered = r->HashExtents(0, 3 * kB, kB);
  ASSERT_TRUE(layered.ok());
  EXPECT_EQ(*layered, *hashes);

  ASSERT_TRUE(WriteBlocks(*r, 2, 1, 0x43).ok());
  auto after = r->HashExtents(0, 3 * kB, kB);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ((*after)[0], (*hashes)[0]);
  EXPECT_NE((*after)[2], (*hashes)[2]);

  // The last extent may be shorter: 2 blocks + 1 block.
  auto uneven = r->HashExtents(0, 3 * kB, 2 * kB);
  ASSERT_TRUE(uneven.ok());
  ASSERT_EQ(uneven->size(), 2u);
  EXPECT_EQ((*uneven)[1], (*after)[2]);
  EXPECT_EQ((*uneven)[0].size(), 32u);
}

TEST_F(StoreTest, CreateIsIdempotentAndValidated) {
  auto r = Create("vol1-r0", kMiB, 5);
  ASSERT_NE(r, nullptr);
  v1::ReplicaMeta meta = r->Meta();
  EXPECT_EQ(meta.replica(), "vol1-r0");
  EXPECT_EQ(meta.volume(), "vol1");
  EXPECT_EQ(meta.generation(), 5u);
  EXPECT_EQ(meta.dirty_history_from(), 5u);
  EXPECT_GT(meta.created_unix_ms(), 0);
  EXPECT_EQ(r->ChangedSince(4).status().code(), StatusCode::kFailedPrecondition);

  ASSERT_TRUE(WriteBlocks(*r, 0, 1, 0xA0).ok());
  auto again = Create("vol1-r0", kMiB, 5);
  EXPECT_EQ(again, r);
  EXPECT_EQ(ReadBlock(*again, 0), Block(0, 0xA0));

  v1::CreateReplica req;
  req.set_replica("vol1-r0");
  req.set_volume("vol1");
  req.set_size_bytes(2 * kMiB);
  EXPECT_EQ(store_->Create(req).status().code(), StatusCode::kAlreadyExists);
  req.set_size_bytes(kMiB);
  req.set_volume("other");
  EXPECT_EQ(store_->Create(req).status().code(), StatusCode::kAlreadyExists);

  req.set_volume("vol1");
  for (const std::string& bad :
       std::vector<std::string>{"", "Upper", "a/b", "..", ".", std::string(254, 'a')}) {
    req.set_replica(bad);
    auto st = store_->Create(req).status();
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(st.message().find("replica"), std::string::npos) << st;
  }
  req.set_replica("ok.name-1");
  req.set_size_bytes(0);
  EXPECT_EQ(store_->Create(req).status().code(), StatusCode::kInvalidArgument);
  req.set_size_bytes(kMiB + 1);
  auto st = store_->Create(req).status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("size_bytes"), std::string::npos) << st;

  EXPECT_EQ(store_->Get("missing").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->List().size(), 1u);

  ASSERT_TRUE(store_->Delete("vol1-r0").ok());
  EXPECT_FALSE(fs::exists(root_ + "/vol1-r0"));
  EXPECT_EQ(store_->Get("vol1-r0").status().code(), StatusCode::kNotFound);
  std::vector<std::uint8_t> buf(kB);
  EXPECT_EQ(r->Read(0, buf).code(), StatusCode::kNotFound);  // a stale handle
  EXPECT_TRUE(store_->Delete("vol1-r0").ok());
  EXPECT_EQ(store_->Delete("../x").code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(store_->List().empty());
}

TEST_F(StoreTest, PersistsAcrossReopen) {
  auto r = Create("r1", kMiB, 1);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(WriteBlocks(*r, 0, 2, 0xA0).ok());
  EXPECT_TRUE(MetaOnDisk("r1").unclean());  // marked before the first write
  EXPECT_TRUE(r->Meta().unclean());
  ASSERT_TRUE(r->TakeSnapshot("s1", 77).ok());
  ASSERT_TRUE(WriteBlocks(*r, 1, 1, 0xB0).ok());
  ASSERT_TRUE(r->SetGeneration(1, 2, false).ok());
  ASSERT_TRUE(WriteBlocks(*r, 20, 1, 0xC0).ok());
  EXPECT_TRUE(MetaOnDisk("r1").unclean());
  ASSERT_TRUE(r->Flush().ok());
  EXPECT_FALSE(MetaOnDisk("r1").unclean());
  EXPECT_FALSE(r->Meta().unclean());
  auto before = r->ChangedSince(1);
  ASSERT_TRUE(before.ok());
  const v1::ReplicaMeta meta_before = r->Meta();

  r.reset();
  ASSERT_NO_FATAL_FAILURE(Reopen());
  ASSERT_EQ(store_->List().size(), 1u);
  r = Get("r1");
  ASSERT_NE(r, nullptr);
  v1::ReplicaMeta meta = r->Meta();
  EXPECT_EQ(meta.SerializeAsString(), meta_before.SerializeAsString()) << meta.DebugString();
  EXPECT_EQ(meta.generation(), 2u);
  EXPECT_FALSE(meta.unclean());
  EXPECT_EQ(ReadBlock(*r, 0), Block(0, 0xA0));
  EXPECT_EQ(ReadBlock(*r, 1), Block(1, 0xB0));
  EXPECT_EQ(ReadBlock(*r, 20), Block(20, 0xC0));
  EXPECT_EQ(ReadBlock(*r, 1, "s1"), Block(1, 0xA0));
  auto after = r->ChangedSince(1);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(*after, *before);
  auto current = r->ChangedSince(2);
  ASSERT_TRUE(current.ok()) << current.status();
  EXPECT_EQ(*current, (std::vector<Extent>{{kDirtyChunk, kDirtyChunk}}));  // block 20: chunk 1
}

TEST_F(StoreTest, UncleanReopenRebuildsTheHeadMap) {
  auto r = Create("r1", kMiB, 4);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(WriteBlocks(*r, 0, 2, 0xA0).ok());
  ASSERT_TRUE(r->TakeSnapshot("s1", 1).ok());  // persists; the new head's map is empty
  ASSERT_TRUE(WriteBlocks(*r, 1, 1, 0xB0).ok());
  ASSERT_TRUE(WriteBlocks(*r, 40, 1, 0xC0).ok());
  ASSERT_TRUE(MetaOnDisk("r1").unclean());

  // No Flush: destruction leaves what kill -9 would.
  r.reset();
  ASSERT_NO_FATAL_FAILURE(Reopen());
  r = Get("r1");
  ASSERT_NE(r, nullptr);
  v1::ReplicaMeta meta = r->Meta();
  EXPECT_FALSE(meta.unclean());
  EXPECT_FALSE(MetaOnDisk("r1").unclean());
  EXPECT_EQ(meta.generation(), 4u);
  EXPECT_EQ(meta.dirty_history_from(), 5u);
  // Without the rebuilt map block 1 would show s1's data.
  EXPECT_EQ(ReadBlock(*r, 0), Block(0, 0xA0));
  EXPECT_EQ(ReadBlock(*r, 1), Block(1, 0xB0));
  EXPECT_EQ(ReadBlock(*r, 40), Block(40, 0xC0));
  auto head = r->ChangedBetween("s1", "");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(*head, (std::vector<Extent>{{kB, kB}, {40 * kB, kB}}));
  EXPECT_EQ(r->ChangedSince(4).status().code(), StatusCode::kFailedPrecondition);

  // The history restarts with the next generation.
  ASSERT_TRUE(r->SetGeneration(4, 5, false).ok());
  ASSERT_TRUE(WriteBlocks(*r, 17, 1, 0xD0).ok());
  auto changed = r->ChangedSince(5);
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_EQ(*changed, (std::vector<Extent>{{kDirtyChunk, kDirtyChunk}}));
}

TEST_F(StoreTest, ConcurrentWritersAndReader) {
  constexpr std::uint64_t kBlocks = 512;
  constexpr int kWriters = 4;
  auto r = Create("r1", kBlocks * kB);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(WriteBlocks(*r, 0, kBlocks, 0x10).ok());
  ASSERT_TRUE(r->TakeSnapshot("s1", 1).ok());  // reads go through the layered path

  std::atomic<bool> done{false};
  std::atomic<int> errors{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < kWriters; ++t) {
    writers.emplace_back([&, t] {
      for (std::uint64_t b = static_cast<std::uint64_t>(t); b < kBlocks; b += kWriters) {
        if (!WriteBlocks(*r, b, 1, static_cast<std::uint8_t>(0x20 + t)).ok()) ++errors;
        if (b % 64 == 0 && !r->Flush().ok()) ++errors;
      }
    });
  }
  std::thread reader([&] {
    std::vector<std::uint8_t> buf(32 * kB);
    std::uint64_t start = 0;
    while (!done) {
      if (!r->Read(start * kB, buf).ok()) ++errors;
      for (std::uint64_t i = 0; i < 32; ++i) {
        const std::uint64_t b = start + i;
        std::vector<std::uint8_t> got(buf.begin() + i * kB, buf.begin() + (i + 1) * kB);
        if (got != Block(b, 0x10) &&
            got != Block(b, static_cast<std::uint8_t>(0x20 + b % kWriters)))
          ++errors;
      }
      start = (start + 32) % kBlocks;
    }
  });
  for (auto& w : writers) w.join();
  done = true;
  reader.join();
  EXPECT_EQ(errors.load(), 0);
  for (std::uint64_t b = 0; b < kBlocks; ++b) {
    ASSERT_EQ(ReadBlock(*r, b), Block(b, static_cast<std::uint8_t>(0x20 + b % kWriters)))
        << "block " << b;
    ASSERT_EQ(ReadBlock(*r, b, "s1"), Block(b, 0x10)) << "block " << b;
  }
  auto head = r->ChangedBetween("s1", "");
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(*head, (std::vector<Extent>{{0, kBlocks * kB}}));
}

}  // namespace
}  // namespace hci::replicated
