#include "crypto/x509.h"

#include <gtest/gtest.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <ctime>

#include "test_util.h"

namespace dstack::crypto {
namespace {

using testing::hex;

constexpr const char* kAppIdOid = "1.3.6.1.4.1.62397.1.3";
constexpr const char* kUsageOid = "1.3.6.1.4.1.62397.1.4";

struct Pki {
  P256Key root_key = P256Key::generate().value();
  P256Key ca_key = P256Key::generate().value();
  P256Key leaf_key = P256Key::generate().value();
  Certificate root{nullptr};
  Certificate ca{nullptr};
  Certificate leaf{nullptr};
};

Pki make_pki(int64_t leaf_not_after = 0) {
  Pki p;
  CertSpec root_spec;
  root_spec.org_name = "Dstack";
  root_spec.common_name = "Dstack KMS CA";
  root_spec.is_ca = true;
  root_spec.ca_path_len = 1;
  p.root = issue_certificate(root_spec, p.root_key, p.root_key, nullptr).value();

  CertSpec ca_spec;
  ca_spec.org_name = "Dstack";
  ca_spec.common_name = "Dstack App CA";
  ca_spec.is_ca = true;
  ca_spec.ca_path_len = 0;
  ca_spec.extensions[kAppIdOid] = hex("0102030405060708090a0b0c0d0e0f1011121314");
  ca_spec.extensions[kUsageOid] = to_bytes("app:ca");
  p.ca = issue_certificate(ca_spec, p.ca_key, p.root_key, &p.root).value();

  CertSpec leaf_spec;
  leaf_spec.common_name = "app.example.com";
  leaf_spec.alt_names = {"app.example.com", "127.0.0.1", "*.example.com", "::1"};
  leaf_spec.usage_server_auth = true;
  leaf_spec.extensions[kUsageOid] = to_bytes("app:custom");
  if (leaf_not_after != 0) leaf_spec.not_after = leaf_not_after;
  p.leaf = issue_certificate(leaf_spec, p.leaf_key, p.ca_key, &p.ca).value();
  return p;
}

TEST(X509, IssueAndParseFields) {
  Pki p = make_pki();
  EXPECT_EQ(X509_get_version(p.root.get()), X509_VERSION_3);
  EXPECT_EQ(p.root.subject_cn(), "Dstack KMS CA");
  EXPECT_EQ(p.root.subject_org(), "Dstack");
  EXPECT_EQ(p.root.issuer_cn(), "Dstack KMS CA");
  EXPECT_TRUE(p.root.is_ca());
  EXPECT_EQ(p.root.path_len(), 1);
  EXPECT_EQ(p.ca.path_len(), 0);
  EXPECT_EQ(p.ca.issuer_cn(), "Dstack KMS CA");
  EXPECT_FALSE(p.leaf.is_ca());
  EXPECT_EQ(p.leaf.path_len(), std::nullopt);
  EXPECT_EQ(p.leaf.subject_org(), "");
  EXPECT_EQ(p.root.not_before(), 157766400);
  int64_t now = std::time(nullptr);
  EXPECT_NEAR(static_cast<double>(p.root.not_after()), static_cast<double>(now + 3650LL * 86400), 120.0);
  EXPECT_EQ(p.leaf.dns_names(), (std::vector<std::string>{"app.example.com", "*.example.com"}));
  EXPECT_EQ(p.leaf.spki_der(), p.leaf_key.spki_der());

  // Key usage / EKU / SKI/AKI as OpenSSL sees them.
  EXPECT_TRUE(X509_get_key_usage(p.root.get()) & KU_KEY_CERT_SIGN);
  EXPECT_TRUE(X509_get_key_usage(p.root.get()) & KU_CRL_SIGN);
  EXPECT_TRUE(X509_get_key_usage(p.leaf.get()) & KU_DIGITAL_SIGNATURE);
  EXPECT_FALSE(X509_get_key_usage(p.leaf.get()) & KU_KEY_CERT_SIGN);
  EXPECT_EQ(X509_get_extended_key_usage(p.root.get()), UINT32_MAX);  // no EKU extension
  EXPECT_TRUE(X509_get_extended_key_usage(p.leaf.get()) & XKU_SSL_SERVER);
  EXPECT_FALSE(X509_get_extended_key_usage(p.leaf.get()) & XKU_SSL_CLIENT);
  ASSERT_NE(X509_get0_subject_key_id(p.ca.get()), nullptr);
  ASSERT_NE(X509_get0_authority_key_id(p.leaf.get()), nullptr);
  EXPECT_EQ(ASN1_OCTET_STRING_cmp(X509_get0_subject_key_id(p.ca.get()), X509_get0_authority_key_id(p.leaf.get())), 0);

  // Serial is positive.
  const ASN1_INTEGER* sn = X509_get0_serialNumber(p.leaf.get());
  EXPECT_EQ(ASN1_STRING_type(sn), V_ASN1_INTEGER);

  // IP SANs are iPAddress entries.
  auto* gens = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(p.leaf.get(), NID_subject_alt_name, nullptr, nullptr));
  ASSERT_NE(gens, nullptr);
  int ips = 0;
  for (int i = 0; i < sk_GENERAL_NAME_num(gens); ++i) ips += sk_GENERAL_NAME_value(gens, i)->type == GEN_IPADD;
  GENERAL_NAMES_free(gens);
  EXPECT_EQ(ips, 2);
}

TEST(X509, CustomExtensionWrappedInOctetString) {
  Pki p = make_pki();
  auto app_id = p.ca.extension(kAppIdOid);
  ASSERT_TRUE(app_id.has_value());
  EXPECT_EQ(to_hex(*app_id), "0102030405060708090a0b0c0d0e0f1011121314");
  auto raw = p.ca.extension_raw(kAppIdOid);
  ASSERT_TRUE(raw.has_value());
  // extnValue content = 04 14 <20 bytes> (spec §3.2).
  EXPECT_EQ(to_hex(*raw), "04140102030405060708090a0b0c0d0e0f1011121314");
  EXPECT_EQ(to_string(*p.leaf.extension(kUsageOid)), "app:custom");
  EXPECT_FALSE(p.leaf.extension(kAppIdOid).has_value());
  EXPECT_FALSE(p.leaf.extension("not an oid").has_value());
  // Custom extensions are non-critical.
  ASN1_OBJECT* obj = OBJ_txt2obj(kAppIdOid, 1);
  int idx = X509_get_ext_by_OBJ(p.ca.get(), obj, -1);
  ASN1_OBJECT_free(obj);
  ASSERT_GE(idx, 0);
  EXPECT_EQ(X509_EXTENSION_get_critical(X509_get_ext(p.ca.get(), idx)), 0);
  // Standard extension raw access: basicConstraints DER.
  auto bc = p.root.extension_raw("2.5.29.19");
  ASSERT_TRUE(bc.has_value());
  EXPECT_EQ(to_hex(*bc), "30060101ff020101");
}

TEST(X509, PemDerRoundTrip) {
  Pki p = make_pki();
  auto from_pem = Certificate::from_pem(p.leaf.to_pem());
  ASSERT_TRUE(from_pem.ok()) << from_pem.error().message;
  EXPECT_EQ(from_pem->to_der(), p.leaf.to_der());
  auto from_der = Certificate::from_der(p.leaf.to_der());
  ASSERT_TRUE(from_der.ok());
  EXPECT_EQ(from_der->subject_cn(), "app.example.com");
  auto chain = Certificate::chain_from_pem(p.leaf.to_pem() + p.ca.to_pem() + p.root.to_pem());
  ASSERT_TRUE(chain.ok()) << chain.error().message;
  ASSERT_EQ(chain->size(), 3u);
  EXPECT_EQ((*chain)[2].to_der(), p.root.to_der());
}

TEST(X509, ParseErrorsAreErrors) {
  EXPECT_FALSE(Certificate::from_pem("").ok());
  EXPECT_FALSE(Certificate::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").ok());
  EXPECT_FALSE(Certificate::from_der(to_bytes("garbage")).ok());
  EXPECT_FALSE(Certificate::from_der({}).ok());
  EXPECT_FALSE(Certificate::chain_from_pem("no pem here").ok());
  Pki p = make_pki();
  Bytes der = p.leaf.to_der();
  der.push_back(0);
  EXPECT_FALSE(Certificate::from_der(der).ok());
  EXPECT_FALSE(Certificate::chain_from_pem(p.leaf.to_pem() + "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").ok());
}

TEST(X509, ChainVerifies) {
  Pki p = make_pki();
  EXPECT_TRUE(p.leaf.signed_by(p.ca));
  EXPECT_TRUE(p.ca.signed_by(p.root));
  EXPECT_TRUE(p.root.signed_by(p.root));
  EXPECT_TRUE(p.leaf.signed_by_key(p.ca_key));
  EXPECT_FALSE(p.leaf.signed_by(p.root));
  EXPECT_FALSE(p.leaf.signed_by_key(p.root_key));
  Status st = verify_chain(p.leaf, {p.ca}, p.root);
  EXPECT_TRUE(st.ok()) << st.error().message;
  EXPECT_TRUE(verify_chain(p.ca, {}, p.root).ok());
}

TEST(X509, WrongRootOrMissingIntermediateFails) {
  Pki p = make_pki();
  Pki other = make_pki();
  Status st = verify_chain(p.leaf, {p.ca}, other.root);
  ASSERT_FALSE(st.ok());
  EXPECT_FALSE(st.error().message.empty());
  EXPECT_FALSE(verify_chain(p.leaf, {}, p.root).ok());
  // Intermediate from another PKI with the same names: signature check must fail.
  EXPECT_FALSE(verify_chain(p.leaf, {other.ca}, p.root).ok());
}

TEST(X509, TamperedCertificateFails) {
  Pki p = make_pki();
  Bytes der = p.leaf.to_der();
  // Flip a byte inside the subject CN ("app.example.com") which is covered by the signature.
  std::string needle = "app.example.com";
  auto it = std::search(der.begin(), der.end(), needle.begin(), needle.end());
  ASSERT_NE(it, der.end());
  *it = 'b';
  auto tampered = Certificate::from_der(der);
  ASSERT_TRUE(tampered.ok()) << tampered.error().message;
  EXPECT_FALSE(tampered->signed_by(p.ca));
  Status st = verify_chain(*tampered, {p.ca}, p.root);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("signature"), std::string::npos) << st.error().message;
}

TEST(X509, ExpiredFails) {
  int64_t now = std::time(nullptr);
  Pki p = make_pki(now + 3600);
  EXPECT_TRUE(verify_chain(p.leaf, {p.ca}, p.root, now).ok());
  Status st = verify_chain(p.leaf, {p.ca}, p.root, now + 7200);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("expired"), std::string::npos) << st.error().message;
  // Before notBefore (1975) also fails.
  EXPECT_FALSE(verify_chain(p.leaf, {p.ca}, p.root, 100).ok());
}

TEST(X509, IssuerKeyMustMatch) {
  Pki p = make_pki();
  CertSpec spec;
  spec.common_name = "x";
  EXPECT_FALSE(issue_certificate(spec, p.leaf_key, p.root_key, nullptr).ok());  // self-signed needs own key
  EXPECT_FALSE(issue_certificate(spec, p.leaf_key, p.root_key, &p.ca).ok());    // key != issuer cert key
  spec.extensions["bogus"] = Bytes{1};
  EXPECT_FALSE(issue_certificate(spec, p.leaf_key, p.ca_key, &p.ca).ok());
}

TEST(X509, PublicOnlySubjectKey) {
  // Subject key may be public-only (e.g. from a CSR's SPKI).
  Pki p = make_pki();
  auto other = P256Key::generate();
  ASSERT_TRUE(other.ok());
  Bytes spki = other->spki_der();
  const unsigned char* ptr = spki.data();
  EVP_PKEY* pub = d2i_PUBKEY(nullptr, &ptr, static_cast<long>(spki.size()));
  ASSERT_NE(pub, nullptr);
  P256Key pub_key(pub);
  CertSpec spec;
  spec.common_name = "csr subject";
  spec.usage_client_auth = true;
  auto cert = issue_certificate(spec, pub_key, p.ca_key, &p.ca);
  ASSERT_TRUE(cert.ok()) << cert.error().message;
  EXPECT_EQ(cert->spki_der(), spki);
  EXPECT_TRUE(verify_chain(*cert, {p.ca}, p.root).ok());
}

}  // namespace
}  // namespace dstack::crypto
