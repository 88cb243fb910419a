// End-to-end tests of the web dashboard in a real browser: Debian's chromium driven by
// playwright-core (both installed by scripts/browser-setup). Run by
// crates/micro-cli/tests/web.rs, which starts `micro server` and helloworld and sets:
//
//   E2E_URL             the dashboard, e.g. http://127.0.0.1:8082 (required)
//   E2E_ADMIN_PASSWORD  the secret of account `admin` in namespace `micro` (required)
//   E2E_ADMIN_ID        the admin account (default admin)
//   E2E_NAMESPACE       its namespace (default micro)
//   E2E_CHROMIUM        the browser (default /usr/bin/chromium)
//   E2E_SCREENSHOTS     a folder: every page visited is saved there, full page, at desktop
//                       (1280×800) and phone (390×844) width, as NAME-desktop.png/NAME-phone.png
//   E2E_ONLY            a regular expression: only the steps whose names match run
//
// Every step asserts what a person would see (text in cells, the reply JSON, the error in
// words), not just that a page loaded. It prints one line per step and exits non-zero when
// any step fails. To add a step: `step("what it shows", async ({ page }) => { ... })`.

import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import path from "node:path";

// `import` ignores NODE_PATH; require() follows it to the node_modules under the target dir.
const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const BASE = need("E2E_URL").replace(/\/$/, "");
const PASSWORD = need("E2E_ADMIN_PASSWORD");
const ADMIN = process.env.E2E_ADMIN_ID || "admin";
const NAMESPACE = process.env.E2E_NAMESPACE || "micro";
const CHROMIUM = process.env.E2E_CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.E2E_SCREENSHOTS ? path.resolve(process.env.E2E_SCREENSHOTS) : null;
const ONLY = process.env.E2E_ONLY ? new RegExp(process.env.E2E_ONLY) : null;

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

function assertEqual(actual, expected, what) {
  if (JSON.stringify(actual) !== JSON.stringify(expected)) {
    throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}

/** The path of the page's URL. */
function pathOf(page) {
  return new URL(page.url()).pathname;
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
async function login(page, { id = ADMIN, secret = PASSWORD } = {}) {
  await visit(page, `/login?namespace=${encodeURIComponent(NAMESPACE)}`);
  await page.getByLabel("Account", { exact: true }).fill(id);
  await page.getByLabel("Secret", { exact: true }).fill(secret);
  await follow(page, page.getByRole("button", { name: "Sign in" }));
  assertEqual(pathOf(page), "/services", "page after signing in");
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

/** The pages a signed-in admin can open now (the other sections are being written). */
const PAGES = [
  "/services",
  "/services/helloworld",
  "/services/helloworld/Greeter.Hello",
  "/services/helloworld/Greeter.Hello?raw=1",
  "/services/store/Store.Read",
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
  // Service, Versions, Nodes, Endpoints: one node, Debug.{Health,Stats} and Greeter.{Hello,Stream,Chat}.
  assertEqual(cells[0], "helloworld", "service cell");
  assert(Number(cells[2]) >= 1, `helloworld has ${cells[2]} nodes`);
  assertEqual(Number(cells[3]), 5, "helloworld's endpoints");
  // The core services are listed too.
  for (const core of ["auth", "registry", "store"]) await see(page, "tbody td a", new RegExp(`^${core}$`));
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
    assertEqual(await links.count(), 7, `section links on ${p}`);
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
  const [scroll, inner] = await page.evaluate(() => [document.scrollingElement.scrollWidth, window.innerWidth]);
  assert(scroll <= inner, `${pathOf(page)} is ${scroll}px wide in a ${inner}px window`);
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

// TODO steps for the sections being written (crates/micro-server/src/web/*.rs); write
// each as a step above when its page lands, with a screenshot of every page it opens:
todo("runtime: run a service, its status turns running; kill it, the status changes");
todo("runtime: a service's live log shows a line it prints");
todo("store: write a record, read it back in the table");
todo("config: a secret value is shown masked");
todo("auth: create a rule and see it listed");

// ---------------------------------------------------------------------------------------
// The runner.

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
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
    if (m.type() === "error" && !pageStatus) errors.push(`console: ${m.text()} (${m.location().url})`);
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
