#include "rpc/prpc.h"

#include <spdlog/spdlog.h>

namespace dstack::rpc {

namespace {

std::string url_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '+') {
      out.push_back(' ');
    } else if (c == '%' && i + 2 < s.size()) {
      auto hv = [](char h) -> int {
        if (h >= '0' && h <= '9') return h - '0';
        if (h >= 'a' && h <= 'f') return h - 'a' + 10;
        if (h >= 'A' && h <= 'F') return h - 'A' + 10;
        return -1;
      };
      int hi = hv(s[i + 1]), lo = hv(s[i + 2]);
      if (hi < 0 || lo < 0) {
        out.push_back(c);
        continue;
      }
      out.push_back(static_cast<char>(hi << 4 | lo));
      i += 2;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

bool query_has_json(const std::string& query) {
  size_t pos = 0;
  while (pos <= query.size()) {
    auto amp = query.find('&', pos);
    std::string kv = query.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
    auto eq = kv.find('=');
    std::string k = kv.substr(0, eq);
    std::string v = eq == std::string::npos ? "" : kv.substr(eq + 1);
    if (k == "json" && (v.empty() || v == "true" || v == "1")) return true;
    if (amp == std::string::npos) break;
    pos = amp + 1;
  }
  return false;
}

}  // namespace

Json query_to_json(const std::string& query) {
  Json out = Json::object();
  size_t pos = 0;
  while (pos < query.size()) {
    auto amp = query.find('&', pos);
    std::string kv = query.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
    pos = amp == std::string::npos ? query.size() : amp + 1;
    if (kv.empty()) continue;
    auto eq = kv.find('=');
    std::string k = url_decode(kv.substr(0, eq));
    std::string v = eq == std::string::npos ? "" : url_decode(kv.substr(eq + 1));
    if (k == "json") continue;
    bool arr = k.size() > 2 && k.compare(k.size() - 2, 2, "[]") == 0;
    if (arr) k.resize(k.size() - 2);
    if (out.contains(k)) {
      if (!out[k].is_array()) out[k] = Json::array({out[k]});
      out[k].push_back(v);
    } else {
      out[k] = arr ? Json::array({v}) : Json(v);
    }
  }
  return out;
}

HttpResponse PrpcService::handle(const HttpRequest& req, const std::string& method_name) const {
  std::string name = method_name;
  if (!trim_.empty() && name.rfind(trim_, 0) == 0) name = name.substr(trim_.size());
  auto it = methods_.find(name);
  if (it == methods_.end()) return HttpResponse::error(400, "Service not found: " + req.path);

  Json request = Json::object();
  if (req.method == "GET") {
    request = query_to_json(req.query);
  } else if (req.method == "POST") {
    bool json_mode = query_has_json(req.query) || req.header("content-type").find("json") != std::string::npos ||
                     req.header("content-type").empty();
    if (!json_mode)
      return HttpResponse::error(400, "binary protobuf requests are not supported: send JSON (add ?json or "
                                      "Content-Type: application/json)");
    bool blank = req.body.find_first_not_of(" \t\r\n") == std::string::npos;
    if (!blank) {
      try {
        request = Json::parse(req.body);
      } catch (const std::exception& e) {
        return HttpResponse::error(400, std::string("invalid JSON request body: ") + e.what());
      }
      if (request.is_null()) request = Json::object();
      if (!request.is_object()) return HttpResponse::error(400, "invalid JSON request body: expected an object");
    }
  } else {
    return HttpResponse::error(405, "method " + req.method + " not allowed; use GET or POST");
  }
  Result<Json> r = make_error("unreachable");
  try {
    r = it->second(request, req);
  } catch (const std::exception& e) {
    spdlog::error("{} failed with exception: {}", name, e.what());
    return HttpResponse::error(400, std::string(e.what()));
  }
  if (!r.ok()) return HttpResponse::error(400, r.error().message);
  return HttpResponse::json(200, r->dump());
}

void PrpcService::mount(HttpServer& server, const std::string& mount) const {
  std::string prefix = mount + "/";
  server.route_prefix("*", prefix, [this, prefix](const HttpRequest& req) {
    return handle(req, req.path.substr(prefix.size()));
  });
}

Result<Bytes> get_hex(const Json& j, const std::string& field) {
  if (!j.is_object() || !j.contains(field) || j[field].is_null()) return Bytes{};
  const Json& v = j[field];
  if (v.is_string()) {
    auto r = from_hex(v.get<std::string>());
    if (!r.ok()) return r.error().wrap("field '" + field + "'");
    return r;
  }
  if (v.is_array()) {  // serde's Vec<u8> form
    Bytes out;
    for (auto& e : v) {
      if (!e.is_number_unsigned() || e.get<uint64_t>() > 255)
        return make_error("field '" + field + "': expected hex string or array of bytes");
      out.push_back(static_cast<uint8_t>(e.get<uint64_t>()));
    }
    return out;
  }
  return make_error("field '" + field + "': expected a hex string");
}

Result<std::string> get_string(const Json& j, const std::string& field) {
  if (!j.is_object() || !j.contains(field) || j[field].is_null()) return std::string();
  if (!j[field].is_string()) return make_error("field '" + field + "': expected a string");
  return j[field].get<std::string>();
}

Result<uint64_t> get_u64(const Json& j, const std::string& field) {
  if (!j.is_object() || !j.contains(field) || j[field].is_null()) return uint64_t{0};
  const Json& v = j[field];
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (!s.empty() && s.find_first_not_of("0123456789") == std::string::npos && s.size() <= 20) {
      try {
        return static_cast<uint64_t>(std::stoull(s));
      } catch (...) {
      }
    }
  }
  return make_error("field '" + field + "': expected a non-negative integer");
}

Result<bool> get_bool(const Json& j, const std::string& field) {
  if (!j.is_object() || !j.contains(field) || j[field].is_null()) return false;
  const Json& v = j[field];
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_string()) {
    auto s = v.get<std::string>();
    if (s == "true" || s == "1") return true;
    if (s == "false" || s == "0" || s.empty()) return false;
  }
  return make_error("field '" + field + "': expected true or false");
}

Result<Json> prpc_call(const std::string& base_url, const std::string& method, const Json& request,
                       const ClientOptions& opts) {
  std::string url = base_url;
  while (!url.empty() && url.back() == '/') url.pop_back();
  url += "/" + method + "?json";
  TRY_ASSIGN(HttpClientResponse res, http_request("POST", url, request.dump(), opts));
  Json body;
  bool parsed = false;
  if (!res.body.empty()) {
    try {
      body = Json::parse(res.body);
      parsed = true;
    } catch (...) {
    }
  }
  if (res.status < 200 || res.status >= 300) {
    std::string msg = parsed && body.is_object() && body.contains("error") && body["error"].is_string()
                          ? body["error"].get<std::string>()
                          : res.body.substr(0, 300);
    return make_error(method + " failed (HTTP " + std::to_string(res.status) + "): " + msg);
  }
  if (!res.body.empty() && !parsed) return make_error(method + ": response is not JSON");
  return body;
}

}  // namespace dstack::rpc
