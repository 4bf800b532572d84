// Helpers shared by the rpc implementation files (not part of the public API).
#pragma once

#include <openssl/x509.h>

#include <string>

namespace dstack::rpc::internal {

// Subject names of every certificate in a PEM bundle (caller owns the stack), or nullptr.
STACK_OF(X509_NAME) * pem_subjects(const std::string& pem);

}  // namespace dstack::rpc::internal
