// End-to-end tests of the web dashboard in a real browser: Debian's chromium driven by
// playwright-core (both installed by scripts/browser-setup). Run by
// crates/micro-cli/tests/web.rs, which starts `micro server` and helloworld and sets:
//
//   E2E_URL             the dashboard, e.g. http://127.0.0.1:8082 (required; https:// for the
//                       TLS steps)
//   E2E_API_URL         the API gateway, e.g. http://127.0.0.1:8080 (required): the pages link
//                       its OpenAPI documents
//   E2E_ADMIN_PASSWORD  the secret of account `admin` in namespace `micro` (required)
//   E2E_ADMIN_ID        the admin account (default admin)
//   E2E_NAMESPACE       its namespace (default micro)
//   E2E_CHROMIUM        the browser (default /usr/bin/chromium)
//   E2E_BROWSER_HOME    the browser's HOME, whose NSS database (.pki/nssdb) holds the CAs it
//                       trusts (the TLS steps: web.rs adds the server's local CA there)
//   E2E_SCREENSHOTS     a folder: every page visited is saved there, full page, at desktop
//                       (1280×800) and phone (390×844) width, as NAME-desktop.png/NAME-phone.png
//   E2E_ONLY            a regular expression: only the steps whose names match run
//   E2E_RUNTIME_SOURCE  a git URL of a service `ticker` printing `tick N` every second, run
//                       from the runtime page (without it the runtime steps skip)
//   E2E_MAIL_DIR        the folder where the test's SMTP server writes each message it gets
//                       as JSON (crates/micro-test/src/smtp_sink.py): the `signup: …` steps
//                       read codes and invites there, and skip without it
//
// The steps named `tls: …` need the dashboard over HTTPS (`MICRO_TLS=auto`) and skip
// otherwise; the others run over either.
//
// Every step asserts what a person would see (text in cells, the reply JSON, the error in
// words), not just that a page loaded. It prints one line per step and exits non-zero when
// any step fails. To add a step: `step("what it shows", async ({ page }) => { ... })`.

import { createRequire } from "node:module";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";

// `import` ignores NODE_PATH; require() follows it to the node_modules under the target dir.
const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const BASE = need("E2E_URL").replace(/\/$/, "");
const API = need("E2E_API_URL").replace(/\/$/, "");
const TLS = BASE.startsWith("https://");
const BROWSER_HOME = process.env.E2E_BROWSER_HOME || null;
const PASSWORD = need("E2E_ADMIN_PASSWORD");
const ADMIN = process.env.E2E_ADMIN_ID || "admin";
const NAMESPACE = process.env.E2E_NAMESPACE || "micro";
const CHROMIUM = process.env.E2E_CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.E2E_SCREENSHOTS ? path.resolve(process.env.E2E_SCREENSHOTS) : null;
const ONLY = process.env.E2E_ONLY ? new RegExp(process.env.E2E_ONLY) : null;
const SOURCE = process.env.E2E_RUNTIME_SOURCE || null;
const MAIL = process.env.E2E_MAIL_DIR || null;
/** The `micro` CLI and the proxy it talks to, for the steps that deploy (web.rs sets them). */
const MICRO = process.env.E2E_MICRO || null;
const PROXY = process.env.E2E_PROXY || null;
/** Unique per run, so values found on a page were written by this run. */
const RUN = Date.now().toString(36);

/** The reply JSON on an endpoint page (not the request schema's, also a `pre.json`). */
const REPLY = 'main section:has(> h2:text-is("Response")) pre.json';

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
/** How long one step may take in all, one wait inside it, and the whole run (less than
 * web.rs gives it, so the browser is closed here, not orphaned by a kill). */
const STEP_TIMEOUT_MS = 60_000;
const WAIT_MS = 15_000;
const RUN_TIMEOUT_MS = 240_000;

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`e2e: ${name} is not set`);
    process.exit(2);
  }
  return v;
}

// ---------------------------------------------------------------------------------------
// The harness: steps, assertions, screenshots.

const steps = [];
const todos = [];

/** Registers a test step; `fn` gets { page, context, browser } in a fresh browser context. */
function step(name, fn) {
  steps.push({ name, fn });
}

/** A step still to be written (printed as `todo`, never run). */
function todo(name) {
  todos.push(name);
}

class Skip extends Error {}

/** Ends the running step as skipped, with the reason. */
function skip(reason) {
  throw new Skip(reason);
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

/** JSON with every object's keys sorted, so objects compare regardless of key order. */
function canonical(value) {
  return JSON.stringify(value, (_, v) =>
    v && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}

function assertEqual(actual, expected, what) {
  if (canonical(actual) !== canonical(expected)) {
    throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}

/** The path of the page's URL, decoded (the pages encode all but letters and digits). */
function pathOf(page) {
  return decodeURIComponent(new URL(page.url()).pathname);
}

/** Waits until an element matching `selector` shows `text` (a string or RegExp); returns its text. */
async function see(page, selector, text) {
  const found = page.locator(selector).filter({ hasText: text }).first();
  try {
    await found.waitFor({ state: "visible", timeout: WAIT_MS });
  } catch {
    const shown = await page
      .locator(selector)
      .allInnerTexts()
      .catch(() => []);
    throw new Error(
      `expected ${selector} showing ${text} on ${pathOf(page)}; ` +
        (shown.length ? `it shows ${JSON.stringify(shown.join(" | ").slice(0, 300))}` : "there is none"),
    );
  }
  return found.innerText();
}

/** Goes to `p` (a path) and checks the response status; returns the response. */
async function visit(page, p, status = 200) {
  const r = await page.goto(BASE + p);
  assert(r, `no response for ${p}`);
  assertEqual(r.status(), status, `status of GET ${p}`);
  return r;
}

/** Follows the link `target`, which must point at `href`, to a JSON document; returns it. */
async function openLinkedJson(page, target, href) {
  assertEqual(await target.getAttribute("href"), href, "the link");
  const [response] = await Promise.all([page.waitForNavigation({ timeout: WAIT_MS }), target.click()]);
  assertEqual([page.url(), response.status()], [href, 200], "the linked document's URL and status");
  const type = response.headers()["content-type"];
  assert(type.startsWith("application/json"), `the linked document's type: ${type}`);
  return await response.json();
}

/** Clicks `target` (a locator) and waits for the page it leads to. */
async function follow(page, target) {
  await Promise.all([page.waitForNavigation({ timeout: WAIT_MS }), target.click()]);
}

const shotNames = new Set();

/** Saves the current page at desktop and phone width, when E2E_SCREENSHOTS is set. */
async function shot(page, name) {
  if (!SHOTS || shotNames.has(name)) return;
  shotNames.add(name);
  mkdirSync(SHOTS, { recursive: true });
  const before = page.viewportSize();
  for (const [label, size] of [["desktop", DESKTOP], ["phone", PHONE]]) {
    await page.setViewportSize(size);
    await page.screenshot({ path: path.join(SHOTS, `${name}-${label}.png`), fullPage: true });
  }
  await page.setViewportSize(before);
}

/** Signs in as the admin through the form; ends on /services. */
async function login(page, { id = ADMIN, secret = PASSWORD, namespace = NAMESPACE } = {}) {
  await visit(page, `/login?namespace=${encodeURIComponent(namespace)}`);
  await page.getByLabel("Account", { exact: true }).fill(id);
  await page.getByLabel("Secret", { exact: true }).fill(secret);
  await follow(page, page.getByRole("button", { name: "Sign in" }));
  assertEqual(pathOf(page), "/services", "page after signing in");
}

/** Checks a page as every page must be (see `accessible`; nothing overflows sideways at
 * phone width) and, given a name, saves it when E2E_SCREENSHOTS is set (a form shown
 * again with its error is checked, not saved: the PNGs stay few). */
async function look(page, name = null) {
  await accessible(page);
  const before = page.viewportSize();
  await page.setViewportSize(PHONE);
  try {
    await noOverflow(page);
  } finally {
    await page.setViewportSize(before);
  }
  if (name) await shot(page, name);
}

/** Does `action`, which opens a confirm dialog, and answers it; returns its message. */
async function confirmWhile(page, accept, action) {
  const opened = page.waitForEvent("dialog", { timeout: WAIT_MS });
  const acting = action();
  const dialog = await opened;
  const { type, message } = { type: dialog.type(), message: dialog.message() };
  await (accept ? dialog.accept() : dialog.dismiss());
  await acting;
  assertEqual(type, "confirm", "the kind of dialog");
  return message;
}

/** Clicks `target`, accepts the confirm dialog it opens and waits for the page it leads
 * to; returns the dialog's message. */
async function followConfirmed(page, target) {
  const [, message] = await Promise.all([
    page.waitForNavigation({ timeout: WAIT_MS }),
    confirmWhile(page, true, () => target.click()),
  ]);
  return message;
}

/** Submits a form the page does not offer (with the session's CSRF token); returns the
 * response of the page it leads to. */
async function submitForm(page, action, fields) {
  const [response] = await Promise.all([
    page.waitForNavigation({ timeout: WAIT_MS }),
    page.evaluate(
      ({ action, fields }) => {
        const form = document.createElement("form");
        form.method = "post";
        form.action = action;
        const csrf = document.querySelector('input[name="_csrf"]').value;
        for (const [name, value] of Object.entries({ _csrf: csrf, ...fields })) {
          const input = document.createElement("input");
          input.type = "hidden";
          input.name = name;
          input.value = value;
          form.append(input);
        }
        document.body.append(form);
        form.submit();
      },
      { action, fields },
    ),
  ]);
  return response;
}

/** Turns off the browser's own checks of the form holding `locator`, so the server's are seen. */
async function noBrowserChecks(locator) {
  await locator.evaluate((el) => {
    el.closest("form").noValidate = true;
  });
}

/** Reloads `p` until `selector` shows `text`, for at most `ms` (or until it shows `fail`);
 * returns what it shows. */
async function reloadUntil(page, p, selector, text, { ms = 30_000, fail = null } = {}) {
  const deadline = Date.now() + ms;
  for (;;) {
    await visit(page, p);
    const el = page.locator(selector).first();
    const shown = (await el.count()) ? (await el.innerText()).trim() : "(nothing)";
    if (shown === text) return shown;
    if (shown === fail || Date.now() > deadline) {
      const error = (await page.locator(".error").allInnerTexts()).join(" ");
      const when = shown === fail ? "" : ` after ${ms} ms`;
      throw new Error(`${selector} on ${p} shows ${JSON.stringify(shown)}${when}${error ? `: ${error}` : ""}`);
    }
    await page.waitForTimeout(300);
  }
}

/** The row of the table whose header cell (`th`) reads `name` exactly. */
function rowOf(page, name) {
  const th = page.locator("th", { hasText: new RegExp(`^${escapeRegExp(name)}$`) });
  return page.locator("tbody tr").filter({ has: th });
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** What every page must have: one non-empty <h1>, a language, a label for every control
 * and patterns the browser can use. */
async function accessible(page) {
  const problems = await page.evaluate(() => {
    const out = [];
    const h1 = [...document.querySelectorAll("h1")];
    if (h1.length !== 1 || !h1[0].innerText.trim()) out.push(`${h1.length} <h1> (want one with text)`);
    if (!document.documentElement.lang) out.push("<html> has no lang");
    if (!document.title.trim()) out.push("no <title>");
    for (const el of document.querySelectorAll("input, select, textarea")) {
      if (el.type === "hidden") continue;
      const labelled =
        [...(el.labels || [])].some((l) => l.textContent.trim()) ||
        el.getAttribute("aria-label") ||
        el.getAttribute("aria-labelledby");
      if (!labelled) out.push(`<${el.tagName.toLowerCase()} name=${el.name}> has no label`);
      // Browsers compile `pattern` with the v flag and, when it fails, skip the check
      // (saying so only in the console, and only when the field is validated).
      const pattern = el.getAttribute("pattern");
      if (pattern !== null) {
        try {
          new RegExp(`^(?:${pattern})$`, "v");
        } catch (e) {
          out.push(`<input name=${el.name}> has an invalid pattern: ${e.message}`);
        }
      }
    }
    for (const b of document.querySelectorAll("button, a[href]")) {
      if (!b.textContent.trim() && !b.getAttribute("aria-label")) out.push(`<${b.tagName.toLowerCase()}> without text`);
    }
    return out;
  });
  assert(problems.length === 0, `${pathOf(page)}: ${problems.join("; ")}`);
}

/** A page of every section, as a signed-in admin sees it (the steps below check the
 * others, with content, as they open them). */
const PAGES = [
  "/services",
  "/services/helloworld",
  "/services/helloworld/Greeter.Hello",
  "/services/helloworld/Greeter.Hello?raw=1",
  "/services/store/Store.Read",
  "/runtime",
  "/store",
  `/store/${NAMESPACE}`,
  "/config",
  "/events",
  "/auth",
  "/auth/rules",
  "/health",
  "/usage",
  "/platform",
  "/network",
  "/users",
  "/files",
  "/apps",
  "/lists",
  "/push",
  "/billing",
  "/billing/admin",
];

// ---------------------------------------------------------------------------------------
// The steps.

step("the web app manifest and the service worker are served", async ({ page, context }) => {
  const m = await context.request.get(BASE + "/manifest.webmanifest");
  assertEqual(m.status(), 200, "status of /manifest.webmanifest");
  assert(m.headers()["content-type"].startsWith("application/manifest+json"), `manifest type ${m.headers()["content-type"]}`);
  const manifest = await m.json();
  assertEqual([manifest.name, manifest.start_url, manifest.display], ["Micro", "/services", "standalone"], "manifest");
  assert(manifest.icons?.length > 0, "the manifest has no icons");
  const sw = await context.request.get(BASE + "/sw.js");
  assertEqual(sw.status(), 200, "status of /sw.js");
  assert(sw.headers()["content-type"].includes("javascript"), `sw.js type ${sw.headers()["content-type"]}`);
  assert((await sw.text()).includes('addEventListener("fetch"'), "sw.js has no fetch handler");
  // The page links the manifest and the browser installs the worker (its cache of the
  // assets must load, or it never activates).
  await visit(page, "/login");
  assertEqual(await page.locator('link[rel="manifest"]').getAttribute("href"), "/manifest.webmanifest", "manifest link");
  const active = await page.evaluate(() =>
    Promise.race([
      navigator.serviceWorker.ready.then((r) => r.active?.scriptURL ?? "none"),
      new Promise((resolve) => setTimeout(() => resolve("timed out"), 10_000)),
    ]),
  );
  assertEqual(active, BASE + "/sw.js", "the active service worker");
});

step("signing in with a wrong secret shows the error and stays on /login", async ({ page }) => {
  await visit(page, "/login");
  await see(page, "h1", "Sign in to Micro");
  await shot(page, "login");
  await page.getByLabel("Namespace", { exact: true }).fill(NAMESPACE);
  await page.getByLabel("Account", { exact: true }).fill(ADMIN);
  await page.getByLabel("Secret", { exact: true }).fill("not-the-secret");
  await follow(page, page.getByRole("button", { name: "Sign in" }));
  assertEqual(pathOf(page), "/login", "page after a failed sign-in");
  await see(page, '.error[role="alert"]', "Wrong account or secret.");
  // The namespace stays filled in, the secret does not.
  assertEqual(await page.getByLabel("Namespace", { exact: true }).inputValue(), NAMESPACE, "namespace kept");
  assertEqual(await page.getByLabel("Secret", { exact: true }).inputValue(), "", "secret field");
  await shot(page, "login-error");
  // Still signed out.
  await visit(page, "/services");
  assertEqual(pathOf(page), "/login", "where /services leads without a session");
});

step("signing in as the admin lands on /services, which lists helloworld", async ({ page }) => {
  await login(page);
  await see(page, "h1", "Services");
  await see(page, "header .account", ADMIN);
  await see(page, 'nav[aria-label="Sections"] a[aria-current="page"]', "Services");
  const row = page.locator("tbody tr").filter({ has: page.locator("td a", { hasText: /^helloworld$/ }) });
  await row.waitFor({ timeout: WAIT_MS });
  const cells = await row.locator("td").allInnerTexts();
  // Service, Versions, Nodes, Endpoints: one node, Debug.{Health,Stats,Trace} and Greeter.{Hello,Stream,Chat}.
  assertEqual(cells[0], "helloworld", "service cell");
  assert(Number(cells[2]) >= 1, `helloworld has ${cells[2]} nodes`);
  assertEqual(Number(cells[3]), 6, "helloworld's endpoints");
  // The core services are listed too.
  for (const core of ["auth", "registry", "store"]) await see(page, "tbody td a", new RegExp(`^${core}$`));
  // The gateway's OpenAPI document of the namespace is linked.
  const openapi = page.locator("p.openapi a");
  assertEqual(await openapi.getAttribute("href"), `${API}/openapi.json`, "the namespace's OpenAPI link");
  await shot(page, "services");
});

step("a service page lists its nodes and endpoints", async ({ page }) => {
  await login(page);
  await follow(page, page.locator("tbody td a", { hasText: /^helloworld$/ }));
  assertEqual(pathOf(page), "/services/helloworld", "page of the service");
  await see(page, "h1", "helloworld");
  await see(page, "tbody td code", /^127\.0\.0\.1:\d+$/);
  await see(page, "main li", "Greeter.Hello");
  await see(page, "main li", /Greeter\.Stream\s+server stream/);
  await see(page, "main li", /Greeter\.Chat\s+bidi stream/);
  await shot(page, "service");
  // The gateway's OpenAPI document of the service, linked: it describes helloworld's endpoints.
  const doc = await openLinkedJson(page, page.locator("p.openapi a"), `${API}/openapi/helloworld.json`);
  assertEqual(doc.info?.title, `helloworld (namespace ${NAMESPACE})`, "the document's title");
  const paths = Object.keys(doc.paths ?? {});
  assert(doc.paths?.["/helloworld/greeter/hello"]?.post, `no POST /helloworld/greeter/hello among ${paths}`);
  await visit(page, "/services/nosuchservice", 404);
  await see(page, "main p", "No service nosuchservice in micro.");
});

step("calling Greeter.Hello from its form shows the reply", async ({ page }) => {
  await login(page);
  await visit(page, "/services/helloworld");
  await follow(page, page.locator("main li a", { hasText: /^Greeter\.Hello$/ }));
  await see(page, "h1", "helloworld · Greeter.Hello");
  const name = page.getByLabel("name", { exact: true });
  assertEqual(await name.getAttribute("name"), "f.name", "the field's form name");
  await name.fill("Alice");
  await follow(page, page.getByRole("button", { name: "Call Greeter.Hello" }));
  await see(page, "main h2", "Response");
  const reply = JSON.parse(await see(page, REPLY, "Hello Alice"));
  assertEqual(reply, { message: "Hello Alice" }, "the reply");
  assertEqual(await page.getByLabel("name", { exact: true }).inputValue(), "Alice", "the field keeps its value");
  await shot(page, "endpoint");
});

step("an error from the service is shown in words", async ({ page }) => {
  await login(page);
  await visit(page, "/services/helloworld/Greeter.Hello");
  // helloworld refuses an empty name with InvalidArgument.
  await follow(page, page.getByRole("button", { name: "Call Greeter.Hello" }));
  await see(page, '.error[role="alert"]', /400 Bad Request.*name is required/);
  assertEqual(await page.locator(REPLY).count(), 0, "a reply next to the error");
});

step("raw JSON mode calls with the JSON and reports invalid JSON readably", async ({ page }) => {
  await login(page);
  await visit(page, "/services/helloworld/Greeter.Hello");
  await follow(page, page.getByRole("link", { name: "Raw JSON" }));
  assertEqual(new URL(page.url()).search, "?raw=1", "the raw mode's query");
  const json = page.getByLabel("Request (JSON)", { exact: true });
  // Pre-filled with an example request from the schema.
  assertEqual(JSON.parse(await json.inputValue()), { name: "" }, "the example request");
  await shot(page, "endpoint-raw");
  await json.fill('{"name": "Bob"}');
  await follow(page, page.getByRole("button", { name: "Call Greeter.Hello" }));
  assertEqual(JSON.parse(await see(page, REPLY, "Hello Bob")), { message: "Hello Bob" }, "the reply");
  await json.fill('{"name": "Bob"');
  await follow(page, page.getByRole("button", { name: "Call Greeter.Hello" }));
  await see(page, '.error[role="alert"]', /400 Bad Request.*the request is not valid JSON/);
  // The text sent stays there to fix, still in raw mode.
  assertEqual(await page.getByLabel("Request (JSON)", { exact: true }).inputValue(), '{"name": "Bob"', "the sent text");
  assertEqual(await page.locator(REPLY).count(), 0, "a reply next to the error");
});

step("a bad number in a typed field is refused in words", async ({ page }) => {
  // helloworld's only numeric field is Greeter.Stream's `count`, and streams have no form:
  // the store's Store.Read has integer options (the error comes before any call).
  await login(page);
  await visit(page, "/services/store/Store.Read");
  const limit = page.getByLabel("limit", { exact: true });
  assertEqual(await limit.getAttribute("type"), "number", "the type of the integer field");
  await limit.fill("1.5");
  // The browser refuses it first ...
  assert(!(await limit.evaluate((el) => el.checkValidity())), "the browser accepts 1.5 as a whole number");
  // ... and without the browser's check, the server says what is wrong.
  await page.locator("form.stack").evaluate((f) => {
    f.noValidate = true;
  });
  await follow(page, page.getByRole("button", { name: "Call Store.Read" }));
  await see(page, '.error[role="alert"]', /400 Bad Request.*options\.limit: "1\.5" is not a whole number/);
  assertEqual(await page.getByLabel("limit", { exact: true }).inputValue(), "1.5", "the field keeps its value");
});

step("signing out returns to /login, and pages then lead there", async ({ page }) => {
  await login(page);
  await follow(page, page.getByRole("button", { name: "Sign out" }));
  assertEqual(pathOf(page), "/login", "page after signing out");
  await see(page, "h1", "Sign in to Micro");
  for (const p of ["/services", "/services/helloworld/Greeter.Hello", "/"]) {
    await page.goto(BASE + p);
    assertEqual(pathOf(page), "/login", `where ${p} leads after signing out`);
  }
});

step("at phone width the navigation shows and nothing overflows sideways", async ({ page }) => {
  await page.setViewportSize(PHONE);
  await visit(page, "/login");
  await noOverflow(page);
  await login(page);
  for (const p of PAGES) {
    await visit(page, p);
    const links = page.locator('nav[aria-label="Sections"] a');
    assertEqual(await links.count(), 17, `section links on ${p} (the operator sees Platform, Billing and Network)`);
    for (const link of await links.all()) {
      assert(await link.isVisible(), `${await link.innerText()} is hidden on ${p}`);
      const box = await link.boundingBox();
      assert(box && box.x >= 0 && box.x + box.width <= PHONE.width, `${await link.innerText()} is off screen on ${p}`);
    }
    assert(await page.getByRole("button", { name: "Sign out" }).isVisible(), `no Sign out on ${p}`);
    await noOverflow(page);
  }
});

async function noOverflow(page) {
  const [scroll, inner, widest] = await page.evaluate(() => {
    const [scroll, inner] = [document.scrollingElement.scrollWidth, window.innerWidth];
    if (scroll <= inner) return [scroll, inner, null];
    // The outermost element sticking out on the right (not inside one that scrolls or
    // clips it), to name in the failure.
    const clipped = (el) => {
      for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
        if (getComputedStyle(a).overflowX !== "visible") return true;
      }
      return false;
    };
    const out = [...document.querySelectorAll("body *")].find(
      (el) => el.getBoundingClientRect().right > inner + 0.5 && !clipped(el),
    );
    if (!out) return [scroll, inner, "no element found"];
    const tag = out.tagName.toLowerCase() + (out.id ? `#${out.id}` : "") + (out.className ? `.${out.className}` : "");
    return [scroll, inner, `<${tag}> ${JSON.stringify(out.textContent.trim().slice(0, 60))}`];
  });
  assert(scroll <= inner, `${pathOf(page)} is ${scroll}px wide in a ${inner}px window (${widest})`);
}

step("every page has an <h1>, every input a label and a valid pattern", async ({ page }) => {
  await visit(page, "/login");
  await accessible(page);
  await login(page);
  for (const p of PAGES) {
    await visit(page, p);
    await accessible(page);
  }
});

// ---------------------------------------------------------------------------------------
// Runtime: the service `ticker` (E2E_RUNTIME_SOURCE, a git repository web.rs makes) is
// run from the form, its live log followed, then killed.

const TICKER = "ticker";

/** Opens ticker's runtime page; skips the step when it does not run (the run step failed). */
async function openTicker(page) {
  if (!SOURCE) skip("E2E_RUNTIME_SOURCE is not set (web.rs sets it when git is there)");
  await login(page);
  const r = await page.goto(`${BASE}/runtime/${TICKER}`);
  if (r.status() === 404) skip(`${TICKER} does not run: the step running it failed`);
  assertEqual(r.status(), 200, `status of GET /runtime/${TICKER}`);
  return r;
}

step("runtime: a service run from the form turns running; a bad name is refused", async ({ page }) => {
  if (!SOURCE) skip("E2E_RUNTIME_SOURCE is not set (web.rs sets it when git is there)");
  await login(page);
  await visit(page, "/runtime");
  await see(page, "h1", "Runtime");
  await see(page, "main p", `Nothing runs in ${NAMESPACE} yet.`);
  await look(page);
  // A name the registry would refuse: the form comes back with the reason, and nothing runs.
  await page.getByLabel("Source", { exact: true }).fill(SOURCE);
  await page.getByLabel("Name", { exact: true }).fill("no spaces");
  await follow(page, page.getByRole("button", { name: "Run", exact: true }));
  await see(page, '.error[role="alert"]', /400 Bad Request.*"no spaces" is not a service name/);
  await see(page, "main p", `Nothing runs in ${NAMESPACE} yet.`);
  assertEqual(await page.getByLabel("Source", { exact: true }).inputValue(), SOURCE, "the source, kept");
  await look(page);
  // The real run.
  await page.getByLabel("Name", { exact: true }).fill(TICKER);
  await page.getByLabel("Environment", { exact: true }).fill("GREETING=hello from e2e");
  await follow(page, page.getByRole("button", { name: "Run", exact: true }));
  assertEqual(pathOf(page), `/runtime/${TICKER}`, "page after Run");
  await see(page, 'p.ok[role="status"]', `${TICKER} is starting`);
  await see(page, "td code", "GREETING=hello from e2e");
  await see(page, "td code", SOURCE);
  // pending → building → starting → running (a shell loop: ready after a second up).
  const status = 'tr:has(> th:text-is("Status")) .badge';
  await reloadUntil(page, `/runtime/${TICKER}`, status, "running", { fail: "error" });
  await see(page, 'tr:has(> th:text-is("Instances")) td', "1/1 running");
  await see(page, 'h2:text-is("Instances") + table tbody td .badge', "running");
  // The list shows it too.
  await visit(page, "/runtime");
  const cells = await rowOf(page, TICKER).locator("td").allInnerTexts();
  // Status, Version, Instances, Restarts, Error, Updated.
  const [state, version, instances, restarts, error] = cells.map((c) => c.trim());
  assertEqual([state, instances, restarts, error], ["running", "1/1", "0", ""], "ticker's row");
  assert(/^[0-9a-f]{12}$/.test(version), `ticker's version ${JSON.stringify(version)} (a commit)`);
  await look(page, "runtime");
});

step("runtime: the live log shows a line the service prints while the page is open", async ({ page }) => {
  const r = await openTicker(page);
  const html = await r.text();
  const log = page.locator("pre.log[data-stream]");
  assertEqual(await log.getAttribute("data-stream"), `/runtime/${TICKER}/logs/stream`, "the live log's URL");
  // The page came with the lines so far (`started`, then ticks) ...
  const shown = html.match(/<pre[^>]*data-stream[^>]*>([^<]*)<\/pre>/)?.[1] ?? "";
  assert(shown.split("\n").includes("started"), `the page's log: ${JSON.stringify(shown.slice(0, 200))}`);
  const known = [...shown.matchAll(/tick (\d+)/g)].map((m) => Number(m[1]));
  // ... and a line printed later arrives without reloading.
  const last = known.length ? Math.max(...known) : 0;
  await page.waitForFunction(
    (last) => {
      const text = document.querySelector("pre.log[data-stream]").textContent;
      return [...text.matchAll(/tick (\d+)/g)].some((m) => Number(m[1]) > last);
    },
    last,
    { timeout: WAIT_MS },
  );
  assertEqual(await log.getAttribute("data-state"), "live", "the live log's state");
  const lines = (await log.textContent()).split("\n").filter((l) => /^tick \d+$/.test(l));
  const newest = Math.max(...lines.map((l) => Number(l.slice(5))));
  assert(newest > last, `no tick after ${last}`);
  // Each line once, in order.
  const numbers = lines.map((l) => Number(l.slice(5)));
  assertEqual(numbers, [...new Set(numbers)].sort((a, b) => a - b), "the ticks in the log");
  await look(page, "runtime-service");
});

step("runtime: killing a service asks first; then it is gone", async ({ page }) => {
  await openTicker(page);
  const kill = page.getByRole("button", { name: `Kill ${TICKER}` });
  const question = `Kill ${TICKER}? Its instances stop and the runtime forgets it.`;
  // Cancelled: nothing happens.
  assertEqual(await confirmWhile(page, false, () => kill.click()), question, "the question");
  await page.waitForTimeout(300);
  assertEqual(pathOf(page), `/runtime/${TICKER}`, "page after cancelling");
  await see(page, 'tr:has(> th:text-is("Status")) .badge', "running");
  // Confirmed.
  assertEqual(await followConfirmed(page, kill), question, "the question");
  assertEqual(pathOf(page), "/runtime", "page after killing");
  await see(page, 'p.ok[role="status"]', `Killed ${TICKER}.`);
  assertEqual(await rowOf(page, TICKER).count(), 0, "rows of ticker after the kill");
  await see(page, "main p", `Nothing runs in ${NAMESPACE} yet.`);
  await visit(page, `/runtime/${TICKER}`, 404);
  await see(page, "main p", `No service ${TICKER} runs in ${NAMESPACE}.`);
});

// ---------------------------------------------------------------------------------------
// Store.

step("store: a record written from the form reads back; bad input is refused; delete asks", async ({ page }) => {
  const table = `e2e-orders-${RUN}`;
  const base = `/store/${NAMESPACE}/${table}`;
  await login(page);
  await visit(page, `/store/${NAMESPACE}`);
  await see(page, "h1", `Store · ${NAMESPACE}`);
  await page.getByLabel("Table", { exact: true }).fill(table);
  await follow(page, page.getByRole("button", { name: "Open" }));
  assertEqual(pathOf(page), base, "page of the table");
  await see(page, "main p", "No records.");
  const key = page.getByLabel("Key", { exact: true });
  const value = page.getByLabel("Value", { exact: true });
  const write = page.getByRole("button", { name: "Write record" });
  // Invalid JSON: refused, the text kept, nothing written.
  await key.fill("order-1");
  await value.fill('{"item": "teapot", "total": 12.5');
  await page.getByLabel("The value is", { exact: true }).selectOption("json");
  await follow(page, write);
  await see(page, '.error[role="alert"]', /400 Bad Request.*The value is not valid JSON/);
  await see(page, "main p", "No records.");
  assertEqual(await value.inputValue(), '{"item": "teapot", "total": 12.5', "the value, kept");
  await look(page);
  // An empty key (past the browser's check).
  await key.fill("");
  await value.fill("1");
  await noBrowserChecks(key);
  await follow(page, write);
  await see(page, '.error[role="alert"]', /400 Bad Request.*Enter a key\./);
  await see(page, "main p", "No records.");
  // The real write.
  await key.fill("order-1");
  await value.fill('{"item": "teapot", "total": 12.5}');
  await page.getByLabel("The value is", { exact: true }).selectOption("json");
  await page.getByLabel("Metadata", { exact: true }).fill("source=e2e");
  await follow(page, write);
  const query = new URL(page.url()).searchParams;
  assertEqual([pathOf(page), query.get("key"), query.get("saved")], [base, "order-1", "1"], "page after writing");
  await see(page, 'p.ok[role="status"]', "Saved.");
  assertEqual(JSON.parse(await see(page, "main pre.json", "teapot")), { item: "teapot", total: 12.5 }, "the value");
  assertEqual((await rowOf(page, "Key").locator("td").innerText()).trim(), "order-1", "the key");
  assertEqual((await rowOf(page, "Expires").locator("td").innerText()).trim(), "never", "the expiry");
  assertEqual((await rowOf(page, "Metadata").locator("td").innerText()).trim(), "source=e2e", "the metadata");
  await look(page, "store-record");
  // Listed in its table, the table in its database, the database on /store.
  await follow(page, page.locator('nav[aria-label="Breadcrumb"] a', { hasText: table }));
  await see(page, "main li a code", /^order-1$/);
  await look(page, "store-table");
  await visit(page, `/store/${NAMESPACE}`);
  await see(page, "main li a", table);
  await look(page, "store-database");
  await visit(page, "/store");
  await see(page, "main li", new RegExp(`^${NAMESPACE}\\s+this namespace$`));
  await look(page, "store");
  // Deleting asks first.
  await visit(page, `${base}?key=order-1`);
  const asked = await followConfirmed(page, page.getByRole("button", { name: "Delete this record" }));
  assertEqual(asked, "Delete the record order-1?", "the question");
  assertEqual(pathOf(page), base, "page after deleting");
  await see(page, 'p.ok[role="status"]', "Deleted order-1.");
  await see(page, "main p", "No records.");
  await visit(page, `${base}?key=order-1`, 404);
  await see(page, '.error[role="alert"]', `404 Not Found — no record "order-1" in ${NAMESPACE}/${table}`);
});

// ---------------------------------------------------------------------------------------
// Database.

step("database: a collection made from the form; records written, filtered, seen live; rules in words", async ({
  page,
  context,
}) => {
  const name = `todos_${RUN}`;
  const here = `/db/${name}`;
  await login(page);
  await visit(page, "/db");
  await look(page);
  await page.getByLabel("Name", { exact: true }).fill(name);
  await page
    .getByLabel("Schema (optional): a JSON list of fields", { exact: true })
    .fill('[{"name": "title", "type": "text", "required": true}, {"name": "done", "type": "bool"}]');
  await page.getByLabel("Who may list", { exact: true }).selectOption("filter");
  await page.locator("#new-list").fill("done = false");
  await page.getByLabel("Who may view", { exact: true }).selectOption("anyone");
  await follow(page, page.getByRole("button", { name: "Create collection" }));
  assertEqual(pathOf(page), here, "page after making the collection");
  await see(page, "ul.explained li", "list: Allowed where done = false");
  await see(page, "ul.explained li", "view: Anyone may read a record");
  await see(page, "ul.explained li", "create: Only the namespace's admins and developers may");
  // A record the schema refuses: the reason, nothing written.
  await page.getByLabel("New record (JSON)", { exact: true }).fill('{"done": true}');
  await follow(page, page.getByRole("button", { name: "Create record" }));
  await see(page, '.error[role="alert"]', /400 Bad Request.*field title is required/);
  await see(page, "#db-count", "0 records.");
  // The live view shows a record made from another page.
  await page.waitForFunction(() => document.querySelector("pre.log[data-stream]").dataset.state === "live", null, {
    timeout: WAIT_MS,
  });
  const other = await context.newPage();
  await visit(other, here);
  await other.getByLabel("New record (JSON)", { exact: true }).fill('{"title": "teapot", "done": false}');
  await follow(other, other.getByRole("button", { name: "Create record" }));
  await see(other, 'p.notice[role="status"]', /^Record [0-9a-f]{32} created\.$/);
  await other.getByLabel("New record (JSON)", { exact: true }).fill('{"title": "kettle", "done": true}');
  await follow(other, other.getByRole("button", { name: "Create record" }));
  await other.close();
  await see(page, "pre.log[data-stream]", /^create [0-9a-f]{32} .*"title":"teapot"/m);
  await see(page, "pre.log[data-stream]", /^create [0-9a-f]{32} .*"title":"kettle"/m);
  // Filters: a match, a bad one with where it went wrong, and whether an index serves it.
  await visit(page, here);
  await see(page, "#db-count", "2 records.");
  await page.getByLabel("Filter", { exact: true }).fill("title ~ 'tea'");
  await follow(page, page.getByRole("button", { name: "Apply" }));
  await see(page, "#db-count", "1 record match.");
  await see(page, "table.records", "teapot");
  await see(page, "#db-plan", "reads the whole collection");
  await look(page, "db-collection");
  await page.getByLabel("Filter", { exact: true }).fill("title ~");
  await page.getByRole("button", { name: "Apply" }).click();
  await see(page, '.error[role="alert"]', /400 Bad Request.*filter at 7: expected/);
  // The rules' editor: updates opened to anyone, and said so.
  await visit(page, here);
  await page.getByLabel("Who may update", { exact: true }).selectOption("anyone");
  await follow(page, page.getByRole("button", { name: "Save rules" }));
  await see(page, 'p.notice[role="status"]', "The rules are saved.");
  await see(page, "ul.explained li", "update: Anyone may change records");
  await see(page, "ul.explained li", "list: Allowed where done = false");
  await visit(page, "/db");
  await see(page, "table.collections a", name);
  await look(page, "db");
  // Deleting the collection asks first.
  await visit(page, here);
  const asked = await followConfirmed(page, page.getByRole("button", { name: `Delete ${name} and every record of it` }));
  assertEqual(asked, `Delete the collection ${name} and every record of it?`, "the question");
  assertEqual(pathOf(page), "/db", "page after deleting");
  await see(page, 'p.notice[role="status"]', `Collection ${name} deleted.`);
});

step("app users: turned on from the form; a user who signed up is listed, then erased after a question", async ({
  page,
}) => {
  const ns = `apps-${RUN}`;
  const email = `zoe.${RUN}@example.com`;
  await login(page);
  await page.getByLabel("Namespace", { exact: true }).fill(ns);
  await follow(page, page.getByRole("button", { name: "Switch" }));
  await visit(page, "/users");
  await look(page);
  // Off until saved: a signup is refused in words.
  const signup = () =>
    fetch(`${API}/users/v1/signup`, {
      method: "POST",
      headers: { "content-type": "application/json", "micro-namespace": ns },
      body: JSON.stringify({ email, password: "correct horse battery", name: "Zoe" }),
    });
  assertEqual((await signup()).status, 400, "a signup before app users are on");
  await page.getByLabel("App name (in the mails)", { exact: true }).fill("Shop");
  await page.getByLabel("Page the mailed codes link to (optional)", { exact: true }).fill("notaurl");
  await noBrowserChecks(page.getByLabel("Page the mailed codes link to (optional)", { exact: true }));
  await follow(page, page.getByRole("button", { name: "Save settings" }));
  await see(page, '.error[role="alert"]', /400 Bad Request.*link_url/);
  await visit(page, "/users");
  await page.getByLabel("App name (in the mails)", { exact: true }).fill("Shop");
  await follow(page, page.getByRole("button", { name: "Save settings" }));
  await see(page, 'p.notice[role="status"]', "The settings are saved: app users are on.");
  assertEqual((await signup()).status, 200, "a signup once they are on");
  await visit(page, "/users");
  await see(page, "table.users", email);
  await see(page, "#users-count", "1 user on page 1.");
  await look(page, "users");
  const asked = await followConfirmed(page, page.getByRole("button", { name: `Erase ${email}` }));
  assertEqual(asked, `Erase ${email} and everything kept about them?`, "the question");
  await see(page, 'p.notice[role="status"]', /^User [a-z0-9]{15} erased\.$/);
  await see(page, "#users-count", "No users on this page.");
  await page.getByLabel("Namespace", { exact: true }).fill(NAMESPACE);
  await follow(page, page.getByRole("button", { name: "Switch" }));
});

step("files: the settings are saved from the form; an uploaded file is listed, then deleted after a question", async ({
  page,
}) => {
  const ns = `files-${RUN}`;
  await login(page);
  await page.getByLabel("Namespace", { exact: true }).fill(ns);
  await follow(page, page.getByRole("button", { name: "Switch" }));
  await visit(page, "/files");
  await see(page, "#files-count", "No files yet.");
  await page.getByLabel("Largest file (MB)", { exact: true }).fill("none");
  await follow(page, page.getByRole("button", { name: "Save settings" }));
  await see(page, '.error[role="alert"]', /400 Bad Request.*max_file_size/);
  await visit(page, "/files");
  await page.getByLabel("Largest file (MB)", { exact: true }).fill("2");
  await page.getByLabel("Types allowed (empty: any; image/ for every image)", { exact: true }).fill("image/, text/plain");
  await follow(page, page.getByRole("button", { name: "Save settings" }));
  await see(page, 'p.notice[role="status"]', "The settings are saved.");
  // A file uploaded at the gateway, as the admin.
  const signin = await fetch(`${API}/auth/token`, {
    method: "POST",
    headers: { "content-type": "application/json", "micro-namespace": "micro" },
    body: JSON.stringify({ id: ADMIN, secret: PASSWORD }),
  });
  const { access_token } = await signin.json();
  const png = Buffer.from(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
    "base64",
  );
  const up = await fetch(`${API}/files/v1/files?name=logo.png`, {
    method: "POST",
    headers: { authorization: `Bearer ${access_token}`, "micro-namespace": ns, "content-type": "image/png" },
    body: png,
  });
  assertEqual(up.status, 200, `upload: ${await up.clone().text()}`);
  const refused = await fetch(`${API}/files/v1/files?name=notes.pdf`, {
    method: "POST",
    headers: { authorization: `Bearer ${access_token}`, "micro-namespace": ns, "content-type": "application/pdf" },
    body: "%PDF-1.4\n%\xe2\xe3\n1 0 obj<<>>endobj\n",
  });
  assertEqual(refused.status, 415, "a type the settings do not allow");
  await visit(page, "/files");
  await see(page, "table.files", "logo.png");
  await see(page, "#files-count", /^1 file, \d+ B\.$/);
  await look(page, "files");
  const asked = await followConfirmed(page, page.getByRole("button", { name: "Delete logo.png" }));
  assertEqual(asked, "Delete logo.png? Its links stop working.", "the question");
  await see(page, 'p.notice[role="status"]', /^File [a-z0-9]{20} deleted\.$/);
  await see(page, "#files-count", "No files yet.");
  await page.getByLabel("Namespace", { exact: true }).fill(NAMESPACE);
  await follow(page, page.getByRole("button", { name: "Switch" }));
});

/** A tar archive of one file `name` holding `text` (what `micro app deploy` sends). */
function tarOf(name, text) {
  const data = Buffer.from(text);
  const header = Buffer.alloc(512);
  header.write(name, 0);
  header.write("0000644\0", 100);
  header.write("0000000\0", 108);
  header.write("0000000\0", 116);
  header.write(data.length.toString(8).padStart(11, "0") + "\0", 124);
  header.write("00000000000\0", 136);
  header.write("        ", 148);
  header.write("0", 156);
  header.write("ustar\0", 257);
  header.write("00", 263);
  let sum = 0;
  for (const b of header) sum += b;
  header.write(sum.toString(8).padStart(6, "0") + "\0 ", 148);
  const pad = Buffer.alloc((512 - (data.length % 512)) % 512);
  return Buffer.concat([header, data, pad, Buffer.alloc(1024)]);
}

step("apps: two deploys are listed, the first is served again with a button, then the app is deleted after a question", async ({
  page,
}) => {
  const ns = `sites-${RUN}`;
  const signin = await fetch(`${API}/auth/token`, {
    method: "POST",
    headers: { "content-type": "application/json", "micro-namespace": "micro" },
    body: JSON.stringify({ id: ADMIN, secret: PASSWORD }),
  });
  const { access_token } = await signin.json();
  const deploy = async (v) => {
    const r = await fetch(`${API}/apps/v1/apps/site/deploys`, {
      method: "POST",
      headers: { authorization: `Bearer ${access_token}`, "micro-namespace": ns, "content-type": "application/x-tar" },
      body: tarOf("index.html", `<h1>version ${v}</h1>`),
    });
    assertEqual(r.status, 200, `deploy ${v}: ${await r.clone().text()}`);
    return (await r.json()).deploy.id;
  };
  const first = await deploy(1);
  await deploy(2);
  const served = async () => (await (await fetch(`${API}/apps/site/`, { headers: { "micro-namespace": ns } })).text());
  assertEqual(await served(), "<h1>version 2</h1>", "the second deploy is served");
  await login(page);
  await page.getByLabel("Namespace", { exact: true }).fill(ns);
  await follow(page, page.getByRole("button", { name: "Switch" }));
  await visit(page, "/apps");
  await see(page, "#apps-count", "1 app.");
  await see(page, "section.app h2", "site");
  await see(page, "table.deploys", "(serving)");
  await look(page, "apps");
  await follow(page, page.getByRole("button", { name: `Serve ${first}` }));
  await see(page, 'p.notice[role="status"]', `site serves deploy ${first}.`);
  let back = "";
  for (let i = 0; i < 30 && back !== "<h1>version 1</h1>"; i++) {
    back = await served();
    if (back !== "<h1>version 1</h1>") await new Promise((r) => setTimeout(r, 100));
  }
  assertEqual(back, "<h1>version 1</h1>", "the first deploy is served again");
  const asked = await followConfirmed(page, page.getByRole("button", { name: "Delete site" }));
  assertEqual(asked, "Delete site and every deploy of it?", "the question");
  await see(page, 'p.notice[role="status"]', "App site deleted.");
  await see(page, "#apps-count", "No apps yet.");
  await page.getByLabel("Namespace", { exact: true }).fill(NAMESPACE);
  await follow(page, page.getByRole("button", { name: "Switch" }));
});

step("mailing lists: a list is made from the form, a subscription is counted, then the list is deleted after a question", async ({
  page,
}) => {
  const ns = `lists-${RUN}`;
  await login(page);
  await page.getByLabel("Namespace", { exact: true }).fill(ns);
  await follow(page, page.getByRole("button", { name: "Switch" }));
  await visit(page, "/lists");
  await see(page, "#lists-count", "No lists yet.");
  await page.getByLabel("Name (lowercase letters, digits, - and _)", { exact: true }).fill("News!");
  await noBrowserChecks(page.getByLabel("Name (lowercase letters, digits, - and _)", { exact: true }));
  await follow(page, page.getByRole("button", { name: "Save list" }));
  await see(page, '.error[role="alert"]', /400 Bad Request.*not a list name/);
  await visit(page, "/lists");
  await page.getByLabel("Name (lowercase letters, digits, - and _)", { exact: true }).fill("news");
  await page.getByLabel("Title (in the mails and pages)", { exact: true }).fill("Shop News");
  await follow(page, page.getByRole("button", { name: "Save list" }));
  await see(page, 'p.notice[role="status"]', "List news saved.");
  const r = await fetch(`${API}/subscribe/v1/${ns}/lists/news/subscribe`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: "email=zoe%40example.com",
  });
  assertEqual(r.status, 200, `subscribe: ${await r.clone().text()}`);
  await visit(page, "/lists");
  await see(page, "#lists-count", "1 list.");
  await see(page, "table.lists", "Shop News");
  await look(page, "lists");
  const asked = await followConfirmed(page, page.getByRole("button", { name: "Delete news" }));
  assertEqual(asked, "Delete news and its subscribers?", "the question");
  await see(page, 'p.notice[role="status"]', "List news deleted.");
  await see(page, "#lists-count", "No lists yet.");
  await page.getByLabel("Namespace", { exact: true }).fill(NAMESPACE);
  await follow(page, page.getByRole("button", { name: "Switch" }));
});

step("lists: campaigns — a draft made from the form is sent now, turns sent on reload with its refusal in words, its report opens, then it is deleted", async ({
  page,
}) => {
  const ns = `campaigns-${RUN}`;
  await login(page);
  await page.getByLabel("Namespace", { exact: true }).fill(ns);
  await follow(page, page.getByRole("button", { name: "Switch" }));
  await visit(page, "/lists");
  await see(page, "#campaigns-count", "No campaigns yet.");
  await page.getByLabel("Name (lowercase letters, digits, - and _)", { exact: true }).fill("news");
  await page.getByLabel("Title (in the mails and pages)", { exact: true }).fill("Shop News");
  await follow(page, page.getByRole("button", { name: "Save list" }));
  await see(page, 'p.notice[role="status"]', "List news saved.");
  // One subscriber put on the list as the CLI's `subscribers.add` does (no confirmation mail).
  const signin = await fetch(`${API}/auth/token`, {
    method: "POST",
    headers: { "content-type": "application/json", "micro-namespace": "micro" },
    body: JSON.stringify({ id: ADMIN, secret: PASSWORD }),
  });
  const { access_token } = await signin.json();
  const added = await fetch(`${API}/subscribe/subscribers/add`, {
    method: "POST",
    headers: { authorization: `Bearer ${access_token}`, "micro-namespace": ns, "content-type": "application/json" },
    body: JSON.stringify({ list: "news", email: "ann@example.com", name: "Ann" }),
  });
  assertEqual(added.status, 200, `subscribers.add: ${await added.clone().text()}`);
  // A draft without a body: the product's error in words, the form kept.
  const name = page.getByLabel("Campaign name (lowercase letters, digits, - and _)", { exact: true });
  const subject = page.getByLabel("Subject ({{name}}, {{email}} and {{list}} are filled in)", { exact: true });
  await name.fill("spring");
  await subject.fill("Spring sale, {{name}}");
  await follow(page, page.getByRole("button", { name: "Save draft" }));
  await see(page, '.error[role="alert"]', /400 Bad Request.*needs a text or an html body/);
  assertEqual(await subject.inputValue(), "Spring sale, {{name}}", "the subject, kept");
  await look(page);
  await page
    .getByLabel("Text (the unsubscribe link is added at the end)", { exact: true })
    .fill("Hello {{name}}, the sale is on: https://shop.example/sale");
  await page.getByLabel("HTML (optional)", { exact: true }).fill('<p>Hello {{name}}, <a href="https://shop.example/sale">the sale</a> is on.</p>');
  await page.getByLabel("Count opens and clicks (the HTML's links go through the API)", { exact: true }).check();
  await follow(page, page.getByRole("button", { name: "Save draft" }));
  await see(page, 'p.notice[role="status"]', "Campaign spring saved as a draft.");
  await see(page, "#campaigns-count", "1 campaign.");
  assertEqual(await rowOf(page, "spring").locator("td.state").innerText(), "draft", "the new campaign's state");
  const asked = await followConfirmed(page, page.getByRole("button", { name: "Send spring now" }));
  assertEqual(asked, "Send spring to every confirmed subscriber of news now?", "the question");
  await see(page, 'p.notice[role="status"]', "Campaign spring is being sent.");
  // The cluster's sending worker takes it within a second or two; without MICRO_SMTP the
  // email product refuses Ann's mail, and the campaign says so.
  await reloadUntil(page, "/lists", "table.campaigns td.state", "sent", { fail: "cancelled" });
  const [, list, , sent, failed, opens, clicks] = await rowOf(page, "spring").locator("td").allInnerTexts();
  assertEqual([list, Number(sent) + Number(failed), opens, clicks], ["news", 1, "0", "0"], "the sent campaign's row");
  // A second campaign, a draft, for the picture.
  await name.fill("summer");
  await subject.fill("Summer hours");
  await page.getByLabel("Text (the unsubscribe link is added at the end)", { exact: true }).fill("We open at 8 from June.");
  await follow(page, page.getByRole("button", { name: "Save draft" }));
  await see(page, "#campaigns-count", "2 campaigns.");
  await look(page, "lists-campaigns");
  await follow(page, page.getByRole("link", { name: "spring", exact: true }));
  assertEqual(pathOf(page), "/lists/campaigns/spring", "the report's path");
  await see(page, "h1", "Campaign spring");
  assertEqual(await rowOf(page, "State").locator("td").innerText(), "sent", "the report's state");
  assertEqual(await rowOf(page, "Opened").locator("td").innerText(), "0 subscribers", "the report's opens");
  await see(page, "#links-count", "No clicks yet.");
  if (failed === "1") await see(page, "ul.errors li", /^ann@example\.com: \S/);
  await look(page);
  await follow(page, page.getByRole("link", { name: "Back to the lists" }));
  const gone = await followConfirmed(page, page.getByRole("button", { name: "Delete campaign spring" }));
  assertEqual(gone, "Delete campaign spring and its counts?", "the question");
  await see(page, 'p.notice[role="status"]', "Campaign spring deleted.");
  await see(page, "#campaigns-count", "1 campaign.");
  await visit(page, "/lists/campaigns/spring", 404);
  await see(page, '.error[role="alert"]', "no campaign spring");
  await page.getByLabel("Namespace", { exact: true }).fill(NAMESPACE);
  await follow(page, page.getByRole("button", { name: "Switch" }));
});

// ---------------------------------------------------------------------------------------
// Push notifications.

step("push: a notification sent to everyone from the form is listed with its report; an empty title is refused in words", async ({
  page,
}) => {
  const ns = `push-${RUN}`;
  await login(page);
  await page.getByLabel("Namespace", { exact: true }).fill(ns);
  await follow(page, page.getByRole("button", { name: "Switch" }));
  await visit(page, "/push");
  await see(page, 'nav[aria-label="Sections"] a[aria-current="page"]', "Push");
  await see(page, "#push-count", "Nothing sent yet.");
  await see(page, "#push-subscriptions", "0 subscriptions.");
  // No title: the product's error in words, the form kept.
  const title = page.getByLabel("Title", { exact: true });
  await page.getByLabel("Text", { exact: true }).fill(`Back at 23:00 (${RUN})`);
  await noBrowserChecks(title);
  await follow(page, page.getByRole("button", { name: "Send", exact: true }));
  await see(page, '.error[role="alert"]', /400 Bad Request.*a title is one line of 1 to 200 bytes/);
  assertEqual(await page.getByLabel("Text", { exact: true }).inputValue(), `Back at 23:00 (${RUN})`, "the text, kept");
  await see(page, "#push-count", "Nothing sent yet.");
  await look(page);
  // To everyone: no browser subscribed in this namespace, so 0 subscriptions.
  await page.getByLabel("Everyone", { exact: true }).check();
  await title.fill(`Maintenance at 22:00 ${RUN}`);
  await page.getByLabel("Where a click leads (optional: an https:// URL or a path of the app)", { exact: true }).fill("/status");
  await follow(page, page.getByRole("button", { name: "Send", exact: true }));
  await see(page, 'p.notice[role="status"]', "Sent to 0 subscriptions (app users online get it at once).");
  await see(page, "#push-count", "1 notification.");
  const row = page.locator("table.push tbody tr").filter({ hasText: `Maintenance at 22:00 ${RUN}` });
  const [sent, ...cells] = await row.locator("td").allInnerTexts();
  assertEqual(cells, ["all", `Maintenance at 22:00 ${RUN}`, "0", "0", "0", "0", "0", "0"], "the notification's row");
  assert(sent.endsWith(`by ${ADMIN}`), `who sent it: ${JSON.stringify(sent)}`);
  await look(page, "push");
  await page.getByLabel("Namespace", { exact: true }).fill(NAMESPACE);
  await follow(page, page.getByRole("button", { name: "Switch" }));
});

// ---------------------------------------------------------------------------------------
// Config.

step("config: a secret is masked until revealed; invalid JSON is refused", async ({ page }) => {
  const secret = `s3cret-${RUN}`;
  await login(page);
  await visit(page, "/config");
  const path = page.locator("#set-path");
  const value = page.getByLabel("Value", { exact: true });
  const set = page.getByRole("button", { name: "Set", exact: true });
  // Invalid JSON: refused, nothing set.
  await path.fill("e2e.limits");
  await value.fill('{"max": 3');
  await follow(page, set);
  await see(page, '.error[role="alert"]', /400 Bad Request.*The value is not valid JSON/);
  assertEqual(await page.locator("ul.tree code", { hasText: /^e2e$/ }).count(), 0, "e2e in the tree");
  assertEqual(await value.inputValue(), '{"max": 3', "the value, kept");
  await look(page);
  // A plain value shows as it is.
  await value.fill('{"max": 3}');
  await follow(page, set);
  await see(page, 'p.ok[role="status"]', "Saved e2e.limits.");
  await see(page, "ul.tree li", /^max: 3\s+Edit$/);
  // A secret, as text.
  await page.locator("#set-path").fill("e2e.token");
  await page.getByLabel("Value", { exact: true }).fill(secret);
  await page.getByLabel("Text (stored as a string)", { exact: true }).check();
  await page.getByLabel("Secret (encrypted at rest, shown masked)", { exact: true }).check();
  await follow(page, page.getByRole("button", { name: "Set", exact: true }));
  await see(page, 'p.ok[role="status"]', "Saved e2e.token.");
  const item = page.locator("ul.tree li").filter({ has: page.locator("code", { hasText: /^token$/ }) });
  await see(page, "ul.tree li .badge", "secret");
  assertEqual(await item.locator('[aria-label="masked value"]').innerText(), "••••••", "the masked value");
  assert(!(await page.content()).includes(secret), "the secret is in the page");
  await look(page, "config");
  // Reveal shows it (a POST: not in the URL).
  await follow(page, page.getByRole("button", { name: "Reveal e2e.token" }));
  await see(page, 'ul.tree span[role="status"]', "Revealed:");
  assertEqual(JSON.parse(await see(page, "ul.tree pre.json", secret)), secret, "the revealed value");
  assert(!page.url().includes(secret), "the secret is in the URL");
  await look(page, "config-revealed");
  // Deleting the subtree asks first.
  await page.locator("#del-path").fill("e2e");
  const asked = await followConfirmed(page, page.getByRole("button", { name: "Delete", exact: true }));
  assertEqual(asked, "Delete this path and everything under it?", "the question");
  await see(page, 'p.ok[role="status"]', "Deleted e2e.");
  assertEqual(await page.locator("ul.tree code", { hasText: /^e2e$/ }).count(), 0, "e2e in the tree after deleting");
});

// ---------------------------------------------------------------------------------------
// Events.

step("events: a published event is listed; the live tail shows one published meanwhile", async ({ page, context }) => {
  const topic = `e2e/orders-${RUN}`;
  const here = `/events/${encodeURIComponent(topic)}`;
  await login(page);
  await visit(page, "/events");
  await page.getByLabel("Topic", { exact: true }).fill(topic);
  const payload = page.getByLabel("Payload", { exact: true });
  // Invalid JSON: refused, nothing published.
  await payload.fill('{"order": 1');
  await follow(page, page.getByRole("button", { name: "Publish" }));
  await see(page, '.error[role="alert"]', /The payload is not valid JSON/);
  assertEqual(await page.locator("tbody a", { hasText: topic }).count(), 0, "the topic, listed");
  assertEqual(await payload.inputValue(), '{"order": 1', "the payload, kept");
  await look(page);
  // Published.
  await payload.fill('{"order": 1, "item": "teapot"}');
  await page.getByLabel("Ordering key", { exact: true }).fill("o-1");
  await page.getByLabel("Metadata", { exact: true }).fill("source=e2e");
  await follow(page, page.getByRole("button", { name: "Publish" }));
  assertEqual(pathOf(page), `/events/${topic}`, "page after publishing");
  const seq = Number((await see(page, 'p.ok[role="status"]', /^Published event #\d+\.$/)).match(/\d+/)[0]);
  const row = page.locator(`tr#seq-${seq}`);
  const cells = await row.locator("td").allInnerTexts();
  assertEqual(cells[1], "o-1", "the event's key");
  // The metadata given, and the trace context the server stamps on every publish.
  const metadata = cells[2].split(/\s+/).sort();
  assertEqual(metadata[0], "source=e2e", "the event's metadata");
  assert(
    metadata.length === 2 && /^traceparent=00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/.test(metadata[1]),
    `the event's metadata: ${JSON.stringify(cells[2])}`,
  );
  assertEqual(JSON.parse(cells[3]), { order: 1, item: "teapot" }, "the event's payload");
  assertEqual(await row.getAttribute("aria-current"), "true", "the new event highlighted");
  // The live tail: an event published from another page arrives here.
  const tail = page.locator("pre.log[data-stream]");
  await page.waitForFunction(() => document.querySelector("pre.log[data-stream]").dataset.state === "live", null, {
    timeout: WAIT_MS,
  });
  assertEqual(await tail.textContent(), "", "the tail before anything is published");
  const other = await context.newPage();
  await visit(other, here);
  await other.locator('input[name="format"][value="text"]').check();
  await other.getByLabel("Payload", { exact: true }).fill(`tail check ${RUN}`);
  await follow(other, other.getByRole("button", { name: "Publish" }));
  await see(other, 'p.ok[role="status"]', `Published event #${seq + 1}.`);
  await other.close();
  await see(page, "pre.log[data-stream]", new RegExp(`^#${seq + 1} \\d\\d:\\d\\d:\\d\\d tail check ${RUN}$`, "m"));
  await look(page, "events-topic");
  await visit(page, "/events");
  await see(page, "tbody td a", topic);
  await look(page, "events");
});

// ---------------------------------------------------------------------------------------
// Auth.

step("auth: a rule is listed with its effect in words; a bad priority is refused", async ({ page }) => {
  const id = `e2e-vault-${RUN}`;
  await login(page);
  await visit(page, "/auth/rules");
  await see(page, "h1", "Rules");
  const defaultRule = "This is the rule every namespace starts with: it makes the services public.";
  await see(page, 'tbody tr:has(> th:text-is("default")) td', defaultRule);
  await page.getByLabel("Id", { exact: true }).fill(id);
  await page.getByLabel("Who", { exact: true }).selectOption("scope");
  await page.getByLabel("Scope", { exact: true }).fill("staff");
  await page.getByLabel("Resource", { exact: true }).fill("service:vault:*");
  await page.getByLabel("Access", { exact: true }).selectOption("denied");
  const priority = page.getByLabel("Priority", { exact: true });
  await priority.fill("1.5");
  assert(!(await priority.evaluate((el) => el.checkValidity())), "the browser accepts 1.5 as a priority");
  await noBrowserChecks(priority);
  await follow(page, page.getByRole("button", { name: "Save rule" }));
  await see(page, '.error[role="alert"]', 'The priority "1.5" is not a whole number');
  assertEqual(await rowOf(page, id).count(), 0, "rows of the refused rule");
  assertEqual(await page.getByLabel("Resource", { exact: true }).inputValue(), "service:vault:*", "the resource, kept");
  await look(page);
  await page.getByLabel("Priority", { exact: true }).fill("10");
  await follow(page, page.getByRole("button", { name: "Save rule" }));
  assertEqual(pathOf(page), "/auth/rules", "page after saving");
  await see(page, 'p.ok[role="status"]', `Saved rule ${id}.`);
  const cells = (await rowOf(page, id).locator("td").allInnerTexts()).map((c) => c.trim());
  assertEqual(
    cells.slice(0, 5),
    [
      "staff",
      "service:vault:*",
      "denied",
      "10",
      `Denies accounts of namespace ${NAMESPACE} holding the scope staff calls to any endpoint of service vault; ` +
        "priority 10 — matching rules with a higher priority take precedence.",
    ],
    "the rule's row",
  );
  await look(page, "auth-rules");
  const asked = await followConfirmed(page, page.getByRole("button", { name: `Delete rule ${id}` }));
  assertEqual(asked, `Delete rule ${id}?`, "the question");
  await see(page, 'p.ok[role="status"]', `Deleted rule ${id}.`);
  assertEqual(await rowOf(page, id).count(), 0, "rows of the deleted rule");
});

step("auth: an account is created from the form, its generated secret shown once", async ({ page }) => {
  const id = `e2e-service-${RUN}`;
  await login(page);
  await visit(page, "/auth");
  await see(page, "h1", "Accounts");
  assertEqual((await rowOf(page, ADMIN).locator("td").last().innerText()).trim(), "you", "the admin's own row");
  // A bad id: refused, nothing created.
  await page.getByLabel("Id", { exact: true }).fill("has space");
  await follow(page, page.getByRole("button", { name: "Create account" }));
  await see(page, '.error[role="alert"]', "The id must be at most 256 characters, without spaces or /.");
  assertEqual(await rowOf(page, "has space").count(), 0, "rows of the refused account");
  await look(page);
  await page.getByLabel("Id", { exact: true }).fill(id);
  await page.getByLabel("Type", { exact: true }).selectOption("service");
  await page.getByLabel("Scopes", { exact: true }).fill("staff, billing");
  await follow(page, page.getByRole("button", { name: "Create account" }));
  await see(page, '.card[role="status"]', `Created account ${id}. Its secret is shown only this once`);
  const generated = await page.locator(".card[role=status] code").innerText();
  assert(generated.length >= 16, `the generated secret ${JSON.stringify(generated)}`);
  const cells = (await rowOf(page, id).locator("td").allInnerTexts()).map((c) => c.trim());
  assertEqual([cells[1], cells[2].split(/\s+/)], ["service", ["staff", "billing"]], "the account's type and scopes");
  await look(page, "auth-accounts");
  // The secret is not in the page once reloaded.
  await visit(page, "/auth");
  assert(!(await page.content()).includes(generated), "the secret is shown again");
});

// ---------------------------------------------------------------------------------------
// Isolation: a non-admin account of the namespace sees its namespace only.

step("isolation: a non-admin account gets 403 on auth, cannot switch, never sees another namespace", async ({
  page,
  browser,
}) => {
  const user = `e2e-user-${RUN}`;
  const secret = `user-secret-${RUN}`;
  const mark = `other-ns-only-${RUN}`;
  await login(page);
  // The admin creates the account (scope data: it may use the namespace's store, config
  // and events).
  await visit(page, "/auth");
  await page.getByLabel("Id", { exact: true }).fill(user);
  await page.getByLabel("Secret", { exact: true }).fill(secret);
  await page.getByLabel("Scopes", { exact: true }).fill("data");
  await follow(page, page.getByRole("button", { name: "Create account" }));
  await see(page, 'p.ok[role="status"]', `Created account ${user}.`);
  // ... and, in namespace `other`, writes a record, a config value and an event.
  const switchTo = async (ns) => {
    await page.getByLabel("Namespace", { exact: true }).fill(ns);
    await follow(page, page.getByRole("button", { name: "Switch" }));
    assertEqual(await page.getByLabel("Namespace", { exact: true }).inputValue(), ns, "the namespace switched to");
  };
  await switchTo("other");
  await visit(page, "/store/other/e2e-leak");
  await page.getByLabel("Key", { exact: true }).fill("plan");
  await page.getByLabel("Value", { exact: true }).fill(mark);
  await follow(page, page.getByRole("button", { name: "Write record" }));
  await see(page, "main pre", mark);
  await visit(page, "/config");
  await page.locator("#set-path").fill("leak.marker");
  await page.getByLabel("Value", { exact: true }).fill(JSON.stringify(mark));
  await follow(page, page.getByRole("button", { name: "Set", exact: true }));
  await see(page, "ul.tree li", mark);
  await visit(page, "/events");
  await page.getByLabel("Topic", { exact: true }).fill("e2e-leak");
  await page.getByLabel("Payload", { exact: true }).fill(JSON.stringify(mark));
  await follow(page, page.getByRole("button", { name: "Publish" }));
  await see(page, "tbody pre", mark);
  await switchTo(NAMESPACE);

  const context = await browser.newContext({ viewport: DESKTOP });
  context.setDefaultTimeout(WAIT_MS);
  try {
    const u = await context.newPage();
    await login(u, { id: user, secret });
    await see(u, "header .account", user);
    // No namespace switcher, and posting its form anyway is refused.
    assertEqual(await u.locator("#ns-switch").count(), 0, "namespace switchers");
    await see(u, "header .ns", new RegExp(`^${NAMESPACE}$`));
    const r = await submitForm(u, "/namespace", { namespace: "other" });
    assertEqual(r.status(), 403, "status of switching to other");
    await see(u, "h1", "Not your namespace");
    await see(u, "main p", "Your account can only see its own namespace.");
    await visit(u, "/services");
    await see(u, "header .ns", new RegExp(`^${NAMESPACE}$`));
    // The auth pages refuse in words.
    for (const p of ["/auth", "/auth/rules"]) {
      await visit(u, p, 403);
      await see(
        u,
        '.error[role="alert"]',
        `403 Forbidden — only an admin of namespace ${NAMESPACE} can see and change its accounts and rules.`,
      );
      await see(u, "main p", `You are signed in as ${user} of ${NAMESPACE}`);
    }
    await look(u, "auth-forbidden");
    // So does the usage page (reading usage needs the admin scope).
    await visit(u, "/usage", 403);
    await see(u, '.error[role="alert"]', `403 Forbidden — only an admin of namespace ${NAMESPACE} can see its usage.`);
    await see(u, "main p", `You are signed in as ${user} of ${NAMESPACE}`);
    assertEqual(await u.locator("table").count(), 0, "usage tables shown to a non-admin");
    // Its own namespace's pages work and never show the other namespace's data.
    const own = ["/store", `/store/${NAMESPACE}`, "/config", "/events", "/events/e2e-leak", "/services", "/health"];
    for (const p of own) {
      const r = await u.goto(BASE + p);
      assert(r.status() < 500, `status of GET ${p}: ${r.status()}`);
      assert(!(await u.content()).includes(mark), `${p} shows the other namespace's ${mark}`);
    }
    // Not even the other namespace's name is listed.
    await visit(u, "/store");
    assertEqual(await u.locator("main li a", { hasText: /^other$/ }).count(), 0, "links to database other");
    await visit(u, `/store/${NAMESPACE}`);
    await see(u, "h1", `Store · ${NAMESPACE}`);
    // Asked for by URL, the other namespace's data is refused.
    for (const p of ["/store/other", "/store/other/e2e-leak", "/store/other/e2e-leak?key=plan"]) {
      await visit(u, p, 403);
      const refusal = `403 Forbidden — account ${user} of namespace ${NAMESPACE} cannot act in namespace other`;
      await see(u, '.error[role="alert"]', new RegExp(`^${refusal}$`));
      assert(!(await u.content()).includes(mark), `${p} shows ${mark}`);
    }
  } finally {
    await context.close();
  }
});

// ---------------------------------------------------------------------------------------
// Health.

step("health: helloworld answers as healthy, with its figures", async ({ page }) => {
  await login(page);
  await visit(page, "/health");
  await see(page, "h1", "Health");
  await see(page, 'p[role="status"]', new RegExp(`^\\d+ services in ${NAMESPACE}: \\d+ healthy`));
  const card = page.locator("section.card").filter({ has: page.locator("h2 a", { hasText: /^helloworld$/ }) });
  assertEqual(await card.locator("h2 .badge").allInnerTexts(), ["healthy"], "helloworld's badges");
  const figures = Object.fromEntries(
    await card.locator("dl dt").evaluateAll((dts) => dts.map((dt) => [dt.innerText, dt.nextElementSibling.innerText])),
  );
  assertEqual(Object.keys(figures), ["Uptime", "Memory", "Threads", "Requests", "Errors"], "helloworld's figures");
  assert(/^\d+(s|m \d+s)$/.test(figures.Uptime), `uptime ${figures.Uptime}`);
  assert(/^\d+(\.\d)? [KMG]iB$/.test(figures.Memory), `memory ${figures.Memory}`);
  assert(Number(figures.Requests) >= 1, `requests ${figures.Requests}`);
  // The core services are there, as core.
  const store = page.locator("section.card").filter({ has: page.locator("h2 a", { hasText: /^store$/ }) });
  assertEqual(await store.locator("h2 .badge").allInnerTexts(), ["healthy", "core"], "the store's badges");
  await look(page, "health");
});

step("network: the operator sees the cluster that joined this one, the link in the graph, and the routes", async ({ page }) => {
  await login(page);
  await visit(page, "/network");
  await see(page, "h1", "Network");
  await see(page, 'p[role="status"]', /^This cluster is hq, linked to 1 of 1 peers\. It offers the services of micro\./);
  assertEqual(await page.locator("figure.network svg g.cluster").count(), 2, "clusters in the graph");
  assertEqual(await page.locator("figure.network svg line").count(), 1, "links in the graph");
  const peer = page.locator("table").first().locator("tbody tr");
  assertEqual(await peer.count(), 1, "peers");
  const cells = await peer.locator("td").allInnerTexts();
  assertEqual(cells.slice(0, 3), ["edge", "dials this cluster", "up"], "the peer's row");
  await see(page, "table tbody tr", /helloworld/);
  await look(page, "network");
});

// ---------------------------------------------------------------------------------------
// Usage: what the gateway and the proxy metered in the namespace.

const FIGURES = ["Requests", "Bytes in", "Bytes out"];

/** The usage table: its headings, its rows (cells by heading), its total row (the three
 * figures by heading, and the label); no rows and no total when the page has no table. */
async function usageTable(page) {
  const table = page.locator("table.usage");
  if ((await table.count()) === 0) return { headings: [], rows: [], total: null, label: null };
  const read = (rows) => rows.evaluateAll((trs) => trs.map((tr) => [...tr.children].map((c) => c.innerText.trim())));
  const headings = await table.locator("thead th").allInnerTexts();
  const rows = (await read(table.locator("tbody tr"))).map((cells) =>
    Object.fromEntries(headings.map((h, i) => [h, cells[i]])),
  );
  // The total's heading spans the grouping's columns: the figures are the last three cells.
  const [footer] = await read(table.locator("tfoot tr"));
  const total = Object.fromEntries(FIGURES.map((h, i) => [h, footer[footer.length - FIGURES.length + i]]));
  return { headings, rows, total, label: footer[0] };
}

step("usage: a call is counted under its service, endpoint and status, with the total; bad choices are refused", async ({
  page,
}) => {
  await login(page);
  await visit(page, "/usage");
  await see(page, "h1", "Usage");
  // The defaults: the last 24 hours, grouped as `micro usage` groups.
  assertEqual(await page.getByLabel("Window", { exact: true }).inputValue(), "24h", "the default window");
  const checked = await page.locator('input[name="by"]:checked').evaluateAll((els) => els.map((e) => e.value));
  assertEqual(checked, ["service", "endpoint", "status"], "the default grouping");
  const hello = (t) =>
    t.rows.find((r) => r.Service === "helloworld" && r.Endpoint === "Greeter.Hello" && r.Status === "2xx");
  const before = Number(hello(await usageTable(page))?.Requests ?? 0);
  // A call to count: Greeter.Hello from its form, through the proxy.
  await visit(page, "/services/helloworld/Greeter.Hello");
  await page.getByLabel("name", { exact: true }).fill("Usage");
  await follow(page, page.getByRole("button", { name: "Call Greeter.Hello" }));
  await see(page, REPLY, "Hello Usage");
  // Shown once stored (every 2 s by default).
  const deadline = Date.now() + 30_000;
  let table;
  for (;;) {
    await visit(page, "/usage");
    table = await usageTable(page);
    if (Number(hello(table)?.Requests ?? 0) > before) break;
    assert(Date.now() < deadline, `helloworld Greeter.Hello 2xx still shows ${before} requests after 30 s`);
    await page.waitForTimeout(300);
  }
  assertEqual(table.headings, ["Service", "Endpoint", "Status", ...FIGURES], "the headings");
  const row = hello(table);
  assert(Number(row["Bytes in"]) > 0 && Number(row["Bytes out"]) > 0, `helloworld's bytes: ${JSON.stringify(row)}`);
  assertEqual(table.label, "Total", "the last row");
  for (const h of FIGURES) {
    const sum = table.rows.reduce((n, r) => n + Number(r[h]), 0);
    assertEqual(Number(table.total[h]), sum, `the total of ${h}, the sum of the rows`);
  }
  await look(page);
  // For web.rs, which checks that `micro usage` prints the same figures.
  const figures = { requests: Number(row.Requests), bytes_in: Number(row["Bytes in"]), bytes_out: Number(row["Bytes out"]) };
  console.log(`usage row: ${JSON.stringify(figures)}`);
  // Another window and grouping, from the form: by service, over the last hour.
  await page.getByLabel("Window", { exact: true }).selectOption("1h");
  for (const box of await page.locator('input[name="by"]').all()) {
    await box.setChecked((await box.getAttribute("value")) === "service");
  }
  await follow(page, page.getByRole("button", { name: "Show" }));
  const query = new URL(page.url()).searchParams;
  assertEqual([query.get("since"), query.getAll("by")], ["1h", ["service"]], "the query");
  assertEqual(await page.getByLabel("Window", { exact: true }).inputValue(), "1h", "the window, kept");
  const byService = await usageTable(page);
  assertEqual(byService.headings, ["Service", ...FIGURES], "the headings grouped by service");
  const helloworld = byService.rows.find((r) => r.Service === "helloworld");
  assert(Number(helloworld?.Requests) >= Number(row.Requests), `helloworld's calls: ${JSON.stringify(helloworld)}`);
  await look(page, "usage");
  // By account: the admin's calls (the dashboard calls as the signed-in account).
  await visit(page, "/usage?since=1h&by=account");
  const byAccount = await usageTable(page);
  assertEqual(byAccount.headings, ["Account", ...FIGURES], "the headings grouped by account");
  assert(byAccount.rows.some((r) => r.Account === ADMIN), `no row of ${ADMIN}: ${JSON.stringify(byAccount.rows)}`);
  // Choices the form does not offer, asked for by URL: refused in words, nothing shown.
  for (const [q, words] of [
    ["since=forever", 'There is no window "forever": choose 1h, 24h, 7d or 30d.'],
    ["by=service&by=namespace", 'Usage cannot be grouped by "namespace": choose service, endpoint, account or status.'],
  ]) {
    await visit(page, `/usage?${q}`, 400);
    await see(page, '.error[role="alert"]', words);
    assertEqual(await page.locator("table.usage").count(), 0, `usage tables for ${q}`);
  }
  await look(page);
});

// ---------------------------------------------------------------------------------------
// TLS (`MICRO_TLS=auto`): the browser trusts the server's local CA, which web.rs adds to
// the NSS database in E2E_BROWSER_HOME, as a user would add it to theirs.

function needTls() {
  if (!TLS) skip("the dashboard is not served over HTTPS (web.rs runs these steps against MICRO_TLS=auto)");
}

// ---------------------------------------------------------------------------------------
// Signup to the platform, with the mail the test's SMTP server received.

/** The people of the signup steps: three join, two are invited. */
const PEOPLE = [`ann.${RUN}@one.example`, `bo.${RUN}@two.example`, `cy.${RUN}@three.example`];

/** The newest message to `to` whose text matches `re`, waiting for it; returns the match. */
async function mailed(to, re) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const names = readdirSync(MAIL).filter((n) => n.endsWith(".json")).sort().reverse();
    for (const n of names) {
      const m = JSON.parse(readFileSync(path.join(MAIL, n), "utf8"));
      const found = m.rcpt_tos.includes(to) && (m.text || "").match(re);
      if (found) return found;
    }
    assert(Date.now() < deadline, `no mail to ${to} matching ${re}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

step("signup: three people join the waitlist and confirm the code mailed to them", async ({ page }) => {
  if (!MAIL) skip("E2E_MAIL_DIR is not set (web.rs sets it for the platform's signup run)");
  for (const [i, email] of PEOPLE.entries()) {
    await visit(page, "/signup");
    await see(page, "h1", "Join the waitlist");
    if (i === 0) await look(page, "signup");
    await page.getByLabel("Email", { exact: true }).fill(email);
    await follow(page, page.getByRole("button", { name: "Join" }));
    await see(page, "main p", `We mailed a code to ${email}`);
    const [, code] = await mailed(email, /waitlist is (\d{6})/);
    if (i === 0) {
      await look(page, "signup-code");
      // A wrong code is refused in words, and the form stays.
      await page.getByLabel("Code", { exact: true }).fill(code === "000000" ? "111111" : "000000");
      await follow(page, page.getByRole("button", { name: "Confirm" }));
      await see(page, '.error[role="alert"]', "Wrong code (4 tries left).");
    }
    await page.getByLabel("Code", { exact: true }).fill(code);
    await follow(page, page.getByRole("button", { name: "Confirm" }));
    await see(page, "h1", "You are on the waitlist");
    if (i === 0) await look(page, "signup-waiting");
  }
});

step("signup: the operator sees the waitlist in order and invites the next 2", async ({ page }) => {
  if (!MAIL) skip("E2E_MAIL_DIR is not set (web.rs sets it for the platform's signup run)");
  await login(page);
  await visit(page, "/platform?state=waiting");
  const emails = await page.locator("table.waitlist tbody tr td:first-child").allInnerTexts();
  assertEqual(emails.filter((e) => PEOPLE.includes(e)), PEOPLE, "the waiting, in the order they confirmed");
  await page.getByLabel("Invite the next", { exact: true }).fill("2");
  await follow(page, page.getByRole("button", { name: "Invite", exact: true }));
  await see(page, ".notice", "Invited 2.");
  await visit(page, "/platform");
  for (const [email, state] of [[PEOPLE[0], "invited"], [PEOPLE[1], "invited"], [PEOPLE[2], "waiting"]]) {
    const row = page.locator("table.waitlist tbody tr").filter({ has: page.locator("td", { hasText: email }) });
    assertEqual(await row.locator("td.state").innerText(), state, `${email}'s state`);
  }
  await look(page, "platform");
});

step("signup: the invited sign up from their invite's link and land in namespaces of their own", async ({ page }) => {
  if (!MAIL) skip("E2E_MAIL_DIR is not set (web.rs sets it for the platform's signup run)");
  const namespaces = [];
  for (const email of PEOPLE.slice(0, 2)) {
    const [, link] = await mailed(email, /Sign up: (\S+)/);
    const url = new URL(link);
    assertEqual(url.pathname, "/signup/accept", "the invite's link");
    assertEqual(url.searchParams.get("email"), email, "the link's address");
    await visit(page, url.pathname + url.search);
    await see(page, "h1", "Sign up");
    assertEqual(await page.getByLabel("Invite code", { exact: true }).inputValue(), url.searchParams.get("code"), "code filled in");
    if (namespaces.length === 0) {
      // Too short a password is refused, and the form keeps the rest.
      await page.getByLabel("Password", { exact: true }).fill("short");
      await page.locator("#password").evaluate((el) => el.removeAttribute("minlength"));
      await follow(page, page.getByRole("button", { name: "Sign up" }));
      await see(page, '.error[role="alert"]', "10 to 200 characters");
      await look(page, "signup-accept");
    }
    await page.getByLabel("Password", { exact: true }).fill(`${email} password`);
    await follow(page, page.getByRole("button", { name: "Sign up" }));
    await see(page, "h1", "Welcome");
    const ns = await page.locator("#namespace").innerText();
    namespaces.push(ns);
    if (namespaces.length === 1) await look(page, "signup-welcome");
    // Signing in to it: the page leads to the sign-in form for that namespace.
    await follow(page, page.getByRole("link", { name: `Sign in to ${ns}` }));
    assertEqual(await page.getByLabel("Namespace", { exact: true }).inputValue(), ns, "the namespace filled in");
    await page.getByLabel("Account", { exact: true }).fill(email);
    await page.getByLabel("Secret", { exact: true }).fill(`${email} password`);
    await follow(page, page.getByRole("button", { name: "Sign in" }));
    assertEqual(pathOf(page), "/services", "page after signing in");
    await see(page, "header .ns", ns);
    // A newcomer is no operator: no platform page for them.
    assertEqual(await page.locator('nav a[href="/platform"]').count(), 0, "the platform link");
    assertEqual(await page.locator('nav a[href="/team"], nav a[href="/plan"]').count(), 2, "their teams and plan");
    await visit(page, "/platform", 403);
    await see(page, '.error[role="alert"]', "403 Forbidden");
    await page.context().clearCookies();
  }
  assertEqual(namespaces, [`ann-${RUN}`, `bo-${RUN}`], "namespaces named after them");
});

/** The team the first two make. */
const TEAM = `crew-${RUN}`;

/** A CLI with a home of its own, for one person: `cli(args)` runs `micro --server … args`. */
function cliFor() {
  const home = mkdtempSync(path.join(os.tmpdir(), "e2e-cli-"));
  const env = { PATH: process.env.PATH, HOME: home, MICRO_DATA_DIR: path.join(home, "no-local-server") };
  const cli = (args) => {
    const r = spawnSync(MICRO, ["--server", PROXY, ...args], { env, encoding: "utf8", timeout: 120_000 });
    return { code: r.status, out: `${r.stdout || ""}${r.stderr || ""}` };
  };
  /** A service folder whose manifest sleeps. */
  cli.service = (name) => {
    const dir = path.join(home, name);
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, "micro.toml"), `name = "${name}"\nrun = "sleep 300"\n`);
    return dir;
  };
  cli.done = () => rmSync(home, { recursive: true, force: true });
  return cli;
}

step("signup: the first makes a team in the dashboard and invites the second as a developer", async ({ page }) => {
  if (!MAIL) skip("E2E_MAIL_DIR is not set (web.rs sets it for the platform's signup run)");
  const [ann, bo] = PEOPLE;
  await login(page, { namespace: `ann-${RUN}`, id: ann, secret: `${ann} password` });
  await visit(page, "/team");
  await see(page, "h2", "Your teams");
  await page.getByLabel("New team", { exact: true }).fill(TEAM);
  await follow(page, page.getByRole("button", { name: "Make team" }));
  await see(page, ".notice", `Made team ${TEAM}: you own it.`);
  assertEqual(await page.locator("table.members tbody tr td:first-child").allInnerTexts(), [ann], "the members");
  await page.getByLabel("Invite", { exact: true }).fill(bo);
  await page.getByLabel("as", { exact: true }).selectOption("developer");
  await follow(page, page.getByRole("button", { name: "Send invite" }));
  await see(page, ".notice", `Invited ${bo} as developer`);
  await see(page, "ul.pending li", `${bo} as developer`);
  await look(page, "team");
});

step("signup: the second accepts from the mail, deploys with micro run and meets the community plan's quota", async ({
  page,
}) => {
  if (!MAIL) skip("E2E_MAIL_DIR is not set (web.rs sets it for the platform's signup run)");
  if (!MICRO || !PROXY) skip("E2E_MICRO and E2E_PROXY are not set (web.rs sets them)");
  const bo = PEOPLE[1];
  const [, link] = await mailed(bo, /Accept in the dashboard, signed in to your own namespace: (\S+)/);
  const url = new URL(link);
  assertEqual(url.pathname, "/team/accept", "the invite's link");
  await login(page, { namespace: `bo-${RUN}`, id: bo, secret: `${bo} password` });
  await visit(page, url.pathname + url.search);
  assertEqual(await page.getByLabel("Team", { exact: true }).inputValue(), TEAM, "team filled in");
  await follow(page, page.getByRole("button", { name: "Accept" }));
  await see(page, ".notice", `You joined ${TEAM} as developer.`);
  const row = page.locator("table.teams tbody tr").filter({ has: page.locator("td", { hasText: TEAM }) });
  assertEqual(await row.locator("td.role").innerText(), "developer", "the role shown");

  const cli = cliFor();
  try {
    let r = cli(["--namespace", `bo-${RUN}`, "login", "--id", bo, "--password", `${bo} password`]);
    assertEqual(r.code, 0, `login: ${r.out}`);
    r = cli(["namespace", "switch", TEAM]);
    assertEqual(r.code, 0, `switch: ${r.out}`);
    for (const name of ["one", "two"]) {
      r = cli(["run", cli.service(name), "--detach"]);
      assertEqual(r.code, 0, `run ${name}: ${r.out}`);
    }
    r = cli(["run", cli.service("three"), "--detach"]);
    assert(r.code !== 0, `the third service is refused: ${r.out}`);
    assert(
      r.out.includes(`namespace ${TEAM} may run 2 services on the community plan and runs 2`) &&
        r.out.includes("micro plan set personal"),
      `the refusal names the quota and the plan that lifts it: ${r.out}`,
    );
  } finally {
    cli.done();
  }
});

step("signup: the owner sees the team's plan full, upgrades it, and the deploy succeeds", async ({ page }) => {
  if (!MAIL) skip("E2E_MAIL_DIR is not set (web.rs sets it for the platform's signup run)");
  if (!MICRO || !PROXY) skip("E2E_MICRO and E2E_PROXY are not set (web.rs sets them)");
  const [ann, bo] = PEOPLE;
  await login(page, { namespace: `ann-${RUN}`, id: ann, secret: `${ann} password` });
  await visit(page, `/team?namespace=${TEAM}`);
  await follow(page, page.locator("table.teams tbody tr").filter({ hasText: TEAM }).getByRole("link", { name: "Plan" }));
  await see(page, "#plan-name", "community");
  const services = page.locator(".usage").filter({ hasText: "Services running" });
  await see(page, ".usage .figures", "2 of 2");
  assert(await services.locator("meter.full").count() === 1, "the services bar is full");
  for (const what of ["Requests this month", "Storage", "Build minutes this month"]) {
    await see(page, ".usage .what", what);
  }
  await look(page, "plan");
  await page.getByLabel("Plan", { exact: true }).selectOption("personal");
  await follow(page, page.getByRole("button", { name: "Change plan" }));
  await see(page, ".notice", `${TEAM} is on the personal plan now.`);
  await see(page, "#plan-name", "personal");

  const cli = cliFor();
  try {
    let r = cli(["--namespace", `bo-${RUN}`, "login", "--id", bo, "--password", `${bo} password`]);
    assertEqual(r.code, 0, `login: ${r.out}`);
    assertEqual(cli(["namespace", "switch", TEAM]).code, 0, "switch");
    r = cli(["run", cli.service("three"), "--detach"]);
    assertEqual(r.code, 0, `the third runs on the personal plan: ${r.out}`);
    for (const name of ["one", "two", "three"]) {
      r = cli(["kill", name]);
      assertEqual(r.code, 0, `kill ${name}: ${r.out}`);
    }
  } finally {
    cli.done();
  }
});

step("signup: in the dashboard a member works in the team and back, the owner hands it over, a viewer changes nothing", async ({
  page,
}) => {
  if (!MAIL) skip("E2E_MAIL_DIR is not set (web.rs sets it for the platform's signup run)");
  const [ann, bo] = PEOPLE;
  const annHome = `ann-${RUN}`;
  const boHome = `bo-${RUN}`;
  const notes = `/store/${TEAM}/notes`;
  /** Switches into the team from /team; the pages are then the team's. */
  const enter = async (who) => {
    await visit(page, "/team");
    await follow(page, page.getByRole("button", { name: `Work in ${TEAM}` }));
    assertEqual(pathOf(page), "/services", "page after switching");
    await see(page, "header .ns", TEAM);
    await see(page, "header .account", who);
  };
  const write = async (key) => {
    await visit(page, notes);
    await page.getByLabel("Key", { exact: true }).fill(key);
    await page.getByLabel("Value", { exact: true }).fill(`written by ${key}`);
    await follow(page, page.getByRole("button", { name: "Write record" }));
  };

  // The developer works in the team: its store takes a record; then back home.
  await login(page, { namespace: boHome, id: bo, secret: `${bo} password` });
  await enter(bo);
  await write("from-bo");
  await see(page, 'p.ok[role="status"]', "Saved.");
  await visit(page, "/team");
  await see(page, ".notice", `You are working in ${TEAM} as ${bo}.`);
  await look(page, "team-away");
  await follow(page, page.locator("header").getByRole("button", { name: `Back to ${boHome}` }));
  await see(page, ".notice", `Back in ${boHome}.`);
  await see(page, "header .ns", boHome);
  await page.context().clearCookies();

  // The owner hands the team to the developer and is one of its admins then.
  await login(page, { namespace: annHome, id: ann, secret: `${ann} password` });
  await visit(page, `/team?namespace=${TEAM}`);
  await follow(page, page.getByRole("button", { name: `Make ${bo} the owner` }));
  await see(page, ".notice", `${bo} owns ${TEAM} now; you are one of its admins.`);
  const row = page.locator("table.teams tbody tr").filter({ has: page.locator("td", { hasText: TEAM }) });
  assertEqual(await row.locator("td.role").innerText(), "admin", "her role now");
  assertEqual(await page.getByRole("button", { name: /^Make .* the owner$/ }).count(), 0, "only an owner hands over");
  await page.context().clearCookies();

  // The new owner makes her a viewer: in the team she reads, and changes nothing.
  await login(page, { namespace: boHome, id: bo, secret: `${bo} password` });
  await visit(page, `/team?namespace=${TEAM}`);
  const roleOfAnn = page.locator("form").filter({ has: page.getByLabel(`Role of ${ann}`, { exact: true }) });
  await roleOfAnn.getByLabel(`Role of ${ann}`, { exact: true }).selectOption("viewer");
  await follow(page, roleOfAnn.getByRole("button", { name: "Change" }));
  await see(page, ".notice", `${ann} is now viewer.`);
  await page.context().clearCookies();
  await login(page, { namespace: annHome, id: ann, secret: `${ann} password` });
  await enter(ann);
  await visit(page, `${notes}?key=from-bo`);
  await see(page, "main pre", "written by from-bo");
  await write("from-ann");
  await see(page, '.error[role="alert"]', "403 Forbidden");
  await visit(page, "/runtime");
  await page.getByLabel("Source", { exact: true }).fill("examples/helloworld");
  await page.getByLabel("Name", { exact: true }).fill("by-a-viewer");
  await follow(page, page.getByRole("button", { name: "Run", exact: true }));
  await see(page, '.error[role="alert"]', "403 Forbidden");
  // Team calls are the person's own: not while working in a team.
  await visit(page, "/team");
  await follow(page, page.locator("main").getByRole("button", { name: `Back to ${annHome}` }));
  await see(page, "header .ns", annHome);
});

step("signup: the third person is still waiting", async ({ page }) => {
  if (!MAIL) skip("E2E_MAIL_DIR is not set (web.rs sets it for the platform's signup run)");
  await login(page);
  await visit(page, "/platform?state=waiting");
  const emails = await page.locator("table.waitlist tbody tr td:first-child").allInnerTexts();
  assertEqual(emails.filter((e) => PEOPLE.includes(e)), [PEOPLE[2]], "still waiting");
});

// ---------------------------------------------------------------------------------------
// Billing. web.rs (`billing_in_a_real_browser`) prepares the books through the API on a
// server licensed for billing whose billing clock (MICRO_CLOCK_FILE) it moves: namespace
// acme on the personal plan ($20 a service a month, 19% tax in DE), service api running
// since 2027-01-01 and worker from the 11th to the 21st of January; January closed, so
// INV-000001 (api 744 h $20.00, worker 240 h $6.45: $26.45) is open; the clock then stands
// at 2027-02-15 00:00, half of February. Accounts ann (admin) and dev (no admin) of acme
// and eve (admin) of evil sign in with E2E_BILLING_SECRET.

const BILLING_SECRET = process.env.E2E_BILLING_SECRET || null;
/** January's invoice of acme: its id (the page's path) and number. */
const ACME_INVOICE = "2027-01-acme";

function needBilling() {
  if (!BILLING_SECRET) skip("E2E_BILLING_SECRET is not set (web.rs sets it for the billing run)");
}

/** Signs in as account `id` of `namespace` made by web.rs for the billing steps. */
async function tenant(page, id, namespace) {
  await login(page, { id, namespace, secret: BILLING_SECRET });
}

/** The text of each cell (th and td) of each row of `selector`'s `section` (tbody, tfoot). */
async function cells(page, selector, section = "tbody") {
  return page
    .locator(`${selector} ${section} tr`)
    .evaluateAll((rows) => rows.map((r) => [...r.children].map((c) => c.innerText.trim())));
}

async function textOf(page, selector) {
  return (await page.locator(selector).innerText()).trim();
}

step("billing: a tenant's admin sees the plan, the usage, the upcoming invoice and the invoices", async ({ page }) => {
  needBilling();
  await tenant(page, "ann", "acme");
  await follow(page, page.locator('nav[aria-label="Sections"] a', { hasText: "Billing" }));
  assertEqual(pathOf(page), "/billing", "the nav's Billing link");
  await see(page, "h1", "Billing");
  const summary = {
    plan: await textOf(page, "#billing-plan"),
    credit: await textOf(page, "#billing-credit"),
    owed: await textOf(page, "#billing-owed"),
    provider: await textOf(page, "#billing-provider"),
  };
  assertEqual(
    summary,
    { plan: "personal", credit: "$0.00", owed: "$26.45", provider: "Bank transfer or prepaid credit" },
    "the summary",
  );
  // This period: api ran 14 of February's 28 days, shown in hours with two decimals.
  assertEqual(await textOf(page, "#billing-period"), "2027-02", "the period");
  const usage = (await cells(page, "#billing-usage")).map((r) => r.slice(0, 2));
  assertEqual(usage, [["api", "336.00"]], "the usage");
  await see(page, "#billing-meters .hint", "Storage");
  // The upcoming invoice: half of $20 so far, all of it projected; no tax without a country.
  const [line] = await cells(page, "#billing-upcoming");
  assert(line[0].startsWith("Service api: 336.00 h of 672.00 h"), `the upcoming line: ${line[0]}`);
  assertEqual(line.slice(1), ["$10.00", "$20.00"], "the line to date and projected");
  const sums = await cells(page, "#billing-upcoming", "tfoot");
  const untaxed = [["Subtotal", "$10.00", "$20.00"], ["Tax", "$0.00", "$0.00"], ["Total", "$10.00", "$20.00"]];
  assertEqual(sums, untaxed, "the sums");
  assertEqual(
    await cells(page, "#billing-invoices"),
    [["INV-000001", "2027-01", "2027-02-01", "2027-02-15", "$26.45", "open", "$26.45"]],
    "the invoices",
  );
  // ann is no operator: the books are not linked.
  assertEqual(await page.locator('a[href="/billing/admin"]').count(), 0, "a link to the books");
  await look(page, "billing");
});

step("billing: the admin saves the billing details and the upcoming invoice is taxed", async ({ page }) => {
  needBilling();
  await tenant(page, "ann", "acme");
  await visit(page, "/billing");
  const email = page.getByLabel(/^Email/);
  const country = page.getByLabel(/^Country/);
  await email.fill("billing@acme.example");
  await country.fill("de");
  await follow(page, page.getByRole("button", { name: "Save billing details" }));
  await see(page, ".notice", "Billing details saved.");
  assertEqual([await email.inputValue(), await country.inputValue()], ["billing@acme.example", "DE"], "saved");
  const sums = await cells(page, "#billing-upcoming", "tfoot");
  assertEqual(sums.slice(1), [["Tax (19.00%)", "$1.90", "$3.80"], ["Total", "$11.90", "$23.80"]], "taxed in DE");
  // A country that is no ISO code is refused in words; the form keeps what was typed.
  await country.fill("D1");
  await noBrowserChecks(country);
  await follow(page, page.getByRole("button", { name: "Save billing details" }));
  await see(page, '.error[role="alert"]', "give an ISO 3166 code, like DE");
  assertEqual(await country.inputValue(), "D1", "the typed country");
  await visit(page, "/billing");
  assertEqual(await country.inputValue(), "DE", "the country unchanged");
});

step("billing: with the manual provider, Add a payment method says how payments are made", async ({ page }) => {
  needBilling();
  await tenant(page, "ann", "acme");
  await visit(page, "/billing");
  await follow(page, page.getByRole("button", { name: "Add a payment method" }));
  assertEqual(pathOf(page), "/billing", "where the button leads");
  await see(page, '#billing-note[role="status"]', "Payments here are by bank transfer or prepaid credit");
  assertEqual(await page.locator(".error").count(), 0, "an error shown");
});

step("billing: an invoice's page shows its lines; Pay now says to pay by transfer", async ({ page }) => {
  needBilling();
  await tenant(page, "ann", "acme");
  await visit(page, "/billing");
  await follow(page, page.locator("#billing-invoices a", { hasText: "INV-000001" }));
  assertEqual(pathOf(page), `/billing/invoices/${ACME_INVOICE}`, "the invoice's page");
  await see(page, "h1", "Invoice INV-000001");
  assertEqual(
    await cells(page, "#invoice-lines"),
    [
      ["Service api: 744.00 h of 744.00 h at $20.00 a month", "$20.00", "0.00%", "$0.00"],
      ["Service worker: 240.00 h of 744.00 h at $20.00 a month", "$6.45", "0.00%", "$0.00"],
    ],
    "the lines",
  );
  assertEqual(
    await cells(page, "#invoice-lines", "tfoot"),
    [["Subtotal", "$26.45", "", "$0.00"], ["Total", "$26.45"], ["Amount due", "$26.45"]],
    "the sums",
  );
  const status = [await textOf(page, "#invoice-status"), await textOf(page, "#invoice-owed")];
  assertEqual(status, ["open", "$26.45"], "status and owed");
  await look(page, "billing-invoice");
  // The invoice as mailed: billing's own document, sandboxed.
  const href = await page.getByRole("link", { name: "The invoice as mailed" }).getAttribute("href");
  const doc = await page.request.get(BASE + href);
  assertEqual(doc.status(), 200, "status of the invoice's document");
  assert(doc.headers()["content-security-policy"].startsWith("sandbox;"), "the document is sandboxed");
  const text = await doc.text();
  assert(text.includes("<h1>Invoice INV-000001</h1>") && text.includes("Service worker: 240.00 h of 744.00 h"), text);
  // Nothing to charge with the manual provider: the page says how to pay.
  await follow(page, page.getByRole("button", { name: "Pay now" }));
  assertEqual(pathOf(page), `/billing/invoices/${ACME_INVOICE}`, "page after Pay now");
  await see(
    page,
    ".notice",
    "Nothing was charged: payments here are by bank transfer or prepaid credit. Transfer $26.45 quoting INV-000001",
  );
  assertEqual(await textOf(page, "#invoice-status"), "open", "still open");
});

step("billing: a member who is no admin sees the billing and no Pay, settings or payment forms", async ({ page }) => {
  needBilling();
  await tenant(page, "dev", "acme");
  await visit(page, "/billing");
  assertEqual(await textOf(page, "#billing-owed"), "$26.45", "what is owed");
  assertEqual(await cells(page, "#billing-details"), [["Email", "billing@acme.example"], ["Country", "DE"]], "details");
  for (const name of ["Save billing details", "Add a payment method"]) {
    assertEqual(await page.getByRole("button", { name }).count(), 0, `a ${name} button`);
  }
  assertEqual(await page.locator("main input:not([type=hidden])").count(), 0, "fields to fill");
  await visit(page, `/billing/invoices/${ACME_INVOICE}`);
  await see(page, "#invoice-status", "open");
  assertEqual(await page.getByRole("button", { name: "Pay now" }).count(), 0, "a Pay now button");
  // A form the page does not offer is refused by billing itself.
  await visit(page, "/billing");
  await submitForm(page, "/billing", { action: "settings", email: "", country: "FR" });
  await see(page, '.error[role="alert"]', "the billing of namespace acme is changed by its admins");
  await visit(page, "/billing/admin", 403);
  await see(page, '.error[role="alert"]', "the platform's books are for its operators");
});

step("billing: a tenant of another namespace cannot open acme's invoice", async ({ page }) => {
  needBilling();
  await tenant(page, "eve", "evil");
  await visit(page, "/billing");
  await see(page, "#billing-invoices-none", "No invoices yet");
  for (const id of [ACME_INVOICE, "INV-000001"]) {
    await visit(page, `/billing/invoices/${id}`, 404);
    await see(page, '.error[role="alert"]', `no invoice ${id}`);
    assertEqual(await page.locator("#invoice-lines").count(), 0, "the lines shown");
  }
  const doc = await page.request.get(`${BASE}/billing/invoices/${ACME_INVOICE}/document`);
  assertEqual(doc.status(), 404, "status of acme's invoice document");
  assert(!(await doc.text()).includes("Service worker"), "the document leaks");
  await visit(page, "/billing");
  const paying = await submitForm(page, `/billing/invoices/${ACME_INVOICE}`, { action: "pay" });
  assertEqual(paying.status(), 404, "paying acme's invoice");
  await visit(page, "/billing/admin", 403);
});

step("billing: the operator sees the books, marks the invoice paid and adds credit", async ({ page }) => {
  needBilling();
  await login(page);
  await follow(page, page.locator('nav[aria-label="Sections"] a', { hasText: "Billing" }));
  await follow(page, page.getByRole("link", { name: "The platform's books" }));
  assertEqual(pathOf(page), "/billing/admin", "the books");
  await see(page, "h1", "The platform's books");
  const figures = async () => ({
    revenue: await textOf(page, "#books-revenue"),
    received: await textOf(page, "#books-received"),
    credit: await textOf(page, "#books-credit"),
    receivable: await textOf(page, "#books-receivable"),
  });
  const before = { revenue: "$26.45", received: "$0.00", credit: "$0.00", receivable: "$26.45" };
  assertEqual(await figures(), before, "the figures");
  const unpaid = (await cells(page, "#books-unpaid")).map((r) => r.slice(0, 5));
  assertEqual(unpaid, [["INV-000001", "acme", "2027-01", "2027-02-15", "$26.45"]], "the unpaid invoices");
  await see(page, "#books-balanced", "Balanced");
  await look(page, "billing-admin");

  // The transfer arrived: marked paid (asked first), the invoice is paid.
  const row = page.locator("#books-unpaid tbody tr").filter({ hasText: "INV-000001" });
  await row.getByLabel("Transfer reference for INV-000001").fill(`wire-${RUN}`);
  const asked = await followConfirmed(page, row.getByRole("button", { name: "Mark INV-000001 paid" }));
  assertEqual(asked, "Mark INV-000001 paid in full?", "the question");
  await see(page, ".notice", `INV-000001 is paid (reference wire-${RUN}).`);
  await see(page, "#books-unpaid-none", "Every invoice is paid.");
  const after = { revenue: "$26.45", received: "$26.45 (manual)", credit: "$0.00", receivable: "$0.00" };
  assertEqual(await figures(), after, "the figures once paid");
  await see(page, "#books-balanced", "Balanced");
  assertEqual(
    await cells(page, "#books-balances"),
    [["cash:manual", "$26.45"], ["receivable:acme", "$0.00"], ["revenue", "-$26.45"]],
    "balances",
  );

  // Credit: an amount typed as a decimal, converted exactly; a bad one refused in words.
  const credit = async (amount) => {
    await page.locator("#credit-namespace").fill("acme");
    await page.locator("#credit-amount").fill(amount);
    await page.locator("#credit-reference").fill(`voucher-${RUN}`);
    await noBrowserChecks(page.locator("#credit-amount"));
    return await Promise.all([
      page.waitForNavigation({ timeout: WAIT_MS }),
      page.getByRole("button", { name: "Add credit" }).click(),
    ]).then(([r]) => r);
  };
  const refused = await credit("12.505");
  assertEqual(refused.status(), 400, "status of a bad amount");
  await see(page, '.error[role="alert"]', '"12.505" is not an amount: give it like 12.50');
  await credit("12.50");
  await see(page, ".notice", "acme holds $12.50 of prepaid credit now.");
  assertEqual(await textOf(page, "#books-credit"), "$12.50", "credit held");

  // Closing January again issues nothing twice.
  await page.locator("#books-period").fill("2027-01");
  const question = await followConfirmed(page, page.getByRole("button", { name: "Close period" }));
  assertEqual(question, "Close the period and issue its invoices?", "the question");
  await see(page, ".notice", "2027-01 is closed: nothing more to issue.");

  // In acme's namespace the operator sees its billing: paid, with the credit.
  await page.locator("#ns-switch").fill("acme");
  await follow(page, page.getByRole("button", { name: "Switch" }));
  await visit(page, "/billing");
  const acme = [await textOf(page, "#billing-credit"), await textOf(page, "#billing-owed")];
  assertEqual(acme, ["$12.50", "$0.00"], "acme's credit and what it owes");
  assertEqual((await cells(page, "#billing-invoices"))[0][5], "paid", "the invoice's status");
  await visit(page, `/billing/invoices/${ACME_INVOICE}`);
  assertEqual(await textOf(page, "#invoice-status"), "paid", "the invoice's page");
  assertEqual(await page.getByRole("button", { name: "Pay now" }).count(), 0, "Pay now on a paid invoice");
});

step("tls: signed in over HTTPS, the session cookie is Secure; the services page and its OpenAPI link load", async ({
  page,
  context,
}) => {
  needTls();
  await login(page);
  await see(page, "h1", "Services");
  await see(page, "tbody td a", /^registry$/);
  const cookies = await context.cookies(BASE);
  const session = cookies.find((c) => c.name === "micro_session");
  assert(session, `no session cookie among ${JSON.stringify(cookies.map((c) => c.name))}`);
  const flags = [session.secure, session.httpOnly, session.sameSite];
  assertEqual(flags, [true, true, "Strict"], "the session cookie's Secure, HttpOnly and SameSite");
  // The gateway's document, over HTTPS too: its certificate is from the same CA.
  assert(API.startsWith("https://"), `the gateway ${API} is not over HTTPS`);
  const doc = await openLinkedJson(page, page.locator("p.openapi a"), `${API}/openapi.json`);
  assertEqual(doc.info?.title, `Namespace ${NAMESPACE}`, "the document's title");
});

step("tls: a browser that does not trust the local CA refuses the dashboard", async () => {
  needTls();
  // A browser of its own whose HOME has no NSS database: it trusts the system's roots only.
  const home = mkdtempSync(path.join(os.tmpdir(), "e2e-untrusting-"));
  const untrusting = await launch(home);
  try {
    const page = await untrusting.newPage();
    const error = await page.goto(BASE + "/login").then(
      () => null,
      (e) => e.message,
    );
    assert(error?.includes("net::ERR_CERT_AUTHORITY_INVALID"), `loading ${BASE}/login: ${error ?? "it loaded"}`);
  } finally {
    await untrusting.close();
    rmSync(home, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------------------
// The runner.

/** Chromium, with `home` as its HOME (where it finds the NSS database of the CAs it trusts). */
function launch(home) {
  const env = home ? { ...process.env, HOME: home } : process.env;
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"], env });
}

const browser = await launch(BROWSER_HOME);
setTimeout(() => {
  // playwright-core kills the browser on exit.
  console.log(`FAILED  the run: it took longer than ${RUN_TIMEOUT_MS} ms`);
  process.exit(1);
}, RUN_TIMEOUT_MS).unref();
let passed = 0;
let failed = 0;
let skipped = 0;
for (const { name, fn } of steps) {
  if (ONLY && !ONLY.test(name)) continue;
  const started = Date.now();
  const context = await browser.newContext({ viewport: DESKTOP });
  context.setDefaultTimeout(WAIT_MS);
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(`uncaught: ${e.message}`));
  page.on("console", (m) => {
    // A refused asset or a CSP violation shows here. So does the status of a page that is
    // an error on purpose (401 sign-in, 400 call): the steps check those themselves.
    const pageStatus = /^Failed to load resource: .*status of [45]\d\d/.test(m.text()) && m.location().url === page.url();
    // A document the dashboard links on another origin (the gateway's OpenAPI JSON) makes
    // the browser ask that origin for /favicon.ico, which it need not have.
    const at = new URL(m.location().url || BASE);
    const foreignIcon = at.origin !== new URL(BASE).origin && at.pathname === "/favicon.ico";
    if (m.type() === "error" && !pageStatus && !foreignIcon) errors.push(`console: ${m.text()} (${m.location().url})`);
  });
  let timer;
  try {
    await Promise.race([
      fn({ page, context, browser }),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
      }),
    ]);
    assert(errors.length === 0, errors.join("; "));
    passed++;
    console.log(`ok      ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    if (e instanceof Skip) {
      skipped++;
      console.log(`skipped ${name}: ${e.message}`);
    } else {
      failed++;
      const where = page.isClosed() ? "" : ` [at ${page.url()}]`;
      console.log(`FAILED  ${name}: ${(e?.message ?? String(e)).split("\n")[0]}${where}`);
    }
  } finally {
    clearTimeout(timer);
    await context.close().catch(() => {});
  }
}
await browser.close();
for (const name of todos) console.log(`todo    ${name}`);
console.log(`e2e: ${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(failed === 0 ? 0 : 1);
