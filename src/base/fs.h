// Files: reading, atomic writes with explicit modes. Key files are always written 0600.
#pragma once

#include <string>
#include <sys/types.h>

#include "base/bytes.h"
#include "base/result.h"

namespace dstack {

Result<std::string> read_file(const std::string& path);
Result<Bytes> read_file_bytes(const std::string& path);
bool file_exists(const std::string& path);

// Writes to "<path>.tmp.<pid>", fsyncs, chmods to `mode`, renames over `path`, fsyncs the directory.
// Readers never see a partial file; a crash leaves either the old file or the new one.
Status write_file_atomic(const std::string& path, std::string_view data, mode_t mode = 0644);
inline Status write_file_atomic(const std::string& path, ByteView data, mode_t mode = 0644) {
  return write_file_atomic(path, std::string_view(reinterpret_cast<const char*>(data.data()), data.size()), mode);
}

// mkdir -p with mode for created directories.
Status make_dirs(const std::string& path, mode_t mode = 0755);

}  // namespace dstack
