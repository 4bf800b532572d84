// JSON views of parsed quotes and verification results (used by dstack-verify and services that report
// attestation details). Byte fields are lowercase hex.
#pragma once

#include <nlohmann/json.hpp>

#include "attest/quote.h"
#include "attest/verify.h"

namespace dstack::attest {

// {"version", "tee_type": "TDX"|"SGX", "att_key_type", "qe_vendor_id", "user_data", then the body fields:
//  TDX: tee_tcb_svn, mr_seam, mr_signer_seam, seam_attributes, td_attributes, xfam, mr_td, mr_config_id,
//  mr_owner, mr_owner_config, rtmr0..rtmr3, report_data (+ tee_tcb_svn2, mr_service_td for TD 1.5);
//  SGX: cpu_svn, misc_select, attributes, mr_enclave, mr_signer, isv_prod_id, isv_svn, report_data}
nlohmann::ordered_json quote_to_json(const Quote& q);

// quote_to_json(report.quote) plus "status", "advisory_ids", "ppid", "fmspc", "pck_pce_svn", "pck_cpu_svn",
// "platform_status", "qe_status", "tdx_module_status".
nlohmann::ordered_json verified_report_to_json(const VerifiedReport& r);

}  // namespace dstack::attest
