// Opens browser/page.html in headless chromium (through playwright-core, which
// NODE_PATH names) and prints what it found; exits 1 when the page's checks failed.
//
//   PAGE_URL   the page as the gateway serves it (required), with its #fragment
//   CHROMIUM   the browser (default /usr/bin/chromium)
//   RESOLVE    host resolver rules, e.g. "MAP *.apps.test 127.0.0.1"
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const url = process.env.PAGE_URL;
if (!url) {
  console.error("PAGE_URL is required");
  process.exit(2);
}
const args = ["--no-sandbox"];
if (process.env.RESOLVE) args.push(`--host-resolver-rules=${process.env.RESOLVE}`);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args });
let status = 1;
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console.log(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.__result !== undefined, null, { timeout: 30000 });
  const result = await page.evaluate(() => window.__result);
  console.log(result.log);
  if (result.ok) {
    console.log(`PASSED in the browser (${result.events} live events)`);
    status = 0;
  } else {
    console.log(`FAILED in the browser: ${result.error}`);
  }
} catch (e) {
  console.log(`FAILED: ${e && e.stack ? e.stack : e}`);
} finally {
  await browser.close();
}
process.exit(status);
