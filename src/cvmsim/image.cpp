#include "cvmsim/image.h"

#include <filesystem>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "base/fs.h"
#include "cvmsim/process.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace dstack::cvmsim {

std::string layout_tag_for(const std::string& ref) {
  std::string t;
  for (char c : ref) t += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-') ? c : '_';
  return t;
}

std::string apply_mirror(const std::string& ref, const std::string& mirror) {
  if (mirror.empty()) return ref;
  auto slash = ref.find('/');
  std::string first = slash == std::string::npos ? "" : ref.substr(0, slash);
  bool has_host = !first.empty() && (first.find('.') != std::string::npos || first.find(':') != std::string::npos ||
                                     first == "localhost");
  std::string m = mirror;
  for (const char* scheme : {"http://", "https://"})
    if (m.rfind(scheme, 0) == 0) m = m.substr(std::string(scheme).size());
  while (!m.empty() && m.back() == '/') m.pop_back();
  if (first == "docker.io") return m + "/" + ref.substr(slash + 1);
  return has_host ? ref : m + "/" + ref;
}

namespace {

Result<json> read_json(const std::string& path) {
  TRY_ASSIGN(std::string text, read_file(path));
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) return make_error(path + " is not valid JSON");
  return j;
}

std::string blob_path(const std::string& layout, const std::string& digest) {
  auto colon = digest.find(':');
  return layout + "/blobs/" + digest.substr(0, colon) + "/" + digest.substr(colon + 1);
}

std::vector<std::string> str_list(const json& j, const char* key) {
  std::vector<std::string> out;
  auto it = j.find(key);
  if (it != j.end() && it->is_array())
    for (const auto& e : *it)
      if (e.is_string()) out.push_back(e.get<std::string>());
  return out;
}

}  // namespace

Result<PulledImage> ImageStore::cached(const std::string& ref) const {
  std::string layout = cache_ + "/oci";
  std::string tag = layout_tag_for(ref);
  TRY_ASSIGN(json index, read_json(layout + "/index.json"));
  std::string digest;
  for (const auto& m : index.value("manifests", json::array())) {
    if (m.contains("annotations") && m["annotations"].value("org.opencontainers.image.ref.name", "") == tag)
      digest = m.value("digest", "");
  }
  if (digest.empty()) return make_error("image " + ref + " is not in the local cache " + layout);
  TRY_ASSIGN(json manifest, read_json(blob_path(layout, digest)));
  std::string cfg_digest = manifest.value("config", json::object()).value("digest", "");
  if (cfg_digest.empty()) return make_error("image " + ref + ": manifest has no config digest");
  TRY_ASSIGN(json cfg, read_json(blob_path(layout, cfg_digest)));
  PulledImage img;
  img.ref = ref;
  img.layout_ref = layout + ":" + tag;
  img.digest = digest;
  json c = cfg.value("config", json::object());
  img.config.entrypoint = str_list(c, "Entrypoint");
  img.config.cmd = str_list(c, "Cmd");
  img.config.env = str_list(c, "Env");
  img.config.working_dir = c.value("WorkingDir", "");
  img.config.user = c.value("User", "");
  return img;
}

Result<PulledImage> ImageStore::pull(const std::string& ref) {
  TRY(make_dirs(cache_));
  std::string dest = "oci:" + cache_ + "/oci:" + layout_tag_for(ref);
  auto r = run_capture({"skopeo", "copy", "--quiet", "--src-tls-verify=false", "docker://" + ref, dest},
                       std::chrono::duration_cast<std::chrono::milliseconds>(timeout_));
  if (!r.ok()) {
    auto c = cached(ref);
    if (c.ok()) {
      spdlog::warn("pulling {} failed ({}); using the cached copy {}", ref, r.error().message, c->digest);
      return c;
    }
    return r.error().wrap("pulling image " + ref + " (is the registry up and does it have this tag?)");
  }
  return cached(ref);
}

Result<bool> ImageStore::unpack(const PulledImage& img, const std::string& rootfs_dir) const {
  std::string marker = rootfs_dir + ".digest";
  if (fs::exists(rootfs_dir) && read_file(marker).value_or("") == img.digest) return false;
  std::error_code ec;
  fs::remove_all(rootfs_dir, ec);
  fs::remove_all(rootfs_dir + ".umoci", ec);
  TRY(make_dirs(fs::path(rootfs_dir).parent_path().string()));
  // umoci raw unpack refuses an existing directory; unpack to a sibling and rename.
  std::string tmp = rootfs_dir + ".umoci";
  auto r = run_capture({"umoci", "raw", "unpack", "--rootless", "--image", img.layout_ref, tmp},
                       std::chrono::milliseconds(300000));
  if (!r.ok()) {
    fs::remove_all(tmp, ec);
    return r.error().wrap("unpacking image " + img.ref);
  }
  fs::rename(tmp, rootfs_dir, ec);
  if (ec) return make_error("renaming unpacked rootfs to " + rootfs_dir + ": " + ec.message());
  TRY(write_file_atomic(marker, img.digest));
  return true;
}

}  // namespace dstack::cvmsim
