// Headless Chromium through occ-init's proxy: open the public URL, get the login page, log in,
// and wait for opencode's web UI. Usage: node login.mjs URL USER PASSWORD SCREENSHOT_DIR
// (OCC_IGNORE_HTTPS_ERRORS=1: accept a self-signed certificate; OCC_SHOT_PREFIX names the shots)
// Prints one JSON line with what it saw; exits non-zero on failure.
import { chromium } from 'playwright-core';

const [url, user, password, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const result = {};
try {
  const context = await browser.newContext({
    viewport: { width: 1280, height: 800 },
    ignoreHTTPSErrors: process.env.OCC_IGNORE_HTTPS_ERRORS === '1',
  });
  const page = await context.newPage();
  const prefix = process.env.OCC_SHOT_PREFIX || '';
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 20000 });
  result.loginUrl = page.url();
  result.loginTitle = await page.title();
  await page.screenshot({ path: `${shots}/${prefix}1-login.png` });
  await page.fill('#username', user);
  await page.fill('#password', 'not-the-password');
  await Promise.all([page.waitForLoadState('domcontentloaded'), page.click('button[type=submit]')]);
  result.wrongText = await page.locator('.err').innerText({ timeout: 10000 });
  await page.fill('#username', user);
  await page.fill('#password', password);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith('/_occ/'), { timeout: 20000 }),
    page.click('button[type=submit]')]);
  await page.waitForFunction(() => document.title === 'OpenCode', null, { timeout: 30000 });
  // Let the UI render its start screen (it talks to the API through the proxy).
  await page.waitForTimeout(3000);
  result.appUrl = page.url();
  result.appTitle = await page.title();
  result.appText = (await page.locator('body').innerText()).slice(0, 2000);
  await page.screenshot({ path: `${shots}/${prefix}2-opencode.png` });
  const cookies = await page.context().cookies();
  result.cookie = cookies.filter((c) => c.name === 'occ_session' || c.name === '__Host-occ_session')
    .map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite, secure: c.secure }))[0] || null;
  console.log(JSON.stringify(result));
} catch (e) {
  result.error = String(e);
  console.log(JSON.stringify(result));
  process.exitCode = 1;
} finally {
  await browser.close();
}
