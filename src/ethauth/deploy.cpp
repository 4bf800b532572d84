#include "ethauth/deploy.h"

#include <fstream>
#include <sstream>

#include "base/log.h"
#include "crypto/hash.h"

namespace dstack::ethauth {

using nlohmann::json;

Result<Artifact> load_artifact(const std::string& dir, const std::string& name) {
  const std::string path = dir + "/" + name + ".json";
  std::ifstream in(path);
  if (!in) return make_error("cannot open contract artifact '" + path + "' (run: node contracts/build.js " + dir + ")");
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("bytecode") || !j["bytecode"].is_string())
    return make_error("contract artifact '" + path + "' is malformed (expected contracts/build.js output)");
  Artifact a;
  a.name = name;
  a.abi = j.value("abi", json::array());
  auto code = from_hex(j["bytecode"].get<std::string>());
  if (!code.ok() || code->empty()) return make_error("contract artifact '" + path + "' has no valid bytecode");
  a.bytecode = std::move(*code);
  return a;
}

Result<std::string> default_sender(EthRpc& rpc) {
  TRY_ASSIGN(auto accts, rpc.accounts());
  if (accts.empty()) return make_error("the node at " + redact_url(rpc.url()) + " has no unlocked accounts (use --from)");
  return accts[0];
}

Result<std::string> deploy_contract(EthRpc& rpc, const std::string& from, const Artifact& art,
                                    std::string_view ctor_types, const std::vector<abi::Value>& args) {
  TRY_ASSIGN(auto types, abi::parse_type_list(ctor_types));
  TRY_ASSIGN(Bytes enc, abi::encode(types, args));
  Bytes data = art.bytecode;
  data.insert(data.end(), enc.begin(), enc.end());
  auto receipt = rpc.transact(json{{"from", from}, {"data", to_0x(data)}});
  if (!receipt.ok()) return receipt.error().wrap("deploying " + art.name);
  if (!(*receipt).contains("contractAddress") || !(*receipt)["contractAddress"].is_string())
    return make_error("deploying " + art.name + ": receipt has no contractAddress");
  std::string addr = (*receipt)["contractAddress"].get<std::string>();
  spdlog::info("deployed {} at {}", art.name, addr);
  return addr;
}

Result<json> send_call(EthRpc& rpc, const std::string& from, const std::string& to, std::string_view signature,
                       const std::vector<abi::Value>& args) {
  TRY_ASSIGN(Bytes data, abi::encode_call(signature, args));
  auto r = rpc.transact(json{{"from", from}, {"to", to}, {"data", to_0x(data)}});
  if (!r.ok()) return r.error().wrap(std::string(signature) + " on " + to);
  return r;
}

Result<std::vector<abi::Value>> view_call(EthRpc& rpc, const std::string& to, std::string_view signature,
                                          const std::vector<abi::Value>& args, std::string_view return_types) {
  TRY_ASSIGN(Bytes data, abi::encode_call(signature, args));
  TRY_ASSIGN(Bytes out, rpc.eth_call(to, data));
  TRY_ASSIGN(auto types, abi::parse_type_list(return_types));
  auto v = abi::decode(types, out);
  if (!v.ok()) return v.error().wrap(std::string(signature) + " result");
  return v;
}

Result<Bytes> parse_bytes32(std::string_view s) {
  if (s.size() >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s.remove_prefix(2);
  std::string h(s);
  if (h.size() % 2) h = "0" + h;
  if (h.size() > 64) return make_error("'" + std::string(s) + "' is longer than 32 bytes");
  auto b = from_hex(h);
  if (!b.ok()) return make_error("'" + std::string(s) + "' is not hex");
  Bytes out(32 - b->size(), 0);
  out.insert(out.end(), b->begin(), b->end());
  return out;
}

json DeployResult::to_json() const {
  json j{{"kmsContractAddr", kms_contract_addr}, {"appImplementation", app_implementation}, {"owner", owner},
         {"chainId", chain_id}};
  if (!app_id.empty()) j["appId"] = app_id;
  return j;
}

Result<DeployResult> deploy_all(EthRpc& rpc, const DeployOptions& o) {
  using abi::Value;
  DeployResult res;
  TRY_ASSIGN(res.chain_id, rpc.chain_id());
  res.owner = o.from;
  if (res.owner.empty()) {
    TRY_ASSIGN(res.owner, default_sender(rpc));
  }
  TRY_ASSIGN(Bytes owner, parse_address(res.owner));
  TRY_ASSIGN(Artifact app_art, load_artifact(o.contracts_dir, "DstackApp"));
  TRY_ASSIGN(Artifact kms_art, load_artifact(o.contracts_dir, "DstackKms"));
  const Bytes zero32(32, 0);

  TRY_ASSIGN(std::string impl, deploy_contract(rpc, res.owner, app_art, "(address,bool,bool,bytes32,bytes32)",
                                               {Value::address(owner), Value::boolean_(false), Value::boolean_(false),
                                                Value::fixed_bytes(zero32), Value::fixed_bytes(zero32)}));
  TRY_ASSIGN(Bytes impl_b, parse_address(impl));
  TRY_ASSIGN(std::string kms, deploy_contract(rpc, res.owner, kms_art, "(address,address)",
                                              {Value::address(owner), Value::address(impl_b)}));
  TRY_ASSIGN(Bytes kms_b, parse_address(kms));
  res.kms_contract_addr = to_checksum_address(kms_b);
  res.app_implementation = to_checksum_address(impl_b);

  for (const auto& h : o.os_image_hashes)
    TRY(send_call(rpc, res.owner, kms, "addOsImageHash(bytes32)", {Value::fixed_bytes(h)}));
  for (const auto& h : o.kms_aggregated_mrs)
    TRY(send_call(rpc, res.owner, kms, "addKmsAggregatedMr(bytes32)", {Value::fixed_bytes(h)}));
  for (const auto& h : o.kms_device_ids)
    TRY(send_call(rpc, res.owner, kms, "addKmsDevice(bytes32)", {Value::fixed_bytes(h)}));
  if (!o.gateway_app_id.empty())
    TRY(send_call(rpc, res.owner, kms, "setGatewayAppId(string)", {Value::string_(o.gateway_app_id)}));

  if (o.compose_hash) {
    TRY_ASSIGN(json receipt,
               send_call(rpc, res.owner, kms, "deployAndRegisterApp(address,bool,bool,bytes32,bytes32)",
                         {Value::address(owner), Value::boolean_(o.app_require_tcb_up_to_date),
                          Value::boolean_(o.app_allow_any_device), Value::fixed_bytes(o.app_device_id.value_or(zero32)),
                          Value::fixed_bytes(*o.compose_hash)}));
    const std::string topic0 = to_0x(crypto::keccak256(as_view("AppDeployedViaFactory(address,address)")));
    for (const auto& log : receipt.value("logs", json::array())) {
      auto topics = log.value("topics", json::array());
      if (topics.size() >= 2 && topics[0].is_string() && topics[0].get<std::string>() == topic0) {
        TRY_ASSIGN(Bytes t1, from_hex(topics[1].get<std::string>()));
        if (t1.size() != 32) return make_error("AppDeployedViaFactory log has a malformed topic");
        res.app_id = to_checksum_address(ByteView(t1).subspan(12));
      }
    }
    if (res.app_id.empty()) return make_error("deployAndRegisterApp: no AppDeployedViaFactory event in the receipt");
  }
  return res;
}

}  // namespace dstack::ethauth
