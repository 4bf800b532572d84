// Headless Chromium test of the dstack-vmm web UI: the list shows a VM and its logs open.
// Usage: node vmm_ui_test.mjs <bin-dir> <source-dir>
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync, readFileSync, existsSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import os from "node:os";
import path from "node:path";

const [binDir, srcDir] = process.argv.slice(2);
const require = createRequire(path.join(srcDir, "package.json"));
const { chromium } = require("playwright-core");

const freePort = () => new Promise((res) => { const s = net.createServer(); s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => res(p)); }); });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const tmp = mkdtempSync(path.join(os.tmpdir(), "vmm-ui-"));
let vmm = null, browser = null;
async function cleanup() {
  if (browser) await browser.close().catch(() => {});
  if (vmm && vmm.exitCode === null) { vmm.kill("SIGTERM"); await new Promise((r) => { vmm.once("exit", r); setTimeout(r, 8000); }); }
  const run = path.join(tmp, "run");
  if (existsSync(run)) for (const d of readdirSync(run)) {
    const pf = path.join(run, d, "runner.pid");
    if (existsSync(pf)) { try { process.kill(-Number(readFileSync(pf, "utf8")), "SIGKILL"); } catch {} }
  }
  rmSync(tmp, { recursive: true, force: true });
}

try {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  execFileSync(path.join(srcDir, "scripts/make-sim-image.sh"), [path.join(tmp, "images"), "dstack-0.5.5"]);
  writeFileSync(path.join(tmp, "vmm.toml"), `address = "127.0.0.1"\nport = ${port}\nrun_path = "${tmp}/run"\n` +
    `[image]\npath = "${tmp}/images"\n[cvm]\nsim_runner = "${srcDir}/tests/vmm/fake-runner.sh"\nstop_timeout_secs = 3\n`);
  vmm = spawn(path.join(binDir, "dstack-vmm"), ["-c", path.join(tmp, "vmm.toml")], { cwd: tmp, stdio: ["ignore", "inherit", "inherit"] });
  let up = false;
  for (let i = 0; i < 100 && !up; i++) { try { up = (await fetch(`${url}/prpc/Version`)).ok; } catch {} if (!up) await sleep(100); }
  if (!up) throw new Error("dstack-vmm did not start");
  const compose = JSON.stringify({ manifest_version: 2, name: "kms", runner: "docker-compose",
    docker_compose_file: "services:\n  kms:\n    image: dstack-kms:fixed\n", local_key_provider_enabled: true }, null, 4);
  const created = await fetch(`${url}/prpc/CreateVm?json`, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: "kms", image: "dstack-0.5.5", compose_file: compose, vcpu: 2, memory: 4096, disk_size: 20,
                           ports: [{ protocol: "tcp", host_port: 9100, vm_port: 9100, host_address: "127.0.0.1" }] }) });
  if (!created.ok) throw new Error("CreateVm: " + await created.text());
  const { id } = await created.json();

  // A fresh user data dir per run (launchPersistentContext is playwright's form of --user-data-dir).
  browser = await chromium.launchPersistentContext(path.join(tmp, "chrome"), { executablePath: "/usr/bin/chromium", headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--no-first-run"] });
  const page = await browser.newPage();
  await page.goto(url + "/");
  if (!(await page.title()).includes("dstack-vmm")) throw new Error("title: " + await page.title());
  const row = page.locator(`tr.vm-row[data-id="${id}"]`);
  await row.waitFor({ timeout: 15000 });
  if ((await row.locator(".vm-name").textContent()) !== "kms") throw new Error("row name");
  await page.waitForFunction((id) => document.querySelector(`tr[data-id="${id}"] .vm-status`)?.textContent === "running", id, { timeout: 15000 });
  if (!(await row.textContent()).includes("127.0.0.1:9100")) throw new Error("ports not shown");
  await row.locator(".logs-btn").click();
  await page.waitForFunction(() => document.getElementById("logs").textContent.includes("KMS CVM booting..."), null, { timeout: 15000 });
  await page.waitForFunction(() => /tick \d+/.test(document.getElementById("logs").textContent), null, { timeout: 15000 });
  // Stop from the UI.
  await row.locator(".stop-btn").click();
  await page.waitForFunction((id) => document.querySelector(`tr[data-id="${id}"] .vm-status`)?.textContent === "stopped", id, { timeout: 20000 });
  console.log("PASS: web UI lists the VM, shows its logs and stops it");
  await cleanup();
  process.exit(0);
} catch (e) {
  console.error("FAIL:", e);
  await cleanup();
  process.exit(1);
}
