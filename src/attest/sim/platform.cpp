#include "attest/sim/platform.h"

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <ctime>
#include <memory>

#include "base/fs.h"
#include "crypto/hash.h"
#include "crypto/p256.h"

namespace dstack::attest::sim {

using crypto::P256Key;
using ojson = nlohmann::ordered_json;

namespace {

// ---- constants of the simulated platform --------------------------------------------------------------------

const char* const kRootCn = "dstack-cpp SIMULATED SGX Root CA - NOT INTEL";
const char* const kPckCaCn = "dstack-cpp SIMULATED SGX PCK Platform CA - NOT INTEL";
const char* const kPckCn = "dstack-cpp SIMULATED SGX PCK Certificate - NOT INTEL";
const char* const kTcbCn = "dstack-cpp SIMULATED SGX TCB Signing - NOT INTEL";
const char* const kOrg = "dstack-cpp simulation (not Intel Corporation)";
const char* const kSgxExtOid = "1.2.840.113741.1.13.1";

// Intel's QE vendor id (quote header), as real quotes carry it.
const uint8_t kIntelQeVendorId[16] = {0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9,
                                      0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07};
// Platform TCB: CPUSVN bytes == SGX TCB component SVNs (as on real parts), PCESVN, TEE_TCB_SVN.
const uint8_t kCpuSvn[16] = {3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0};
const uint16_t kPceSvn = 13;
const uint8_t kTeeTcbSvn[16] = {6, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
// UpToDate level requirements (<= platform) and an older OutOfDate level.
const int kSgxCompsUpToDate[16] = {2, 2, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0};
const int kTdxCompsUpToDate[16] = {5, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
const uint16_t kPceSvnUpToDate = 11;
const uint16_t kQeIsvSvn = 8;
const uint16_t kTdQeProdId = 2;
const uint16_t kSgxQeProdId = 1;
// QE report attributes (INIT|MODE64BIT|PROVISIONKEY, XFRM 0xe7), as a production QE has.
const uint8_t kQeAttributes[16] = {0x15, 0, 0, 0, 0, 0, 0, 0, 0xe7, 0, 0, 0, 0, 0, 0, 0};
const uint8_t kDefaultXfam[8] = {0xe7, 0x1a, 0x06, 0, 0, 0, 0, 0};
const uint8_t kDefaultTdAttributes[8] = {0, 0, 0, 0x10, 0, 0, 0, 0};  // SEPT_VE_DISABLE, not debug
const int64_t kRootNotBefore = 1577836800;   // 2020-01-01
const int64_t kRootNotAfter = 2524607999;    // 2049-12-31T23:59:59Z

std::string ossl_err() {
  unsigned long e = ERR_get_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

struct X509Free { void operator()(X509* p) const { X509_free(p); } };
struct CrlFree { void operator()(X509_CRL* p) const { X509_CRL_free(p); } };
using X509Ptr = std::unique_ptr<X509, X509Free>;
using CrlPtr = std::unique_ptr<X509_CRL, CrlFree>;

// ---- minimal DER builder for the Intel SGX extension (not crypto: just TLV encoding) -------------------------

Bytes der_tlv(uint8_t tag, ByteView content) {
  Bytes out{tag};
  size_t n = content.size();
  if (n < 0x80) {
    out.push_back(static_cast<uint8_t>(n));
  } else {
    Bytes len;
    for (size_t t = n; t; t >>= 8) len.insert(len.begin(), static_cast<uint8_t>(t & 0xff));
    out.push_back(static_cast<uint8_t>(0x80 | len.size()));
    out.insert(out.end(), len.begin(), len.end());
  }
  out.insert(out.end(), content.begin(), content.end());
  return out;
}
Bytes der_seq(std::initializer_list<ByteView> items) { return der_tlv(0x30, concat(items)); }
Bytes der_oid(const std::string& dotted) {
  ASN1_OBJECT* obj = OBJ_txt2obj(dotted.c_str(), 1);
  int n = i2d_ASN1_OBJECT(obj, nullptr);
  Bytes out(static_cast<size_t>(n));
  unsigned char* p = out.data();
  i2d_ASN1_OBJECT(obj, &p);
  ASN1_OBJECT_free(obj);
  return out;
}
Bytes der_uint(uint32_t v, uint8_t tag = 0x02) {
  Bytes c;
  do {
    c.insert(c.begin(), static_cast<uint8_t>(v & 0xff));
    v >>= 8;
  } while (v);
  if (c[0] & 0x80) c.insert(c.begin(), 0);
  return der_tlv(tag, c);
}
Bytes der_octets(ByteView v) { return der_tlv(0x04, v); }
Bytes der_bool(bool v) { return der_tlv(0x01, Bytes{static_cast<uint8_t>(v ? 0xff : 0)}); }

// SGX extension (OID 1.2.840.113741.1.13.1) as Intel PCK Platform certificates carry it.
Bytes sgx_extension(ByteView ppid, ByteView cpusvn, uint16_t pcesvn, ByteView pceid, ByteView fmspc,
                    ByteView platform_instance_id) {
  const std::string base = kSgxExtOid;
  Bytes tcb_items;
  for (int i = 0; i < 16; ++i) {
    Bytes item = der_seq({der_oid(base + ".2." + std::to_string(i + 1)), der_uint(cpusvn[static_cast<size_t>(i)])});
    tcb_items.insert(tcb_items.end(), item.begin(), item.end());
  }
  Bytes pce = der_seq({der_oid(base + ".2.17"), der_uint(pcesvn)});
  Bytes cpu = der_seq({der_oid(base + ".2.18"), der_octets(cpusvn)});
  Bytes tcb = der_tlv(0x30, concat({tcb_items, pce, cpu}));
  Bytes config = der_seq({der_seq({der_oid(base + ".7.1"), der_bool(false)}),
                          der_seq({der_oid(base + ".7.2"), der_bool(true)}),
                          der_seq({der_oid(base + ".7.3"), der_bool(true)})});
  return der_seq({
      der_seq({der_oid(base + ".1"), der_octets(ppid)}),
      der_seq({der_oid(base + ".2"), tcb}),
      der_seq({der_oid(base + ".3"), der_octets(pceid)}),
      der_seq({der_oid(base + ".4"), der_octets(fmspc)}),
      der_seq({der_oid(base + ".5"), der_uint(1, 0x0a)}),  // SGX Type: ENUMERATED Scalable(1)
      der_seq({der_oid(base + ".6"), der_octets(platform_instance_id)}),
      der_seq({der_oid(base + ".7"), config}),
  });
}

// ---- X.509 helpers ------------------------------------------------------------------------------------------

X509_NAME* make_name(const char* cn) {
  X509_NAME* n = X509_NAME_new();
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(cn), -1, -1, 0);
  X509_NAME_add_entry_by_txt(n, "O", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(kOrg), -1, -1, 0);
  X509_NAME_add_entry_by_txt(n, "C", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("US"), -1, -1, 0);
  return n;
}

Status add_ext(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (!ext) return make_error(std::string("sim: cannot build extension ") + OBJ_nid2sn(nid) + ": " + ossl_err());
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  return Status::Ok();
}

void set_random_serial(X509* cert) {
  Bytes s = crypto::random_bytes(16);
  s[0] &= 0x7f;
  s[0] |= 0x01;
  BIGNUM* bn = BN_bin2bn(s.data(), static_cast<int>(s.size()), nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
  BN_free(bn);
}

struct IssuerRef {
  X509* cert;           // nullptr => self-signed
  const P256Key* key;
};

Result<X509Ptr> make_cert(const char* cn, const P256Key& subject_key, IssuerRef issuer, bool is_ca, int path_len,
                          int64_t not_before, int64_t not_after, const Bytes* sgx_ext) {
  X509Ptr cert(X509_new());
  X509_set_version(cert.get(), 2);
  set_random_serial(cert.get());
  X509_NAME* subj = make_name(cn);
  X509_set_subject_name(cert.get(), subj);
  X509_set_issuer_name(cert.get(), issuer.cert ? X509_get_subject_name(issuer.cert) : subj);
  X509_NAME_free(subj);
  ASN1_TIME_set(X509_getm_notBefore(cert.get()), static_cast<time_t>(not_before));
  ASN1_TIME_set(X509_getm_notAfter(cert.get()), static_cast<time_t>(not_after));
  if (X509_set_pubkey(cert.get(), subject_key.get()) != 1) return make_error("sim: X509_set_pubkey: " + ossl_err());
  X509* iss = issuer.cert ? issuer.cert : cert.get();
  TRY(add_ext(cert.get(), iss, NID_subject_key_identifier, "hash"));
  TRY(add_ext(cert.get(), iss, NID_authority_key_identifier, "keyid:always"));
  if (is_ca) {
    std::string bc = "critical,CA:TRUE,pathlen:" + std::to_string(path_len);
    TRY(add_ext(cert.get(), iss, NID_basic_constraints, bc.c_str()));
    TRY(add_ext(cert.get(), iss, NID_key_usage, "critical,keyCertSign,cRLSign"));
  } else {
    TRY(add_ext(cert.get(), iss, NID_basic_constraints, "critical,CA:FALSE"));
    TRY(add_ext(cert.get(), iss, NID_key_usage, "critical,digitalSignature,nonRepudiation"));
  }
  if (sgx_ext) {
    ASN1_OBJECT* obj = OBJ_txt2obj(kSgxExtOid, 1);
    ASN1_OCTET_STRING* os = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING_set(os, sgx_ext->data(), static_cast<int>(sgx_ext->size()));
    X509_EXTENSION* ext = X509_EXTENSION_create_by_OBJ(nullptr, obj, 0, os);
    X509_add_ext(cert.get(), ext, -1);
    X509_EXTENSION_free(ext);
    ASN1_OCTET_STRING_free(os);
    ASN1_OBJECT_free(obj);
  }
  if (X509_sign(cert.get(), issuer.key->get(), EVP_sha256()) <= 0) return make_error("sim: X509_sign: " + ossl_err());
  return cert;
}

std::string cert_pem(X509* c) {
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, c);
  char* data = nullptr;
  long n = BIO_get_mem_data(b, &data);
  std::string s(data, static_cast<size_t>(n));
  BIO_free(b);
  return s;
}
Bytes cert_der(X509* c) {
  int n = i2d_X509(c, nullptr);
  Bytes out(static_cast<size_t>(n));
  unsigned char* p = out.data();
  i2d_X509(c, &p);
  return out;
}
Result<X509Ptr> cert_from_pem(const std::string& pem, const std::string& what) {
  BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* c = PEM_read_bio_X509(b, nullptr, nullptr, nullptr);
  BIO_free(b);
  if (!c) return make_error("sim: cannot parse " + what + " certificate PEM");
  return X509Ptr(c);
}

// CRL v2 with CRL number + AKI, optionally revoking `revoked_serial` (a serial not used by any of our certs).
Result<Bytes> make_crl(X509* issuer, const P256Key& issuer_key, int64_t now, ByteView revoked_serial) {
  CrlPtr crl(X509_CRL_new());
  X509_CRL_set_version(crl.get(), 1);
  X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(issuer));
  ASN1_TIME* t = ASN1_TIME_new();
  ASN1_TIME_set(t, static_cast<time_t>(now - 86400));
  X509_CRL_set1_lastUpdate(crl.get(), t);
  ASN1_TIME_set(t, static_cast<time_t>(now + 30 * 86400));
  X509_CRL_set1_nextUpdate(crl.get(), t);
  if (!revoked_serial.empty()) {
    X509_REVOKED* r = X509_REVOKED_new();
    BIGNUM* bn = BN_bin2bn(revoked_serial.data(), static_cast<int>(revoked_serial.size()), nullptr);
    ASN1_INTEGER* serial = BN_to_ASN1_INTEGER(bn, nullptr);
    X509_REVOKED_set_serialNumber(r, serial);
    ASN1_TIME_set(t, static_cast<time_t>(now - 2 * 86400));
    X509_REVOKED_set_revocationDate(r, t);
    X509_CRL_add0_revoked(crl.get(), r);
    ASN1_INTEGER_free(serial);
    BN_free(bn);
  }
  ASN1_TIME_free(t);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, nullptr, nullptr, crl.get(), 0);
  ASN1_INTEGER* num = ASN1_INTEGER_new();
  ASN1_INTEGER_set(num, 1);
  int num_ok = X509_CRL_add1_ext_i2d(crl.get(), NID_crl_number, num, 0, 0);
  ASN1_INTEGER_free(num);
  X509_EXTENSION* aki = X509V3_EXT_conf_nid(nullptr, &ctx, NID_authority_key_identifier, "keyid:always");
  if (num_ok != 1 || !aki) return make_error("sim: cannot build CRL extensions: " + ossl_err());
  X509_CRL_add_ext(crl.get(), aki, -1);
  X509_EXTENSION_free(aki);
  X509_CRL_sort(crl.get());
  if (X509_CRL_sign(crl.get(), issuer_key.get(), EVP_sha256()) <= 0) return make_error("sim: X509_CRL_sign: " + ossl_err());
  int n = i2d_X509_CRL(crl.get(), nullptr);
  Bytes out(static_cast<size_t>(n));
  unsigned char* p = out.data();
  i2d_X509_CRL(crl.get(), &p);
  return out;
}

std::string iso8601(int64_t t) {
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string upper_hex(ByteView b) {
  std::string s = to_hex(b);
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

void put_u16(Bytes& b, uint16_t v) {
  b.push_back(static_cast<uint8_t>(v));
  b.push_back(static_cast<uint8_t>(v >> 8));
}
void put_u32(Bytes& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put(Bytes& b, ByteView v) { b.insert(b.end(), v.begin(), v.end()); }

// Field with default and exact-size check.
Result<Bytes> field(const Bytes& v, size_t size, const char* name, ByteView dflt = {}) {
  if (v.empty()) return dflt.empty() ? Bytes(size, 0) : Bytes(dflt.begin(), dflt.end());
  if (v.size() != size) {
    return make_error(std::string("sim quote: ") + name + " must be " + std::to_string(size) + " bytes, got " +
                      std::to_string(v.size()));
  }
  return v;
}
Result<Bytes> report_data_field(const Bytes& v) {
  if (v.size() > 64) return make_error("sim quote: report_data is longer than 64 bytes");
  Bytes r = v;
  r.resize(64, 0);
  return r;
}

}  // namespace

// ---- platform state -----------------------------------------------------------------------------------------

struct SimPlatform::Impl {
  std::string dir;
  P256Key root_key, pck_ca_key, pck_key, tcb_key, qe_key;
  X509Ptr root, pck_ca, pck, tcb;
  std::string root_pem, pck_ca_pem, pck_pem, tcb_pem;
  Bytes ppid, fmspc, pce_id, qe_id, platform_instance_id, qe_mrenclave, qe_mrsigner, revoked_serial;

  Impl(P256Key a, P256Key b, P256Key c, P256Key d, P256Key e)
      : root_key(std::move(a)), pck_ca_key(std::move(b)), pck_key(std::move(c)), tcb_key(std::move(d)),
        qe_key(std::move(e)) {}

  Bytes att_pub() const {
    Bytes p = qe_key.public_uncompressed();
    return Bytes(p.begin() + 1, p.end());  // 64 bytes X||Y
  }
  Bytes qe_auth_data() const {
    Bytes d;
    for (uint8_t i = 0; i < 32; ++i) d.push_back(i);
    return d;
  }
  // SGX report body (384 B) of the quoting enclave, report_data = SHA256(att_pub || auth_data) || zeros.
  Bytes qe_report(uint16_t prod_id) const {
    Bytes r;
    put(r, ByteView(kCpuSvn, 16));
    put_u32(r, 0);                 // miscselect
    r.resize(r.size() + 28, 0);    // reserved1
    put(r, ByteView(kQeAttributes, 16));
    put(r, qe_mrenclave);
    r.resize(r.size() + 32, 0);    // reserved2
    put(r, qe_mrsigner);
    r.resize(r.size() + 96, 0);    // reserved3
    put_u16(r, prod_id);
    put_u16(r, kQeIsvSvn);
    r.resize(r.size() + 60, 0);    // reserved4
    Bytes h = crypto::sha256(concat({att_pub(), qe_auth_data()}));
    put(r, h);
    r.resize(r.size() + 32, 0);
    return r;
  }
  std::string pck_chain_pem() const { return pck_pem + pck_ca_pem + root_pem; }

  // QE report certification data: report || sig || auth data || (type 5, PCK chain PEM).
  Result<Bytes> qe_report_cert_data(uint16_t prod_id) const {
    Bytes out;
    Bytes rep = qe_report(prod_id);
    TRY_ASSIGN(Bytes sig, pck_key.sign_raw(rep));
    put(out, rep);
    put(out, sig);
    Bytes auth = qe_auth_data();
    put_u16(out, static_cast<uint16_t>(auth.size()));
    put(out, auth);
    std::string chain = pck_chain_pem();
    Bytes chain_bytes = to_bytes(chain);
    chain_bytes.push_back(0);  // real QEs NUL-terminate the PEM chain
    put_u16(out, 5);
    put_u32(out, static_cast<uint32_t>(chain_bytes.size()));
    put(out, chain_bytes);
    return out;
  }

  Bytes header(uint16_t version, uint32_t tee_type, uint16_t qe_svn, uint16_t pce_svn) const {
    Bytes h;
    put_u16(h, version);
    put_u16(h, 2);  // ECDSA-256-with-P-256
    put_u32(h, tee_type);
    put_u16(h, qe_svn);
    put_u16(h, pce_svn);
    put(h, ByteView(kIntelQeVendorId, 16));
    put(h, qe_id);
    h.resize(48, 0);
    return h;
  }
};

namespace {

struct Files {
  static constexpr const char* kRootKey = "root-ca.key";
  static constexpr const char* kRootPem = "root-ca.pem";
  static constexpr const char* kRootDer = "root-ca.der";
  static constexpr const char* kPckCaKey = "pck-ca.key";
  static constexpr const char* kPckCaPem = "pck-ca.pem";
  static constexpr const char* kPckKey = "pck.key";
  static constexpr const char* kPckPem = "pck.pem";
  static constexpr const char* kTcbKey = "tcb-signing.key";
  static constexpr const char* kTcbPem = "tcb-signing.pem";
  static constexpr const char* kQeKey = "qe-attestation.key";
  static constexpr const char* kPlatform = "platform.json";
};

std::string path_in(const std::string& dir, const char* name) { return dir + "/" + name; }

Result<P256Key> load_key(const std::string& dir, const char* name) {
  auto pem = read_file(path_in(dir, name));
  if (!pem) return pem.error().wrap("sim platform: reading " + path_in(dir, name));
  auto k = P256Key::from_pem(*pem);
  if (!k) return k.error().wrap("sim platform: " + path_in(dir, name));
  return std::move(k).value();
}

}  // namespace

Result<SimPlatform> SimPlatform::create(const std::string& dir) {
  if (file_exists(path_in(dir, Files::kPlatform))) {
    return make_error("sim platform already exists in " + dir + " (use load, or remove the directory)");
  }
  TRY(make_dirs(dir, 0700));
  TRY_ASSIGN(auto root_key, P256Key::generate());
  TRY_ASSIGN(auto pck_ca_key, P256Key::generate());
  TRY_ASSIGN(auto pck_key, P256Key::generate());
  TRY_ASSIGN(auto tcb_key, P256Key::generate());
  TRY_ASSIGN(auto qe_key, P256Key::generate());
  auto impl = std::make_shared<Impl>(root_key, pck_ca_key, pck_key, tcb_key, qe_key);
  impl->dir = dir;
  impl->ppid = crypto::random_bytes(16);
  impl->fmspc = Bytes{0x5a, 0x1d, 0x00, 0xc0, 0xff, 0xee};  // simulated family/model/stepping/platform
  impl->pce_id = Bytes{0, 0};
  impl->qe_id = crypto::random_bytes(16);
  impl->platform_instance_id = crypto::random_bytes(16);
  impl->qe_mrenclave = crypto::sha256(to_bytes("dstack-cpp simulated quoting enclave"));
  impl->qe_mrsigner = crypto::sha256(to_bytes("dstack-cpp simulated QE signer - NOT INTEL"));
  impl->revoked_serial = crypto::random_bytes(16);
  impl->revoked_serial[0] = (impl->revoked_serial[0] & 0x7f) | 0x01;

  int64_t now = static_cast<int64_t>(std::time(nullptr));
  TRY_ASSIGN(impl->root, make_cert(kRootCn, root_key, {nullptr, &impl->root_key}, true, 1, kRootNotBefore,
                                   kRootNotAfter, nullptr));
  TRY_ASSIGN(impl->pck_ca, make_cert(kPckCaCn, pck_ca_key, {impl->root.get(), &impl->root_key}, true, 0,
                                     kRootNotBefore, kRootNotAfter, nullptr));
  TRY_ASSIGN(impl->tcb, make_cert(kTcbCn, tcb_key, {impl->root.get(), &impl->root_key}, false, 0, kRootNotBefore,
                                  kRootNotAfter, nullptr));
  Bytes ext = sgx_extension(impl->ppid, ByteView(kCpuSvn, 16), kPceSvn, impl->pce_id, impl->fmspc,
                            impl->platform_instance_id);
  TRY_ASSIGN(impl->pck, make_cert(kPckCn, pck_key, {impl->pck_ca.get(), &impl->pck_ca_key}, false, 0,
                                  now - 86400, now + 7 * 365 * 86400, &ext));
  impl->root_pem = cert_pem(impl->root.get());
  impl->pck_ca_pem = cert_pem(impl->pck_ca.get());
  impl->pck_pem = cert_pem(impl->pck.get());
  impl->tcb_pem = cert_pem(impl->tcb.get());

  // Keys first (0600), then certificates, platform.json last: its presence marks a complete platform.
  TRY(write_file_atomic(path_in(dir, Files::kRootKey), root_key.to_pkcs8_pem(), 0600));
  TRY(write_file_atomic(path_in(dir, Files::kPckCaKey), pck_ca_key.to_pkcs8_pem(), 0600));
  TRY(write_file_atomic(path_in(dir, Files::kPckKey), pck_key.to_pkcs8_pem(), 0600));
  TRY(write_file_atomic(path_in(dir, Files::kTcbKey), tcb_key.to_pkcs8_pem(), 0600));
  TRY(write_file_atomic(path_in(dir, Files::kQeKey), qe_key.to_pkcs8_pem(), 0600));
  TRY(write_file_atomic(path_in(dir, Files::kRootPem), impl->root_pem));
  TRY(write_file_atomic(path_in(dir, Files::kRootDer), ByteView(cert_der(impl->root.get()))));
  TRY(write_file_atomic(path_in(dir, Files::kPckCaPem), impl->pck_ca_pem));
  TRY(write_file_atomic(path_in(dir, Files::kPckPem), impl->pck_pem));
  TRY(write_file_atomic(path_in(dir, Files::kTcbPem), impl->tcb_pem));
  ojson p;
  p["warning"] = "SIMULATED Intel DCAP platform (dstack-cpp). Quotes from it prove nothing about real hardware.";
  p["ppid"] = to_hex(impl->ppid);
  p["fmspc"] = to_hex(impl->fmspc);
  p["pce_id"] = to_hex(impl->pce_id);
  p["qe_id"] = to_hex(impl->qe_id);
  p["platform_instance_id"] = to_hex(impl->platform_instance_id);
  p["qe_mrenclave"] = to_hex(impl->qe_mrenclave);
  p["qe_mrsigner"] = to_hex(impl->qe_mrsigner);
  p["revoked_serial"] = to_hex(impl->revoked_serial);
  TRY(write_file_atomic(path_in(dir, Files::kPlatform), p.dump(2) + "\n"));
  spdlog::info("created simulated DCAP platform in {} (root CA: {})", dir, kRootCn);
  return SimPlatform(std::move(impl));
}

Result<SimPlatform> SimPlatform::load(const std::string& dir) {
  auto meta_text = read_file(path_in(dir, Files::kPlatform));
  if (!meta_text) return meta_text.error().wrap("sim platform: no platform in " + dir + " (run `dstack-tdx-sim init`)");
  auto meta = nlohmann::json::parse(*meta_text, nullptr, false);
  if (meta.is_discarded() || !meta.is_object()) return make_error("sim platform: " + path_in(dir, Files::kPlatform) + " is not JSON");
  TRY_ASSIGN(auto root_key, load_key(dir, Files::kRootKey));
  TRY_ASSIGN(auto pck_ca_key, load_key(dir, Files::kPckCaKey));
  TRY_ASSIGN(auto pck_key, load_key(dir, Files::kPckKey));
  TRY_ASSIGN(auto tcb_key, load_key(dir, Files::kTcbKey));
  TRY_ASSIGN(auto qe_key, load_key(dir, Files::kQeKey));
  auto impl = std::make_shared<Impl>(root_key, pck_ca_key, pck_key, tcb_key, qe_key);
  impl->dir = dir;
  auto hexfield = [&](const char* name, size_t size) -> Result<Bytes> {
    if (!meta.contains(name) || !meta[name].is_string()) return make_error(std::string("sim platform: platform.json lacks ") + name);
    auto b = from_hex(meta[name].get<std::string>());
    if (!b || b->size() != size) return make_error(std::string("sim platform: platform.json field ") + name + " is invalid");
    return std::move(b).value();
  };
  TRY_ASSIGN(impl->ppid, hexfield("ppid", 16));
  TRY_ASSIGN(impl->fmspc, hexfield("fmspc", 6));
  TRY_ASSIGN(impl->pce_id, hexfield("pce_id", 2));
  TRY_ASSIGN(impl->qe_id, hexfield("qe_id", 16));
  TRY_ASSIGN(impl->platform_instance_id, hexfield("platform_instance_id", 16));
  TRY_ASSIGN(impl->qe_mrenclave, hexfield("qe_mrenclave", 32));
  TRY_ASSIGN(impl->qe_mrsigner, hexfield("qe_mrsigner", 32));
  TRY_ASSIGN(impl->revoked_serial, hexfield("revoked_serial", 16));
  struct { const char* file; X509Ptr* cert; std::string* pem; const P256Key* key; } certs[] = {
      {Files::kRootPem, &impl->root, &impl->root_pem, &impl->root_key},
      {Files::kPckCaPem, &impl->pck_ca, &impl->pck_ca_pem, &impl->pck_ca_key},
      {Files::kPckPem, &impl->pck, &impl->pck_pem, &impl->pck_key},
      {Files::kTcbPem, &impl->tcb, &impl->tcb_pem, &impl->tcb_key},
  };
  for (auto& c : certs) {
    auto pem = read_file(path_in(dir, c.file));
    if (!pem) return pem.error().wrap("sim platform");
    TRY_ASSIGN(*c.cert, cert_from_pem(*pem, c.file));
    *c.pem = *pem;
    if (X509_check_private_key(c.cert->get(), c.key->get()) != 1) {
      ERR_clear_error();
      return make_error(std::string("sim platform: ") + c.file + " does not match its private key");
    }
  }
  return SimPlatform(std::move(impl));
}

Result<SimPlatform> SimPlatform::load_or_create(const std::string& dir) {
  if (file_exists(path_in(dir, Files::kPlatform))) return load(dir);
  return create(dir);
}

Result<Bytes> SimPlatform::quote_tdx(const TdQuoteInput& in) const {
  const Impl& p = *impl_;
  Bytes body;
  TRY_ASSIGN(Bytes tee_tcb_svn, field(in.tee_tcb_svn, 16, "tee_tcb_svn", ByteView(kTeeTcbSvn, 16)));
  Bytes default_seam = crypto::sha384(to_bytes("dstack-cpp simulated TDX module"));
  TRY_ASSIGN(Bytes mr_seam, field(in.mr_seam, 48, "mr_seam", default_seam));
  TRY_ASSIGN(Bytes mr_signer_seam, field(in.mr_signer_seam, 48, "mr_signer_seam"));
  TRY_ASSIGN(Bytes seam_attributes, field(in.seam_attributes, 8, "seam_attributes"));
  TRY_ASSIGN(Bytes td_attributes, field(in.td_attributes, 8, "td_attributes", ByteView(kDefaultTdAttributes, 8)));
  TRY_ASSIGN(Bytes xfam, field(in.xfam, 8, "xfam", ByteView(kDefaultXfam, 8)));
  TRY_ASSIGN(Bytes mr_td, field(in.mr_td, 48, "mr_td"));
  TRY_ASSIGN(Bytes mr_config_id, field(in.mr_config_id, 48, "mr_config_id"));
  TRY_ASSIGN(Bytes mr_owner, field(in.mr_owner, 48, "mr_owner"));
  TRY_ASSIGN(Bytes mr_owner_config, field(in.mr_owner_config, 48, "mr_owner_config"));
  TRY_ASSIGN(Bytes rtmr0, field(in.rtmr0, 48, "rtmr0"));
  TRY_ASSIGN(Bytes rtmr1, field(in.rtmr1, 48, "rtmr1"));
  TRY_ASSIGN(Bytes rtmr2, field(in.rtmr2, 48, "rtmr2"));
  TRY_ASSIGN(Bytes rtmr3, field(in.rtmr3, 48, "rtmr3"));
  TRY_ASSIGN(Bytes report_data, report_data_field(in.report_data));
  for (const Bytes* f : {&tee_tcb_svn, &mr_seam, &mr_signer_seam, &seam_attributes, &td_attributes, &xfam, &mr_td,
                         &mr_config_id, &mr_owner, &mr_owner_config, &rtmr0, &rtmr1, &rtmr2, &rtmr3, &report_data}) {
    put(body, *f);
  }
  if (body.size() != 584) return make_error("sim quote: internal error, TD report body is not 584 bytes");
  Bytes quote = p.header(4, 0x81, 0, 0);
  put(quote, body);
  TRY_ASSIGN(Bytes sig, p.qe_key.sign_raw(quote));
  TRY_ASSIGN(Bytes cert6, p.qe_report_cert_data(kTdQeProdId));
  Bytes sigdata;
  put(sigdata, sig);
  put(sigdata, p.att_pub());
  put_u16(sigdata, 6);
  put_u32(sigdata, static_cast<uint32_t>(cert6.size()));
  put(sigdata, cert6);
  put_u32(quote, static_cast<uint32_t>(sigdata.size()));
  put(quote, sigdata);
  return quote;
}

Result<Bytes> SimPlatform::quote_sgx(const SgxQuoteInput& in) const {
  const Impl& p = *impl_;
  static const uint8_t kDefaultAttrs[16] = {0x05, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0};
  TRY_ASSIGN(Bytes cpu_svn, field(in.cpu_svn, 16, "cpu_svn", ByteView(kCpuSvn, 16)));
  TRY_ASSIGN(Bytes attributes, field(in.attributes, 16, "attributes", ByteView(kDefaultAttrs, 16)));
  TRY_ASSIGN(Bytes mr_enclave, field(in.mr_enclave, 32, "mr_enclave"));
  TRY_ASSIGN(Bytes mr_signer, field(in.mr_signer, 32, "mr_signer"));
  TRY_ASSIGN(Bytes report_data, report_data_field(in.report_data));
  Bytes body;
  put(body, cpu_svn);
  put_u32(body, in.misc_select);
  body.resize(body.size() + 28, 0);
  put(body, attributes);
  put(body, mr_enclave);
  body.resize(body.size() + 32, 0);
  put(body, mr_signer);
  body.resize(body.size() + 96, 0);
  put_u16(body, in.isv_prod_id);
  put_u16(body, in.isv_svn);
  body.resize(body.size() + 60, 0);
  put(body, report_data);
  if (body.size() != 384) return make_error("sim quote: internal error, SGX report body is not 384 bytes");
  Bytes quote = p.header(3, 0, kQeIsvSvn, kPceSvn);
  put(quote, body);
  TRY_ASSIGN(Bytes sig, p.qe_key.sign_raw(quote));
  TRY_ASSIGN(Bytes qe, p.qe_report_cert_data(kSgxQeProdId));
  Bytes sigdata;
  put(sigdata, sig);
  put(sigdata, p.att_pub());
  put(sigdata, qe);  // v3: QE report, sig, auth data and certification data follow directly
  put_u32(quote, static_cast<uint32_t>(sigdata.size()));
  put(quote, sigdata);
  return quote;
}

namespace {

ojson components(const int (&svns)[16], bool tdx) {
  ojson arr = ojson::array();
  for (int i = 0; i < 16; ++i) {
    ojson c;
    c["svn"] = svns[i];
    if (!tdx && i == 0) { c["category"] = "BIOS"; c["type"] = "Early Microcode Update"; }
    if (!tdx && i == 1) { c["category"] = "OS/VMM"; c["type"] = "SGX Late Microcode Update"; }
    if (tdx && i < 2) { c["category"] = "OS/VMM"; c["type"] = "TDX Module"; }
    if (tdx && i == 2) { c["category"] = "OS/VMM"; c["type"] = "TDX Late Microcode Update"; }
    arr.push_back(c);
  }
  return arr;
}

std::string tcb_info_json(const SimPlatform::Impl& p, int64_t now, bool tdx) {
  ojson t;
  t["id"] = tdx ? "TDX" : "SGX";
  t["version"] = 3;
  t["issueDate"] = iso8601(now - 86400);
  t["nextUpdate"] = iso8601(now + 30 * 86400);
  t["fmspc"] = upper_hex(p.fmspc);
  t["pceId"] = upper_hex(p.pce_id);
  t["tcbType"] = 0;
  t["tcbEvaluationDataNumber"] = 17;
  const std::string zeros48(96, '0');
  if (tdx) {
    t["tdxModule"] = {{"mrsigner", zeros48}, {"attributes", "0000000000000000"}, {"attributesMask", "FFFFFFFFFFFFFFFF"}};
    ojson ids = ojson::array();
    for (int v : {static_cast<int>(kTeeTcbSvn[1]), 3}) {
      char id[16];
      std::snprintf(id, sizeof(id), "TDX_%02d", v);
      ojson m;
      m["id"] = id;
      m["mrsigner"] = zeros48;
      m["attributes"] = "0000000000000000";
      m["attributesMask"] = "FFFFFFFFFFFFFFFF";
      m["tcbLevels"] = ojson::array({{{"tcb", {{"isvsvn", kTeeTcbSvn[0] - 2}}}, {"tcbDate", "2024-03-13T00:00:00Z"},
                                      {"tcbStatus", "UpToDate"}},
                                     {{"tcb", {{"isvsvn", 1}}}, {"tcbDate", "2023-08-09T00:00:00Z"},
                                      {"tcbStatus", "OutOfDate"}}});
      ids.push_back(m);
    }
    t["tdxModuleIdentities"] = ids;
  }
  ojson levels = ojson::array();
  for (int lvl = 0; lvl < 2; ++lvl) {
    int sgx[16], tdxc[16];
    for (int i = 0; i < 16; ++i) {
      sgx[i] = kSgxCompsUpToDate[i];
      tdxc[i] = kTdxCompsUpToDate[i];
    }
    ojson tcb;
    tcb["sgxtcbcomponents"] = components(sgx, false);
    tcb["pcesvn"] = lvl == 0 ? kPceSvnUpToDate : 5;
    if (tdx) tcb["tdxtcbcomponents"] = components(tdxc, true);
    ojson l;
    l["tcb"] = tcb;
    l["tcbDate"] = lvl == 0 ? "2024-03-13T00:00:00Z" : "2018-01-04T00:00:00Z";
    l["tcbStatus"] = lvl == 0 ? "UpToDate" : "OutOfDate";
    if (lvl == 1) l["advisoryIDs"] = ojson::array({"INTEL-SA-00106", "INTEL-SA-00115"});
    levels.push_back(l);
  }
  t["tcbLevels"] = levels;
  return t.dump();
}

std::string qe_identity_json(const SimPlatform::Impl& p, int64_t now, bool tdx) {
  ojson q;
  q["id"] = tdx ? "TD_QE" : "QE";
  q["version"] = 2;
  q["issueDate"] = iso8601(now - 86400);
  q["nextUpdate"] = iso8601(now + 30 * 86400);
  q["tcbEvaluationDataNumber"] = 17;
  q["miscselect"] = "00000000";
  q["miscselectMask"] = "FFFFFFFF";
  q["attributes"] = "11000000000000000000000000000000";
  q["attributesMask"] = "FBFFFFFFFFFFFFFF0000000000000000";
  q["mrsigner"] = upper_hex(p.qe_mrsigner);
  q["isvprodid"] = tdx ? kTdQeProdId : kSgxQeProdId;
  q["tcbLevels"] = ojson::array({{{"tcb", {{"isvsvn", kQeIsvSvn}}}, {"tcbDate", "2024-03-13T00:00:00Z"},
                                  {"tcbStatus", "UpToDate"}},
                                 {{"tcb", {{"isvsvn", 2}}}, {"tcbDate", "2023-08-09T00:00:00Z"},
                                  {"tcbStatus", "OutOfDate"}, {"advisoryIDs", ojson::array({"INTEL-SA-00615"})}}});
  return q.dump();
}

Result<std::string> collateral(const SimPlatform::Impl& p, int64_t now, bool tdx) {
  TRY_ASSIGN(Bytes root_crl, make_crl(p.root.get(), p.root_key, now, {}));
  TRY_ASSIGN(Bytes pck_crl, make_crl(p.pck_ca.get(), p.pck_ca_key, now, p.revoked_serial));
  std::string tcb_info = tcb_info_json(p, now, tdx);
  std::string qe_identity = qe_identity_json(p, now, tdx);
  TRY_ASSIGN(Bytes tcb_sig, p.tcb_key.sign_raw(as_view(tcb_info)));
  TRY_ASSIGN(Bytes qe_sig, p.tcb_key.sign_raw(as_view(qe_identity)));
  ojson c;
  c["pck_crl_issuer_chain"] = p.pck_ca_pem + p.root_pem;
  c["root_ca_crl"] = to_hex(root_crl);
  c["pck_crl"] = to_hex(pck_crl);
  c["tcb_info_issuer_chain"] = p.tcb_pem + p.root_pem;
  c["tcb_info"] = tcb_info;
  c["tcb_info_signature"] = to_hex(tcb_sig);
  c["qe_identity_issuer_chain"] = p.tcb_pem + p.root_pem;
  c["qe_identity"] = qe_identity;
  c["qe_identity_signature"] = to_hex(qe_sig);
  return c.dump();
}

}  // namespace

Result<std::string> SimPlatform::tdx_collateral_json(int64_t now) const { return collateral(*impl_, now, true); }
Result<std::string> SimPlatform::sgx_collateral_json(int64_t now) const { return collateral(*impl_, now, false); }

std::string SimPlatform::root_ca_pem() const { return impl_->root_pem; }
Bytes SimPlatform::root_ca_der() const { return cert_der(impl_->root.get()); }
Bytes SimPlatform::ppid() const { return impl_->ppid; }
Bytes SimPlatform::fmspc() const { return impl_->fmspc; }
Bytes SimPlatform::qe_id() const { return impl_->qe_id; }
Bytes SimPlatform::tee_tcb_svn() const { return Bytes(kTeeTcbSvn, kTeeTcbSvn + 16); }
const std::string& SimPlatform::dir() const { return impl_->dir; }

}  // namespace dstack::attest::sim
