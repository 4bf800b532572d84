// dstack-vmm HTTP surface: pRPC /prpc/<Method> (+ "Teepod." prefix), GET /logs, REST /api/instances, web UI at /.
#pragma once

#include "rpc/http.h"
#include "rpc/prpc.h"
#include "vmm/vmm.h"

namespace dstack::vmm {

// Registers every route on `server` (call before start()). Keep the returned handle alive as long as the server.
std::shared_ptr<void> register_routes(rpc::HttpServer& server, VmManager& vmm);

// The embedded web UI (src/vmm/ui/index.html).
std::string_view web_ui_html();

}  // namespace dstack::vmm
