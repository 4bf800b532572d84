// Key generation (auto-bootstrap, Onboard.Bootstrap), replication from another KMS (Onboard.Onboard),
// the onboarding service and the startup sequence of dstack-kms (spec §3.4, §3.5).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "auth/auth.h"
#include "kms/cert_store.h"
#include "kms/config.h"
#include "kms/platform.h"
#include "rpc/prpc.h"

namespace dstack::kms {

// Fresh keys: root CA, tmp CA, rpc key (P-256) and root k256.
Result<RootKeys> generate_root_keys();

// Generates keys, obtains the §3.3 attestation (if `attester`), writes all artifacts crash-safely.
Result<BootstrapInfo> bootstrap_keys(CertStore& store, const std::string& domain, Attester* attester,
                                     const WriteHook& hook = nullptr);

// Replicates root keys from the KMS at source_url (spec §3.5 Onboard) over RA-TLS.
struct OnboardDeps {
  Attester* attester = nullptr;
  Verifier* verifier = nullptr;
  auth::AuthBackend* auth = nullptr;
  std::chrono::milliseconds timeout{30000};
};
Result<Bytes> onboard_from(CertStore& store, const std::string& source_url, const std::string& domain,
                           const OnboardDeps& deps, const WriteHook& hook = nullptr);

// Everything a running dstack-kms owns.
struct RunHooks {
  WriteHook bootstrap_hook;                         // tests: crash injection
  std::function<void(uint16_t port)> on_listening;  // called once the RPC server serves
  std::atomic<bool>* stop = nullptr;                // polled; also SIGINT/SIGTERM handled by main
};

// The whole startup sequence; blocks until stop. Returns process exit code.
int run_kms(const KmsConfig& cfg, const RunHooks& hooks);

// Builds the auth backend of [core.auth_api].
std::shared_ptr<auth::AuthBackend> make_auth_backend(const KmsConfig& cfg);

}  // namespace dstack::kms
