// Headless Chromium: the cross-origin attack of tests/clients.rs. The victim logs in to the
// proxy at PROXY_URL (http://localhost:PORT/) through its login form, then, in the same browser,
// opens the attacker's page EVIL_URL (another port of localhost, the same *site*), which tries
// a shell (POST /pty), an opencode session, the terminal's WebSocket and login/logout CSRF.
// Then the control: the proxy's own origin can still open a terminal, and opencode's UI loads.
// Usage: OCC_PW=... node cross_origin.mjs PROXY_URL EVIL_URL USER SCREENSHOT_DIR [no-control]
// (no-control: stop after the attack, for a page whose attacks went through).
// Prints one JSON line with what it saw; exits non-zero on failure.
import { chromium } from 'playwright-core';

const [proxyUrl, evilUrl, user, shots, mode] = process.argv.slice(2);
const password = process.env.OCC_PW;
const proxyOrigin = new URL(proxyUrl).origin;
const shot = (name) => `${shots}/${mode === 'no-control' ? 'cross-origin-trusted' : 'cross-origin'}-${name}.png`;
const result = { responses: [], failed: [] };
const watchdog = setTimeout(() => {
  result.error = 'timed out';
  console.log(JSON.stringify(result));
  process.exit(2);
}, 100000);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const session = async (context) => (await context.cookies(proxyOrigin))
  .filter((c) => c.name === 'occ_session').map((c) => c.value)[0] || null;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  // Every answer the proxy gave the attacker's page (which cannot read them; the browser
  // can): what was refused, and how. CORS-blocked requests show up as failed only.
  let phase = 'login';
  let evil = null;
  const by = (req) => {
    try { return req.frame().page() === evil ? 'attacker' : 'victim'; } catch (_) { return null; }
  };
  context.on('response', async (r) => {
    const req = r.request();
    if (!req.url().startsWith(proxyOrigin) || by(req) !== 'attacker') return;
    const entry = { phase, by: by(req), method: req.method(), url: req.url().slice(proxyOrigin.length),
      status: r.status() };
    if (r.status() === 403) entry.body = (await r.text().catch(() => '')).slice(0, 200);
    result.responses.push(entry);
  });
  context.on('requestfailed', (req) => {
    if (req.url().startsWith(proxyOrigin) && by(req) === 'attacker') {
      result.failed.push({ phase, by: by(req), method: req.method(),
        url: req.url().slice(proxyOrigin.length), failure: req.failure()?.errorText ?? null });
    }
  });

  // The victim logs in through the form.
  const page = await context.newPage();
  await page.goto(proxyUrl, { waitUntil: 'domcontentloaded', timeout: 20000 });
  result.loginUrl = page.url();
  await page.fill('#username', user);
  await page.fill('#password', password);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith('/_occ/'), { timeout: 20000 }),
    page.click('button[type=submit]')]);
  await page.waitForFunction(() => document.title === 'OpenCode', null, { timeout: 30000 });
  result.cookieBefore = await session(context);
  await page.screenshot({ path: shot('1-logged-in') });

  // The attacker's page, in the same browser.
  phase = 'attack';
  evil = await context.newPage();
  const wsSeen = [];
  evil.on('websocket', (ws) => {
    const w = { url: ws.url().replace(/^ws:\/\/[^/]+/, ''), frames: 0, closed: false };
    wsSeen.push(w);
    ws.on('framereceived', () => { w.frames += 1; });
    ws.on('socketerror', (e) => { w.error = String(e); });
    ws.on('close', () => { w.closed = true; });
  });
  await evil.goto(evilUrl, { waitUntil: 'domcontentloaded', timeout: 20000 });
  result.evilOrigin = await evil.evaluate(() => location.origin);
  await evil.waitForFunction(() => document.title === 'done', null, { timeout: 45000 });
  result.attack = await evil.evaluate(() => window.__result);
  result.attackWebSockets = wsSeen;
  await evil.screenshot({ path: shot('2-attacker') });
  // Let anything the page started land before the test looks.
  await evil.waitForTimeout(1500);
  result.cookieAfter = await session(context);
  await evil.close();
  if (mode !== 'no-control') {
    // The control: on the proxy's own origin the same browser opens a terminal and gets its
    // output over the WebSocket, and opencode's UI still renders.
    phase = 'control';
    result.control = await page.evaluate(async () => {
      const out = {};
      const r = await fetch('/pty', { method: 'POST', body: '{}',
        headers: { 'Content-Type': 'application/json' } });
      out.ptyStatus = r.status;
      const body = await r.text();
      try { out.ptyId = JSON.parse(body).id ?? null; } catch (_) { out.ptyBody = body.slice(0, 300); }
      const s = await fetch('/session');
      out.sessionStatus = s.status;
      if (out.ptyId) {
        const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
        out.ws = await new Promise((resolve) => {
          const seen = { opened: false, output: '' };
          const ws = new WebSocket(`${scheme}//${location.host}/pty/${out.ptyId}/connect`);
          const end = () => { try { ws.close(); } catch (_) {} resolve(seen); };
          const t = setTimeout(end, 10000);
          ws.onopen = () => { seen.opened = true; ws.send('echo own-origin-$((6*7))\n'); };
          ws.onmessage = async (e) => {
            seen.output += typeof e.data === 'string' ? e.data : await e.data.text();
            if (seen.output.includes('own-origin-42')) { clearTimeout(t); end(); }
          };
          ws.onclose = () => { clearTimeout(t); resolve(seen); };
        });
        out.ws.output = out.ws.output.slice(-300);
      }
      return out;
    });
    await page.reload({ waitUntil: 'domcontentloaded', timeout: 20000 });
    await page.waitForFunction(() => document.title === 'OpenCode', null, { timeout: 30000 });
    await page.waitForTimeout(2000);
    result.appTitle = await page.title();
    result.appUrl = page.url();
    await page.screenshot({ path: shot('3-own-origin') });
  }
  console.log(JSON.stringify(result));
} catch (e) {
  result.error = String(e?.stack ?? e);
  console.log(JSON.stringify(result));
  process.exitCode = 1;
} finally {
  clearTimeout(watchdog);
  await browser.close();
}
