// The backend's acceptance run in a real browser: the static app of examples/backend-app,
// deployed with `micro app deploy` and served on its own host, used as a person would.
// Run by crates/micro-cli/tests/web.rs (`backend_app_in_a_real_browser`), which starts the
// server and the SMTP server, deploys the app twice and sets:
//
//   APP_URL        the app on its own host, like http://shop.acme.localhost:28080/
//   APP_API        the API gateway (http://127.0.0.1:28080)
//   APP_NAMESPACE  the app's namespace
//   APP_ADMIN      a token of an admin of the namespace (who sends the notification)
//   E2E_MAIL_DIR   where the SMTP server writes each message as JSON
//   E2E_CHROMIUM   the browser
//   APP_PART       `use`: sign up, confirm the code from the mail, upload a picture and see
//                  its thumbnail, keep a note nobody else reads, hear a notification,
//                  subscribe to the newsletter and confirm it from the mail (on deploy v2);
//                  `rolled-back`: the page is deploy v1's again
//
// One line per step; the first failure ends the run with a non-zero exit.

import { createRequire } from "node:module";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const need = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (see the head of tests/web/app.mjs)`);
  return v;
};
const APP = need("APP_URL");
const API = need("APP_API").replace(/\/$/, "");
const NS = need("APP_NAMESPACE");
const ADMIN = need("APP_ADMIN");
const MAIL = need("E2E_MAIL_DIR");
const PART = need("APP_PART");
const CHROMIUM = process.env.E2E_CHROMIUM || "/usr/bin/chromium";
const RUN = Date.now().toString(36);
const WAIT = 15_000;

/** A real PNG of 64×48. */
const PNG = Buffer.from(
  "iVBORw0KGgoAAAANSUhEUgAAAEAAAAAwCAIAAAAuKetIAAAASElEQVR42u3QsQkAAAwCMP9/uv1BcAs4KzGXTDOuvwAAAAAAAAAAAAAAAAAAAAAAlAvbgf1BAAAAAAAAAAAAAAAAAAAAAABFHrEN9KZbz1c+AAAAAElFTkSuQmCC",
  "base64",
);

/** The newest message to `to` whose text matches `re` (waiting for it): the match. */
async function mailed(to, re) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    for (const n of readdirSync(MAIL).filter((n) => n.endsWith(".json")).sort().reverse()) {
      const m = JSON.parse(readFileSync(path.join(MAIL, n), "utf8"));
      const found = m.rcpt_tos.includes(to) && (m.text || "").match(re);
      if (found) return found;
    }
    if (Date.now() > deadline) throw new Error(`no mail to ${to} matching ${re}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A JSON call to the API as the holder of `token`: [status, body]. */
async function api(method, p, token, body) {
  const headers = { "Micro-Namespace": NS, "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(API + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return [r.status, json];
}

function check(ok, what) {
  if (!ok) throw new Error(what);
}

async function text(page, selector) {
  await page.locator(selector).first().waitFor({ timeout: WAIT });
  return (await page.locator(selector).first().innerText()).trim();
}

/** Waits until `selector`'s text contains `want`. */
async function see(page, selector, want) {
  const deadline = Date.now() + WAIT;
  let last = "";
  while (Date.now() < deadline) {
    last = await page.locator(selector).first().innerText().catch(() => "");
    if (last.includes(want)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${selector} shows ${JSON.stringify(last)}, not ${JSON.stringify(want)} [at ${page.url()}]`);
}

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
let failed = false;
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(WAIT);
  const steps = [];
  const step = (name, fn) => steps.push({ name, fn });

  if (PART === "use") {
    const email = `zoe.${RUN}@example.com`;
    const password = "zoe's long password";
    let uid = "";
    let noteId = "";

    step("the app is served on its own host: deploy v2", async () => {
      const res = await page.goto(APP);
      check(res.status() === 200, `GET ${APP}: ${res.status()}`);
      await see(page, "#version", "v2");
    });

    step("a user signs up, reads the code from the mail and confirms it", async () => {
      await page.getByLabel("Email").fill(email);
      await page.getByLabel("Password").fill(password);
      await page.getByRole("button", { name: "Sign up" }).click();
      await see(page, "#status", `We mailed a code to ${email}`);
      const [, code] = await mailed(email, /(\d{6})/);
      await page.getByLabel("Code").fill(code);
      await page.getByRole("button", { name: "Confirm" }).click();
      await see(page, "#who", email);
      uid = await page.evaluate(() => document.body.dataset.user);
      check(uid, "the page knows the user's id");
    });

    step("they upload a picture and see its thumbnail", async () => {
      await page.getByLabel("Picture").setInputFiles({ name: "me.png", mimeType: "image/png", buffer: PNG });
      await see(page, "#status", "Saved me.png");
      const img = page.locator("#avatar");
      await img.waitFor({ state: "visible" });
      const src = await img.getAttribute("src");
      check(src.includes("thumb=100x100") || src.includes("thumb=100"), `a thumbnail's URL: ${src}`);
      const width = await page.waitForFunction(() => {
        const i = document.querySelector("#avatar");
        return i.complete && i.naturalWidth > 0 && i.naturalWidth;
      });
      check((await width.jsonValue()) <= 100, "the thumbnail is at most 100 px wide");
      const thumb = await fetch(src);
      check(thumb.status === 200 && thumb.headers.get("content-type").startsWith("image/"), `the thumbnail: ${thumb.status}`);
    });

    step("they keep a note nobody else can read", async () => {
      await page.getByLabel("Note").fill(`secret plan ${RUN}`);
      await page.getByRole("button", { name: "Save" }).click();
      await see(page, "#notes", `secret plan ${RUN}`);
      noteId = await page.locator("#notes li").first().getAttribute("data-id");
      // Another user of the app (confirmed too) finds nothing of it.
      const other = `yan.${RUN}@example.com`;
      let [st, v] = await api("POST", "/users/v1/signup", null, { email: other, password });
      check(st === 200, `signup: ${st} ${JSON.stringify(v)}`);
      const [, code] = await mailed(other, /(\d{6})/);
      [st, v] = await api("POST", "/users/v1/verify", null, { email: other, code, password });
      check(st === 200, `verify: ${st} ${JSON.stringify(v)}`);
      const token = v.token;
      [st] = await api("GET", `/db/v1/notes/records/${noteId}`, token);
      check(st === 404, `another user reads the note: ${st}`);
      [st, v] = await api("GET", "/db/v1/notes/records", token);
      check(st === 200 && v.items.length === 0, `another user lists notes: ${st} ${JSON.stringify(v)}`);
      [st] = await api("GET", `/db/v1/notes/records/${noteId}`, null);
      check(st === 404 || st === 401 || st === 403, `anybody reads the note: ${st}`);
    });

    step("a notification from the team appears at once", async () => {
      await page.locator('#notifications[data-ready="true"]').waitFor({ state: "attached" });
      const [st, v] = await api("POST", "/push/v1/messages", ADMIN, { user: uid, title: "Hello Zoe", body: `note ${RUN} saved` });
      check(st === 201, `send: ${st} ${JSON.stringify(v)}`);
      await see(page, "#notifications", `Hello Zoe: note ${RUN} saved`);
      // The page reported it delivered (the client does, with the user's token).
      const deadline = Date.now() + WAIT;
      for (;;) {
        const [, m] = await api("GET", `/push/v1/messages/${v.id}`, ADMIN);
        if (m.receipts?.delivered === 1) break;
        check(Date.now() < deadline, `no delivered receipt: ${JSON.stringify(m)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    });

    step("they subscribe to the newsletter and confirm it from the mail", async () => {
      const form = page.locator("#newsletter form.micro-subscribe");
      await form.waitFor();
      await form.locator('input[name="email"]').fill(email);
      await form.getByRole("button", { name: "Subscribe" }).click();
      await see(page, "#newsletter [role=status]", "Check your email");
      const [link] = await mailed(email, /https?:\/\/\S+\/subscribe\/v1\/\S+\/confirm\?\S+/);
      const confirm = await browser.newPage();
      await confirm.goto(link);
      await confirm.getByRole("button", { name: "Confirm my subscription" }).click();
      await see(confirm, "body", "You are subscribed");
      const [st, v] = await api("POST", "/subscribe/subscribers/list", ADMIN, { list: "news" });
      const me = v.subscribers?.find((s) => s.email === email);
      check(st === 200 && me?.state === "subscribed", `the list: ${st} ${JSON.stringify(v)}`);
    });
  } else {
    step("after the rollback the app is deploy v1 again", async () => {
      const res = await page.goto(APP);
      check(res.status() === 200, `GET ${APP}: ${res.status()}`);
      await see(page, "#version", "v1");
    });
  }

  for (const { name, fn } of steps) {
    const t = Date.now();
    try {
      await fn();
      console.log(`ok      ${name} (${Date.now() - t} ms)`);
    } catch (e) {
      console.log(`FAILED  ${name}: ${e.message}`);
      failed = true;
      break;
    }
  }
} finally {
  await browser.close();
}
console.log(failed ? "app: failed" : "app: passed");
process.exit(failed ? 1 : 0);
