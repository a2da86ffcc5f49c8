// The replica store: sparse layer files with block maps forming a tree (snapshots), per-generation
// changed-block bitmaps and atomically replaced metadata. replica_store.h describes the layout.
//
// Locking inside one replica:
//   admin_mu_    serializes metadata operations (snapshot, delete, revert, expand, generation).
//                A snapshot merge holds it throughout but takes mu_ only per chunk.
//   mu_          shared by the data path (Read, Write, WriteZeroes, Flush, queries), exclusive
//                while the layer tree, the size or the current dirty bitmap object change.
//   persist_mu_  with mu_ held shared: orders the unclean mark, Flush and fua map saves, which
//                all replace files while data calls run.
// Bitmap words are updated and read with std::atomic_ref, so the data path itself needs no more
// than the shared lock; pread/pwrite on the layer files are not locked at all.
#include "store/replica_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <set>
#include <shared_mutex>
#include <utility>

#include "hci/names.h"

namespace hci::replicated {
namespace {

namespace fs = std::filesystem;

constexpr char kMapMagic[8] = {'H', 'C', 'I', 'B', 'M', 'A', 'P', '1'};
constexpr std::size_t kMapHeader = 16;  // magic, then the bit count (u64, little endian)
// Blocks a snapshot merge copies under one exclusive lock (1 MiB): short enough that head
// writes wait at most one small copy, long enough that the lock is not taken per block.
constexpr std::uint64_t kMergeBlocks = 256;
// Largest buffer the store allocates for one copy, zero fill or hash step.
constexpr std::size_t kIoBuffer = 1 << 20;

std::uint64_t DivRoundUp(std::uint64_t a, std::uint64_t b) { return (a + b - 1) / b; }

std::string Quote(std::string_view s) { return "\"" + std::string(s) + "\""; }

std::int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string LayerImg(std::uint64_t id) { return "layer-" + std::to_string(id) + ".img"; }
std::string LayerMap(std::uint64_t id) { return "layer-" + std::to_string(id) + ".map"; }
std::string DirtyMap(std::uint64_t gen) { return "dirty-" + std::to_string(gen) + ".map"; }

// "dirty-<gen>.map" -> gen.
bool ParseDirtyName(std::string_view name, std::uint64_t* gen) {
  constexpr std::string_view kPrefix = "dirty-", kSuffix = ".map";
  if (name.size() <= kPrefix.size() + kSuffix.size() || !name.starts_with(kPrefix) ||
      !name.ends_with(kSuffix)) {
    return false;
  }
  std::string_view digits = name.substr(kPrefix.size(), name.size() - 10);
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), *gen);
  return ec == std::errc() && end == digits.data() + digits.size();
}

bool IsValidReplicaName(std::string_view name) {
  if (name.empty() || name.size() > 253 || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
  });
}

// Short writes continue; EINTR retries.
Status PwriteAll(int fd, const std::uint8_t* data, std::size_t len, std::uint64_t off,
                 const std::string& what) {
  while (len > 0) {
    ssize_t n = ::pwrite(fd, data, len, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, what + ": write at " + std::to_string(off));
    }
    data += n;
    len -= static_cast<std::size_t>(n);
    off += static_cast<std::uint64_t>(n);
  }
  return Status::OK();
}

// Past the end of the file reads zeros: a lower layer may be smaller than the range.
Status PreadAll(int fd, std::uint8_t* out, std::size_t len, std::uint64_t off,
                const std::string& what) {
  while (len > 0) {
    ssize_t n = ::pread(fd, out, len, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, what + ": read at " + std::to_string(off));
    }
    if (n == 0) {
      std::memset(out, 0, len);
      break;
    }
    out += n;
    len -= static_cast<std::size_t>(n);
    off += static_cast<std::uint64_t>(n);
  }
  return Status::OK();
}

// Zeros [off, off + len): a hole when the filesystem can punch one, written zeros otherwise.
Status ZeroRange(int fd, std::uint64_t off, std::uint64_t len, const std::string& what) {
  if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                  static_cast<off_t>(len)) == 0) {
    return Status::OK();
  }
  if (errno != EOPNOTSUPP) return ErrnoStatus(errno, what + ": punching a hole");
  std::vector<std::uint8_t> zeros(std::min<std::uint64_t>(len, kIoBuffer));
  while (len > 0) {
    std::size_t n = std::min<std::uint64_t>(len, zeros.size());
    HCI_RETURN_NOT_OK(PwriteAll(fd, zeros.data(), n, off, what));
    off += n;
    len -= n;
  }
  return Status::OK();
}

// Replaces dir/name with `data` so that a crash leaves either the old or the new content:
// name.tmp written and fsynced, renamed over name, then the directory fsynced.
Status ReplaceFileAtomic(int dir_fd, const std::string& who, const std::string& name,
                         std::string_view data) {
  const std::string tmp = name + ".tmp";
  int fd = ::openat(dir_fd, tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus(errno, who + ": creating " + tmp);
  Status st = PwriteAll(fd, reinterpret_cast<const std::uint8_t*>(data.data()), data.size(), 0,
                        who + ": " + tmp);
  if (st.ok() && ::fsync(fd) != 0) st = ErrnoStatus(errno, who + ": fsync of " + tmp);
  ::close(fd);
  if (st.ok() && ::renameat(dir_fd, tmp.c_str(), dir_fd, name.c_str()) != 0) {
    st = ErrnoStatus(errno, who + ": renaming " + tmp + " to " + name);
  }
  if (!st.ok()) {
    ::unlinkat(dir_fd, tmp.c_str(), 0);
    return st;
  }
  if (::fsync(dir_fd) != 0) return ErrnoStatus(errno, who + ": fsync of the directory");
  return Status::OK();
}

// The entries of `dir` but "." and "..". (std::filesystem's iterator throws on increment.)
Status ListDir(const std::string& dir, const std::string& who, std::vector<std::string>* names) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return ErrnoStatus(errno, who + ": opening " + dir);
  errno = 0;
  while (const dirent* entry = ::readdir(d)) {
    std::string_view name = entry->d_name;
    if (name != "." && name != "..") names->emplace_back(name);
    errno = 0;
  }
  const int err = errno;
  ::closedir(d);
  if (err != 0) return ErrnoStatus(err, who + ": listing " + dir);
  return Status::OK();
}

Status ReadWholeFile(int dir_fd, const std::string& who, const std::string& name,
                     std::string* out) {
  int fd = ::openat(dir_fd, name.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, who + ": opening " + name);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus(err, who + ": stat of " + name);
  }
  out->assign(static_cast<std::size_t>(st.st_size), '\0');
  Status s =
      PreadAll(fd, reinterpret_cast<std::uint8_t*>(out->data()), out->size(), 0, who + ": " + name);
  ::close(fd);
  return s;
}

// A fixed-size set of bits that data calls may set and test concurrently (atomic_ref on each
// word); growing it needs the replica's exclusive lock.
class Bitmap {
 public:
  explicit Bitmap(std::uint64_t bits) : bits_(bits), words_(DivRoundUp(bits, 64), 0) {}
  Bitmap(const Bitmap&) = delete;
  Bitmap& operator=(const Bitmap&) = delete;

  std::uint64_t bits() const { return bits_; }

  bool Test(std::uint64_t i) const {
    if (i >= bits_) return false;
    return (Word(i / 64).load(std::memory_order_acquire) >> (i % 64)) & 1;
  }

  // Sets [first, first + count), clipped to the size.
  void Set(std::uint64_t first, std::uint64_t count) {
    const std::uint64_t end = std::min(first + count, bits_);
    bool fresh = false;
    while (first < end) {
      const std::uint64_t lo = first % 64;
      const std::uint64_t n = std::min<std::uint64_t>(64 - lo, end - first);
      const std::uint64_t mask = (n == 64 ? ~0ULL : ((1ULL << n) - 1)) << lo;
      auto word = Word(first / 64);
      // Load first: rewriting an already owned block must not dirty the cache line.
      if ((word.load(std::memory_order_relaxed) & mask) != mask &&
          (word.fetch_or(mask, std::memory_order_release) & mask) != mask) {
        fresh = true;
      }
      first += n;
    }
    if (fresh) changed_.store(true, std::memory_order_release);
  }

  // True when any bit of [first, end) is set here and clear in `other`.
  bool AnyNotIn(const Bitmap& other, std::uint64_t first, std::uint64_t end) const {
    for (std::uint64_t i = first; i < std::min(end, bits_); ++i) {
      if (Test(i) && !other.Test(i)) return true;
    }
    return false;
  }

  void OrInto(std::vector<std::uint64_t>* acc) const {
    if (acc->size() < words_.size()) acc->resize(words_.size(), 0);
    for (std::size_t i = 0; i < words_.size(); ++i) {
      (*acc)[i] |= Word(i).load(std::memory_order_acquire);
    }
  }

  // Grows (new bits clear); never shrinks. Exclusive lock only.
  void Grow(std::uint64_t bits) {
    if (bits <= bits_) return;
    bits_ = bits;
    words_.resize(DivRoundUp(bits, 64), 0);
    changed_.store(true);
  }

  // Whether bits were set since the last TakeChanged (a save can be skipped otherwise).
  bool TakeChanged() { return changed_.exchange(false); }
  void MarkChanged() { changed_.store(true); }

  // Call TakeChanged() before: a bit set while the words are copied flags a later save.
  std::string Serialize() const {
    std::string out(kMapHeader + words_.size() * 8, '\0');
    std::memcpy(out.data(), kMapMagic, sizeof(kMapMagic));
    std::memcpy(out.data() + 8, &bits_, 8);
    for (std::size_t i = 0; i < words_.size(); ++i) {
      std::uint64_t w = Word(i).load(std::memory_order_acquire);
      std::memcpy(out.data() + kMapHeader + i * 8, &w, 8);
    }
    return out;
  }

  // Empty string on success, otherwise what is wrong.
  static std::unique_ptr<Bitmap> Parse(std::string_view data, std::string* error) {
    if (data.size() < kMapHeader || std::memcmp(data.data(), kMapMagic, 8) != 0) {
      *error = "not a block map (bad header)";
      return nullptr;
    }
    std::uint64_t bits = 0;
    std::memcpy(&bits, data.data() + 8, 8);
    if ((data.size() - kMapHeader) % 8 != 0 ||
        (data.size() - kMapHeader) / 8 != bits / 64 + (bits % 64 != 0 ? 1 : 0)) {
      *error = "block map of " + std::to_string(bits) + " bits has " + std::to_string(data.size()) +
               " bytes";
      return nullptr;
    }
    auto map = std::make_unique<Bitmap>(bits);
    std::memcpy(map->words_.data(), data.data() + kMapHeader, map->words_.size() * 8);
    if (bits % 64 != 0) map->words_.back() &= (1ULL << (bits % 64)) - 1;
    return map;
  }

 private:
  std::atomic_ref<std::uint64_t> Word(std::size_t i) const {
    return std::atomic_ref<std::uint64_t>(words_[i]);
  }

  std::uint64_t bits_;
  mutable std::vector<std::uint64_t> words_;  // mutable: atomic_ref needs a non-const word
  std::atomic<bool> changed_{false};
};

// Maximal runs of set bits, each bit `unit` bytes, clipped to `limit` bytes.
std::vector<Extent> Runs(const std::vector<std::uint64_t>& words, std::uint64_t unit,
                         std::uint64_t limit) {
  const std::uint64_t nbits = words.size() * 64;
  auto next = [&](std::uint64_t from, bool set) {
    while (from < nbits) {
      std::uint64_t w = set ? words[from / 64] : ~words[from / 64];
      w &= ~0ULL << (from % 64);
      if (w != 0) return (from / 64) * 64 + static_cast<std::uint64_t>(std::countr_zero(w));
      from = (from / 64 + 1) * 64;
    }
    return nbits;
  };
  std::vector<Extent> out;
  for (std::uint64_t i = 0;;) {
    const std::uint64_t start = next(i, true);
    if (start >= nbits || start * unit >= limit) break;
    const std::uint64_t end = next(start, false);
    out.push_back({start * unit, std::min(end * unit, limit) - start * unit});
    i = end;
  }
  return out;
}

struct LayerFiles {
  LayerFiles() = default;
  LayerFiles(const LayerFiles&) = delete;
  LayerFiles& operator=(const LayerFiles&) = delete;
  ~LayerFiles() {
    if (fd >= 0) ::close(fd);
  }
  std::uint64_t id = 0;
  int fd = -1;
  std::unique_ptr<Bitmap> map;
  std::string what;  // `replica "r": layer-3.img`, for messages
  // A snapshot layer written by WriteLayer/ZeroLayer since the last Flush.
  std::atomic<bool> unsynced{false};
};

v1::Layer* FindLayer(v1::ReplicaMeta* meta, std::uint64_t id) {
  for (auto& layer : *meta->mutable_layers()) {
    if (layer.id() == id) return &layer;
  }
  return nullptr;
}
const v1::Layer* FindLayer(const v1::ReplicaMeta& meta, std::uint64_t id) {
  for (const auto& layer : meta.layers()) {
    if (layer.id() == id) return &layer;
  }
  return nullptr;
}
void EraseLayer(v1::ReplicaMeta* meta, std::uint64_t id) {
  auto* layers = meta->mutable_layers();
  for (int i = 0; i < layers->size(); ++i) {
    if (layers->Get(i).id() == id) {
      layers->DeleteSubrange(i, 1);
      return;
    }
  }
}

// Counts writers between their unclean check and the update of the bitmaps (see Flush).
class InflightGuard {
 public:
  explicit InflightGuard(std::atomic<std::uint64_t>& count) : count_(count) { count_.fetch_add(1); }
  ~InflightGuard() { count_.fetch_sub(1); }
  InflightGuard(const InflightGuard&) = delete;
  InflightGuard& operator=(const InflightGuard&) = delete;

 private:
  std::atomic<std::uint64_t>& count_;
};

class ReplicaImpl final : public Replica {
 public:
  ReplicaImpl(std::string name, std::string dir, int dir_fd, v1::ReplicaMeta meta)
      : name_(std::move(name)),
        dir_(std::move(dir)),
        dir_fd_(dir_fd),
        who_("replica " + Quote(name_)),
        meta_(std::move(meta)) {
    generation_.store(meta_.generation());
  }
  // Closes the files and never flushes: destruction is what a kill -9 would leave behind; a
  // clean shutdown is an explicit Flush().
  ~ReplicaImpl() override {
    layers_.clear();
    ::close(dir_fd_);
  }

  static Result<std::shared_ptr<ReplicaImpl>> CreateNew(const std::string& dir,
                                                        const v1::CreateReplica& req);
  static Result<std::shared_ptr<ReplicaImpl>> Load(const std::string& dir, const std::string& name);

  // Later calls fail with NotFound; waits for the calls in progress.
  void MarkDeleted() {
    std::lock_guard admin(admin_mu_);
    std::unique_lock lock(mu_);
    deleted_ = true;
  }

  v1::ReplicaMeta Meta() const override {
    std::shared_lock lock(mu_);
    v1::ReplicaMeta meta = meta_;
    meta.set_unclean(marked_.load());
    return meta;
  }
  std::uint64_t ActualSizeBytes() const override;

  Status Read(std::uint64_t offset, std::span<std::uint8_t> out) override;
  Status Write(std::uint64_t offset, std::span<const std::uint8_t> data, bool fua) override;
  Status WriteZeroes(std::uint64_t offset, std::uint64_t length, bool punch, bool fua) override;
  Status Flush() override;
  std::uint64_t generation() const override;
  Result<std::shared_lock<std::shared_mutex>> HoldGeneration(std::uint64_t generation) override;
  Status SetGeneration(std::uint64_t expected_generation, std::uint64_t generation,
                       bool rebuilding) override;
  Status TakeSnapshotAt(std::string_view name, std::int64_t created_unix_ms,
                        std::uint64_t generation) override;
  Status WriteLayer(std::string_view name, std::uint64_t offset,
                    std::span<const std::uint8_t> data) override;
  Status ZeroLayer(std::string_view name, std::uint64_t offset, std::uint64_t length) override;
  Status DeleteSnapshot(std::string_view name) override;
  Status Revert(std::string_view name) override;
  Status Expand(std::uint64_t size_bytes) override;
  Result<std::vector<Extent>> ChangedSince(std::uint64_t generation) const override;
  Result<std::vector<Extent>> ChangedBetween(std::string_view from_snapshot,
                                             std::string_view to_snapshot) const override;
  Status ReadSnapshot(std::string_view name, std::uint64_t offset,
                      std::span<std::uint8_t> out) override;
  Result<std::vector<std::string>> HashExtents(std::uint64_t offset, std::uint64_t length,
                                               std::uint32_t extent_bytes) override;

 private:
  Status CheckLive() const {
    if (deleted_.load(std::memory_order_relaxed)) return NotFound(who_ + " was deleted");
    return Status::OK();
  }
  Status CheckRange(std::uint64_t offset, std::uint64_t length, std::uint64_t size) const;
  // The non-removed snapshot layer of that name, or null.
  const v1::Layer* FindSnapshot(std::string_view name) const;
  std::vector<std::uint64_t> ChildrenOf(std::uint64_t id) const;
  // Layers from `top` down to the base, top first.
  std::vector<LayerFiles*> ChainFrom(std::uint64_t top) const;
  void RebuildChain() { chain_ = ChainFrom(meta_.head_layer()); }
  LayerFiles* Head() const { return chain_.front(); }

  Status ReadChain(const std::vector<LayerFiles*>& chain, std::uint64_t offset,
                   std::span<std::uint8_t> out) const;
  // WriteLayer (`data` non-empty) or ZeroLayer (`length` bytes).
  Status FillLayer(std::string_view name, std::uint64_t offset, std::span<const std::uint8_t> data,
                   std::uint64_t length);
  void RecordWrite(std::uint64_t offset, std::uint64_t length);
  Status MarkUnclean();

  Result<std::unique_ptr<LayerFiles>> OpenLayer(std::uint64_t id, std::uint64_t size_bytes);
  Result<std::unique_ptr<LayerFiles>> CreateLayer(std::uint64_t id, std::uint64_t size_bytes);
  void RemoveLayerFiles(std::uint64_t id);
  Status SaveMap(LayerFiles* layer, bool force);
  Status SaveDirty(bool force);
  Status WriteMeta(const v1::ReplicaMeta& meta, bool unclean);
  // fdatasync of the head, then its map and the current dirty bitmap when they changed.
  // Needs mu_ exclusive, or shared plus persist_mu_.
  Status SyncHead();
  // Persists `next` as clean (mu_ exclusive, after SyncHead) and makes it current.
  Status CommitLocked(v1::ReplicaMeta next);

  Status RecoverUnclean();
  Status RestartHistory(v1::ReplicaMeta* next);

  // With admin_mu_ held, mu_ not held.
  Status DropLayer(std::uint64_t id);
  Status MergeIntoChild(std::uint64_t id, std::uint64_t child);
  Status CollectRemoved();

  const std::string name_;
  const std::string dir_;
  const int dir_fd_;
  const std::string who_;  // `replica "name"`

  std::mutex admin_mu_;
  mutable std::shared_mutex mu_;
  // Taken shared by HoldGeneration for the length of a data request, exclusively by
  // SetGeneration (before every other lock): the generation check and the request are atomic.
  std::shared_mutex fence_mu_;
  // meta_.generation(), readable without mu_.
  std::atomic<std::uint64_t> generation_{0};
  std::mutex persist_mu_;

  v1::ReplicaMeta meta_;  // its `unclean` field is not kept up to date: marked_ is
  std::map<std::uint64_t, std::unique_ptr<LayerFiles>> layers_;
  std::vector<LayerFiles*> chain_;   // the head's chain, head first
  std::unique_ptr<Bitmap> dirty_;    // the current generation's changed chunks
  std::set<std::uint64_t> history_;  // older generations that have a dirty-<gen>.map

  std::atomic<bool> marked_{false};  // the meta on disk says unclean
  std::atomic<std::uint64_t> inflight_{0};
  std::atomic<bool> deleted_{false};
};

Status ReplicaImpl::CheckRange(std::uint64_t offset, std::uint64_t length,
                               std::uint64_t size) const {
  if (offset % kStoreBlock != 0) {
    return InvalidArgument(who_ + ": offset: " + std::to_string(offset) + " is not a multiple of " +
                           std::to_string(kStoreBlock));
  }
  if (length % kStoreBlock != 0) {
    return InvalidArgument(who_ + ": length: " + std::to_string(length) + " is not a multiple of " +
                           std::to_string(kStoreBlock));
  }
  if (offset > size || length > size - offset) {
    return InvalidArgument(who_ + ": offset " + std::to_string(offset) + " + length " +
                           std::to_string(length) + " is beyond size_bytes " +
                           std::to_string(size));
  }
  return Status::OK();
}

const v1::Layer* ReplicaImpl::FindSnapshot(std::string_view name) const {
  if (name.empty()) return nullptr;
  for (const auto& layer : meta_.layers()) {
    if (!layer.removed() && layer.snapshot() == name && layer.id() != meta_.head_layer()) {
      return &layer;
    }
  }
  return nullptr;
}

std::vector<std::uint64_t> ReplicaImpl::ChildrenOf(std::uint64_t id) const {
  std::vector<std::uint64_t> out;
  for (const auto& layer : meta_.layers()) {
    if (layer.parent() == id) out.push_back(layer.id());
  }
  return out;
}

std::vector<LayerFiles*> ReplicaImpl::ChainFrom(std::uint64_t top) const {
  std::vector<LayerFiles*> chain;
  for (std::uint64_t id = top; id != 0 && chain.size() <= layers_.size();) {
    auto it = layers_.find(id);
    const v1::Layer* meta = FindLayer(meta_, id);
    if (it == layers_.end() || meta == nullptr) break;  // Load checked the tree
    chain.push_back(it->second.get());
    id = meta->parent();
  }
  return chain;
}

Status ReplicaImpl::ReadChain(const std::vector<LayerFiles*>& chain, std::uint64_t offset,
                              std::span<std::uint8_t> out) const {
  if (out.empty()) return Status::OK();
  // A parentless layer owns every block that is not a hole in its file.
  if (chain.size() == 1) {
    return PreadAll(chain[0]->fd, out.data(), out.size(), offset, chain[0]->what);
  }
  auto owner = [&chain](std::uint64_t block) -> LayerFiles* {
    for (LayerFiles* layer : chain) {
      if (layer->map->Test(block)) return layer;
    }
    return nullptr;
  };
  const std::uint64_t first = offset / kStoreBlock;
  const std::uint64_t n = out.size() / kStoreBlock;
  for (std::uint64_t i = 0; i < n;) {
    LayerFiles* from = owner(first + i);
    std::uint64_t j = i + 1;
    while (j < n && owner(first + j) == from) ++j;
    std::uint8_t* p = out.data() + i * kStoreBlock;
    const std::size_t len = (j - i) * kStoreBlock;
    if (from == nullptr) {
      std::memset(p, 0, len);
    } else {
      HCI_RETURN_NOT_OK(PreadAll(from->fd, p, len, (first + i) * kStoreBlock, from->what));
    }
    i = j;
  }
  return Status::OK();
}

void ReplicaImpl::RecordWrite(std::uint64_t offset, std::uint64_t length) {
  Head()->map->Set(offset / kStoreBlock, length / kStoreBlock);
  const std::uint64_t chunk = offset / kDirtyChunk;
  dirty_->Set(chunk, DivRoundUp(offset + length, kDirtyChunk) - chunk);
}

Status ReplicaImpl::MarkUnclean() {
  if (marked_.load()) return Status::OK();
  std::lock_guard persist(persist_mu_);
  if (marked_.load()) return Status::OK();
  HCI_RETURN_NOT_OK(WriteMeta(meta_, /*unclean=*/true));
  marked_.store(true);
  return Status::OK();
}

Status ReplicaImpl::Read(std::uint64_t offset, std::span<std::uint8_t> out) {
  std::shared_lock lock(mu_);
  HCI_RETURN_NOT_OK(CheckLive());
  HCI_RETURN_NOT_OK(CheckRange(offset, out.size(), meta_.size_bytes()));
  return ReadChain(chain_, offset, out);
}

Status ReplicaImpl::Write(std::uint64_t offset, std::span<const std::uint8_t> data, bool fua) {
  std::shared_lock lock(mu_);
  HCI_RETURN_NOT_OK(CheckLive());
  HCI_RETURN_NOT_OK(CheckRange(offset, data.size(), meta_.size_bytes()));
  if (data.empty()) return Status::OK();
  InflightGuard inflight(inflight_);
  HCI_RETURN_NOT_OK(MarkUnclean());
  LayerFiles* head = Head();
  Status st = PwriteAll(head->fd, data.data(), data.size(), offset, head->what);
  if (!st.ok()) {
    // Part of the range may hold new data: a delta rebuild must copy it.
    const std::uint64_t chunk = offset / kDirtyChunk;
    dirty_->Set(chunk, DivRoundUp(offset + data.size(), kDirtyChunk) - chunk);
    return st;
  }
  RecordWrite(offset, data.size());
  // The map bits need no save for fua: a crash leaves the meta unclean, and the recovery finds
  // the written blocks allocated in the head's file.
  if (fua && ::fdatasync(head->fd) != 0) return ErrnoStatus(errno, head->what + ": fdatasync");
  return Status::OK();
}

Status ReplicaImpl::WriteZeroes(std::uint64_t offset, std::uint64_t length, bool punch, bool fua) {
  // Punched either way: a hole reads zeros, costs no space, and the head owning the block keeps
  // lower layers from showing through. Allocation is never promised.
  (void)punch;
  std::shared_lock lock(mu_);
  HCI_RETURN_NOT_OK(CheckLive());
  HCI_RETURN_NOT_OK(CheckRange(offset, length, meta_.size_bytes()));
  if (length == 0) return Status::OK();
  InflightGuard inflight(inflight_);
  HCI_RETURN_NOT_OK(MarkUnclean());
  LayerFiles* head = Head();
  Status st = ZeroRange(head->fd, offset, length, head->what);
  if (!st.ok()) {
    const std::uint64_t chunk = offset / kDirtyChunk;
    dirty_->Set(chunk, DivRoundUp(offset + length, kDirtyChunk) - chunk);
    return st;
  }
  RecordWrite(offset, length);
  if (fua) {
    if (::fdatasync(head->fd) != 0) return ErrnoStatus(errno, head->what + ": fdatasync");
    // Unlike written data, a hole leaves no trace the unclean recovery could find: over a lower
    // layer, only the saved map keeps the zeros.
    if (chain_.size() > 1) {
      std::lock_guard persist(persist_mu_);
      HCI_RETURN_NOT_OK(SaveMap(head, /*force=*/false));
    }
  }
  return Status::OK();
}

Status ReplicaImpl::Flush() {
  std::shared_lock lock(mu_);
  HCI_RETURN_NOT_OK(CheckLive());
  std::lock_guard persist(persist_mu_);
  // Writers that start from here on see marked_ false and wait for persist_mu_ to mark the
  // meta unclean again. Writers already past that check may still set bits after the maps are
  // saved: while any is running, the meta stays unclean (the maps saved below still hold every
  // write that completed before this Flush).
  const bool was_marked = marked_.exchange(false);
  const bool quiet = inflight_.load() == 0;
  Status st;
  for (auto& [id, layer] : layers_) {
    if (!st.ok() || layer.get() == Head() || !layer->unsynced.exchange(false)) continue;
    if (::fdatasync(layer->fd) != 0) st = ErrnoStatus(errno, layer->what + ": fdatasync");
    if (st.ok()) st = SaveMap(layer.get(), /*force=*/false);
    if (!st.ok()) layer->unsynced.store(true);
  }
  if (st.ok()) st = SyncHead();
  if (st.ok() && was_marked && quiet) st = WriteMeta(meta_, /*unclean=*/false);
  if (was_marked && (!st.ok() || !quiet)) marked_.store(true);
  return st;
}

Status ReplicaImpl::SyncHead() {
  LayerFiles* head = Head();
  if (::fdatasync(head->fd) != 0) return ErrnoStatus(errno, head->what + ": fdatasync");
  HCI_RETURN_NOT_OK(SaveMap(head, /*force=*/false));
  return SaveDirty(/*force=*/false);
}

Status ReplicaImpl::SaveMap(LayerFiles* layer, bool force) {
  if (!layer->map->TakeChanged() && !force) return Status::OK();
  Status st = ReplaceFileAtomic(dir_fd_, who_, LayerMap(layer->id), layer->map->Serialize());
  if (!st.ok()) layer->map->MarkChanged();
  return st;
}

Status ReplicaImpl::SaveDirty(bool force) {
  if (!dirty_->TakeChanged() && !force) return Status::OK();
  Status st = ReplaceFileAtomic(dir_fd_, who_, DirtyMap(meta_.generation()), dirty_->Serialize());
  if (!st.ok()) dirty_->MarkChanged();
  return st;
}

Status ReplicaImpl::WriteMeta(const v1::ReplicaMeta& meta, bool unclean) {
  v1::ReplicaMeta copy = meta;
  copy.set_unclean(unclean);
  std::string data;
  if (!copy.SerializeToString(&data)) return Internal(who_ + ": meta does not serialize");
  return ReplaceFileAtomic(dir_fd_, who_, "meta", data);
}

Status ReplicaImpl::CommitLocked(v1::ReplicaMeta next) {
  HCI_RETURN_NOT_OK(WriteMeta(next, /*unclean=*/false));
  meta_ = std::move(next);
  generation_.store(meta_.generation());
  marked_.store(false);
  RebuildChain();
  return Status::OK();
}

Result<std::unique_ptr<LayerFiles>> ReplicaImpl::OpenLayer(std::uint64_t id,
                                                           std::uint64_t size_bytes) {
  auto layer = std::make_unique<LayerFiles>();
  layer->id = id;
  layer->what = who_ + ": " + LayerImg(id);
  layer->fd = ::openat(dir_fd_, LayerImg(id).c_str(), O_RDWR | O_CLOEXEC);
  if (layer->fd < 0) return ErrnoStatus(errno, layer->what + ": open");
  std::string data, error;
  HCI_RETURN_NOT_OK(ReadWholeFile(dir_fd_, who_, LayerMap(id), &data));
  layer->map = Bitmap::Parse(data, &error);
  if (layer->map == nullptr) return DataLoss(who_ + ": " + LayerMap(id) + ": " + error);
  layer->map->Grow(DivRoundUp(size_bytes, kStoreBlock));
  layer->map->TakeChanged();
  return layer;
}

Result<std::unique_ptr<LayerFiles>> ReplicaImpl::CreateLayer(std::uint64_t id,
                                                             std::uint64_t size_bytes) {
  auto layer = std::make_unique<LayerFiles>();
  layer->id = id;
  layer->what = who_ + ": " + LayerImg(id);
  // O_TRUNC: files of a layer whose meta never got persisted (a crash) are reused.
  layer->fd = ::openat(dir_fd_, LayerImg(id).c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (layer->fd < 0) return ErrnoStatus(errno, layer->what + ": create");
  Status st;
  if (::ftruncate(layer->fd, static_cast<off_t>(size_bytes)) != 0) {
    st = ErrnoStatus(errno, layer->what + ": ftruncate to " + std::to_string(size_bytes));
  }
  layer->map = std::make_unique<Bitmap>(DivRoundUp(size_bytes, kStoreBlock));
  // Also makes the new data file's directory entry durable (the directory is fsynced).
  if (st.ok()) st = SaveMap(layer.get(), /*force=*/true);
  if (!st.ok()) {
    layer.reset();
    RemoveLayerFiles(id);
    return st;
  }
  return layer;
}

void ReplicaImpl::RemoveLayerFiles(std::uint64_t id) {
  // Leftovers are harmless: a layer id is never reused once its meta is persisted, and unused
  // files are only disk space.
  ::unlinkat(dir_fd_, LayerImg(id).c_str(), 0);
  ::unlinkat(dir_fd_, LayerMap(id).c_str(), 0);
}

Status ReplicaImpl::RestartHistory(v1::ReplicaMeta* next) {
  for (std::uint64_t gen : history_) ::unlinkat(dir_fd_, DirtyMap(gen).c_str(), 0);
  history_.clear();
  dirty_ = std::make_unique<Bitmap>(DivRoundUp(meta_.size_bytes(), kDirtyChunk));
  HCI_RETURN_NOT_OK(SaveDirty(/*force=*/true));
  next->set_dirty_history_from(next->generation() + 1);
  return Status::OK();
}

Status ReplicaImpl::RecoverUnclean() {
  LayerFiles* head = Head();
  const std::uint64_t blocks = head->map->bits();
  for (off_t pos = 0;;) {
    off_t data = ::lseek(head->fd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;
      return ErrnoStatus(errno, head->what + ": SEEK_DATA");
    }
    off_t hole = ::lseek(head->fd, data, SEEK_HOLE);
    if (hole < 0) return ErrnoStatus(errno, head->what + ": SEEK_HOLE");
    const std::uint64_t first = static_cast<std::uint64_t>(data) / kStoreBlock;
    const std::uint64_t end =
        std::min(DivRoundUp(static_cast<std::uint64_t>(hole), kStoreBlock), blocks);
    if (end > first) head->map->Set(first, end - first);
    pos = hole;
  }
  HCI_RETURN_NOT_OK(SaveMap(head, /*force=*/true));
  // The maps on disk may have missed the last writes, so the current generation's bitmap cannot
  // be trusted; history resumes with the next generation.
  v1::ReplicaMeta next = meta_;
  HCI_RETURN_NOT_OK(RestartHistory(&next));
  return CommitLocked(std::move(next));
}

Result<std::shared_ptr<ReplicaImpl>> ReplicaImpl::CreateNew(const std::string& dir,
                                                            const v1::CreateReplica& req) {
  const std::string who = "replica " + Quote(req.replica());
  int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return ErrnoStatus(errno, who + ": opening " + dir);
  v1::ReplicaMeta meta;
  meta.set_replica(req.replica());
  meta.set_volume(req.volume());
  meta.set_volume_uid(req.volume_uid());
  meta.set_size_bytes(req.size_bytes());
  meta.set_generation(req.generation());
  meta.set_rebuilding(req.rebuilding());
  meta.set_head_layer(1);
  meta.set_next_layer_id(2);
  meta.set_dirty_history_from(req.generation());
  meta.set_created_unix_ms(NowUnixMs());
  v1::Layer* base = meta.add_layers();
  base->set_id(1);
  base->set_size_bytes(req.size_bytes());
  auto replica = std::make_shared<ReplicaImpl>(req.replica(), dir, dir_fd, meta);
  HCI_ASSIGN_OR_RAISE(auto layer, replica->CreateLayer(1, req.size_bytes()));
  replica->layers_[1] = std::move(layer);
  replica->RebuildChain();
  replica->dirty_ = std::make_unique<Bitmap>(DivRoundUp(req.size_bytes(), kDirtyChunk));
  HCI_RETURN_NOT_OK(replica->SaveDirty(/*force=*/true));
  // The meta goes last: a directory without it is an unfinished create, skipped by Open and
  // overwritten by the next Create.
  HCI_RETURN_NOT_OK(replica->WriteMeta(meta, /*unclean=*/false));
  return replica;
}

Result<std::shared_ptr<ReplicaImpl>> ReplicaImpl::Load(const std::string& dir,
                                                       const std::string& name) {
  const std::string who = "replica " + Quote(name);
  int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return ErrnoStatus(errno, who + ": opening " + dir);
  std::string data;
  Status st = ReadWholeFile(dir_fd, who, "meta", &data);
  if (!st.ok()) {
    ::close(dir_fd);
    return st;
  }
  v1::ReplicaMeta meta;
  if (!meta.ParseFromString(data)) {
    ::close(dir_fd);
    return DataLoss(who + ": meta does not parse as a ReplicaMeta");
  }
  auto replica = std::make_shared<ReplicaImpl>(name, dir, dir_fd, meta);
  if (meta.replica() != name) {
    return DataLoss(who + ": meta.replica is " + Quote(meta.replica()) +
                    ", not the directory's name");
  }
  if (meta.size_bytes() == 0 || meta.size_bytes() % kStoreBlock != 0) {
    return DataLoss(who + ": meta.size_bytes " + std::to_string(meta.size_bytes()) +
                    " is not a positive multiple of " + std::to_string(kStoreBlock));
  }
  for (const auto& layer : meta.layers()) {
    if (layer.id() == 0 || layer.id() >= meta.next_layer_id() ||
        replica->layers_.count(layer.id()) != 0) {
      return DataLoss(who + ": meta.layers: layer id " + std::to_string(layer.id()) +
                      " is zero, repeated or not below next_layer_id");
    }
    const std::uint64_t size =
        layer.id() == meta.head_layer() ? meta.size_bytes() : layer.size_bytes();
    HCI_ASSIGN_OR_RAISE(replica->layers_[layer.id()], replica->OpenLayer(layer.id(), size));
  }
  for (const auto& layer : meta.layers()) {
    if (layer.parent() != 0 && replica->layers_.count(layer.parent()) == 0) {
      return DataLoss(who + ": meta.layers: layer " + std::to_string(layer.id()) +
                      " has the unknown parent " + std::to_string(layer.parent()));
    }
  }
  if (replica->layers_.count(meta.head_layer()) == 0) {
    return DataLoss(who + ": meta.head_layer " + std::to_string(meta.head_layer()) +
                    " is not one of meta.layers");
  }
  replica->RebuildChain();
  const v1::Layer* last = FindLayer(meta, replica->chain_.back()->id);
  if (last == nullptr || last->parent() != 0) {
    return DataLoss(who + ": meta.layers: the parents of the head layer form a cycle");
  }

  std::vector<std::string> names;
  HCI_RETURN_NOT_OK(ListDir(dir, who, &names));
  bool have_current = false;
  for (const std::string& file : names) {
    std::uint64_t gen = 0;
    if (!ParseDirtyName(file, &gen)) continue;
    if (gen == meta.generation()) {
      have_current = true;
    } else if (gen >= meta.dirty_history_from() && gen < meta.generation()) {
      replica->history_.insert(gen);
    } else {
      ::unlinkat(dir_fd, DirtyMap(gen).c_str(), 0);  // dropped, or never valid
    }
  }
  if (meta.unclean()) {
    replica->marked_.store(true);
    HCI_RETURN_NOT_OK(replica->RecoverUnclean());
    return replica;
  }
  if (have_current) {
    std::string error;
    st = ReadWholeFile(dir_fd, who, DirtyMap(meta.generation()), &data);
    if (!st.ok()) return st;
    replica->dirty_ = Bitmap::Parse(data, &error);
    if (replica->dirty_ == nullptr) {
      return DataLoss(who + ": " + DirtyMap(meta.generation()) + ": " + error);
    }
    replica->dirty_->Grow(DivRoundUp(meta.size_bytes(), kDirtyChunk));
    replica->dirty_->TakeChanged();
  } else {
    // Without this generation's bitmap its changes cannot be told: restart the history.
    v1::ReplicaMeta next = meta;
    HCI_RETURN_NOT_OK(replica->RestartHistory(&next));
    HCI_RETURN_NOT_OK(replica->CommitLocked(std::move(next)));
  }
  return replica;
}

std::uint64_t ReplicaImpl::ActualSizeBytes() const {
  std::shared_lock lock(mu_);
  std::uint64_t total = 0;
  std::vector<std::string> names;
  if (!ListDir(dir_, who_, &names).ok()) return 0;
  for (const std::string& name : names) {
    struct stat st {};
    if (::fstatat(dir_fd_, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      total += static_cast<std::uint64_t>(st.st_blocks) * 512;
    }
  }
  return total;
}

std::uint64_t ReplicaImpl::generation() const { return generation_.load(); }

Result<std::shared_lock<std::shared_mutex>> ReplicaImpl::HoldGeneration(std::uint64_t generation) {
  std::shared_lock hold(fence_mu_);
  const std::uint64_t current = generation_.load();
  if (generation != current) {
    return FailedPrecondition("generation: " + std::to_string(generation) +
                              " is not the replica's generation " + std::to_string(current));
  }
  return hold;
}

Status ReplicaImpl::SetGeneration(std::uint64_t expected_generation, std::uint64_t generation,
                                  bool rebuilding) {
  // Waits for the data requests admitted at the old generation (HoldGeneration) to finish.
  std::unique_lock fence(fence_mu_);
  std::lock_guard admin(admin_mu_);
  std::unique_lock lock(mu_);
  HCI_RETURN_NOT_OK(CheckLive());
  if (meta_.generation() != expected_generation) {
    return FailedPrecondition(who_ + ": expected_generation: the replica is at generation " +
                              std::to_string(meta_.generation()) + ", not " +
                              std::to_string(expected_generation));
  }
  if (generation < meta_.generation()) {
    return InvalidArgument(who_ + ": generation: " + std::to_string(generation) +
                           " is lower than the current generation " +
                           std::to_string(meta_.generation()));
  }
  HCI_RETURN_NOT_OK(SyncHead());
  v1::ReplicaMeta next = meta_;
  next.set_rebuilding(rebuilding);
  if (generation == meta_.generation()) return CommitLocked(std::move(next));

  // The current bitmap (saved by SyncHead) becomes history; the new generation starts empty.
  auto fresh = std::make_unique<Bitmap>(DivRoundUp(meta_.size_bytes(), kDirtyChunk));
  HCI_RETURN_NOT_OK(ReplaceFileAtomic(dir_fd_, who_, DirtyMap(generation), fresh->Serialize()));
  const std::uint64_t from = std::max<std::uint64_t>(
      meta_.dirty_history_from(), generation > kDirtyHistory ? generation - kDirtyHistory : 0);
  next.set_generation(generation);
  next.set_dirty_history_from(from);
  const std::uint64_t old_generation = meta_.generation();
  Status st = CommitLocked(std::move(next));
  if (!st.ok()) {
    ::unlinkat(dir_fd_, DirtyMap(generation).c_str(), 0);
    return st;
  }
  dirty_ = std::move(fresh);
  history_.insert(old_generation);
  // Files go only after the meta no longer claims them.
  while (!history_.empty() && *history_.begin() < from) {
    ::unlinkat(dir_fd_, DirtyMap(*history_.begin()).c_str(), 0);
    history_.erase(history_.begin());
  }
  return Status::OK();
}

Status ReplicaImpl::FillLayer(std::string_view name, std::uint64_t offset,
                              std::span<const std::uint8_t> data, std::uint64_t length) {
  // admin_mu_: a merge of this layer (DeleteSnapshot) must not run while it is written.
  std::lock_guard admin(admin_mu_);
  std::shared_lock lock(mu_);
  HCI_RETURN_NOT_OK(CheckLive());
  const v1::Layer* snapshot = FindSnapshot(name);
  if (snapshot == nullptr) return NotFound(who_ + ": snapshot " + Quote(name) + " does not exist");
  HCI_RETURN_NOT_OK(CheckRange(offset, length, snapshot->size_bytes()));
  if (length == 0) return Status::OK();
  InflightGuard inflight(inflight_);
  HCI_RETURN_NOT_OK(MarkUnclean());
  LayerFiles* layer = layers_.at(snapshot->id()).get();
  const std::uint64_t chunk = offset / kDirtyChunk;
  // What another replica rebuilt from this one must copy: the live view may change here too.
  dirty_->Set(chunk, DivRoundUp(offset + length, kDirtyChunk) - chunk);
  layer->unsynced.store(true);
  HCI_RETURN_NOT_OK(data.empty() ? ZeroRange(layer->fd, offset, length, layer->what)
                                 : PwriteAll(layer->fd, data.data(), length, offset, layer->what));
  layer->map->Set(offset / kStoreBlock, length / kStoreBlock);
  return Status::OK();
}

Status ReplicaImpl::WriteLayer(std::string_view name, std::uint64_t offset,
                               std::span<const std::uint8_t> data) {
  if (data.empty()) return Status::OK();
  return FillLayer(name, offset, data, data.size());
}

Status ReplicaImpl::ZeroLayer(std::string_view name, std::uint64_t offset, std::uint64_t length) {
  return FillLayer(name, offset, {}, length);
}

Status ReplicaImpl::TakeSnapshotAt(std::string_view name, std::int64_t created_unix_ms,
                                   std::uint64_t generation) {
  HCI_RETURN_NOT_OK(ValidateName("snapshot", name).WithContext(who_));
  std::lock_guard admin(admin_mu_);
  std::unique_lock lock(mu_);
  HCI_RETURN_NOT_OK(CheckLive());
  if (FindSnapshot(name) != nullptr) return Status::OK();
  HCI_RETURN_NOT_OK(SyncHead());  // the old head's map is final from here on
  const std::uint64_t id = meta_.next_layer_id();
  HCI_ASSIGN_OR_RAISE(auto layer, CreateLayer(id, meta_.size_bytes()));
  v1::ReplicaMeta next = meta_;
  next.set_next_layer_id(id + 1);
  v1::Layer* frozen = FindLayer(&next, meta_.head_layer());
  frozen->set_snapshot(std::string(name));
  frozen->set_created_unix_ms(created_unix_ms);
  frozen->set_size_bytes(meta_.size_bytes());
  frozen->set_generation(generation != 0 ? generation : meta_.generation());
  v1::Layer* head = next.add_layers();
  head->set_id(id);
  head->set_parent(meta_.head_layer());
  head->set_size_bytes(meta_.size_bytes());
  next.set_head_layer(id);
  layers_[id] = std::move(layer);
  Status st = CommitLocked(std::move(next));
  if (!st.ok()) {
    layers_.erase(id);
    RemoveLayerFiles(id);
  }
  return st;
}

Status ReplicaImpl::Revert(std::string_view name) {
  std::lock_guard admin(admin_mu_);
  {
    std::unique_lock lock(mu_);
    HCI_RETURN_NOT_OK(CheckLive());
    const v1::Layer* snapshot = FindSnapshot(name);
    if (snapshot == nullptr) {
      return NotFound(who_ + ": snapshot " + Quote(name) + " does not exist");
    }
    const std::uint64_t target = snapshot->id();
    const std::uint64_t target_size = snapshot->size_bytes();
    HCI_RETURN_NOT_OK(SyncHead());

    // Every block owned by a layer in only one of the two chains may read differently now.
    std::vector<LayerFiles*> old_chain = chain_, new_chain = ChainFrom(target);
    std::vector<std::uint64_t> changed;
    for (const auto* chain : {&old_chain, &new_chain}) {
      const auto* other = chain == &old_chain ? &new_chain : &old_chain;
      for (LayerFiles* layer : *chain) {
        if (std::find(other->begin(), other->end(), layer) == other->end()) {
          layer->map->OrInto(&changed);
        }
      }
    }
    dirty_->Grow(DivRoundUp(std::max(meta_.size_bytes(), target_size), kDirtyChunk));
    for (const Extent& e : Runs(changed, kStoreBlock, ~0ULL)) {
      const std::uint64_t chunk = e.offset / kDirtyChunk;
      dirty_->Set(chunk, DivRoundUp(e.offset + e.length, kDirtyChunk) - chunk);
    }
    HCI_RETURN_NOT_OK(SaveDirty(/*force=*/false));

    const std::uint64_t old_head = meta_.head_layer();
    const std::uint64_t id = meta_.next_layer_id();
    HCI_ASSIGN_OR_RAISE(auto layer, CreateLayer(id, target_size));
    v1::ReplicaMeta next = meta_;
    next.set_next_layer_id(id + 1);
    EraseLayer(&next, old_head);
    v1::Layer* head = next.add_layers();
    head->set_id(id);
    head->set_parent(target);
    head->set_size_bytes(target_size);
    next.set_head_layer(id);
    next.set_size_bytes(target_size);
    layers_[id] = std::move(layer);
    Status st = CommitLocked(std::move(next));
    if (!st.ok()) {
      layers_.erase(id);
      RemoveLayerFiles(id);
      RebuildChain();
      return st;
    }
    layers_.erase(old_head);
    RemoveLayerFiles(old_head);
  }
  // The old head's parent may be a removed snapshot that is now down to one child or none.
  return CollectRemoved();
}

Status ReplicaImpl::DeleteSnapshot(std::string_view name) {
  std::lock_guard admin(admin_mu_);
  std::uint64_t id = 0;
  std::vector<std::uint64_t> children;
  {
    std::unique_lock lock(mu_);
    HCI_RETURN_NOT_OK(CheckLive());
    const v1::Layer* snapshot = FindSnapshot(name);
    if (snapshot == nullptr) return Status::OK();
    id = snapshot->id();
    children = ChildrenOf(id);
    if (children.size() > 1) {
      // Still the base of several branches: hidden by name, merged once one child is left.
      HCI_RETURN_NOT_OK(SyncHead());
      v1::ReplicaMeta next = meta_;
      FindLayer(&next, id)->set_removed(true);
      return CommitLocked(std::move(next));
    }
  }
  HCI_RETURN_NOT_OK(children.empty() ? DropLayer(id) : MergeIntoChild(id, children.front()));
  return CollectRemoved();
}

Status ReplicaImpl::DropLayer(std::uint64_t id) {
  std::unique_lock lock(mu_);
  HCI_RETURN_NOT_OK(CheckLive());
  HCI_RETURN_NOT_OK(SyncHead());
  v1::ReplicaMeta next = meta_;
  EraseLayer(&next, id);
  HCI_RETURN_NOT_OK(CommitLocked(std::move(next)));
  layers_.erase(id);
  RemoveLayerFiles(id);
  return Status::OK();
}

Status ReplicaImpl::MergeIntoChild(std::uint64_t id, std::uint64_t child_id) {
  // admin_mu_ is held: the tree, the bitmaps' sizes and layers_ stay as they are; only the
  // child's bits can be set meanwhile (by writes when it is the head).
  LayerFiles* from = layers_.at(id).get();
  LayerFiles* child = layers_.at(child_id).get();
  const std::uint64_t blocks = from->map->bits();
  std::vector<std::uint8_t> buf;
  for (std::uint64_t start = 0; start < blocks; start += kMergeBlocks) {
    const std::uint64_t end = std::min(start + kMergeBlocks, blocks);
    if (!from->map->AnyNotIn(*child->map, start, end)) continue;
    // Exclusive per chunk: no write runs while the child's bits are checked and the older data
    // is copied, so a block the child owns (perhaps written a moment ago) keeps its newer data.
    std::unique_lock lock(mu_);
    HCI_RETURN_NOT_OK(CheckLive());
    for (std::uint64_t b = start; b < end;) {
      if (!from->map->Test(b) || child->map->Test(b)) {
        ++b;
        continue;
      }
      std::uint64_t e = b + 1;
      while (e < end && from->map->Test(e) && !child->map->Test(e)) ++e;
      const std::size_t len = (e - b) * kStoreBlock;
      buf.resize(len);
      HCI_RETURN_NOT_OK(PreadAll(from->fd, buf.data(), len, b * kStoreBlock, from->what));
      if (std::all_of(buf.begin(), buf.end(), [](std::uint8_t x) { return x == 0; })) {
        HCI_RETURN_NOT_OK(ZeroRange(child->fd, b * kStoreBlock, len, child->what));
      } else {
        HCI_RETURN_NOT_OK(PwriteAll(child->fd, buf.data(), len, b * kStoreBlock, child->what));
      }
      child->map->Set(b, e - b);
      b = e;
    }
  }
  std::unique_lock lock(mu_);
  HCI_RETURN_NOT_OK(CheckLive());
  // The child's data and map must be durable before the meta stops pointing at the snapshot.
  if (::fdatasync(child->fd) != 0) return ErrnoStatus(errno, child->what + ": fdatasync");
  HCI_RETURN_NOT_OK(SaveMap(child, /*force=*/false));
  HCI_RETURN_NOT_OK(SyncHead());
  v1::ReplicaMeta next = meta_;
  const std::uint64_t parent = FindLayer(next, id)->parent();
  FindLayer(&next, child_id)->set_parent(parent);
  EraseLayer(&next, id);
  HCI_RETURN_NOT_OK(CommitLocked(std::move(next)));
  layers_.erase(id);
  RemoveLayerFiles(id);
  return Status::OK();
}

Status ReplicaImpl::CollectRemoved() {
  for (;;) {
    std::uint64_t id = 0;
    std::vector<std::uint64_t> children;
    {
      std::shared_lock lock(mu_);
      for (const auto& layer : meta_.layers()) {
        if (!layer.removed()) continue;
        children = ChildrenOf(layer.id());
        if (children.size() <= 1) {
          id = layer.id();
          break;
        }
      }
    }
    if (id == 0) return Status::OK();
    HCI_RETURN_NOT_OK(children.empty() ? DropLayer(id) : MergeIntoChild(id, children.front()));
  }
}

Status ReplicaImpl::Expand(std::uint64_t size_bytes) {
  if (size_bytes % kStoreBlock != 0) {
    return InvalidArgument(who_ + ": size_bytes: " + std::to_string(size_bytes) +
                           " is not a multiple of " + std::to_string(kStoreBlock));
  }
  std::lock_guard admin(admin_mu_);
  std::unique_lock lock(mu_);
  HCI_RETURN_NOT_OK(CheckLive());
  if (size_bytes < meta_.size_bytes()) {
    return InvalidArgument(who_ + ": size_bytes: " + std::to_string(size_bytes) +
                           " is smaller than the current size " +
                           std::to_string(meta_.size_bytes()));
  }
  if (size_bytes == meta_.size_bytes()) return Status::OK();
  LayerFiles* head = Head();
  if (::ftruncate(head->fd, static_cast<off_t>(size_bytes)) != 0) {
    return ErrnoStatus(errno, head->what + ": ftruncate to " + std::to_string(size_bytes));
  }
  head->map->Grow(DivRoundUp(size_bytes, kStoreBlock));
  dirty_->Grow(DivRoundUp(size_bytes, kDirtyChunk));
  HCI_RETURN_NOT_OK(SyncHead());
  v1::ReplicaMeta next = meta_;
  next.set_size_bytes(size_bytes);
  FindLayer(&next, meta_.head_layer())->set_size_bytes(size_bytes);
  return CommitLocked(std::move(next));
}

Result<std::vector<Extent>> ReplicaImpl::ChangedSince(std::uint64_t generation) const {
  std::shared_lock lock(mu_);
  HCI_RETURN_NOT_OK(CheckLive());
  if (generation < meta_.dirty_history_from()) {
    return FailedPrecondition("changed-block history of " + who_ + " starts at generation " +
                              std::to_string(meta_.dirty_history_from()) + ", asked from " +
                              std::to_string(generation));
  }
  std::vector<std::uint64_t> acc;
  if (generation > meta_.generation()) return std::vector<Extent>{};
  dirty_->OrInto(&acc);
  for (auto it = history_.lower_bound(generation); it != history_.end(); ++it) {
    std::string data, error;
    HCI_RETURN_NOT_OK(ReadWholeFile(dir_fd_, who_, DirtyMap(*it), &data));
    auto map = Bitmap::Parse(data, &error);
    if (map == nullptr) return DataLoss(who_ + ": " + DirtyMap(*it) + ": " + error);
    map->OrInto(&acc);
  }
  return Runs(acc, kDirtyChunk, meta_.size_bytes());
}

Result<std::vector<Extent>> ReplicaImpl::ChangedBetween(std::string_view from_snapshot,
                                                        std::string_view to_snapshot) const {
  std::shared_lock lock(mu_);
  HCI_RETURN_NOT_OK(CheckLive());
  std::uint64_t top = meta_.head_layer();
  std::uint64_t limit = meta_.size_bytes();
  if (!to_snapshot.empty()) {
    const v1::Layer* to = FindSnapshot(to_snapshot);
    if (to == nullptr) {
      return NotFound(who_ + ": to_snapshot: snapshot " + Quote(to_snapshot) + " does not exist");
    }
    top = to->id();
    limit = to->size_bytes();
  }
  std::uint64_t stop = 0;
  if (!from_snapshot.empty()) {
    const v1::Layer* from = FindSnapshot(from_snapshot);
    if (from == nullptr) {
      return NotFound(who_ + ": from_snapshot: snapshot " + Quote(from_snapshot) +
                      " does not exist");
    }
    stop = from->id();
  }
  std::vector<std::uint64_t> acc;
  bool reached = stop == 0;
  for (LayerFiles* layer : ChainFrom(top)) {
    if (layer->id == stop) {
      reached = true;
      break;
    }
    layer->map->OrInto(&acc);
  }
  if (!reached) {
    return InvalidArgument(
        who_ + ": from_snapshot: " + Quote(from_snapshot) + " is not an ancestor of " +
        (to_snapshot.empty() ? std::string("the head") : "to_snapshot " + Quote(to_snapshot)));
  }
  return Runs(acc, kStoreBlock, limit);
}

Status ReplicaImpl::ReadSnapshot(std::string_view name, std::uint64_t offset,
                                 std::span<std::uint8_t> out) {
  std::shared_lock lock(mu_);
  HCI_RETURN_NOT_OK(CheckLive());
  const v1::Layer* snapshot = FindSnapshot(name);
  if (snapshot == nullptr) return NotFound(who_ + ": snapshot " + Quote(name) + " does not exist");
  HCI_RETURN_NOT_OK(CheckRange(offset, out.size(), snapshot->size_bytes()));
  return ReadChain(ChainFrom(snapshot->id()), offset, out);
}

Result<std::vector<std::string>> ReplicaImpl::HashExtents(std::uint64_t offset,
                                                          std::uint64_t length,
                                                          std::uint32_t extent_bytes) {
  if (extent_bytes == 0 || extent_bytes % kStoreBlock != 0) {
    return InvalidArgument(who_ + ": extent_bytes: " + std::to_string(extent_bytes) +
                           " is not a positive multiple of " + std::to_string(kStoreBlock));
  }
  std::shared_lock lock(mu_);
  HCI_RETURN_NOT_OK(CheckLive());
  HCI_RETURN_NOT_OK(CheckRange(offset, length, meta_.size_bytes()));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (ctx == nullptr) return Internal(who_ + ": EVP_MD_CTX_new failed");
  std::vector<std::uint8_t> buf(std::min<std::uint64_t>(extent_bytes, kIoBuffer));
  std::vector<std::string> hashes;
  const std::uint64_t end = offset + length;
  for (std::uint64_t pos = offset; pos < end; pos += extent_bytes) {
    const std::uint64_t extent_end = std::min<std::uint64_t>(pos + extent_bytes, end);
    if (EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
      return Internal(who_ + ": EVP_DigestInit_ex(SHA-256) failed");
    }
    for (std::uint64_t p = pos; p < extent_end;) {
      const std::size_t n = std::min<std::uint64_t>(buf.size(), extent_end - p);
      HCI_RETURN_NOT_OK(ReadChain(chain_, p, std::span(buf.data(), n)));
      if (EVP_DigestUpdate(ctx.get(), buf.data(), n) != 1) {
        return Internal(who_ + ": EVP_DigestUpdate failed");
      }
      p += n;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (EVP_DigestFinal_ex(ctx.get(), md, &md_len) != 1) {
      return Internal(who_ + ": EVP_DigestFinal_ex failed");
    }
    hashes.emplace_back(reinterpret_cast<const char*>(md), md_len);
  }
  return hashes;
}

}  // namespace

ReplicaStore::ReplicaStore(std::string root) : root_(std::move(root)) {}

// Never flushes (see ~ReplicaImpl).
ReplicaStore::~ReplicaStore() = default;

Result<std::unique_ptr<ReplicaStore>> ReplicaStore::Open(std::string root) {
  if (root.empty()) return InvalidArgument("root: must not be empty");
  std::error_code ec;
  const fs::path parent = fs::path(root).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (::mkdir(root.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, "replica store root " + Quote(root) + ": mkdir");
  }
  std::unique_ptr<ReplicaStore> store(new ReplicaStore(root));
  std::vector<std::string> names;
  HCI_RETURN_NOT_OK(ListDir(root, "replica store root " + Quote(root), &names));
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    struct stat st {};
    // A directory without meta is an unfinished Create: the next Create of that name reuses it.
    if (!IsValidReplicaName(name) || ::stat((root + "/" + name).c_str(), &st) != 0 ||
        !S_ISDIR(st.st_mode) || ::stat((root + "/" + name + "/meta").c_str(), &st) != 0) {
      continue;
    }
    HCI_ASSIGN_OR_RAISE(auto replica, ReplicaImpl::Load(root + "/" + name, name));
    store->replicas_.emplace(name, std::move(replica));
  }
  return store;
}

Result<std::shared_ptr<Replica>> ReplicaStore::Create(const v1::CreateReplica& request) {
  if (!IsValidReplicaName(request.replica())) {
    return InvalidArgument("replica: " + Quote(request.replica()) +
                           " is not a valid replica name (1-253 characters of a-z, 0-9, '-' "
                           "and '.')");
  }
  const std::string who = "replica " + Quote(request.replica());
  if (request.size_bytes() == 0 || request.size_bytes() % kStoreBlock != 0) {
    return InvalidArgument(who + ": size_bytes: " + std::to_string(request.size_bytes()) +
                           " is not a positive multiple of " + std::to_string(kStoreBlock));
  }
  std::lock_guard lock(mu_);
  if (auto it = replicas_.find(request.replica()); it != replicas_.end()) {
    v1::ReplicaMeta meta = it->second->Meta();
    if (meta.volume() == request.volume() && meta.size_bytes() == request.size_bytes() &&
        meta.volume_uid() == request.volume_uid()) {
      return it->second;
    }
    if (meta.volume_uid() != request.volume_uid()) {
      return AlreadyExists(who + " exists for another volume " + Quote(meta.volume()) + " (uid " +
                           Quote(meta.volume_uid()) + ", not " + Quote(request.volume_uid()) +
                           "): a leftover of a deleted volume, which is never reused");
    }
    return AlreadyExists(who + " exists with volume " + Quote(meta.volume()) + " and size_bytes " +
                         std::to_string(meta.size_bytes()) + ", not volume " +
                         Quote(request.volume()) + " and size_bytes " +
                         std::to_string(request.size_bytes()));
  }
  const std::string dir = root_ + "/" + request.replica();
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, who + ": mkdir " + dir);
  }
  int root_fd = ::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root_fd < 0) return ErrnoStatus(errno, who + ": opening " + root_);
  const int synced = ::fsync(root_fd);
  const int err = errno;
  ::close(root_fd);
  if (synced != 0) return ErrnoStatus(err, who + ": fsync of " + root_);
  HCI_ASSIGN_OR_RAISE(auto replica, ReplicaImpl::CreateNew(dir, request));
  replicas_.emplace(request.replica(), replica);
  return replica;
}

Result<std::shared_ptr<Replica>> ReplicaStore::Get(std::string_view replica) {
  std::lock_guard lock(mu_);
  auto it = replicas_.find(replica);
  if (it == replicas_.end()) {
    return NotFound("replica " + Quote(replica) + " does not exist on this node");
  }
  return it->second;
}

Status ReplicaStore::Delete(std::string_view replica) {
  if (!IsValidReplicaName(replica)) {
    return InvalidArgument("replica: " + Quote(replica) + " is not a valid replica name");
  }
  std::lock_guard lock(mu_);
  if (auto it = replicas_.find(replica); it != replicas_.end()) {
    static_cast<ReplicaImpl*>(it->second.get())->MarkDeleted();
    replicas_.erase(it);
  }
  std::error_code ec;
  const std::string dir = root_ + "/" + std::string(replica);
  fs::remove_all(dir, ec);
  if (ec) return ErrnoStatus(ec.value(), "replica " + Quote(replica) + ": removing " + dir);
  return Status::OK();
}

std::vector<std::shared_ptr<Replica>> ReplicaStore::List() {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Replica>> out;
  out.reserve(replicas_.size());
  for (const auto& [name, replica] : replicas_) out.push_back(replica);
  return out;
}

}  // namespace hci::replicated
