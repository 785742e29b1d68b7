// A real OpenID Provider for ReadingRoom's single sign-on tests: panva/oidc-provider
// (OpenID Certified), listening on 127.0.0.1 with one confidential client and a few
// test accounts. The login and consent pages are oidc-provider's development
// interactions: the test submits their forms like a browser would.
//
// Environment: PORT (listen port), REDIRECT_URIS (ReadingRoom callbacks, comma-separated),
// CLIENT_ID, CLIENT_SECRET. Prints "ready <issuer>" once listening.
import { generateKeyPairSync } from 'node:crypto';

import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;

// Test accounts: the dev login form accepts any password; the login name picks the account.
const accounts = {
  'dr.sso': {
    email: 'dr.sso@hospital.example', email_verified: true, name: 'Dr Sam Sso',
    preferred_username: 'dr.sso', roles: ['radiologist', 'unrelated-role'],
  },
  'linked.by.email': {
    email: 'existing@hospital.example', email_verified: true, name: 'Existing Person',
    preferred_username: 'someone-else', roles: [],
  },
  'second.identity': {
    email: 'existing@hospital.example', email_verified: true, name: 'Same Email, Other Person',
    preferred_username: 'second.identity', roles: [],
  },
  'unverified.email': {
    email: 'existing@hospital.example', email_verified: false, name: 'Not Verified',
    preferred_username: 'nobody-here', roles: [],
  },
  'mfa.user': {
    email: 'mfa.user@hospital.example', email_verified: true, name: 'Mfa User',
    preferred_username: 'mfa.user', roles: ['admin'],
  },
};

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-key-1', use: 'sig', alg: 'RS256' };

const configuration = {
  clients: [{
    client_id: process.env.CLIENT_ID || 'readingroom',
    client_secret: process.env.CLIENT_SECRET || 'readingroom-test-secret',
    redirect_uris: process.env.REDIRECT_URIS.split(','),
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    roles: ['roles'],
  },
  scopes: ['openid', 'email', 'profile', 'roles'],
  async findAccount(ctx, id) {
    const account = accounts[id];
    if (!account) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...account }; } };
  },
  pkce: { required: () => true },
  cookies: { keys: ['readingroom-test-cookie-key'] },
  jwks: { keys: [signingKey] },
  features: { devInteractions: { enabled: true } },
  ttl: { AccessToken: 300, AuthorizationCode: 60, IdToken: 300, Interaction: 600, Session: 600, Grant: 600 },
};

const provider = new Provider(issuer, configuration);
provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
