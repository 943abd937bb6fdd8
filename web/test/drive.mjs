// Drives Petrel's web client in headless Chromium (Debian's `chromium`, through
// puppeteer-core), for tests/web_client.rs:
//   node web/test/drive.mjs CONFIG.json
// CONFIG: { chromium, screenshot, alice: {base, user, token}, bob: {base, user, token},
//           sdkUser, sdkText }
// (base: where the page is served, e.g. http://127.0.0.1:9580, whose /ws is the
//  WebSocket unless `ws` names another; a self-signed https base is accepted)
// Alice and Bob each open the page, log in, and:
//  1. Alice finds the SDK user's message sent while she was offline (sync on login);
//  2. Alice and Bob chat 1:1 both ways; Alice writes to the SDK user;
//  3. Alice creates a group with Bob and the SDK user and writes to it; Bob sees it;
//  4. Alice's WebSocket is cut: the client reconnects by itself, and Bob's next message
//     reaches her;
//  5. Alice reloads the page (a fresh client): history brings the conversation back;
//  6. a screenshot of Alice's page is measured: inside every message bubble the DOM
//     shows, the share of pixels painted in that bubble's colour (her own blue, the
//     others' white), for the test to check.
// Prints one JSON line with what happened; exits non-zero (with the reason) on failure.

import { readFileSync, writeFileSync } from "node:fs";
import puppeteer from "puppeteer-core";
import { PNG } from "pngjs";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const TIMEOUT = 15000;

function pageUrl(who) {
  const ws = who.ws ? `&ws=${encodeURIComponent(who.ws)}` : "";
  return `${who.base}/index.html?user=${who.user}&device=web&token=${encodeURIComponent(who.token)}${ws}`;
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

/** Clicks a conversation in the list, its page brought to the front first: a mouse
 *  click dispatched into a background page made headless Chromium 156 drop the
 *  DevTools connection. */
async function openConversation(page, key) {
  await page.bringToFront();
  // A locator, not a handle: the list is drawn anew on every push, and a locator finds
  // the button again if the one it found is replaced before the click lands.
  await page.locator(`#conversations button[data-key="${key}"]`).setTimeout(TIMEOUT).click();
}

/** The share of the pixels inside `rect` (CSS px, clipped to the image) within 24
 *  (summed over the channels) of `rgb`, in a decoded PNG. */
function colourShare(png, rect, [r, g, b]) {
  const x0 = Math.max(0, Math.ceil(rect.x)), y0 = Math.max(0, Math.ceil(rect.y));
  const x1 = Math.min(png.width, Math.floor(rect.x + rect.width));
  const y1 = Math.min(png.height, Math.floor(rect.y + rect.height));
  let n = 0, all = 0;
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      const i = (y * png.width + x) * 4;
      const d = Math.abs(png.data[i] - r) + Math.abs(png.data[i + 1] - g) + Math.abs(png.data[i + 2] - b);
      all++;
      if (d < 24) n++;
    }
  }
  return all ? n / all : 0;
}

const BLUE = [0x2a, 0x7a, 0xe2];
const WHITE = [0xff, 0xff, 0xff];

const browser = await puppeteer.launch({
  executablePath: config.chromium,
  headless: true,
  dumpio: !!process.env.DUMPIO,
  acceptInsecureCerts: true, // the test's self-signed certificate on nginx's https port
  // No sandbox (the test runs as root); none of Chromium's own traffic to Google.
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-default-apps"],
});
const report = {};
const errors = [];
// Why the DevTools connection ends, if it ends early: the browser's exit, a page crash.
browser.process()?.on("exit", (code, signal) => {
  report.browserExit ??= { code, signal, at: new Date().toISOString() };
});
const step = (what) => process.stderr.write(`drive: ${new Date().toISOString()} ${what}\n`);
try {
  const alice = await browser.newPage();
  const bob = await browser.newPage();
  await alice.setViewport({ width: 900, height: 600 });
  for (const [name, p] of [["alice", alice], ["bob", bob]]) {
    p.on("pageerror", (e) => errors.push(`${name}: ${e}`));
    p.on("error", (e) => errors.push(`${name} crashed: ${e}`));
    p.on("console", (m) => m.type() === "error" && errors.push(`${name} console: ${m.text()}`));
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
  await alice.bringToFront();
  const shot = Buffer.from(await alice.screenshot({ type: "png" }));
  writeFileSync(config.screenshot, shot);
  const png = PNG.sync.read(shot);
  // Every bubble at least partly inside the message pane, clipped to it.
  const bubbles = await alice.$$eval("#messages .msg", (all) => {
    const pane = document.getElementById("messages").getBoundingClientRect();
    return all.map((e) => {
      const r = e.getBoundingClientRect();
      const top = Math.max(r.top, pane.top), bottom = Math.min(r.bottom, pane.bottom);
      return { mine: e.classList.contains("mine"), text: e.querySelector(".text").textContent,
               rect: { x: r.left, y: top, width: r.width, height: bottom - top } };
    }).filter((b) => b.rect.height > 8);
  });
  report.screenshot = {
    width: png.width,
    height: png.height,
    bubbles: bubbles.map((b) => ({
      mine: b.mine,
      text: b.text,
      // Inset by the rounded corners (12 px), where the pane's grey shows through.
      share: colourShare(png, { x: b.rect.x + 12, y: b.rect.y, width: b.rect.width - 24,
                                height: b.rect.height }, b.mine ? BLUE : WHITE),
    })),
  };
  report.pageErrors = errors;
} catch (e) {
  report.error = String(e?.stack || e);
  report.pageErrors ??= errors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
process.exit(report.error ? 1 : 0);
