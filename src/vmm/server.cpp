#include "vmm/server.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "base/fs.h"
#include "vmm/compose.h"
#include "vmm/manifest.h"
#include "vmm_ui_html.h"  // generated: kVmmUiHtml

namespace dstack::vmm {
namespace {

std::string query_param(const std::string& query, const std::string& key, bool* present = nullptr) {
  auto j = rpc::query_to_json(query);
  if (present) *present = j.contains(key);
  if (!j.contains(key)) return "";
  const auto& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array() && !v.empty() && v.back().is_string()) return v.back().get<std::string>();
  return v.dump();
}

bool truthy(const std::string& v) { return v == "true" || v == "1" || v == "yes"; }

Result<std::string> id_param(const VmManager& vmm, const Json& req) {
  TRY_ASSIGN(std::string key, rpc::get_string(req, "id"));
  if (key.empty()) return make_error("missing VM id");
  auto id = vmm.resolve(key);
  if (!id) return make_error("VM " + key + " not found");
  return *id;
}

// Streams serial.log: the last `lines` lines, then (follow) new bytes as they are appended.
rpc::HttpResponse logs_response(VmManager& vmm, const std::string& id, size_t lines, bool follow, bool ansi) {
  rpc::HttpResponse r = rpc::HttpResponse::text(200, "");
  std::string path = vmm.log_path(id);
  if (!follow) {
    std::string t = vmm.tail_log(id, lines);
    r.body = ansi ? t : strip_ansi(t);
    return r;
  }
  r.stream = [&vmm, id, path, lines, ansi](const rpc::StreamWriter& write) {
    std::string head = vmm.tail_log(id, lines);
    if (!write(ansi ? head : strip_ansi(head))) return;
    std::error_code ec;
    uint64_t offset = std::filesystem::file_size(path, ec);
    if (ec) offset = 0;
    auto last_beat = std::chrono::steady_clock::now();
    while (vmm.exists(id) && !vmm.closing()) {
      uint64_t size = std::filesystem::file_size(path, ec);
      if (ec) size = 0;
      if (size < offset) offset = 0;  // rotated (copy-truncate)
      if (size > offset) {
        std::ifstream f(path, std::ios::binary);
        f.seekg(static_cast<std::streamoff>(offset));
        std::string buf(static_cast<size_t>(std::min<uint64_t>(size - offset, 1 << 20)), '\0');
        f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
        buf.resize(static_cast<size_t>(f.gcount()));
        offset += buf.size();
        if (!buf.empty() && !write(ansi ? buf : strip_ansi(buf))) return;
        last_beat = std::chrono::steady_clock::now();
        continue;
      }
      if (std::chrono::steady_clock::now() - last_beat > std::chrono::seconds(60)) {
        if (!write("[vmm heartbeat]\n")) return;
        last_beat = std::chrono::steady_clock::now();
      } else if (!write("")) {
        return;  // client gone
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    if (!vmm.closing()) write("[vmm] VM removed\n");
  };
  return r;
}

Json instance_view(const Json& info) {
  Json out;
  out["id"] = info["id"];
  out["name"] = info["name"];
  out["status"] = info["status"];
  out["uptime"] = info["uptime"];
  out["app_id"] = info["app_id"];
  out["instance_id"] = info["instance_id"];
  out["boot_progress"] = info["boot_progress"];
  out["boot_error"] = info["boot_error"];
  out["image_version"] = info["image_version"];
  out["events"] = info["events"];
  const auto& c = info["configuration"];
  out["ports"] = Json::array();
  if (c.is_object()) {
    out["image"] = c["image"];
    out["vcpu"] = c["vcpu"];
    out["memory"] = c["memory"];
    out["disk_size"] = c["disk_size"];
    for (const auto& p : c["ports"])
      out["ports"].push_back(Json{{"protocol", p["protocol"]}, {"host_address", p["host_address"]},
                                  {"host_port", p["host_port"]}, {"vm_port", p["vm_port"]}});
  }
  return out;
}

}  // namespace

std::string_view web_ui_html() { return kVmmUiHtml; }

std::shared_ptr<void> register_routes(rpc::HttpServer& server, VmManager& vmm) {
  auto svc = std::make_shared<rpc::PrpcService>("Teepod.");
  svc->add("CreateVm", [&vmm](const Json& req, const rpc::HttpRequest&) -> Result<Json> {
    TRY_ASSIGN(std::string id, vmm.create_vm(req));
    return Json{{"id", id}};
  });
  svc->add("StartVm", [&vmm](const Json& req, const rpc::HttpRequest&) -> Result<Json> {
    TRY_ASSIGN(std::string id, id_param(vmm, req));
    TRY(vmm.start_vm(id));
    return Json(nullptr);
  });
  svc->add("StopVm", [&vmm](const Json& req, const rpc::HttpRequest&) -> Result<Json> {
    TRY_ASSIGN(std::string id, id_param(vmm, req));
    TRY(vmm.stop_vm(id, true));
    return Json(nullptr);
  });
  svc->add("ShutdownVm", [&vmm](const Json& req, const rpc::HttpRequest&) -> Result<Json> {
    TRY_ASSIGN(std::string id, id_param(vmm, req));
    TRY(vmm.stop_vm(id, false));
    return Json(nullptr);
  });
  svc->add("RemoveVm", [&vmm](const Json& req, const rpc::HttpRequest&) -> Result<Json> {
    TRY_ASSIGN(std::string id, id_param(vmm, req));
    TRY(vmm.remove_vm(id));
    return Json(nullptr);
  });
  auto update = [&vmm](const Json& req, const rpc::HttpRequest&) -> Result<Json> {
    TRY_ASSIGN(std::string app_id, vmm.update_vm(req));
    return Json{{"id", app_id}};
  };
  svc->add("UpdateVm", update);
  svc->add("UpgradeApp", update);
  svc->add("Status", [&vmm](const Json& req, const rpc::HttpRequest&) -> Result<Json> { return vmm.status(req); });
  svc->add("GetInfo", [&vmm](const Json& req, const rpc::HttpRequest&) -> Result<Json> {
    TRY_ASSIGN(std::string key, rpc::get_string(req, "id"));
    return vmm.get_info(key);
  });
  svc->add("ListImages", [&vmm](const Json&, const rpc::HttpRequest&) -> Result<Json> { return vmm.list_images(); });
  svc->add("GetComposeHash", [](const Json& req, const rpc::HttpRequest&) -> Result<Json> {
    TRY_ASSIGN(std::string compose, rpc::get_string(req, "compose_file"));
    return Json{{"hash", compose_hash(compose)}};
  });
  svc->add("GetMeta", [&vmm](const Json&, const rpc::HttpRequest&) -> Result<Json> { return vmm.get_meta(); });
  svc->add("Version", [](const Json&, const rpc::HttpRequest&) -> Result<Json> {
    return Json{{"version", kVmmVersion}, {"rev", ""}};
  });
  svc->add("GetAppEnvEncryptPubKey", [&vmm](const Json& req, const rpc::HttpRequest&) -> Result<Json> {
    TRY_ASSIGN(Bytes app_id, rpc::get_hex(req, "app_id"));
    if (app_id.size() != 20) return make_error("app_id must be 20 bytes (40 hex chars)");
    const auto& cfg = vmm.config();
    std::string kms = cfg.cvm.kms_urls.empty() ? cfg.kms_url : cfg.cvm.kms_urls.front();
    while (!kms.empty() && kms.back() == '/') kms.pop_back();
    rpc::ClientOptions opts;
    opts.insecure_skip_verify = true;  // upstream: TLS unchecked; the CLI verifies the KMS signature
    opts.timeout = std::chrono::milliseconds(10000);
    auto r = rpc::prpc_call(kms + "/prpc", "GetAppEnvEncryptPubKey", Json{{"app_id", to_hex(app_id)}}, opts);
    if (!r) return r.error().wrap("asking KMS " + kms + " for the env encryption key");
    return *r;
  });
  svc->mount(server, "/prpc");

  server.route("GET", "/logs", [&vmm](const rpc::HttpRequest& req) {
    std::string key = query_param(req.query, "id");
    auto id = vmm.resolve(key);
    if (key.empty() || !id) return rpc::HttpResponse::error(404, "VM " + key + " not found");
    std::string lines_s = query_param(req.query, "lines");
    size_t lines = lines_s.empty() ? 10000 : std::strtoul(lines_s.c_str(), nullptr, 10);
    bool ansi_present = false;
    std::string ansi = query_param(req.query, "ansi", &ansi_present);
    return logs_response(vmm, *id, lines, truthy(query_param(req.query, "follow")), !ansi_present || truthy(ansi));
  });
  server.route("GET", "/api/instances", [&vmm](const rpc::HttpRequest&) {
    auto st = vmm.status(Json::object());
    Json out = Json::array();
    if (st)
      for (const auto& vm : (*st)["vms"]) out.push_back(instance_view(vm));
    return rpc::HttpResponse::json(200, out.dump(2));
  });
  server.route_prefix("GET", "/api/instances/", [&vmm](const rpc::HttpRequest& req) {
    std::string rest = req.path.substr(std::string("/api/instances/").size());
    bool logs = false;
    if (rest.size() > 5 && rest.compare(rest.size() - 5, 5, "/logs") == 0) {
      logs = true;
      rest = rest.substr(0, rest.size() - 5);
    }
    auto id = vmm.resolve(rest);
    if (rest.empty() || !id) return rpc::HttpResponse::error(404, "VM " + rest + " not found");
    if (logs) {
      std::string lines_s = query_param(req.query, "lines");
      size_t lines = lines_s.empty() ? 100 : std::strtoul(lines_s.c_str(), nullptr, 10);
      return logs_response(vmm, *id, lines, truthy(query_param(req.query, "follow")), false);
    }
    Json info = vmm.get_info(*id);
    if (!info["found"].get<bool>()) return rpc::HttpResponse::error(404, "VM " + rest + " not found");
    return rpc::HttpResponse::json(200, instance_view(info["info"]).dump(2));
  });
  auto ui = [&vmm](const rpc::HttpRequest&) {
    std::string html(web_ui_html());
    std::string title = (vmm.config().node_name.empty() ? "" : vmm.config().node_name + " | ") + "dstack-vmm";
    auto pos = html.find("{{TITLE}}");
    if (pos != std::string::npos) html.replace(pos, 9, title);
    rpc::HttpResponse r = rpc::HttpResponse::text(200, html);
    r.content_type = "text/html; charset=utf-8";
    return r;
  };
  server.route("GET", "/", ui);
  server.route("GET", "/v1", ui);
  server.route("GET", "/beta", ui);
  return svc;
}

}  // namespace dstack::vmm
