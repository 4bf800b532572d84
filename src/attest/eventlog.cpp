#include "attest/eventlog.h"

#include <nlohmann/json.hpp>

#include <cstdio>

#include "crypto/hash.h"

namespace dstack::attest {

using nlohmann::json;

json tdx_event_to_json(const TdxEvent& ev) {
  json j = json::object();
  j["imr"] = ev.imr;
  j["event_type"] = ev.event_type;
  j["digest"] = to_hex(ev.digest);
  j["event"] = ev.event;
  j["event_payload"] = to_hex(ev.event_payload);
  if (ev.version && *ev.version != 1) j["version"] = *ev.version;
  if (ev.preimage) j["preimage"] = to_hex(*ev.preimage);
  return j;
}

namespace {

Result<uint32_t> get_u32(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return make_error(std::string("missing field \"") + key + "\"");
  if (!it->is_number_unsigned() || it->get<uint64_t>() > 0xffffffffull) {
    return make_error(std::string("field \"") + key + "\" must be an unsigned 32-bit integer");
  }
  return static_cast<uint32_t>(it->get<uint64_t>());
}

Result<Bytes> get_hex(const json& j, const char* key, bool required) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return make_error(std::string("missing field \"") + key + "\"");
    return Bytes{};
  }
  if (!it->is_string()) return make_error(std::string("field \"") + key + "\" must be a hex string");
  auto r = from_hex(it->get<std::string>());
  if (!r) return r.error().wrap(std::string("field \"") + key + "\"");
  return std::move(r).value();
}

}  // namespace

Result<TdxEvent> tdx_event_from_json(const json& j) {
  if (!j.is_object()) return make_error("event log entry is not a JSON object");
  TdxEvent ev;
  TRY_ASSIGN(ev.imr, get_u32(j, "imr"));
  TRY_ASSIGN(ev.event_type, get_u32(j, "event_type"));
  TRY_ASSIGN(ev.digest, get_hex(j, "digest", true));
  auto e = j.find("event");
  if (e != j.end() && !e->is_null()) {
    if (!e->is_string()) return make_error("field \"event\" must be a string");
    ev.event = e->get<std::string>();
  }
  TRY_ASSIGN(ev.event_payload, get_hex(j, "event_payload", true));
  if (j.contains("version") && !j["version"].is_null()) {
    TRY_ASSIGN(uint32_t v, get_u32(j, "version"));
    if (v != 1) ev.version = v;
  }
  if (j.contains("preimage") && !j["preimage"].is_null()) {
    TRY_ASSIGN(Bytes p, get_hex(j, "preimage", true));
    ev.preimage = std::move(p);
  }
  return ev;
}

std::string event_log_to_json(const std::vector<TdxEvent>& events) {
  json arr = json::array();
  for (const auto& ev : events) arr.push_back(tdx_event_to_json(ev));
  // Names are UTF-8 by construction (JSON / SCALE inputs are validated); never throw on a stray byte.
  return arr.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<std::vector<TdxEvent>> event_log_from_json(std::string_view text) {
  json arr = json::parse(text, nullptr, false);
  if (arr.is_discarded()) return make_error("event log is not valid JSON");
  if (!arr.is_array()) return make_error("event log JSON must be an array of events");
  std::vector<TdxEvent> out;
  out.reserve(arr.size());
  for (size_t i = 0; i < arr.size(); ++i) {
    auto ev = tdx_event_from_json(arr[i]);
    if (!ev) return ev.error().wrap("event log entry " + std::to_string(i));
    out.push_back(std::move(ev).value());
  }
  return out;
}

std::string jcs_string(std::string_view s) {
  // RFC 8785 §3.2.2.2: escape only '"', '\\' and control characters (< 0x20), with the short forms where they
  // exist and \u00xx (lowercase hex) otherwise. Everything else, including non-ASCII UTF-8, is written as is.
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
  return out;
}

Bytes RuntimeEvent::preimage() const {
  if (version == 2) {
    std::string s = "{\"name\":" + jcs_string(event) + ",\"payload\":\"" + to_hex(payload) +
                    "\",\"type\":" + std::to_string(kDstackRuntimeEventType) + "}";
    return to_bytes(s);
  }
  Bytes out;
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(kDstackRuntimeEventType >> (8 * i)));
  out.push_back(':');
  out.insert(out.end(), event.begin(), event.end());
  out.push_back(':');
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

Bytes RuntimeEvent::digest() const { return crypto::sha384(preimage()); }

TdxEvent RuntimeEvent::to_tdx_event() const {
  TdxEvent ev;
  ev.imr = 3;
  ev.event_type = kDstackRuntimeEventType;
  ev.digest = digest();
  ev.event = event;
  ev.event_payload = payload;
  if (version == 2) {
    ev.version = 2;
    ev.preimage = preimage();
  }
  return ev;
}

Result<RuntimeEvent> runtime_event_from_tdx_event(const TdxEvent& ev) {
  if (ev.imr != 3) return make_error("event \"" + ev.event + "\" is not an RTMR3 event (imr " + std::to_string(ev.imr) + ")");
  if (ev.event_type != kDstackRuntimeEventType) {
    return make_error("event \"" + ev.event + "\" has type " + std::to_string(ev.event_type) +
                      ", expected the dstack runtime event type 0x08000001");
  }
  RuntimeEvent re{ev.event, ev.event_payload, ev.version.value_or(1)};
  if (re.version != 1 && re.version != 2) {
    return make_error("event \"" + ev.event + "\" has unsupported version " + std::to_string(re.version));
  }
  if (ev.preimage && *ev.preimage != re.preimage()) {
    return make_error("event \"" + ev.event + "\": preimage is not the canonical V2 form of its name and payload");
  }
  if (!ev.digest.empty() && ev.digest != re.digest()) {
    return make_error("event \"" + ev.event + "\": digest does not match SHA-384 of its preimage");
  }
  return re;
}

Bytes rtmr_extend(ByteView mr, ByteView digest) { return crypto::sha384(concat({mr, digest})); }

Bytes replay_digests(const std::vector<Bytes>& digests) {
  Bytes mr(kRtmrSize, 0);
  for (const auto& d : digests) mr = rtmr_extend(mr, d);
  return mr;
}

Bytes replay_runtime_events(const std::vector<RuntimeEvent>& events, bool boot_time) {
  Bytes mr(kRtmrSize, 0);
  for (const auto& ev : events) {
    mr = rtmr_extend(mr, ev.digest());
    if (boot_time && ev.event == events::kBootMrDone) break;
  }
  return mr;
}

Result<std::array<Bytes, 4>> replay_event_log(const std::vector<TdxEvent>& events) {
  std::array<Bytes, 4> mrs;
  for (auto& m : mrs) m.assign(kRtmrSize, 0);
  for (size_t i = 0; i < events.size(); ++i) {
    const auto& ev = events[i];
    if (ev.imr > 3) return make_error("event " + std::to_string(i) + " has invalid imr " + std::to_string(ev.imr));
    if (ev.digest.size() != kRtmrSize) {
      return make_error("event " + std::to_string(i) + " (\"" + ev.event + "\") has a " +
                        std::to_string(ev.digest.size()) + "-byte digest; replay needs SHA-384 digests");
    }
    mrs[ev.imr] = rtmr_extend(mrs[ev.imr], ev.digest);
  }
  return mrs;
}

std::optional<Bytes> find_runtime_event(const std::vector<RuntimeEvent>& events, std::string_view name) {
  for (const auto& ev : events) {
    if (ev.event == events::kSystemReady) break;
    if (ev.event == name) return ev.payload;
  }
  return std::nullopt;
}

std::string runtime_event_to_log_line(const RuntimeEvent& ev) {
  json j = json::object();
  j["event"] = ev.event;
  j["payload"] = base64_encode(ev.payload);
  if (ev.version != 1) j["version"] = ev.version;
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<std::vector<RuntimeEvent>> parse_runtime_event_log(std::string_view text) {
  std::vector<RuntimeEvent> out;
  size_t line_no = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    ++line_no;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.remove_suffix(1);
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    if (line.empty()) continue;
    auto where = [&]() { return "runtime event log line " + std::to_string(line_no); };
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return make_error(where() + ": not a JSON object");
    if (!j.contains("event") || !j["event"].is_string()) return make_error(where() + ": missing string field \"event\"");
    RuntimeEvent ev;
    ev.event = j["event"].get<std::string>();
    if (j.contains("payload") && !j["payload"].is_null()) {
      if (!j["payload"].is_string()) return make_error(where() + ": \"payload\" must be a base64 string");
      auto p = base64_decode(j["payload"].get<std::string>());
      if (!p) return p.error().wrap(where() + ": payload");
      ev.payload = std::move(p).value();
    }
    if (j.contains("version") && !j["version"].is_null()) {
      if (!j["version"].is_number_unsigned()) return make_error(where() + ": \"version\" must be 1 or 2");
      auto v = j["version"].get<uint64_t>();
      if (v != 1 && v != 2) return make_error(where() + ": unsupported event version " + std::to_string(v));
      ev.version = static_cast<uint32_t>(v);
    }
    out.push_back(std::move(ev));
  }
  return out;
}

}  // namespace dstack::attest
