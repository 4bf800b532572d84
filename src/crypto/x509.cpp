#include "crypto/x509.h"

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <ctime>

#include "crypto/hash.h"
#include "crypto/ossl.h"

namespace dstack::crypto {
namespace {

using namespace detail;


std::string name_entry(const X509_NAME* name, int nid) {
  if (name == nullptr) return {};
  int idx = X509_NAME_get_index_by_NID(name, nid, -1);
  if (idx < 0) return {};
  const ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
  unsigned char* utf8 = nullptr;
  int n = ASN1_STRING_to_UTF8(&utf8, data);
  if (n < 0) return {};
  std::string out(reinterpret_cast<char*>(utf8), static_cast<size_t>(n));
  OPENSSL_free(utf8);
  return out;
}

int64_t asn1_time_to_unix(const ASN1_TIME* t) {
  struct tm tm{};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
  return static_cast<int64_t>(timegm(&tm));
}

Result<ASN1_OBJECT*> parse_oid(const std::string& oid) {
  ASN1_OBJECT* obj = OBJ_txt2obj(oid.c_str(), 1);  // numeric form only
  if (obj == nullptr) {
    ERR_clear_error();
    return make_error("invalid extension OID '" + oid + "' (expected dotted numeric form, e.g. 1.3.6.1.4.1.62397.1.3)");
  }
  return obj;
}

// SHA-1 of the subjectPublicKey BIT STRING (RFC 5280 §4.2.1.2 method 1).
Bytes key_id_of(const X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_pubkey_digest(cert, EVP_sha1(), md, &len) != 1) return {};
  return Bytes(md, md + len);
}

Status add_ext_i2d(X509* x, int nid, void* value, bool critical, const char* what) {
  if (X509_add1_ext_i2d(x, nid, value, critical ? 1 : 0, X509V3_ADD_DEFAULT) != 1) {
    return make_error(std::string("issuing certificate: adding ") + what + " extension failed: " + ossl_error());
  }
  return Status::Ok();
}

Status add_standard_extensions(X509* x, const CertSpec& spec, const Bytes& issuer_key_id) {
  // basicConstraints (CA only), critical.
  if (spec.is_ca) {
    BASIC_CONSTRAINTS* bc = BASIC_CONSTRAINTS_new();
    bc->ca = 0xFF;
    if (spec.ca_path_len >= 0) {
      bc->pathlen = ASN1_INTEGER_new();
      ASN1_INTEGER_set(bc->pathlen, spec.ca_path_len);
    }
    Status st = add_ext_i2d(x, NID_basic_constraints, bc, true, "basicConstraints");
    BASIC_CONSTRAINTS_free(bc);
    TRY(st);
  }
  // keyUsage, critical: digitalSignature (+ keyCertSign, cRLSign for CAs).
  {
    ASN1_BIT_STRING* ku = ASN1_BIT_STRING_new();
    ASN1_BIT_STRING_set_bit(ku, 0, 1);
    if (spec.is_ca) {
      ASN1_BIT_STRING_set_bit(ku, 5, 1);
      ASN1_BIT_STRING_set_bit(ku, 6, 1);
    }
    Status st = add_ext_i2d(x, NID_key_usage, ku, true, "keyUsage");
    ASN1_BIT_STRING_free(ku);
    TRY(st);
  }
  // extendedKeyUsage only when requested.
  if (spec.usage_server_auth || spec.usage_client_auth) {
    EXTENDED_KEY_USAGE* eku = sk_ASN1_OBJECT_new_null();
    if (spec.usage_server_auth) sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_server_auth));
    if (spec.usage_client_auth) sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_client_auth));
    Status st = add_ext_i2d(x, NID_ext_key_usage, eku, false, "extendedKeyUsage");
    EXTENDED_KEY_USAGE_free(eku);
    TRY(st);
  }
  // subjectAltName.
  if (!spec.alt_names.empty()) {
    GENERAL_NAMES* gens = sk_GENERAL_NAME_new_null();
    for (const auto& name : spec.alt_names) {
      GENERAL_NAME* gen = GENERAL_NAME_new();
      ASN1_OCTET_STRING* ip = a2i_IPADDRESS(name.c_str());
      if (ip != nullptr) {
        GENERAL_NAME_set0_value(gen, GEN_IPADD, ip);
      } else {
        ERR_clear_error();
        ASN1_IA5STRING* dns = ASN1_IA5STRING_new();
        ASN1_STRING_set(dns, name.data(), static_cast<int>(name.size()));
        GENERAL_NAME_set0_value(gen, GEN_DNS, dns);
      }
      sk_GENERAL_NAME_push(gens, gen);
    }
    Status st = add_ext_i2d(x, NID_subject_alt_name, gens, false, "subjectAltName");
    GENERAL_NAMES_free(gens);
    TRY(st);
  }
  // subjectKeyIdentifier / authorityKeyIdentifier.
  {
    Bytes ski = key_id_of(x);
    ASN1_OCTET_STRING* os = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING_set(os, ski.data(), static_cast<int>(ski.size()));
    Status st = add_ext_i2d(x, NID_subject_key_identifier, os, false, "subjectKeyIdentifier");
    ASN1_OCTET_STRING_free(os);
    TRY(st);
  }
  if (!issuer_key_id.empty()) {
    AUTHORITY_KEYID* akid = AUTHORITY_KEYID_new();
    akid->keyid = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING_set(akid->keyid, issuer_key_id.data(), static_cast<int>(issuer_key_id.size()));
    Status st = add_ext_i2d(x, NID_authority_key_identifier, akid, false, "authorityKeyIdentifier");
    AUTHORITY_KEYID_free(akid);
    TRY(st);
  }
  return Status::Ok();
}

Status add_custom_extension(X509* x, const std::string& oid, const Bytes& payload) {
  TRY_ASSIGN(ASN1_OBJECT * obj, parse_oid(oid));
  // extnValue = DER(OCTET STRING(payload)) (spec §3.2: one extra wrapping).
  ASN1_OCTET_STRING* inner = ASN1_OCTET_STRING_new();
  ASN1_OCTET_STRING_set(inner, payload.data(), static_cast<int>(payload.size()));
  unsigned char* der = nullptr;
  int der_len = i2d_ASN1_OCTET_STRING(inner, &der);
  ASN1_OCTET_STRING_free(inner);
  ASN1_OCTET_STRING* outer = ASN1_OCTET_STRING_new();
  bool ok = der_len > 0 && ASN1_OCTET_STRING_set(outer, der, der_len) == 1;
  OPENSSL_free(der);
  X509_EXTENSION* ext = ok ? X509_EXTENSION_create_by_OBJ(nullptr, obj, 0, outer) : nullptr;
  ok = ext != nullptr && X509_add_ext(x, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  ASN1_OCTET_STRING_free(outer);
  ASN1_OBJECT_free(obj);
  if (!ok) return make_error("issuing certificate: adding custom extension " + oid + " failed: " + ossl_error());
  return Status::Ok();
}

}  // namespace

void Certificate::Free::operator()(X509* p) const { X509_free(p); }

Certificate::Certificate(X509* x) : x509_(x, Free{}) {}

Result<Certificate> Certificate::from_pem(std::string_view pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (bio == nullptr) return make_error("certificate: out of memory");
  X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (x == nullptr) return make_error("cannot parse certificate PEM (expected BEGIN CERTIFICATE): " + ossl_error());
  return Certificate(x);
}

Result<Certificate> Certificate::from_der(ByteView der) {
  const unsigned char* p = der.data();
  X509* x = d2i_X509(nullptr, &p, static_cast<long>(der.size()));
  if (x == nullptr) return make_error("cannot parse DER certificate: " + ossl_error());
  if (p != der.data() + der.size()) {
    X509_free(x);
    return make_error("cannot parse DER certificate: trailing bytes after the certificate");
  }
  return Certificate(x);
}

Result<std::vector<Certificate>> Certificate::chain_from_pem(std::string_view pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (bio == nullptr) return make_error("certificate: out of memory");
  std::vector<Certificate> out;
  for (;;) {
    X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    if (x == nullptr) break;
    out.emplace_back(x);
  }
  unsigned long err = ERR_peek_last_error();
  bool clean_eof = ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE;
  BIO_free(bio);
  if (out.empty()) {
    return make_error("cannot parse certificate chain PEM: no BEGIN CERTIFICATE block found: " + ossl_error());
  }
  if (!clean_eof) return make_error("cannot parse certificate chain PEM: certificate #" + std::to_string(out.size() + 1) +
                                    " is malformed: " + ossl_error());
  ERR_clear_error();
  return out;
}

std::string Certificate::to_pem() const {
  BIO* bio = BIO_new(BIO_s_mem());
  std::string out;
  if (bio != nullptr && PEM_write_bio_X509(bio, x509_.get()) == 1) {
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    out.assign(data, static_cast<size_t>(n));
  }
  BIO_free(bio);
  return out;
}

Bytes Certificate::to_der() const {
  unsigned char* buf = nullptr;
  int n = i2d_X509(x509_.get(), &buf);
  if (n <= 0) return {};
  Bytes out(buf, buf + n);
  OPENSSL_free(buf);
  return out;
}

Bytes Certificate::spki_der() const {
  unsigned char* buf = nullptr;
  int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x509_.get()), &buf);
  if (n <= 0) return {};
  Bytes out(buf, buf + n);
  OPENSSL_free(buf);
  return out;
}

std::string Certificate::subject_cn() const { return name_entry(X509_get_subject_name(x509_.get()), NID_commonName); }
std::string Certificate::subject_org() const {
  return name_entry(X509_get_subject_name(x509_.get()), NID_organizationName);
}
std::string Certificate::issuer_cn() const { return name_entry(X509_get_issuer_name(x509_.get()), NID_commonName); }

std::vector<std::string> Certificate::dns_names() const {
  std::vector<std::string> out;
  auto* gens = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(x509_.get(), NID_subject_alt_name, nullptr, nullptr));
  if (gens == nullptr) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(gens); ++i) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(gens, i);
    if (g->type == GEN_DNS) {
      const ASN1_IA5STRING* s = g->d.dNSName;
      out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), static_cast<size_t>(ASN1_STRING_length(s)));
    }
  }
  GENERAL_NAMES_free(gens);
  return out;
}

int64_t Certificate::not_before() const { return asn1_time_to_unix(X509_get0_notBefore(x509_.get())); }
int64_t Certificate::not_after() const { return asn1_time_to_unix(X509_get0_notAfter(x509_.get())); }

bool Certificate::is_ca() const {
  auto* bc = static_cast<BASIC_CONSTRAINTS*>(X509_get_ext_d2i(x509_.get(), NID_basic_constraints, nullptr, nullptr));
  if (bc == nullptr) return false;
  bool ca = bc->ca != 0;
  BASIC_CONSTRAINTS_free(bc);
  return ca;
}

std::optional<int> Certificate::path_len() const {
  auto* bc = static_cast<BASIC_CONSTRAINTS*>(X509_get_ext_d2i(x509_.get(), NID_basic_constraints, nullptr, nullptr));
  if (bc == nullptr) return std::nullopt;
  std::optional<int> out;
  if (bc->pathlen != nullptr) out = static_cast<int>(ASN1_INTEGER_get(bc->pathlen));
  BASIC_CONSTRAINTS_free(bc);
  return out;
}

std::optional<Bytes> Certificate::extension_raw(const std::string& oid) const {
  auto obj = parse_oid(oid);
  if (!obj.ok()) return std::nullopt;
  int idx = X509_get_ext_by_OBJ(x509_.get(), *obj, -1);
  ASN1_OBJECT_free(*obj);
  if (idx < 0) return std::nullopt;
  const ASN1_OCTET_STRING* data = X509_EXTENSION_get_data(X509_get_ext(x509_.get(), idx));
  const unsigned char* p = ASN1_STRING_get0_data(data);
  return Bytes(p, p + ASN1_STRING_length(data));
}

std::optional<Bytes> Certificate::extension(const std::string& oid) const {
  auto raw = extension_raw(oid);
  if (!raw) return std::nullopt;
  const unsigned char* p = raw->data();
  ASN1_OCTET_STRING* inner = d2i_ASN1_OCTET_STRING(nullptr, &p, static_cast<long>(raw->size()));
  if (inner == nullptr || p != raw->data() + raw->size()) {
    ASN1_OCTET_STRING_free(inner);
    ERR_clear_error();
    return std::nullopt;  // not the dstack wrapped-OCTET-STRING form
  }
  const unsigned char* d = ASN1_STRING_get0_data(inner);
  Bytes out(d, d + ASN1_STRING_length(inner));
  ASN1_OCTET_STRING_free(inner);
  return out;
}

bool Certificate::signed_by(const Certificate& issuer) const {
  EVP_PKEY* pk = X509_get0_pubkey(issuer.get());
  bool ok = pk != nullptr && X509_verify(x509_.get(), pk) == 1;
  ERR_clear_error();
  return ok;
}

bool Certificate::signed_by_key(const P256Key& issuer_key) const {
  bool ok = X509_verify(x509_.get(), issuer_key.get()) == 1;
  ERR_clear_error();
  return ok;
}

Result<Certificate> issue_certificate(const CertSpec& spec, const P256Key& subject_key_public,
                                      const P256Key& issuer_key, const Certificate* issuer) {
  if (issuer == nullptr) {
    if (EVP_PKEY_eq(subject_key_public.get(), issuer_key.get()) != 1) {
      ERR_clear_error();
      return make_error("issuing self-signed certificate '" + spec.common_name +
                        "': issuer key must be the subject's own key");
    }
  } else if (EVP_PKEY_eq(X509_get0_pubkey(issuer->get()), issuer_key.get()) != 1) {
    ERR_clear_error();
    return make_error("issuing certificate '" + spec.common_name + "': issuer key does not match issuer certificate '" +
                      issuer->subject_cn() + "'");
  }
  X509Ptr x(X509_new());
  if (!x) return make_error("issuing certificate: out of memory");
  X509_set_version(x.get(), X509_VERSION_3);

  // Random positive 128-bit serial.
  Bytes serial = random_bytes(16);
  serial[0] = static_cast<uint8_t>((serial[0] & 0x7f) | 0x01);
  BIGNUM* bn = BN_bin2bn(serial.data(), static_cast<int>(serial.size()), nullptr);
  ASN1_INTEGER* sn = bn ? BN_to_ASN1_INTEGER(bn, nullptr) : nullptr;
  BN_free(bn);
  bool ok = sn != nullptr && X509_set_serialNumber(x.get(), sn) == 1;
  ASN1_INTEGER_free(sn);
  if (!ok) return make_error("issuing certificate: setting serial failed: " + ossl_error());

  X509_NAME* name = X509_NAME_new();
  ok = name != nullptr;
  if (ok && spec.org_name) {
    ok = X509_NAME_add_entry_by_NID(name, NID_organizationName, MBSTRING_UTF8,
                                    reinterpret_cast<const unsigned char*>(spec.org_name->c_str()), -1, -1, 0) == 1;
  }
  if (ok) {
    ok = X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                                    reinterpret_cast<const unsigned char*>(spec.common_name.c_str()), -1, -1, 0) == 1;
  }
  ok = ok && X509_set_subject_name(x.get(), name) == 1 &&
       X509_set_issuer_name(x.get(), issuer ? X509_get_subject_name(issuer->get()) : name) == 1;
  X509_NAME_free(name);
  if (!ok) return make_error("issuing certificate: invalid subject name '" + spec.common_name + "': " + ossl_error());

  int64_t not_after = spec.not_after.value_or(static_cast<int64_t>(std::time(nullptr)) + 3650LL * 86400);
  if (not_after < spec.not_before) return make_error("issuing certificate: not_after is before not_before");
  ok = ASN1_TIME_set(X509_getm_notBefore(x.get()), static_cast<time_t>(spec.not_before)) != nullptr &&
       ASN1_TIME_set(X509_getm_notAfter(x.get()), static_cast<time_t>(not_after)) != nullptr;
  if (!ok) return make_error("issuing certificate: invalid validity period: " + ossl_error());

  if (X509_set_pubkey(x.get(), subject_key_public.get()) != 1) {
    return make_error("issuing certificate: setting public key failed: " + ossl_error());
  }

  Bytes issuer_key_id;
  if (issuer == nullptr) {
    issuer_key_id = key_id_of(x.get());
  } else if (const ASN1_OCTET_STRING* ikid = X509_get0_subject_key_id(issuer->get()); ikid != nullptr) {
    const unsigned char* d = ASN1_STRING_get0_data(ikid);
    issuer_key_id.assign(d, d + ASN1_STRING_length(ikid));
  } else {
    issuer_key_id = key_id_of(issuer->get());
  }
  TRY(add_standard_extensions(x.get(), spec, issuer_key_id));
  for (const auto& [oid, payload] : spec.extensions) TRY(add_custom_extension(x.get(), oid, payload));

  if (X509_sign(x.get(), issuer_key.get(), EVP_sha256()) <= 0) {
    return make_error("issuing certificate: signing failed: " + ossl_error());
  }
  return Certificate(x.release());
}

Status verify_chain(const Certificate& leaf, const std::vector<Certificate>& intermediates,
                    const Certificate& trusted_root, int64_t at_time) {
  X509_STORE* store = X509_STORE_new();
  STACK_OF(X509)* untrusted = sk_X509_new_null();
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  Status result;
  if (store == nullptr || untrusted == nullptr || ctx == nullptr || X509_STORE_add_cert(store, trusted_root.get()) != 1) {
    result = make_error("verifying certificate chain: setup failed: " + ossl_error());
  } else {
    for (const auto& c : intermediates) sk_X509_push(untrusted, c.get());
    if (X509_STORE_CTX_init(ctx, store, leaf.get(), untrusted) != 1) {
      result = make_error("verifying certificate chain: setup failed: " + ossl_error());
    } else {
      if (at_time != 0) X509_STORE_CTX_set_time(ctx, 0, static_cast<time_t>(at_time));
      if (X509_verify_cert(ctx) != 1) {
        int err = X509_STORE_CTX_get_error(ctx);
        int depth = X509_STORE_CTX_get_error_depth(ctx);
        X509* bad = X509_STORE_CTX_get_current_cert(ctx);
        std::string who = bad ? name_entry(X509_get_subject_name(bad), NID_commonName) : std::string("?");
        result = make_error("certificate chain verification failed at depth " + std::to_string(depth) +
                            " (certificate CN='" + who + "'): " + X509_verify_cert_error_string(err));
      }
    }
  }
  X509_STORE_CTX_free(ctx);
  sk_X509_free(untrusted);  // certificates are owned by the callers' Certificate objects
  X509_STORE_free(store);
  ERR_clear_error();
  return result;
}

}  // namespace dstack::crypto
