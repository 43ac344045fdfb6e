// What the browser tests share (tests/ui/ui_page.cjs, tests/ui/ui_auth.cjs): the browser,
// the cluster's nodes as tests/ui_page.rs passes them, and reading the page's state.
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_CORE || "playwright-core");

/// [{"id", "api", "pid"}] of the running cluster.
const nodes = JSON.parse(process.env.RAFTLOG_UI_NODES);

function fail(message) {
  console.error("ui_page: FAILED: " + message);
  process.exit(1);
}

function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/// `GET /v1/status` of `node` (open to anyone, even with `auth`).
async function status(node) {
  const response = await fetch(`http://${node.api}/v1/status`, { signal: AbortSignal.timeout(1000) });
  return response.json();
}

/// The leader and a follower, as the nodes themselves report.
async function leaderAndFollower() {
  const statuses = await Promise.all(nodes.map(status));
  const leaderId = statuses.find((s) => s.role === "leader").id;
  return { leader: nodes.find((n) => n.id === leaderId), follower: nodes.find((n) => n.id !== leaderId) };
}

/// `Authorization` for `user`, or none.
function basic(user) {
  return user ? { Authorization: "Basic " + Buffer.from(`${user.username}:${user.password}`).toString("base64") } : {};
}

async function put(node, key, value, user) {
  for (let attempt = 0; attempt < 50; attempt++) {
    try {
      const response = await fetch(`http://${node.api}/v1/kv/${key}`, { method: "PUT", body: value, headers: basic(user) });
      if (response.ok) return (await response.json()).index;
    } catch (e) { /* retried: a leader change is under way */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  fail(`PUT ${key} via node ${node.id} never succeeded`);
}

const pageState = () => {
  const rows = [...document.querySelectorAll("#nodes tr")].map((tr) => ({
    id: Number(tr.dataset.nodeId),
    state: tr.dataset.state,
    role: tr.dataset.role,
    commit: Number(tr.querySelector('[data-field="commit_index"]').textContent),
    match: Number(tr.querySelector('[data-field="match_index"]').textContent),
    buttons: [...tr.querySelectorAll("button")].map((b) => b.dataset.action),
  }));
  return {
    rows,
    leader: document.getElementById("leader").dataset.leaderId,
    banner: document.getElementById("banner").innerText,
    ring: document.querySelectorAll("#ring .ring-node").length,
    tolerance: document.getElementById("tolerance").innerText,
    viewer: (document.getElementById("viewer") || { innerText: "" }).innerText,
  };
};

/// Reads the page's state every 50 ms until `check(state)` holds; returns that state and
/// how long it took.
async function until(page, what, timeoutMs, check) {
  const started = Date.now();
  for (;;) {
    const state = await page.evaluate(pageState);
    const value = check(state) && state;
    if (value) return { value, elapsedMs: Date.now() - started };
    if (Date.now() - started > timeoutMs) {
      const rows = await page.evaluate(() => [...document.querySelectorAll("#nodes tr")].map((tr) => tr.innerText.replace(/\s+/g, " ")).join(" | "));
      fail(`${what}: not seen within ${timeoutMs} ms; the page shows: ${rows}; banner: ${state.banner}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/// Three nodes up (in the table and on the ring) and exactly one leader, the one the cluster names.
function healthy(leaderId) {
  return (s) => s.rows.length === 3 && s.ring === 3 && s.rows.every((r) => r.state === "up") &&
    s.rows.filter((r) => r.role === "leader").length === 1 && s.leader !== "" &&
    (leaderId === undefined || Number(s.leader) === leaderId);
}

/// Runs `main`, exiting 0 when it returns and 1 with the reason when anything throws.
function run(main) {
  main().then(() => {
    console.log("ui_page: all checks passed");
    process.exit(0);
  }, (e) => fail(e.stack || String(e)));
}

module.exports = { nodes, fail, launch, status, leaderAndFollower, basic, put, pageState, until, healthy, run };
