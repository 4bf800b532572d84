// Child processes for the CVM simulator: spawn with explicit argv/env, capture output with a timeout,
// relay output lines with a prefix ("kms  | ..."), and stop process groups gracefully.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/result.h"

namespace dstack::cvmsim {

struct SpawnOptions {
  std::vector<std::string> argv;                 // argv[0] is looked up in PATH if it has no '/'
  std::optional<std::vector<std::string>> env;   // "K=V" entries; nullopt = inherit
  std::string cwd;                               // empty = inherit
  bool pipe_output = false;                      // stdout+stderr into one pipe (Child::out_fd); else inherited
  bool new_process_group = true;                 // setpgid(0,0) so the whole group can be signalled
  std::vector<int> keep_fds;                     // fds (besides 0,1,2) that stay open in the child
};

struct Child {
  pid_t pid = -1;
  int out_fd = -1;  // read end when pipe_output
};

Result<Child> spawn(const SpawnOptions& opts);

// Runs to completion, capturing stdout+stderr. Kills the process group on timeout.
// Non-zero exit => Error "<argv0> failed (exit N): <output tail>".
Result<std::string> run_capture(const std::vector<std::string>& argv, std::chrono::milliseconds timeout);

// Waits for pid up to `timeout`; returns the wait status, or nullopt if still running.
std::optional<int> wait_for(pid_t pid, std::chrono::milliseconds timeout);

// SIGTERM to the group (or pid), wait up to `grace`, then SIGKILL and reap. Returns the wait status.
int terminate(pid_t pid, std::chrono::milliseconds grace, bool group = true);

// Human-readable form of a wait status ("exit 3", "signal 9").
std::string describe_status(int wait_status);

// Writes a line to stdout atomically with respect to other console writers.
void console_line(const std::string& line);

// Reads lines from fd until EOF, writing "<prefix>| <line>" to the console. Closes fd. Runs on a thread.
std::thread relay_lines(int fd, std::string prefix);

// Absolute path of the running executable (for re-exec as guest-init).
std::string self_exe();

// SIGTERM and SIGINT -> handler (no SA_RESTART), SIGPIPE ignored.
void install_stop_handlers(void (*handler)(int));

// Directory of the running executable (build/bin).
std::string self_dir();

}  // namespace dstack::cvmsim
