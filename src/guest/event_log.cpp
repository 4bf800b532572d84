#include "guest/event_log.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/fs.h"

namespace dstack::guest {

RuntimeEventLog::RuntimeEventLog(std::string dir, TdxBackend* backend)
    : dir_(std::move(dir)), log_path_(dir_ + "/runtime_events.log"), lock_path_(dir_ + "/runtime_event.lock"),
      backend_(backend) {}

Status RuntimeEventLog::emit(const std::string& event, ByteView payload) {
  if (event.empty()) return make_error("event name must not be empty");
  std::lock_guard<std::mutex> guard(mu_);
  TRY(make_dirs(dir_, 0700));
  int lock_fd = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0) return make_error("cannot open event log lock " + lock_path_ + ": " + std::strerror(errno));
  struct Unlock {
    int fd;
    ~Unlock() {
      ::flock(fd, LOCK_UN);
      ::close(fd);
    }
  } unlock{lock_fd};
  if (::flock(lock_fd, LOCK_EX) != 0) return make_error("cannot lock " + lock_path_ + ": " + std::strerror(errno));
  std::string version_file = dir_ + "/runtime_event_version";
  if (!file_exists(version_file)) TRY(write_file_atomic(version_file, std::string_view("1"), 0644));

  attest::RuntimeEvent ev{event, Bytes(payload.begin(), payload.end()), 1};
  auto st = backend_->extend_rtmr3(ev.digest());
  if (!st.ok()) return st.error().wrap("emitting event \"" + event + "\"");
  std::string line = attest::runtime_event_to_log_line(ev) + "\n";
  int fd = ::open(log_path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return make_error("cannot open " + log_path_ + ": " + std::strerror(errno));
  size_t off = 0;
  while (off < line.size()) {
    ssize_t n = ::write(fd, line.data() + off, line.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      return make_error("appending to " + log_path_ + " failed: " + std::strerror(e) +
                        " (RTMR3 was already extended; the log no longer replays)");
    }
    off += static_cast<size_t>(n);
  }
  ::fsync(fd);
  ::close(fd);
  return Status::Ok();
}

Result<std::vector<attest::RuntimeEvent>> RuntimeEventLog::read() const {
  if (!file_exists(log_path_)) return std::vector<attest::RuntimeEvent>{};
  auto text = read_file(log_path_);
  if (!text.ok()) return text.error().wrap("reading the runtime event log");
  auto evs = attest::parse_runtime_event_log(*text);
  if (!evs.ok()) return evs.error().wrap("parsing " + log_path_);
  return evs;
}

bool RuntimeEventLog::empty() const {
  auto r = read();
  return !r.ok() || r->empty();
}

}  // namespace dstack::guest
