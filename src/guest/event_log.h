// Runtime event log (spec §8.3): JSON lines {"event","payload"(base64)[,"version":2]} appended under an flock;
// each emission first extends RTMR3 through the backend, then appends the line. Replaying the log from 48 zero
// bytes reproduces RTMR3.
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "attest/eventlog.h"
#include "base/result.h"
#include "guest/backend.h"

namespace dstack::guest {

class RuntimeEventLog {
 public:
  // dir: e.g. /run/log/dstack; files runtime_events.log (0600), runtime_event.lock, runtime_event_version.
  RuntimeEventLog(std::string dir, TdxBackend* backend);

  Status emit(const std::string& event, ByteView payload);
  Result<std::vector<attest::RuntimeEvent>> read() const;
  bool empty() const;
  const std::string& log_path() const { return log_path_; }

 private:
  std::string dir_, log_path_, lock_path_;
  TdxBackend* backend_;
  std::mutex mu_;
};

}  // namespace dstack::guest
