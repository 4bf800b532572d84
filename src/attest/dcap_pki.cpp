#include "attest/dcap_pki.h"

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <ctime>

#include "crypto/p256.h"

namespace dstack::attest::pki {
namespace {

std::string ossl_err() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

X509Ptr wrap(X509* x) { return X509Ptr(x, X509_free); }

// Minimal bounds-checked DER TLV reader for the PCK SGX extension.
struct Der {
  ByteView data;
  size_t off = 0;

  struct Tlv {
    uint8_t tag;
    ByteView value;
  };
  bool done() const { return off >= data.size(); }
  Result<Tlv> next() {
    if (off + 2 > data.size()) return make_error("DER: truncated TLV header at offset " + std::to_string(off));
    uint8_t tag = data[off];
    size_t len = data[off + 1];
    size_t p = off + 2;
    if (len & 0x80) {
      size_t n = len & 0x7f;
      if (n == 0 || n > 4 || p + n > data.size()) return make_error("DER: bad length at offset " + std::to_string(off));
      len = 0;
      for (size_t i = 0; i < n; ++i) len = (len << 8) | data[p + i];
      p += n;
    }
    if (len > data.size() - p) return make_error("DER: value overruns buffer at offset " + std::to_string(off));
    off = p + len;
    return Tlv{tag, data.subspan(p, len)};
  }
};

// DER content bytes of OID 1.2.840.113741.1.13.1 (Intel SGX extension) and its arcs.
const uint8_t kSgxExtOid[] = {0x2A, 0x86, 0x48, 0x86, 0xF8, 0x4D, 0x01, 0x0D, 0x01};

bool oid_is(ByteView oid, std::initializer_list<uint8_t> suffix) {
  if (oid.size() != sizeof kSgxExtOid + suffix.size()) return false;
  if (!std::equal(std::begin(kSgxExtOid), std::end(kSgxExtOid), oid.begin())) return false;
  return std::equal(suffix.begin(), suffix.end(), oid.begin() + sizeof kSgxExtOid);
}

Result<uint64_t> der_uint(ByteView v) {
  if (v.empty() || v.size() > 8) return make_error("DER: bad INTEGER length");
  uint64_t x = 0;
  for (uint8_t b : v) x = (x << 8) | b;
  return x;
}

}  // namespace

int64_t asn1_time_to_unix(const void* t) {
  struct tm tm {};
  if (ASN1_TIME_to_tm(static_cast<const ASN1_TIME*>(t), &tm) != 1) return 0;
  return static_cast<int64_t>(timegm(&tm));
}

std::string cert_cn(X509* cert) {
  char buf[256] = {0};
  X509_NAME* name = X509_get_subject_name(cert);
  if (name == nullptr || X509_NAME_get_text_by_NID(name, NID_commonName, buf, sizeof buf) < 0) return "(no CN)";
  return buf;
}

Result<std::vector<X509Ptr>> certs_from_pem(std::string_view pem, const std::string& what) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  std::vector<X509Ptr> out;
  while (true) {
    X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
    if (x == nullptr) break;
    out.push_back(wrap(x));
  }
  ERR_clear_error();
  if (out.empty()) return make_error(what + ": no PEM certificate found");
  return out;
}

Result<X509Ptr> cert_from_der(ByteView der, const std::string& what) {
  const unsigned char* p = der.data();
  X509* x = d2i_X509(nullptr, &p, static_cast<long>(der.size()));
  if (x == nullptr) return make_error(what + ": invalid DER certificate: " + ossl_err());
  return wrap(x);
}

Result<CrlPtr> crl_from_der(ByteView der, const std::string& what) {
  const unsigned char* p = der.data();
  X509_CRL* c = d2i_X509_CRL(nullptr, &p, static_cast<long>(der.size()));
  if (c == nullptr) return make_error(what + ": invalid DER CRL: " + ossl_err());
  return CrlPtr(c, X509_CRL_free);
}

Status verify_chain(const std::vector<X509Ptr>& chain, const std::vector<X509Ptr>& roots,
                    const std::vector<CrlPtr>& crls, int64_t now, const std::string& what, Window& window) {
  if (chain.empty()) return make_error(what + ": empty certificate chain");
  std::unique_ptr<X509_STORE, decltype(&X509_STORE_free)> store(X509_STORE_new(), X509_STORE_free);
  for (const auto& r : roots) X509_STORE_add_cert(store.get(), r.get());
  std::unique_ptr<STACK_OF(X509), void (*)(STACK_OF(X509)*)> untrusted(
      sk_X509_new_null(), [](STACK_OF(X509)* s) { sk_X509_free(s); });
  for (size_t i = 1; i < chain.size(); ++i) sk_X509_push(untrusted.get(), chain[i].get());
  std::unique_ptr<STACK_OF(X509_CRL), void (*)(STACK_OF(X509_CRL)*)> crl_stack(
      sk_X509_CRL_new_null(), [](STACK_OF(X509_CRL)* s) { sk_X509_CRL_free(s); });
  for (const auto& c : crls) sk_X509_CRL_push(crl_stack.get(), c.get());

  std::unique_ptr<X509_STORE_CTX, decltype(&X509_STORE_CTX_free)> ctx(X509_STORE_CTX_new(), X509_STORE_CTX_free);
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store.get(), chain[0].get(), untrusted.get()) != 1) {
    return make_error(what + ": cannot initialise certificate verification: " + ossl_err());
  }
  X509_STORE_CTX_set0_crls(ctx.get(), crl_stack.get());
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  X509_VERIFY_PARAM_set_time(param, static_cast<time_t>(now));
  X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
  int rc = X509_verify_cert(ctx.get());
  if (rc != 1) {
    int err = X509_STORE_CTX_get_error(ctx.get());
    X509* bad = X509_STORE_CTX_get_current_cert(ctx.get());
    ERR_clear_error();
    std::string msg = what + ": " + X509_verify_cert_error_string(err);
    if (bad != nullptr) msg += " (certificate \"" + cert_cn(bad) + "\")";
    if (err == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY || err == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT ||
        err == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN || err == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT) {
      msg += "; the chain does not end at a trusted root (Intel SGX Root CA unless another root was opted in)";
    }
    return make_error(msg);
  }
  STACK_OF(X509)* built = X509_STORE_CTX_get0_chain(ctx.get());
  for (int i = 0; i < sk_X509_num(built); ++i) {
    X509* c = sk_X509_value(built, i);
    window.narrow(asn1_time_to_unix(X509_get0_notBefore(c)), asn1_time_to_unix(X509_get0_notAfter(c)));
  }
  for (const auto& c : crls) {
    int64_t lo = asn1_time_to_unix(X509_CRL_get0_lastUpdate(c.get()));
    const ASN1_TIME* next = X509_CRL_get0_nextUpdate(c.get());
    window.narrow(lo, next != nullptr ? asn1_time_to_unix(next) : INT64_MAX);
  }
  return Status::Ok();
}

bool verify_raw_sig(EVP_PKEY* key, ByteView msg, ByteView sig64) {
  if (key == nullptr || sig64.size() != 64) return false;
  auto der = crypto::ecdsa_raw_to_der(sig64);
  if (!der.ok()) return false;
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  bool ok = md != nullptr && EVP_DigestVerifyInit(md, nullptr, EVP_sha256(), nullptr, key) == 1 &&
            EVP_DigestVerify(md, der->data(), der->size(), msg.data(), msg.size()) == 1;
  EVP_MD_CTX_free(md);
  ERR_clear_error();
  return ok;
}

Result<PkeyPtr> pkey_from_xy(ByteView xy64) {
  if (xy64.size() != 64) return make_error("attestation key must be 64 bytes X||Y");
  uint8_t pt[65];
  pt[0] = 0x04;
  std::copy(xy64.begin(), xy64.end(), pt + 1);
  OSSL_PARAM params[3];
  char group[] = "prime256v1";
  params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0);
  params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof pt);
  params[2] = OSSL_PARAM_construct_end();
  EVP_PKEY_CTX* pctx = EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr);
  EVP_PKEY* pkey = nullptr;
  bool ok = pctx != nullptr && EVP_PKEY_fromdata_init(pctx) == 1 &&
            EVP_PKEY_fromdata(pctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) == 1;
  EVP_PKEY_CTX_free(pctx);
  if (!ok || pkey == nullptr) {
    EVP_PKEY_free(pkey);
    return make_error("attestation key is not a valid P-256 point: " + ossl_err());
  }
  return PkeyPtr(pkey, EVP_PKEY_free);
}

PkeyPtr cert_pubkey(const X509Ptr& cert) {
  EVP_PKEY* k = X509_get_pubkey(cert.get());
  return PkeyPtr(k, EVP_PKEY_free);
}

Result<PckExtension> parse_pck_extension(X509* cert) {
  ASN1_OBJECT* obj = OBJ_txt2obj("1.2.840.113741.1.13.1", 1);
  int idx = X509_get_ext_by_OBJ(cert, obj, -1);
  ASN1_OBJECT_free(obj);
  if (idx < 0) return make_error("PCK certificate has no Intel SGX extension (OID 1.2.840.113741.1.13.1)");
  X509_EXTENSION* ext = X509_get_ext(cert, idx);
  ASN1_OCTET_STRING* os = X509_EXTENSION_get_data(ext);
  ByteView body(ASN1_STRING_get0_data(os), static_cast<size_t>(ASN1_STRING_length(os)));

  PckExtension out;
  bool have_tcb = false;
  Der outer{body};
  TRY_ASSIGN(auto seq, outer.next());
  if (seq.tag != 0x30) return make_error("PCK SGX extension: expected SEQUENCE");
  Der items{seq.value};
  while (!items.done()) {
    TRY_ASSIGN(auto item, items.next());
    if (item.tag != 0x30) return make_error("PCK SGX extension: expected SEQUENCE item");
    Der kv{item.value};
    TRY_ASSIGN(auto oid, kv.next());
    TRY_ASSIGN(auto val, kv.next());
    if (oid.tag != 0x06) return make_error("PCK SGX extension: expected OID");
    if (oid_is(oid.value, {0x01})) {
      out.ppid.assign(val.value.begin(), val.value.end());
    } else if (oid_is(oid.value, {0x03})) {
      out.pce_id.assign(val.value.begin(), val.value.end());
    } else if (oid_is(oid.value, {0x04})) {
      out.fmspc.assign(val.value.begin(), val.value.end());
    } else if (oid_is(oid.value, {0x02})) {
      have_tcb = true;
      out.sgx_tcb_components.assign(16, 0);
      Der tcb{val.value};
      while (!tcb.done()) {
        TRY_ASSIGN(auto comp, tcb.next());
        Der ckv{comp.value};
        TRY_ASSIGN(auto coid, ckv.next());
        TRY_ASSIGN(auto cval, ckv.next());
        // Component OIDs are 1.2.840.113741.1.13.1.2.N: prefix + 0x02 + N.
        if (coid.value.size() != sizeof kSgxExtOid + 2 || coid.value[sizeof kSgxExtOid] != 0x02) continue;
        uint8_t n = coid.value[sizeof kSgxExtOid + 1];
        if (n >= 1 && n <= 16) {
          TRY_ASSIGN(uint64_t v, der_uint(cval.value));
          if (v > 255) return make_error("PCK SGX extension: TCB component SVN out of range");
          out.sgx_tcb_components[n - 1] = static_cast<uint8_t>(v);
        } else if (n == 17) {
          TRY_ASSIGN(uint64_t v, der_uint(cval.value));
          if (v > 0xffff) return make_error("PCK SGX extension: PCESVN out of range");
          out.pce_svn = static_cast<uint16_t>(v);
        } else if (n == 18) {
          out.cpu_svn.assign(cval.value.begin(), cval.value.end());
        }
      }
    }
  }
  if (out.ppid.size() != 16) return make_error("PCK SGX extension: PPID missing or not 16 bytes");
  if (out.fmspc.size() != 6) return make_error("PCK SGX extension: FMSPC missing or not 6 bytes");
  if (!have_tcb) return make_error("PCK SGX extension: TCB missing");
  return out;
}

}  // namespace dstack::attest::pki
