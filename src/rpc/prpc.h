// pRPC over HTTP as upstream dstack speaks it (spec §1.1): POST|GET <mount>/<Method>, JSON mode, errors as
// HTTP 400 {"error": "..."}. Binary protobuf mode is not supported (answers 400 asking for JSON).
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <string>

#include "base/result.h"
#include "rpc/http.h"

namespace dstack::rpc {

using Json = nlohmann::json;
using Method = std::function<Result<Json>(const Json& request, const HttpRequest& http)>;

class PrpcService {
 public:
  // trim_prefix: e.g. "KMS." so /prpc/KMS.GetMeta and /prpc/GetMeta both work.
  explicit PrpcService(std::string trim_prefix = "") : trim_(std::move(trim_prefix)) {}
  void add(const std::string& name, Method m) { methods_[name] = std::move(m); }
  // Mounts under `mount` (e.g. "/prpc" or "" for dstack.sock's "/<Method>").
  void mount(HttpServer& server, const std::string& mount) const;
  // Dispatches one request (also used directly by tests).
  HttpResponse handle(const HttpRequest& req, const std::string& method_name) const;

 private:
  std::string trim_;
  std::map<std::string, Method> methods_;
};

// GET query -> JSON object (serde_qs-like: values are strings; "a[]=x&a[]=y" or repeated keys -> arrays).
Json query_to_json(const std::string& query);

// Field accessors that accept the serde JSON forms (bytes as hex with optional 0x, numbers as numbers or
// decimal strings from GET queries). Missing => default. Type errors are Errors naming the field.
Result<Bytes> get_hex(const Json& j, const std::string& field);
Result<std::string> get_string(const Json& j, const std::string& field);
Result<uint64_t> get_u64(const Json& j, const std::string& field);
Result<bool> get_bool(const Json& j, const std::string& field);

// Client side: POST <base>/<method>?json with a JSON body; non-2xx => Error with the server's "error" text.
Result<Json> prpc_call(const std::string& base_url, const std::string& method, const Json& request,
                       const ClientOptions& opts = {});

}  // namespace dstack::rpc
