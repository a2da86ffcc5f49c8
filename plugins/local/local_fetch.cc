// Fetching an image's source bytes (a local file, or http/https through libcurl) into a file,
// computing their SHA-256 (OpenSSL EVP) on the way.
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include "local_internal.h"

namespace hci::local {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kChunk = 1 << 20;
// Runs of zeros at least this long become holes in the destination.
constexpr std::size_t kSparseBlock = 4096;

bool AllZero(const char* data, std::size_t size) {
  if (size == 0) return true;
  // A buffer is all zeros when its first byte is zero and it equals itself shifted by one.
  return data[0] == 0 && std::memcmp(data, data + 1, size - 1) == 0;
}

// Writes received bytes to a file (leaving holes for zero blocks) and hashes them.
class Sink {
 public:
  Sink() : md_(EVP_MD_CTX_new()) {}
  ~Sink() {
    if (fd_ >= 0) ::close(fd_);
    EVP_MD_CTX_free(md_);
  }
  Sink(const Sink&) = delete;
  Sink& operator=(const Sink&) = delete;

  Status Open(const std::string& path) {
    path_ = path;
    if (md_ == nullptr || EVP_DigestInit_ex(md_, EVP_sha256(), nullptr) != 1) {
      return Internal("OpenSSL: cannot initialise SHA-256");
    }
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd_ < 0) return ErrnoStatus(errno, "open \"" + path + "\"");
    return Status();
  }

  Status Write(const char* data, std::size_t size) {
    if (EVP_DigestUpdate(md_, data, size) != 1) return Internal("OpenSSL: SHA-256 update failed");
    std::size_t pos = 0;
    while (pos < size) {
      std::size_t n = std::min(kSparseBlock, size - pos);
      if (AllZero(data + pos, n)) {
        // A hole: the file is extended to its full length at Finish().
        if (::lseek(fd_, static_cast<off_t>(n), SEEK_CUR) < 0) {
          return ErrnoStatus(errno, "lseek \"" + path_ + "\"");
        }
      } else {
        HCI_RETURN_NOT_OK(WriteAll(data + pos, n));
      }
      pos += n;
    }
    bytes_ += size;
    return Status();
  }

  Result<FetchResult> Finish() {
    if (::ftruncate(fd_, static_cast<off_t>(bytes_)) != 0) {
      return ErrnoStatus(errno, "ftruncate \"" + path_ + "\"");
    }
    if (::fsync(fd_) != 0) return ErrnoStatus(errno, "fsync \"" + path_ + "\"");
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(md_, digest, &len) != 1) return Internal("OpenSSL: SHA-256 failed");
    static constexpr char kHex[] = "0123456789abcdef";
    FetchResult result;
    for (unsigned int i = 0; i < len; ++i) {
      result.sha256 += kHex[digest[i] >> 4];
      result.sha256 += kHex[digest[i] & 0xf];
    }
    result.bytes = bytes_;
    return result;
  }

  std::uint64_t bytes() const { return bytes_; }

 private:
  Status WriteAll(const char* data, std::size_t size) {
    while (size > 0) {
      ssize_t n = ::write(fd_, data, size);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoStatus(errno, "write \"" + path_ + "\"");
      data += n;
      size -= static_cast<std::size_t>(n);
    }
    return Status();
  }

  std::string path_;
  int fd_ = -1;
  EVP_MD_CTX* md_;
  std::uint64_t bytes_ = 0;
};

// Sleeps as needed so that `bytes` since `start` stay under `rate` bytes per second; false when
// cancelled meanwhile.
bool Throttle(std::uint64_t rate, std::uint64_t bytes, Clock::time_point start,
              const std::function<bool()>& cancelled) {
  if (rate == 0) return true;
  auto due = start + std::chrono::microseconds(bytes * 1000000 / rate);
  while (Clock::now() < due) {
    if (cancelled && cancelled()) return false;
    std::this_thread::sleep_for(
        std::min<Clock::duration>(due - Clock::now(), std::chrono::milliseconds(100)));
  }
  return true;
}

struct CurlState {
  Sink* sink;
  const FetchOptions* options;
  Status write_error;
  bool cancelled = false;
};

size_t OnCurlWrite(char* data, size_t size, size_t nmemb, void* user) {
  auto* state = static_cast<CurlState*>(user);
  std::size_t n = size * nmemb;
  state->write_error = state->sink->Write(data, n);
  return state->write_error.ok() ? n : 0;  // a short count makes curl fail with WRITE_ERROR
}

int OnCurlProgress(void* user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t, curl_off_t) {
  auto* state = static_cast<CurlState*>(user);
  if (state->options->cancelled && state->options->cancelled()) {
    state->cancelled = true;
    return 1;  // aborts the transfer with CURLE_ABORTED_BY_CALLBACK
  }
  if (state->options->progress && dlnow > 0) {
    state->options->progress(static_cast<std::uint64_t>(dlnow),
                             static_cast<std::uint64_t>(std::max<curl_off_t>(dltotal, 0)));
  }
  return 0;
}

Status HttpError(long code, const std::string& url) {
  std::string message = "spec.url: GET " + url + " answered HTTP " + std::to_string(code);
  if (code == 404 || code == 410) return NotFound(std::move(message));
  if (code == 401 || code == 403) return PermissionDenied(std::move(message));
  if (code == 429 || code >= 500) return Unavailable(std::move(message));
  return FailedPrecondition(std::move(message));
}

}  // namespace

void InitCurlOnce() {
  static std::once_flag once;
  // Never cleaned up: plugins are never unloaded, and cleanup is not thread-safe.
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

Result<FetchResult> CopyFile(const std::string& source, const std::string& dest_path,
                             const FetchOptions& options) {
  int in = ::open(source.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR)
      return NotFound("spec.file: \"" + source + "\" does not exist");
    return ErrnoStatus(err, "spec.file: open \"" + source + "\"");
  }
  std::unique_ptr<int, void (*)(int*)> close_in(&in, [](int* fd) { ::close(*fd); });
  struct stat st;
  if (::fstat(in, &st) != 0) return ErrnoStatus(errno, "spec.file: stat \"" + source + "\"");
  if (!S_ISREG(st.st_mode)) {
    return InvalidArgument("spec.file: \"" + source + "\" is not a regular file");
  }
  const std::uint64_t total = static_cast<std::uint64_t>(st.st_size);
  ::posix_fadvise(in, 0, 0, POSIX_FADV_SEQUENTIAL);
  Sink sink;
  HCI_RETURN_NOT_OK(sink.Open(dest_path));
  std::unique_ptr<char[]> buf(new char[kChunk]);
  auto start = Clock::now();
  for (;;) {
    if (options.cancelled && options.cancelled()) {
      return Cancelled("copying \"" + source + "\" was cancelled");
    }
    ssize_t n = ::read(in, buf.get(), kChunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, "spec.file: read \"" + source + "\"");
    if (n == 0) break;
    HCI_RETURN_NOT_OK(sink.Write(buf.get(), static_cast<std::size_t>(n)));
    if (options.progress) options.progress(sink.bytes(), std::max(total, sink.bytes()));
    if (!Throttle(options.max_bytes_per_second, sink.bytes(), start, options.cancelled)) {
      return Cancelled("copying \"" + source + "\" was cancelled");
    }
  }
  return sink.Finish();
}

Result<FetchResult> Download(const std::string& url, const std::string& dest_path,
                             const FetchOptions& options) {
  InitCurlOnce();
  Sink sink;
  HCI_RETURN_NOT_OK(sink.Open(dest_path));
  std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) return Internal("libcurl: curl_easy_init failed");
  CURL* h = curl.get();
  CurlState state{&sink, &options, Status(), false};
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, static_cast<long>(options.connect_timeout_seconds));
  // A stalled transfer (under 1 byte/s for that long) fails rather than hanging the import.
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, static_cast<long>(options.stall_timeout_seconds));
  if (options.max_bytes_per_second > 0) {
    curl_easy_setopt(h, CURLOPT_MAX_RECV_SPEED_LARGE,
                     static_cast<curl_off_t>(options.max_bytes_per_second));
  }
  curl_easy_setopt(h, CURLOPT_USERAGENT, "libhci-local/0.1");
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &OnCurlWrite);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &state);
  curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, &OnCurlProgress);
  curl_easy_setopt(h, CURLOPT_XFERINFODATA, &state);

  CURLcode rc = curl_easy_perform(h);
  std::string detail = error[0] != '\0' ? error : curl_easy_strerror(rc);
  switch (rc) {
    case CURLE_OK:
      break;
    case CURLE_ABORTED_BY_CALLBACK:
      return Cancelled("downloading " + url + " was cancelled");
    case CURLE_WRITE_ERROR:
      if (!state.write_error.ok()) return state.write_error;
      return Internal("downloading " + url + ": " + detail);
    case CURLE_HTTP_RETURNED_ERROR: {
      long code = 0;
      curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
      return HttpError(code, url);
    }
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_TOO_MANY_REDIRECTS:
      return InvalidArgument("spec.url: " + url + ": " + detail);
    case CURLE_OUT_OF_MEMORY:
      return ResourceExhausted("downloading " + url + ": " + detail);
    default:
      // Name resolution, connection, TLS, timeouts, a truncated body: worth retrying later.
      return Unavailable("spec.url: downloading " + url + " failed: " + detail);
  }
  if (options.progress) options.progress(sink.bytes(), sink.bytes());
  return sink.Finish();
}

}  // namespace hci::local
