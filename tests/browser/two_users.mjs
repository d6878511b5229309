// Headless Chromium, two browser contexts (two people): each logs in through occ-init's
// proxy with their own password, waits for opencode's web UI (their own opencode, started on
// their first request), creates a session with a title of their own from the page, then
// lists the sessions the page can see. Usage:
//   node two_users.mjs URL USER1 PW1 USER2 PW2 SCREENSHOT_DIR
// Prints one JSON line: {USER: {appTitle, created, titles, error?}, ...}; exits non-zero on failure.
import { chromium } from 'playwright-core';

const [url, u1, p1, u2, p2, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const result = {};

async function login(user, password) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 20000 });
  await page.fill('#username', user);
  await page.fill('#password', password);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith('/_occ/'), { timeout: 20000 }),
    page.click('button[type=submit]')]);
  // The first load may be "Starting your workspace…", which reloads itself.
  await page.waitForFunction(() => document.title === 'OpenCode', null, { timeout: 60000 });
  await page.waitForTimeout(2000);
  return { context, page };
}

async function sessions(page) {
  return await page.evaluate(async () => {
    const r = await fetch('/session', { headers: { Accept: 'application/json' } });
    return (await r.json()).map((s) => s.title);
  });
}

try {
  const people = [[u1, p1], [u2, p2]];
  const pages = {};
  for (const [user, password] of people) {
    const { page } = await login(user, password);
    pages[user] = page;
    const created = await page.evaluate(async (title) => {
      const r = await fetch('/session', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ title }),
      });
      return r.status;
    }, `${user}-private-plans`);
    result[user] = { appTitle: await page.title(), created };
  }
  for (const [user] of people) {
    const page = pages[user];
    await page.reload({ waitUntil: 'domcontentloaded' });
    await page.waitForFunction(() => document.title === 'OpenCode', null, { timeout: 30000 });
    await page.waitForTimeout(2500);
    result[user].titles = await sessions(page);
    result[user].text = (await page.locator('body').innerText()).slice(0, 1500);
    await page.screenshot({ path: `${shots}/${user}.png` });
  }
  console.log(JSON.stringify(result));
} catch (e) {
  result.error = String(e);
  console.log(JSON.stringify(result));
  process.exitCode = 1;
} finally {
  await browser.close();
}
