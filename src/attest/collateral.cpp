#include "attest/collateral.h"

#include <nlohmann/json.hpp>

#include "crypto/hash.h"

namespace dstack::attest {
namespace {

Result<std::string> get_string(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return make_error(std::string("collateral: missing field \"") + key + "\"");
  if (!it->is_string()) return make_error(std::string("collateral: field \"") + key + "\" must be a string");
  return it->get<std::string>();
}

Result<Bytes> get_hex(const nlohmann::json& j, const char* key) {
  TRY_ASSIGN(std::string s, get_string(j, key));
  auto b = from_hex(s);
  if (!b.ok()) return b.error().wrap(std::string("collateral: field \"") + key + "\" is not valid hex");
  return std::move(b).value();
}

}  // namespace

Result<Collateral> parse_collateral_json(std::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return make_error("collateral: not valid JSON");
  if (!j.is_object()) return make_error("collateral: top-level JSON value must be an object");
  Collateral c;
  TRY_ASSIGN(c.pck_crl_issuer_chain, get_string(j, "pck_crl_issuer_chain"));
  TRY_ASSIGN(c.root_ca_crl, get_hex(j, "root_ca_crl"));
  TRY_ASSIGN(c.pck_crl, get_hex(j, "pck_crl"));
  TRY_ASSIGN(c.tcb_info_issuer_chain, get_string(j, "tcb_info_issuer_chain"));
  TRY_ASSIGN(c.tcb_info, get_string(j, "tcb_info"));
  TRY_ASSIGN(c.tcb_info_signature, get_hex(j, "tcb_info_signature"));
  TRY_ASSIGN(c.qe_identity_issuer_chain, get_string(j, "qe_identity_issuer_chain"));
  TRY_ASSIGN(c.qe_identity, get_string(j, "qe_identity"));
  TRY_ASSIGN(c.qe_identity_signature, get_hex(j, "qe_identity_signature"));
  return c;
}

std::string collateral_to_json(const Collateral& c) {
  nlohmann::ordered_json j;
  j["pck_crl_issuer_chain"] = c.pck_crl_issuer_chain;
  j["root_ca_crl"] = to_hex(c.root_ca_crl);
  j["pck_crl"] = to_hex(c.pck_crl);
  j["tcb_info_issuer_chain"] = c.tcb_info_issuer_chain;
  j["tcb_info"] = c.tcb_info;
  j["tcb_info_signature"] = to_hex(c.tcb_info_signature);
  j["qe_identity_issuer_chain"] = c.qe_identity_issuer_chain;
  j["qe_identity"] = c.qe_identity;
  j["qe_identity_signature"] = to_hex(c.qe_identity_signature);
  return j.dump();
}

Bytes collateral_digest(const Collateral& c) {
  Bytes buf;
  auto add = [&](ByteView v) {
    uint64_t n = v.size();
    for (int i = 0; i < 8; ++i) buf.push_back(static_cast<uint8_t>(n >> (8 * i)));
    buf.insert(buf.end(), v.begin(), v.end());
  };
  add(as_view(c.pck_crl_issuer_chain));
  add(c.root_ca_crl);
  add(c.pck_crl);
  add(as_view(c.tcb_info_issuer_chain));
  add(as_view(c.tcb_info));
  add(c.tcb_info_signature);
  add(as_view(c.qe_identity_issuer_chain));
  add(as_view(c.qe_identity));
  add(c.qe_identity_signature);
  return crypto::sha256(buf);
}

}  // namespace dstack::attest
