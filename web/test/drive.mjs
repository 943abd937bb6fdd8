// Drives Petrel's web client in headless Chromium (Debian's `chromium`, through
// puppeteer-core), as tests/web_client.rs asks:
//   node web/test/drive.mjs CONFIG.json
// CONFIG: { base, ws?, chromium, screenshot, alice: {user, token}, bob: {user, token},
//           sdkUser, sdkText }  (ws: the WebSocket URL when it is not BASE's /ws)
// Alice and Bob each open the page, log in, and:
//  1. Alice finds the SDK user's message sent while she was offline (sync on login);
//  2. Alice and Bob chat 1:1 both ways; Alice writes to the SDK user;
//  3. Alice creates a group with Bob and the SDK user and writes to it; Bob sees it;
//  4. Alice's WebSocket is cut: the client reconnects by itself, and Bob's next message
//     reaches her;
//  5. Alice reloads the page (a fresh client): history brings the conversation back;
//  6. a screenshot of Alice's page is checked: her own messages' blue bubbles and the
//     others' white ones are there, in the message pane.
// Prints one JSON line with what happened; exits non-zero (with the reason) on failure.
//
// STATUS: not passing yet, so not run by CI. Against this sandbox's Chromium 156 steps
// 1-3 pass; in step 4 the DevTools session to the browser drops ("Target closed") right
// after the client reconnects, with no crash report (also over pipes). docs/WEB.md.

import { readFileSync, writeFileSync } from "node:fs";
import puppeteer from "puppeteer-core";
import { PNG } from "pngjs";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const TIMEOUT = 15000;

function pageUrl(who) {
  const ws = config.ws ? `&ws=${encodeURIComponent(config.ws)}` : "";
  return `${config.base}/index.html?user=${who.user}&device=web&token=${encodeURIComponent(who.token)}${ws}`;
}

async function online(page) {
  try {
    await page.waitForFunction(
      () => document.getElementById("state").textContent === "online", { timeout: TIMEOUT, polling: 100 });
  } catch (e) {
    const state = await page.$eval("#state", (s) => s.textContent).catch(() => "?");
    throw new Error(`never online (state: ${state}): ${e.message}`);
  }
}

/** Fills `input` and submits its form, as pressing Enter in it would. */
async function fillAndSubmit(page, input, value) {
  await page.$eval(input, (e, v) => {
    e.value = v;
    e.form.requestSubmit();
  }, value);
}

async function openChat(page, peer) {
  await fillAndSubmit(page, "#peer", String(peer));
}

async function send(page, text) {
  await fillAndSubmit(page, "#text", text);
  await waitText(page, text);
}

async function waitText(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll("#messages .msg .text")].some((e) => e.textContent === t),
    { timeout: TIMEOUT, polling: 100 }, text);
}

async function openConversation(page, key) {
  await page.waitForSelector(`#conversations button[data-key="${key}"]`, { timeout: TIMEOUT, polling: 100 });
  await page.click(`#conversations button[data-key="${key}"]`);
}

/** Counts pixels near `rgb` (each channel within 24) in a PNG buffer. */
function countColour(png, [r, g, b]) {
  let n = 0;
  for (let i = 0; i < png.data.length; i += 4) {
    const d = Math.abs(png.data[i] - r) + Math.abs(png.data[i + 1] - g) + Math.abs(png.data[i + 2] - b);
    if (d < 24) n++;
  }
  return n;
}

const browser = await puppeteer.launch({
  executablePath: config.chromium,
  headless: true,
  dumpio: !!process.env.DUMPIO,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const report = {};
const step = (what) => process.stderr.write(`drive: ${what}\n`);
try {
  const alice = await browser.newPage();
  const bob = await browser.newPage();
  await alice.setViewport({ width: 900, height: 600 });
  const errors = [];
  for (const [name, p] of [["alice", alice], ["bob", bob]]) {
    p.on("pageerror", (e) => errors.push(`${name}: ${e}`));
  }
  await alice.goto(pageUrl(config.alice));
  await bob.goto(pageUrl(config.bob));
  await online(alice);
  await online(bob);

  // 1. The message the SDK user sent while Alice was offline came with her sync (an
  //    empty sdkText skips this, for runs without an SDK client).
  if (config.sdkText) {
    await openConversation(alice, `1:${config.sdkUser}`);
    await waitText(alice, config.sdkText);
    report.synced = true;
  }

  step("1:1");
  // 2. 1:1 both ways, and to the SDK user.
  await openChat(alice, config.bob.user);
  step("1:1 opened");
  await send(alice, "hello Bob, from a browser");
  step("1:1 sent");
  await openConversation(bob, `1:${config.alice.user}`);
  step("1:1 bob opened");
  await waitText(bob, "hello Bob, from a browser");
  await send(bob, "hi Alice, from another browser");
  await waitText(alice, "hi Alice, from another browser");
  await openChat(alice, config.sdkUser);
  await send(alice, "hello SDK, from a browser");
  report.chatted = true;

  step("group");
  // 3. A group of the three.
  await fillAndSubmit(alice, "#members", `${config.bob.user},${config.sdkUser}`);
  await alice.waitForFunction(
    () => document.querySelector("#conversations button.active")?.dataset.key?.startsWith("2:"),
    { timeout: TIMEOUT, polling: 100 });
  const groupKey = await alice.$eval("#conversations button.active", (b) => b.dataset.key);
  await send(alice, "hello group");
  await openConversation(bob, groupKey);
  await waitText(bob, "hello group");
  report.group = Number(groupKey.split(":")[1]);

  step("reconnect");
  // 4. Cut Alice's WebSocket: she reconnects with back-off and hears from Bob again.
  await alice.evaluate(() => window.petrel.ws.close());
  await alice.waitForFunction(
    () => document.getElementById("state").textContent.startsWith("reconnecting"),
    { timeout: TIMEOUT, polling: 100 });
  await online(alice);
  await openConversation(bob, `1:${config.alice.user}`);
  await send(bob, "after your reconnect");
  await openConversation(alice, `1:${config.bob.user}`);
  await waitText(alice, "after your reconnect");
  report.reconnected = true;

  step("history");
  // 5. A fresh page: history of the 1:1 chat comes back.
  await alice.reload();
  await online(alice);
  await openConversation(alice, `1:${config.bob.user}`);
  await alice.click("#older");
  await waitText(alice, "hello Bob, from a browser");
  await waitText(alice, "after your reconnect");
  report.history = true;

  step("screenshot");
  // 6. The screenshot shows the conversation: blue bubbles (Alice's own: #2a7ae2) and
  //    white ones (Bob's), inside the message pane.
  const shot = await alice.screenshot({ type: "png" });
  writeFileSync(config.screenshot, shot);
  const png = PNG.sync.read(shot);
  report.screenshot = {
    width: png.width,
    height: png.height,
    blue: countColour(png, [0x2a, 0x7a, 0xe2]),
    white: countColour(png, [0xff, 0xff, 0xff]),
  };
  const bubbles = await alice.$$eval("#messages .msg", (m) => m.map((e) => e.className));
  report.bubbles = { mine: bubbles.filter((c) => c.includes("mine")).length, total: bubbles.length };
  report.pageErrors = errors;
} catch (e) {
  report.error = String(e?.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
process.exit(report.error ? 1 : 0);
