// A real OpenID provider for the tests: panva's oidc-provider (certified), on loopback, with
// one confidential client, development interactions (a login form that takes any password
// for the accounts below), the device flow, and accounts with preferred_username and groups.
// Usage: node provider.mjs PORT REDIRECT_URI [CLOCK_SHIFT_SECONDS]
// Prints "READY <issuer>" once it listens. CLOCK_SHIFT_SECONDS moves the provider's clock
// (a negative shift makes it issue ID tokens that are already expired).
const [port, redirect, shift] = process.argv.slice(2);
if (shift) {
  const real = Date.now;
  Date.now = () => real() + Number(shift) * 1000;
}
const { default: Provider } = await import('oidc-provider');
const { generateKeyPairSync, randomBytes } = await import('node:crypto');

// A signing key of its own at every start (a new `kid`): a restart is a key rotation.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signing = { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' };

const accounts = {
  alice: { preferred_username: 'alice', name: 'Alice', email: 'alice@example.test', groups: ['devs'] },
  bob: { preferred_username: 'bob', name: 'Bob', email: 'bob@example.test', groups: ['devs', 'ops'] },
  eve: { preferred_username: 'eve', name: 'Eve', email: 'eve@example.test', groups: ['outsiders'] },
  ghost: { preferred_username: 'ghost', name: 'Ghost', email: 'ghost@example.test', groups: ['devs'] },
  newbie: { preferred_username: 'newbie', name: 'New', email: 'new@example.test', groups: ['devs'] },
  // Another identity claiming newbie's name (a second `sub` for the same user name).
  impostor: { preferred_username: 'newbie', name: 'Not New', email: 'imp@example.test', groups: ['devs'] },
  badname: { preferred_username: '../root', name: 'Bad', email: 'bad@example.test', groups: ['devs'] },
};

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [{
    client_id: 'occ',
    client_secret: 'occ-test-secret',
    redirect_uris: [redirect],
    grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }, {
    // Another client of the same provider: its ID tokens are for another audience.
    client_id: 'other',
    client_secret: 'other-test-secret',
    redirect_uris: ['http://127.0.0.1:9/cb'],
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code'],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email'],
    groups: ['groups'],
  },
  scopes: ['openid', 'profile', 'email', 'groups', 'offline_access'],
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
  },
  jwks: { keys: [signing] },
  pkce: { required: () => true },
  // Long-lived interactions and sessions: with a shifted clock the browser (on the real one)
  // must still keep the provider's cookies; the ID token keeps its default hour.
  ttl: { Interaction: 86400, Session: 14 * 86400, Grant: 14 * 86400 },
  async findAccount(ctx, id) {
    const claims = accounts[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
});
provider.proxy = false;
const server = provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`READY ${issuer}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
