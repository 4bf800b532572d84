#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "attest/attestation.h"
#include "attest/eventlog.h"
#include "attest/measurement.h"
#include "crypto/hash.h"

using namespace dstack;
using namespace dstack::attest;

namespace {

Bytes fill(size_t n, uint8_t v) { return Bytes(n, v); }

// Expected values below were computed independently with Python hashlib/json (and js-sha3 for Keccak).
std::vector<RuntimeEvent> sample_events() {
  return {
      {"system-preparing", {}, 1},
      {"app-id", fill(20, 0x11), 1},
      {"compose-hash", fill(32, 0x22), 1},
      {"instance-id", fill(20, 0x33), 1},
      {"boot-mr-done", {}, 1},
      {"key-provider", to_bytes(R"({"name":"kms","id":"abcd"})"), 1},
      {"system-ready", {}, 1},
      {"custom", to_bytes("x"), 1},
  };
}
const char* kFullRtmr3 =
    "127dc9fe57f42c1b29c66f0308a50fe4da7504afa5052acf269559f9b83413726989644ac4e69546833f92e6e22f070b";
const char* kBootRtmr3 =
    "51e6737cc37085e270f04c1719caf0bb97a2d7e4396f570793ce9d61da7672cfeb07f01e154cb615295785002e931c47";

Bytes app_id_payload() {
  Bytes p;
  for (int i = 0; i < 20; ++i) p.push_back(static_cast<uint8_t>(i));
  return p;
}

}  // namespace

TEST(EventLog, RuntimeEventDigestV1) {
  RuntimeEvent ev{"app-id", app_id_payload(), 1};
  Bytes pre = ev.preimage();
  EXPECT_EQ(to_hex(Bytes(pre.begin(), pre.begin() + 5)), "010000083a");
  EXPECT_EQ(to_hex(ev.digest()),
            "8afd336904cd928ad9bd019a89b31b387673ea9b07e82bb30fb9a65c80bb358548eb47ed2c57b8044a6e1f1533af243f");
}

TEST(EventLog, RuntimeEventDigestV2Jcs) {
  RuntimeEvent ev{"app-id", app_id_payload(), 2};
  EXPECT_EQ(to_string(ev.preimage()),
            R"({"name":"app-id","payload":"000102030405060708090a0b0c0d0e0f10111213","type":134217729})");
  EXPECT_EQ(to_hex(ev.digest()),
            "aa6f55e9b5a53fa9744eaaf780ea0f6500621e156b37c47940760d33fa0e3149e3533bc23f46746100764233a0ec0711");
  RuntimeEvent esc{"we\"ird\n", Bytes{1}, 2};
  EXPECT_EQ(to_string(esc.preimage()), R"({"name":"we\"ird\n","payload":"01","type":134217729})");
  EXPECT_EQ(to_hex(esc.digest()),
            "1ba8ae49b14cb4109edd9136b4340f4191d46eadfb5f12f64c72912274884a989a59e8a3b37f83e879a473f26309131c");
  EXPECT_EQ(jcs_string(std::string("a\x01\x7f\xc3\xa9", 5)), "\"a\\u0001\x7f\xc3\xa9\"");
}

TEST(EventLog, ReplayFullAndBootTime) {
  auto evs = sample_events();
  EXPECT_EQ(to_hex(replay_runtime_events(evs)), kFullRtmr3);
  EXPECT_EQ(to_hex(replay_runtime_events(evs, true)), kBootRtmr3);
  std::vector<Bytes> digests;
  for (const auto& e : evs) digests.push_back(e.digest());
  EXPECT_EQ(to_hex(replay_digests(digests)), kFullRtmr3);
  EXPECT_EQ(replay_digests({}), Bytes(48, 0));
  // Changing any payload changes the replay.
  evs[3].payload[0] ^= 1;
  EXPECT_NE(to_hex(replay_runtime_events(evs)), kFullRtmr3);
}

TEST(EventLog, ReplayFullEventLogPerImr) {
  std::vector<TdxEvent> log;
  TdxEvent boot0{0, 1, crypto::sha384(to_bytes("a")), "", {}, {}, {}};
  TdxEvent boot1{1, 1, crypto::sha384(to_bytes("b")), "", {}, {}, {}};
  log.push_back(boot0);
  log.push_back(boot1);
  for (const auto& e : sample_events()) log.push_back(e.to_tdx_event());
  auto r = replay_event_log(log);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)[0], rtmr_extend(Bytes(48, 0), boot0.digest));
  EXPECT_EQ((*r)[1], rtmr_extend(Bytes(48, 0), boot1.digest));
  EXPECT_EQ((*r)[2], Bytes(48, 0));
  EXPECT_EQ(to_hex((*r)[3]), kFullRtmr3);
  log[0].digest.clear();
  EXPECT_FALSE(replay_event_log(log).ok());
}

TEST(EventLog, TdxEventJsonRoundTrip) {
  auto v1 = RuntimeEvent{"compose-hash", fill(32, 0x22), 1}.to_tdx_event();
  auto v2 = RuntimeEvent{"app-id", fill(20, 0x11), 2}.to_tdx_event();
  auto j1 = tdx_event_to_json(v1);
  EXPECT_EQ(j1["imr"], 3);
  EXPECT_EQ(j1["event_type"], 134217729u);
  EXPECT_EQ(j1["event"], "compose-hash");
  EXPECT_EQ(j1["event_payload"], std::string(64, '2'));
  EXPECT_FALSE(j1.contains("version"));
  EXPECT_FALSE(j1.contains("preimage"));
  auto j2 = tdx_event_to_json(v2);
  EXPECT_EQ(j2["version"], 2);
  EXPECT_EQ(j2["preimage"], to_hex(RuntimeEvent{"app-id", fill(20, 0x11), 2}.preimage()));

  std::string text = event_log_to_json({v1, v2});
  auto back = event_log_from_json(text);
  ASSERT_TRUE(back.ok()) << back.error().message;
  ASSERT_EQ(back->size(), 2u);
  EXPECT_EQ((*back)[0], v1);
  EXPECT_EQ((*back)[1], v2);

  auto rt = runtime_event_from_tdx_event((*back)[1]);
  ASSERT_TRUE(rt.ok()) << rt.error().message;
  EXPECT_EQ(rt->version, 2u);
  auto bad = v1;
  bad.event_payload[0] ^= 1;
  EXPECT_FALSE(runtime_event_from_tdx_event(bad).ok());
  // 0x-prefixed hex accepted; malformed input rejected with context.
  auto ok = tdx_event_from_json(nlohmann::json::parse(
      R"({"imr":1,"event_type":4,"digest":"0xABCD","event":"","event_payload":""})"));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->digest, (Bytes{0xab, 0xcd}));
  auto missing = event_log_from_json(R"([{"imr":1,"event_type":4,"event":""}])");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("digest"), std::string::npos);
  EXPECT_FALSE(event_log_from_json(R"({"imr":1})").ok());
  EXPECT_FALSE(event_log_from_json(R"([{"imr":-1,"event_type":4,"digest":"","event_payload":""}])").ok());
}

TEST(EventLog, RuntimeEventLogLines) {
  RuntimeEvent a{"app-id", fill(20, 0x11), 1};
  RuntimeEvent b{"boot-mr-done", {}, 2};
  EXPECT_EQ(runtime_event_to_log_line(a), R"({"event":"app-id","payload":"ERERERERERERERERERERERERERE="})");
  EXPECT_EQ(runtime_event_to_log_line(b), R"({"event":"boot-mr-done","payload":"","version":2})");
  std::string file = runtime_event_to_log_line(a) + "\n\n" + runtime_event_to_log_line(b) + "\r\n";
  auto parsed = parse_runtime_event_log(file);
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  ASSERT_EQ(parsed->size(), 2u);
  EXPECT_EQ((*parsed)[0], a);
  EXPECT_EQ((*parsed)[1], b);
  auto bad = parse_runtime_event_log("{\"event\":\"x\",\"payload\":\"AA==\"}\nnot json\n");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("line 2"), std::string::npos);
  EXPECT_FALSE(parse_runtime_event_log(R"({"event":"x","payload":"AA==","version":3})").ok());
}

TEST(EventLog, FindRuntimeEventStopsAtSystemReady) {
  auto evs = sample_events();
  evs.push_back({"app-id", fill(20, 0x99), 1});
  EXPECT_EQ(find_runtime_event(evs, "app-id"), fill(20, 0x11));
  EXPECT_EQ(find_runtime_event(evs, "custom"), std::nullopt);
}

// ---- VersionedAttestation -------------------------------------------------------------------------------------

namespace {
VersionedAttestation sample_attestation() {
  VersionedAttestation a;
  a.quote = Bytes{4, 0, 2, 0, 0x81, 0, 0, 0, 9, 9};
  a.event_log.push_back(TdxEvent{0, 10, fill(48, 0xaa), "acpi-loader", to_bytes("ACPI DATA"), {}, {}});
  a.event_log.push_back(TdxEvent{1, 0x80000003, fill(48, 0xbb), "", fill(5, 1), {}, {}});
  a.event_log.push_back(RuntimeEvent{"app-id", fill(20, 0x11), 1}.to_tdx_event());
  a.runtime_events = {{"app-id", fill(20, 0x11), 1}, {"boot-mr-done", {}, 1}};
  a.report_data = fill(64, 0x5a);
  a.config = R"({"os_image_hash":"abcd"})";
  return a;
}
}  // namespace

TEST(Attestation, V0ScaleLayout) {
  VersionedAttestation a;
  a.quote = Bytes{0xde, 0xad};
  a.event_log.push_back(TdxEvent{3, 0x08000001, Bytes{0x01}, "e", Bytes{0x02}, {}, {}});
  a.runtime_events = {{"n", Bytes{0x07}, 1}};
  a.report_data = fill(64, 0);
  a.config = "{}";
  auto b = a.to_bytes();
  ASSERT_TRUE(b.ok()) << b.error().message;
  // 00 (V0) 00 (DstackTdx) | quote: 08 dead | events: 04 | imr 03000000 type 01000008 digest 04 01 event 04 65
  // payload 04 02 | runtime: 04 | 04 6e 04 07 | report_data 64x00 | config 08 7b7d
  std::string expect = "0000" "08dead" "04" "03000000" "01000008" "0401" "0465" "0402" "04" "046e" "0407" +
                       std::string(128, '0') + "087b7d";
  EXPECT_EQ(to_hex(*b), expect);
  auto back = VersionedAttestation::from_bytes(*b);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, a);
}

TEST(Attestation, RoundTripAndRejects) {
  auto a = sample_attestation();
  auto b = a.to_bytes();
  ASSERT_TRUE(b.ok());
  auto back = VersionedAttestation::from_bytes(*b);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, a);

  Bytes trailing = *b;
  trailing.push_back(0);
  auto t = VersionedAttestation::from_bytes(trailing);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.error().message.find("trailing"), std::string::npos);
  // Every truncation fails cleanly.
  for (size_t n = 0; n < b->size(); ++n) {
    EXPECT_FALSE(VersionedAttestation::from_bytes(ByteView(b->data(), n)).ok()) << n;
  }
  Bytes gcp = *b;
  gcp[1] = 1;
  auto g = VersionedAttestation::from_bytes(gcp);
  ASSERT_FALSE(g.ok());
  EXPECT_NE(g.error().message.find("DstackGcpTdx"), std::string::npos);
  auto m = VersionedAttestation::from_bytes(Bytes{0x83, 0xa7});
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.error().message.find("MessagePack"), std::string::npos);

  a.report_data.resize(32);
  EXPECT_FALSE(a.to_bytes().ok());
  a = sample_attestation();
  a.runtime_events[0].version = 2;
  EXPECT_FALSE(a.to_bytes().ok());
}

TEST(Attestation, StrippedForm) {
  auto a = sample_attestation();
  auto s = a.stripped();
  EXPECT_EQ(s.quote, a.quote);
  EXPECT_EQ(s.runtime_events, a.runtime_events);
  EXPECT_EQ(s.report_data, a.report_data);
  ASSERT_EQ(s.event_log.size(), 2u);
  EXPECT_EQ(s.event_log[0].event, "acpi-loader");
  EXPECT_EQ(s.event_log[0].digest, fill(48, 0xaa));
  EXPECT_EQ(to_string(s.event_log[0].event_payload), "ACPI DATA");
  EXPECT_EQ(s.event_log[1].imr, 3u);
  EXPECT_TRUE(s.event_log[1].digest.empty());
  EXPECT_EQ(s.event_log[1].event_payload, fill(20, 0x11));
  auto rt = s.to_bytes();
  ASSERT_TRUE(rt.ok());
  EXPECT_EQ(*VersionedAttestation::from_bytes(*rt), s);
}

// ---- Measurements ---------------------------------------------------------------------------------------------

namespace {
Bytes synthetic_quote(ByteView rtmr3, ByteView mr_config_id) {
  Bytes q(632, 0);
  q[0] = 4; q[2] = 2; q[4] = 0x81;
  std::fill(q.begin() + 184, q.begin() + 232, 0xa1);
  std::copy(mr_config_id.begin(), mr_config_id.end(), q.begin() + 232);
  std::fill(q.begin() + 376, q.begin() + 424, 0xb0);
  std::fill(q.begin() + 424, q.begin() + 472, 0xb1);
  std::fill(q.begin() + 472, q.begin() + 520, 0xb2);
  std::copy(rtmr3.begin(), rtmr3.end(), q.begin() + 520);
  std::fill(q.begin() + 568, q.begin() + 632, 0x77);
  return q;
}
}  // namespace

TEST(Measurement, MrConfigId) {
  auto ch = *from_hex("c143116fef3940e7f776bfc0919c256232ae5338a6e948c96b711e0b2383483a");
  auto v1 = mr_config_id_v1(ch);
  ASSERT_TRUE(v1.ok());
  EXPECT_EQ(to_hex(*v1), "01c143116fef3940e7f776bfc0919c256232ae5338a6e948c96b711e0b2383483a" + std::string(30, '0'));
  auto v2 = mr_config_id_v2(fill(32, 0x22), fill(20, 0x11), KeyProviderKind::Kms, *from_hex("abcd"));
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ(to_hex(*v2), "02647193241c7c4f32e1b089ada263b49559026b3b61c9ab9bf5b10b6d7e4a0bba" + std::string(30, '0'));
  EXPECT_FALSE(mr_config_id_v1(fill(31, 0)).ok());
  EXPECT_FALSE(mr_config_id_v2(fill(32, 0), fill(19, 0), KeyProviderKind::None, {}).ok());
  EXPECT_EQ(*key_provider_kind_from_name("local-sgx"), KeyProviderKind::Local);
  EXPECT_FALSE(key_provider_kind_from_name("foo").ok());
}

TEST(Measurement, BootInfoRuntimeAndBootTime) {
  auto evs = sample_events();
  Bytes cfg = *mr_config_id_v1(fill(32, 0x22));
  Bytes q = synthetic_quote(*from_hex(kFullRtmr3), cfg);
  auto m = TdMeasurements::from_quote(q);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(m->report_data, fill(64, 0x77));

  auto bi = compute_boot_info(q, evs, R"({"os_image_hash":"0x0102","cpu_count":1})");
  ASSERT_TRUE(bi.ok()) << bi.error().message;
  EXPECT_EQ(bi->app_id, fill(20, 0x11));
  EXPECT_EQ(bi->compose_hash, fill(32, 0x22));
  EXPECT_EQ(bi->instance_id, fill(20, 0x33));
  EXPECT_EQ(bi->key_provider_info, R"({"name":"kms","id":"abcd"})");
  EXPECT_EQ(bi->os_image_hash, (Bytes{1, 2}));
  EXPECT_EQ(to_hex(bi->mr_system), "836dce9fb32e429333ed471bfa6b4e1639dfba38b8fd53938af514415bafcc8c");
  EXPECT_EQ(to_hex(bi->mr_aggregated), "840a9fbb86e23e73ee9b950bb085a8b7302b159c452c80e644470430f5ce6e87");

  auto boot = compute_boot_info(q, evs, "", true);
  ASSERT_TRUE(boot.ok()) << boot.error().message;
  EXPECT_EQ(boot->key_provider_info, "");
  EXPECT_TRUE(boot->os_image_hash.empty());
  EXPECT_EQ(to_hex(boot->mr_system), "aa108a101336f87ed6d9eaaaced559e657bd14db8673acce0a3bf9258ccf41ca");
  EXPECT_EQ(to_hex(boot->mr_aggregated), "26475810ef65bf3d67655e48fa4df94423eb08fd604fa9fb5ceb3fc11de17c84");

  // Without MR_CONFIG_ID/owner fields the 144 bytes are not appended.
  Bytes q0 = synthetic_quote(*from_hex(kFullRtmr3), fill(48, 0));
  auto b0 = compute_boot_info(q0, evs, "");
  ASSERT_TRUE(b0.ok());
  EXPECT_EQ(to_hex(b0->mr_aggregated), "5a00bb580e1449505b664b12d062825b8d80586b08475da0e6778167bbe6d926");

  // A tampered event log no longer matches the quoted RTMR3.
  evs[1].payload[0] = 0x12;
  auto bad = compute_boot_info(q, evs, "");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("RTMR3"), std::string::npos);
  EXPECT_FALSE(compute_boot_info(q, sample_events(), "not json").ok());
  EXPECT_FALSE(TdMeasurements::from_quote(ByteView(q.data(), 600)).ok());
  q[4] = 0;
  EXPECT_FALSE(TdMeasurements::from_quote(q).ok());
}

TEST(Measurement, BootInfoFromAttestationChecksBinding) {
  auto evs = sample_events();
  Bytes q = synthetic_quote(*from_hex(kFullRtmr3), fill(48, 0));
  VersionedAttestation a;
  a.quote = q;
  a.runtime_events = evs;
  a.report_data = fill(64, 0x77);
  a.config = R"({"os_image_hash":"aabb"})";
  auto bi = compute_boot_info(a);
  ASSERT_TRUE(bi.ok()) << bi.error().message;
  EXPECT_EQ(bi->os_image_hash, (Bytes{0xaa, 0xbb}));
  EXPECT_EQ(to_hex(bi->mr_aggregated), "5a00bb580e1449505b664b12d062825b8d80586b08475da0e6778167bbe6d926");

  auto wrong_rd = a;
  wrong_rd.report_data[0] ^= 1;
  auto r1 = compute_boot_info(wrong_rd);
  ASSERT_FALSE(r1.ok());
  EXPECT_NE(r1.error().message.find("report_data"), std::string::npos);
  auto debug = a;
  debug.quote[168] |= 1;
  EXPECT_FALSE(compute_boot_info(debug).ok());
  auto seam = a;
  seam.quote[120] = 1;
  EXPECT_FALSE(compute_boot_info(seam).ok());
}
