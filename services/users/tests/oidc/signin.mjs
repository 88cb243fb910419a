// Signs in through the provider in headless chromium (playwright-core, which NODE_MODULES
// holds): opens START_URL (the provider's authorization URL), types LOGIN into its
// development login form, consents, and prints "landed <url>" when the browser is back
// at a URL starting with REDIRECT_URL (the app's page, with ?code=…&state=…).
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(join(process.env.NODE_MODULES, "x.js"));
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox"],
});
let status = 1;
try {
  const page = await browser.newPage();
  page.on("framenavigated", (f) => f === page.mainFrame() && console.log(`at ${f.url()}`));
  page.on("requestfailed", (r) => console.log(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  await page.goto(process.env.START_URL);
  await page.fill('input[name="login"]', process.env.LOGIN);
  await page.fill('input[name="password"]', "any password");
  await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
  // The consent form (skipped by the provider when nothing is left to grant).
  if (!page.url().startsWith(process.env.REDIRECT_URL)) {
    await Promise.all([
      page.waitForURL((u) => u.href.startsWith(process.env.REDIRECT_URL), { timeout: 15000 }),
      page.click('button[type="submit"]'),
    ]);
  }
  console.log(`landed ${page.url()}`);
  status = 0;
} catch (e) {
  console.log(`failed: ${e.message}`);
} finally {
  await browser.close();
}
process.exit(status);
