// OCI images for simulated CVM services: pulled from a registry with skopeo into a per-host OCI layout
// cache, unpacked with umoci (rootless mode) into a per-container rootfs.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "base/result.h"

namespace dstack::cvmsim {

struct ImageConfig {
  std::vector<std::string> entrypoint, cmd, env;
  std::string working_dir, user;
};

struct PulledImage {
  std::string ref;         // as pulled, e.g. "127.0.0.1:5000/dstack-kms:fixed"
  std::string layout_ref;  // "<cache>/oci:<tag>" for umoci
  std::string digest;      // manifest digest "sha256:<hex>"
  ImageConfig config;
};

class ImageStore {
 public:
  // cache_dir holds the OCI layout ("oci/") shared by all VMs of a host.
  explicit ImageStore(std::string cache_dir, std::chrono::seconds pull_timeout = std::chrono::seconds(300))
      : cache_(std::move(cache_dir)), timeout_(pull_timeout) {}

  // skopeo copy docker://<ref> (plain HTTP / unverified TLS allowed: loopback registries) into the cache.
  // If the registry cannot be reached but the ref is cached, the cached copy is used (logged).
  Result<PulledImage> pull(const std::string& ref);
  // Reads a cached image without contacting the registry.
  Result<PulledImage> cached(const std::string& ref) const;
  // Unpacks into rootfs_dir unless it already holds this digest (marker file next to it). Returns true if
  // it unpacked.
  Result<bool> unpack(const PulledImage& img, const std::string& rootfs_dir) const;

  const std::string& cache_dir() const { return cache_; }

 private:
  std::string cache_;
  std::chrono::seconds timeout_;
};

// "registry.example.com/x:tag" → layout tag "registry.example.com_x_tag" (OCI ref-name safe).
std::string layout_tag_for(const std::string& ref);
// Rewrites refs without a registry host ("nginx", "library/x:1") onto `mirror` ("127.0.0.1:5000"); others kept.
std::string apply_mirror(const std::string& ref, const std::string& mirror);

}  // namespace dstack::cvmsim
