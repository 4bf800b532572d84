#include "attest/dcap_json.h"

namespace dstack::attest {

nlohmann::ordered_json quote_to_json(const Quote& q) {
  nlohmann::ordered_json j;
  j["version"] = q.header.version;
  j["tee_type"] = q.tee_type_name();
  j["att_key_type"] = q.header.att_key_type;
  j["qe_svn"] = q.header.qe_svn;
  j["pce_svn"] = q.header.pce_svn;
  j["qe_vendor_id"] = hex(q.header.qe_vendor_id);
  j["user_data"] = hex(q.header.user_data);
  if (q.is_tdx()) {
    const auto& t = q.td_report;
    j["body_type"] = t.is_td15 ? "TD15" : "TD10";
    j["tee_tcb_svn"] = hex(t.tee_tcb_svn);
    j["mr_seam"] = hex(t.mr_seam);
    j["mr_signer_seam"] = hex(t.mr_signer_seam);
    j["seam_attributes"] = hex(t.seam_attributes);
    j["td_attributes"] = hex(t.td_attributes);
    j["xfam"] = hex(t.xfam);
    j["mr_td"] = hex(t.mr_td);
    j["mr_config_id"] = hex(t.mr_config_id);
    j["mr_owner"] = hex(t.mr_owner);
    j["mr_owner_config"] = hex(t.mr_owner_config);
    j["rtmr0"] = hex(t.rtmr0);
    j["rtmr1"] = hex(t.rtmr1);
    j["rtmr2"] = hex(t.rtmr2);
    j["rtmr3"] = hex(t.rtmr3);
    j["report_data"] = hex(t.report_data);
    if (t.is_td15) {
      j["tee_tcb_svn2"] = hex(t.tee_tcb_svn2);
      j["mr_service_td"] = hex(t.mr_service_td);
    }
  } else {
    const auto& e = q.sgx_report;
    j["body_type"] = "SGX";
    j["cpu_svn"] = hex(e.cpu_svn);
    j["misc_select"] = e.misc_select;
    j["attributes"] = hex(e.attributes);
    j["mr_enclave"] = hex(e.mr_enclave);
    j["mr_signer"] = hex(e.mr_signer);
    j["isv_prod_id"] = e.isv_prod_id;
    j["isv_svn"] = e.isv_svn;
    j["report_data"] = hex(e.report_data);
  }
  return j;
}

nlohmann::ordered_json verified_report_to_json(const VerifiedReport& r) {
  nlohmann::ordered_json j;
  j["status"] = r.status;
  j["advisory_ids"] = r.advisory_ids;
  const nlohmann::ordered_json body = quote_to_json(r.quote);
  for (auto it = body.begin(); it != body.end(); ++it) j[it.key()] = it.value();
  j["ppid"] = to_hex(r.ppid);
  j["fmspc"] = to_hex(r.fmspc);
  j["pck_pce_svn"] = r.pce_svn;
  j["pck_cpu_svn"] = to_hex(r.cpu_svn);
  j["platform_status"] = r.platform_status;
  j["qe_status"] = r.qe_status;
  j["tdx_module_status"] = r.tdx_module_status;
  return j;
}

}  // namespace dstack::attest
