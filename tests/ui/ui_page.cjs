// The live page in a real browser (run by tests/ui_page.rs, which starts the cluster,
// without `auth`).
//
// Environment: RAFTLOG_UI_NODES = [{"id", "api", "pid"}] of a running 3-node cluster,
// PLAYWRIGHT_CORE = the playwright-core module directory, CHROMIUM = the browser binary,
// RAFTLOG_UI_SCREENSHOT = where to save a screenshot of the healthy cluster.
// Exits 0 when every check holds, 1 with the reason otherwise.
"use strict";
const { fail, launch, leaderAndFollower, put, pageState, until, healthy, run } = require("./common.cjs");

const FAILOVER_MS_MAX = 2000;

run(async () => {
  const { leader, follower } = await leaderAndFollower();
  const leaderId = leader.id;
  console.log(`ui_page: node ${leaderId} leads; the page is served by follower ${follower.id}`);

  const browser = await launch();
  const page = await browser.newPage({ viewport: { width: 1280, height: 640 } });
  page.on("pageerror", (e) => fail("a script error in the page: " + e.message));
  await page.goto(`http://${follower.api}/ui`);

  // Three nodes, all up, exactly one leader, and it is the real one.
  await until(page, `three nodes up and node ${leaderId} the one leader`, 10000, healthy(leaderId));
  const before = (await page.evaluate(pageState)).rows;
  console.log("ui_page: three nodes, one leader: " + JSON.stringify(before));
  // Without `auth` every viewer is admin: the buttons are there.
  if (!before.every((r) => r.buttons.includes("remove"))) fail("without auth the page offers no membership buttons: " + JSON.stringify(before));

  // An InstallSnapshot the leader reports in progress shows on the receiving node's row (a
  // real transfer is tests/snapshot_progress.rs; here, how the page draws one): the next
  // poll redraws the real state.
  const receiver = follower.id;
  const installing = await page.evaluate(async (id) => {
    const cluster = await (await fetch("/v1/cluster/status")).json();
    const lead = cluster.nodes.find((n) => n.reachable && n.status.role === "leader");
    const member = lead.status.members.find((m) => m.id === id);
    member.snapshot_sending = { last_index: 900, bytes_sent: 1048576, bytes_total: 4194304, percent: 25 };
    render(cluster);
    return document.querySelector(`#nodes tr[data-node-id="${id}"] td.role`).innerText;
  }, receiver);
  if (!installing.includes("installing snapshot 25%")) fail(`node ${receiver}'s role cell does not show the snapshot at 25%: ${installing}`);
  console.log(`ui_page: a snapshot transfer shows as "${installing}"`);

  // A write makes the indexes move, on every node.
  const index = await put(follower, "ui-page-1", "one");
  const moved = await until(page, `every node's commit index reaching ${index}`, 5000,
    (s) => s.rows.every((r) => r.commit >= index));
  console.log(`ui_page: write at index ${index} shown on every node after ${moved.elapsedMs} ms`);
  // The leader's view of each follower, and the failure tolerance.
  const replicated = await until(page, `every follower's match index reaching ${index}`, 5000,
    (s) => s.rows.filter((r) => r.role === "follower").every((r) => r.match >= index));
  if (replicated.value.tolerance !== "can lose 1 of 3 voters") fail("the failure tolerance reads: " + replicated.value.tolerance);
  if (process.env.RAFTLOG_UI_SCREENSHOT) {
    await page.screenshot({ path: process.env.RAFTLOG_UI_SCREENSHOT });
    console.log("ui_page: screenshot saved to " + process.env.RAFTLOG_UI_SCREENSHOT);
  }

  // SIGKILL the leader: within 2 s the page shows it down and another leader.
  process.kill(leader.pid, "SIGKILL");
  const failover = await until(page, `node ${leaderId} down and a new leader`, 10000, (s) => {
    const dead = s.rows.find((r) => r.id === leaderId);
    return dead && dead.state === "down" && s.leader !== "" && Number(s.leader) !== leaderId;
  });
  console.log(`ui_page: leader ${leaderId} shown down and node ${failover.value.leader} leading ${failover.elapsedMs} ms after SIGKILL`);
  if (failover.elapsedMs > FAILOVER_MS_MAX) fail(`the failover took ${failover.elapsedMs} ms to show, more than ${FAILOVER_MS_MAX}`);
  const events = await page.evaluate(() => document.getElementById("events").innerText);
  if (!events.includes(`node ${leaderId} unreachable`)) fail("the event list does not say the leader became unreachable: " + events);
  if (!events.includes("is the new leader")) fail("the event list does not name the new leader: " + events);

  // After the failover a write still moves the indexes of the two live nodes.
  const index2 = await put(follower, "ui-page-2", "two");
  await until(page, `the live nodes' commit index reaching ${index2}`, 5000,
    (s) => s.rows.filter((r) => r.id !== leaderId).every((r) => r.commit >= index2));
  console.log(`ui_page: write at index ${index2} after the failover shown`);

  // Cut the serving node off from its peers: the page says so.
  const isolate = (on) => fetch(`http://${follower.api}/v1/debug/isolate?on=${on}`, { method: "POST" });
  if (!(await isolate(true)).ok) fail("POST /v1/debug/isolate was refused: the test cluster must run with RAFTLOG_TEST_FAULTS=1");
  const cut = await until(page, "the banner saying the serving node is cut off", 5000,
    (s) => s.banner.includes("cut off"));
  console.log(`ui_page: isolated node ${follower.id} shown cut off after ${cut.elapsedMs} ms: ${cut.value.banner}`);
  await isolate(false);
  await browser.close();
});
