// Headless Chromium through a real OpenID provider's pages (oidc-provider's development
// interactions: a login form taking any password, a consent page, the device flow's code
// confirmation). Usage: node oidc.mjs MODE URL LOGIN SHOTS_DIR PREFIX
//   MODE browser: open URL (the proxy), click "Sign in with …", sign in as LOGIN at the
//                 provider, consent, and follow the redirects back; wait for opencode's UI.
//   MODE device:  open URL (verification_uri_complete), confirm the code, sign in, consent.
// Prints one JSON line: the pages seen, the final URL, title and text, the callback URL and
// the flow cookie sent with it (for replay tests), the cookies at the end.
import { chromium } from 'playwright-core';

const [mode, url, login, shots, prefix] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const result = { pages: [] };
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on('request', async (req) => {
    if (req.url().includes('/_occ/oidc/callback')) {
      result.callbackUrl = req.url();
      const h = await req.allHeaders();
      result.callbackCookie = h.cookie || null;
    }
  });
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 20000 });
  if (mode === 'browser') {
    result.loginPage = await page.locator('body').innerText();
    await page.screenshot({ path: `${shots}/${prefix}1-login.png` });
    await Promise.all([page.waitForLoadState('domcontentloaded'), page.click('#sso')]);
  }
  for (let step = 0; step < 10; step++) {
    await page.waitForLoadState('domcontentloaded');
    const here = page.url();
    result.pages.push(here);
    const text = await page.locator('body').innerText().catch(() => '');
    if (here.includes('/_occ/') && !here.includes('/_occ/oidc/callback')) break;
    if (!here.startsWith(url.split('/').slice(0, 3).join('/')) || mode === 'device') {
      // At the provider.
      if (await page.locator('input[name=login]').count()) {
        await page.fill('input[name=login]', login);
        await page.fill('input[name=password]', 'any password');
        await page.screenshot({ path: `${shots}/${prefix}2-provider-login.png` });
        await Promise.all([page.waitForNavigation({ timeout: 20000 }), page.click('button[type=submit]')]);
        continue;
      }
      if (/Sign-in Success|successfully/i.test(text)) { result.deviceDone = text.slice(0, 300); break; }
      if (await page.locator('button[type=submit]').count()) {
        await Promise.all([page.waitForNavigation({ timeout: 20000 }), page.click('button[type=submit]')]);
        continue;
      }
      result.stuck = text.slice(0, 500);
      break;
    }
    break;
  }
  if (mode === 'browser') {
    // The proxy's signed-in page moves on to opencode; or a failure page stays.
    await page.waitForFunction(() => document.title === 'OpenCode' || document.querySelector('.err'),
      null, { timeout: 30000 }).catch(() => {});
    if (await page.title() === 'OpenCode') await page.waitForTimeout(2000);
  }
  result.finalUrl = page.url();
  result.title = await page.title();
  result.text = (await page.locator('body').innerText().catch(() => '')).slice(0, 1500);
  await page.screenshot({ path: `${shots}/${prefix}3-end.png` });
  result.cookies = (await context.cookies()).map((c) => ({ name: c.name, sameSite: c.sameSite, httpOnly: c.httpOnly, domain: c.domain }));
  console.log(JSON.stringify(result));
} catch (e) {
  result.error = String(e);
  console.log(JSON.stringify(result));
  process.exitCode = 1;
} finally {
  await browser.close();
}
