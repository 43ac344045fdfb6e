// The live page in a real browser on a cluster with `auth.users` (run by tests/ui_page.rs).
//
// Environment: as ui_page.cjs, and RAFTLOG_UI_USERS = {"read": {"username", "password"},
// "admin": {...}}: a user of each role in the cluster file.
// Exits 0 when every check holds, 1 with the reason otherwise.
"use strict";
const { fail, launch, leaderAndFollower, basic, until, healthy, run } = require("./common.cjs");

const users = JSON.parse(process.env.RAFTLOG_UI_USERS);

run(async () => {
  const { leader, follower } = await leaderAndFollower();
  const url = `http://${follower.api}/ui`;
  console.log(`ui_auth: node ${leader.id} leads; the page is served by follower ${follower.id}`);
  const browser = await launch();
  const open = async (httpCredentials) => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 640 }, httpCredentials });
    const page = await context.newPage();
    page.on("pageerror", (e) => fail("a script error in the page: " + e.message));
    return page;
  };

  // No credentials: the page itself is refused with the Basic challenge. A browser with a
  // UI then asks for a user and password; headless Chromium has no one to ask and fails the
  // navigation, so what the browser received is read from its network events.
  const anonymous = await open(undefined);
  const received = [];
  anonymous.on("response", async (r) => received.push({ status: r.status(), challenge: (await r.allHeaders())["www-authenticate"] || "" }));
  const navigation = await anonymous.goto(url).then(() => "loaded", (e) => e.message.split("\n")[0]);
  for (let waited = 0; received.length === 0 && waited < 2000; waited += 50) await new Promise((r) => setTimeout(r, 50));
  const challenged = received.find((r) => r.status === 401 && r.challenge.startsWith("Basic "));
  if (!challenged) fail(`GET /ui without credentials was not refused with a Basic challenge: ${navigation}; the browser received ${JSON.stringify(received)}`);
  console.log(`ui_auth: without credentials GET /ui answers 401 with ${challenged.challenge} (headless: ${navigation})`);
  await anonymous.context().close();

  // A wrong password: the browser tries it, is refused again and cancels, as someone who
  // cancels the prompt does; it shows the refusal's body, which says what failed.
  const wrong = await open({ username: users.read.username, password: "not-" + users.read.password });
  const wrongResponse = await wrong.goto(url);
  const shown = await wrong.evaluate(() => document.body.innerText);
  if (wrongResponse.status() !== 401 || !shown.includes("unauthenticated") || !shown.includes("wrong user name or password")) {
    fail(`GET /ui with a wrong password answered ${wrongResponse.status()} and the browser shows: ${shown}`);
  }
  console.log(`ui_auth: with a wrong password the browser shows: ${shown.trim()}`);

  // A page already open whose status polls are then refused (its user removed, its password
  // changed): it says it is not authorised and what to do, draws no stale cluster, and stops
  // polling. The page is the node's own (fetched with credentials); its polls go to the node
  // with the wrong password.
  const html = await (await fetch(url, { headers: basic(users.read) })).text();
  await wrong.route(url, (route) => route.fulfill({ status: 200, contentType: "text/html; charset=utf-8", body: html }));
  await wrong.goto(url);
  const refused = await until(wrong, "the page saying it is not authorised", 5000, (s) => s.banner.startsWith("Not authorised"));
  for (const needed of ["401", "wrong user name or password", "Reload this page and sign in", "auth.users"]) {
    if (!refused.value.banner.includes(needed)) fail(`the not-authorised banner does not say "${needed}": ${refused.value.banner}`);
  }
  const ring = await wrong.evaluate(() => document.getElementById("ring").textContent);
  if (refused.value.rows.length !== 0 || !ring.includes("not authorised")) fail(`a refused page still draws a cluster: ${refused.value.rows.length} rows, ring "${ring}"`);
  console.log(`ui_auth: a page whose polls are refused says so after ${refused.elapsedMs} ms: ${refused.value.banner}`);
  await wrong.context().close();

  // The read user: three nodes, one leader, no leadership or membership button; the API
  // refuses such a request from this viewer anyway.
  const reader = await open(users.read);
  const readerResponse = await reader.goto(url);
  if (readerResponse.status() !== 200) fail(`GET /ui as the read user answered ${readerResponse.status()}`);
  const seen = await until(reader, `three nodes up and node ${leader.id} the one leader, as the read user`, 10000, healthy(leader.id));
  const buttons = await reader.evaluate(() => document.querySelectorAll("button").length);
  if (buttons !== 0) fail(`the read user is offered ${buttons} buttons`);
  if (!seen.value.viewer.includes("viewing as read")) fail("the page does not say the viewer's role: " + seen.value.viewer);
  const forbidden = await reader.evaluate(async (to) => (await fetch("/v1/leader/transfer", { method: "POST", body: JSON.stringify({ to }) })).status, follower.id);
  if (forbidden !== 403) fail(`a leader transfer from the read user's page answered ${forbidden}, not 403`);
  console.log(`ui_auth: the read user sees three nodes, leader ${seen.value.leader}, no buttons ("${seen.value.viewer}"); a transfer from its page answers 403`);

  // The admin user: every row has its buttons; transfer leadership to the serving follower,
  // the confirm dialog accepted, and the page shows the new leader (so does the read user's).
  const admin = await open(users.admin);
  await admin.goto(url);
  const withButtons = await until(admin, "three nodes and the admin's buttons", 10000, (s) => healthy(leader.id)(s) &&
    s.rows.every((r) => r.buttons.includes("demote") && r.buttons.includes("remove") && r.buttons.includes("lead") === (r.role !== "leader")));
  if (withButtons.value.viewer !== "") fail("the page tells an admin its role limits it: " + withButtons.value.viewer);
  const target = follower.id;
  let asked = null;
  admin.once("dialog", (dialog) => { asked = dialog.message(); dialog.accept(); });
  const clicked = Date.now();
  await admin.click(`#nodes tr[data-node-id="${target}"] button[data-action="lead"]`);
  if (asked !== `Transfer leadership to node ${target}?`) fail("the transfer was not confirmed first; the dialog asked: " + asked);
  await until(admin, `node ${target} leading after the transfer`, 10000, (s) => healthy(target)(s));
  const events = await admin.evaluate(() => document.getElementById("events").innerText);
  if (!events.includes(`Transfer leadership to node ${target}: 200`)) fail("the event list does not show the transfer's answer: " + events);
  await until(reader, `node ${target} leading, as the read user sees it`, 5000, healthy(target));
  console.log(`ui_auth: the admin moved leadership from node ${leader.id} to node ${target}; the page shows it ${Date.now() - clicked} ms after the click`);
  await browser.close();
});
