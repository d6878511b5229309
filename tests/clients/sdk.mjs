// opencode's JS SDK (@opencode-ai/sdk) through occ-init's proxy, on first contact: ten
// parallel session.list() and a session.create() at once (one Basic header, nothing verified
// before), then event.subscribe() and its first event. Usage (run from the directory whose
// node_modules holds the SDK): OCC_USER=alice OCC_PW=... node sdk.mjs URL
// Prints one JSON line with every call's status; exits non-zero on failure.
import { createOpencodeClient } from '@opencode-ai/sdk/client';

const [baseUrl] = process.argv.slice(2);
// OCC_BEARER: a personal API token sent as `Authorization: Bearer` instead of the password.
const auth = process.env.OCC_BEARER
  ? `Bearer ${process.env.OCC_BEARER}`
  : 'Basic ' + Buffer.from(`${process.env.OCC_USER}:${process.env.OCC_PW}`).toString('base64');
const result = {};
// The whole script has a deadline of its own (the Rust test has another).
const watchdog = setTimeout(() => {
  result.error = 'timed out';
  console.log(JSON.stringify(result));
  process.exit(2);
}, 45000);
const status = (r) => r?.response?.status ?? null;
try {
  const client = createOpencodeClient({ baseUrl, headers: { Authorization: auth } });
  const calls = [];
  for (let i = 0; i < 10; i++) calls.push(client.session.list());
  calls.push(client.session.create({ body: { title: 'made by the sdk test' } }));
  const answers = await Promise.all(calls);
  result.list = answers.slice(0, 10).map(status);
  result.listErrors = answers.slice(0, 10).filter((a) => a.error).map((a) => a.error);
  result.listLengths = answers.slice(0, 10).map((a) => (Array.isArray(a.data) ? a.data.length : null));
  const created = answers[10];
  result.create = status(created);
  result.createError = created.error ?? null;
  result.createdId = created.data?.id ?? null;

  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 15000);
  const sse = await client.event.subscribe({ signal: abort.signal, sseMaxRetryAttempts: 1,
    onSseError: (e) => { result.sseError = String(e); } });
  for await (const ev of sse.stream) {
    result.firstEvent = ev?.type ?? ev;
    break;
  }
  clearTimeout(timer);
  abort.abort();
  console.log(JSON.stringify(result));
} catch (e) {
  result.error = String(e?.stack ?? e);
  console.log(JSON.stringify(result));
  process.exitCode = 1;
} finally {
  clearTimeout(watchdog);
}
