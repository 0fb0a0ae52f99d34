// A real OpenID provider for Hale's tests: panva's oidc-provider (OpenID
// Certified), on loopback, issuing ES256 `at+jwt` access tokens for Hale's
// audience by client credentials and by authorisation code with PKCE.
//
//   node idp.mjs --port 4011 --keys keys.json [--audience URL] [--kid K] [--redirect URL,URL]
//
// --redirect: the redirect URIs of the `hale-ui` client (Hale's web UI sign-in,
// `<node>/ui/oidc/callback`). --ui-ttl: its access tokens' lifetime in seconds
// (default 300).
//
// --keys: a JSON file holding the signing key (private JWK). Created with a
// new key (kid --kid, default "k1") when missing; two providers given the same
// file sign with the same key (the wrong-issuer test needs that).
//
// Test helpers, on the same port under /test/ (this provider exists only for
// tests): /test/forge signs tokens the provider would never issue (nbf in the
// future, alg none, HS256 keyed with the public key, a foreign key, an
// ID-token-shaped token), so Hale's refusals can be checked against real keys.
//
// Prints "ready <issuer>" on stdout when listening.
import Provider from 'oidc-provider';
import * as jose from 'jose';
import fs from 'node:fs';
import http from 'node:http';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const port = Number(arg('port', '4011'));
const keysPath = arg('keys');
const audience = arg('audience', 'http://127.0.0.1:8080/');
const kid = arg('kid', 'k1');
const uiTtl = Number(arg('ui-ttl', '300'));
const issuer = `http://127.0.0.1:${port}`;

let jwk;
if (keysPath && fs.existsSync(keysPath)) {
  jwk = JSON.parse(fs.readFileSync(keysPath, 'utf8'));
} else {
  const { privateKey } = await jose.generateKeyPair('ES256', { extractable: true });
  jwk = { ...(await jose.exportJWK(privateKey)), kid, alg: 'ES256', use: 'sig' };
  if (keysPath) fs.writeFileSync(keysPath, JSON.stringify(jwk));
}
const publicJwk = { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, kid: jwk.kid, alg: jwk.alg, use: 'sig' };

// The scopes Hale understands; a scope not listed here is dropped by the
// provider (the test asserts on the granted scope).
const SCOPES = [
  'user/Patient.r', 'user/Patient.rs', 'user/Patient.cruds', 'user/Observation.rs', 'user/Observation.cruds',
  'user/*.cruds', 'user/*.rs', 'system/*.rs', 'system/*.cruds', 'patient/*.rs', 'patient/Observation.rs',
  'patient/Patient.rs', 'user/Bundle.cruds',
].join(' ');

// Clients, each with the claims a trust's provider would add for it.
const CLIENT_CLAIMS = {
  'clinician-app': { hale_role: 'clinician', hale_site: 'QEUH' },
  'clerk-app': { hale_role: 'clerk' },
  'backend': {},
  'short-lived': { hale_role: 'clinician' },
  'unmapped-role': { hale_role: 'R9999' },
};
const clients = Object.keys(CLIENT_CLAIMS).map((client_id) => ({
  client_id,
  client_secret: 'secret',
  id_token_signed_response_alg: 'ES256',
  grant_types: ['client_credentials', 'authorization_code'],
  response_types: ['code'],
  redirect_uris: ['http://127.0.0.1/cb'],
}));
clients.push({
  client_id: 'hale-ui',
  client_secret: 'ui-secret',
  id_token_signed_response_alg: 'ES256',
  grant_types: ['authorization_code'],
  response_types: ['code'],
  redirect_uris: (arg('redirect', '') || 'http://127.0.0.1/cb').split(','),
});

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [jwk] },
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator, client) => ({
        scope: SCOPES,
        audience: resourceIndicator,
        accessTokenFormat: 'jwt',
        accessTokenTTL: client.clientId === 'short-lived' ? 1 : client.clientId === 'hale-ui' ? uiTtl : 300,
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
  // The login name picks the role in the authorisation-code flow.
  findAccount: (ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
  extraTokenClaims: (ctx, token) => {
    if (token.kind === 'ClientCredentials') {
      const extra = { ...(CLIENT_CLAIMS[token.clientId] || {}) };
      const patient = ctx.oidc.params?.patient;
      if (patient) extra.patient = patient;
      return extra;
    }
    // Authorisation code (the `hale-ui` client's users, signed in on the
    // devInteractions form with any password): the login name says the role.
    // "clerk…" is a clerk, "r9999…" carries a job role Hale's role_map does
    // not know (the UI must refuse it, 403), anyone else is a clinician; all
    // work at site QEUH.
    const sub = token.accountId || '';
    if (sub.startsWith('r9999')) return { hale_role: 'R9999', hale_site: 'QEUH' };
    return { hale_role: sub.startsWith('clerk') ? 'clerk' : 'clinician', hale_site: 'QEUH' };
  },
  extraParams: ['patient'],
  scopes: ['openid', 'offline_access', ...SCOPES.split(' ')],
  pkce: { required: () => true },
  loadExistingGrant: async (ctx) => {
    // Consent is implied for these test clients.
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid');
    grant.addResourceScope(audience, SCOPES);
    await grant.save();
    return grant;
  },
});
provider.proxy = false;

const b64 = (o) => Buffer.from(typeof o === 'string' ? o : JSON.stringify(o)).toString('base64url');
async function forge(kind, claims) {
  const now = Math.floor(Date.now() / 1000);
  const body = { iss: issuer, aud: audience, sub: 'forged', hale_role: 'clinician', scope: 'user/*.cruds', iat: now, exp: now + 300, jti: `f-${now}-${Math.random()}`, client_id: 'clinician-app', ...claims };
  const key = await jose.importJWK(jwk, 'ES256');
  switch (kind) {
    case 'valid':
      return new jose.SignJWT(body).setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: jwk.kid }).sign(key);
    case 'nbf-future':
      return new jose.SignJWT({ ...body, nbf: now + 3600 }).setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: jwk.kid }).sign(key);
    case 'alg-none':
      return `${b64({ alg: 'none', typ: 'at+jwt', kid: jwk.kid })}.${b64(body)}.`;
    case 'hs256-public-key': {
      // The classic confusion attack: HMAC keyed with the provider's public key.
      const secret = new TextEncoder().encode(JSON.stringify(publicJwk));
      return new jose.SignJWT(body).setProtectedHeader({ alg: 'HS256', typ: 'at+jwt', kid: jwk.kid }).sign(secret);
    }
    case 'unknown-kid': {
      const { privateKey } = await jose.generateKeyPair('ES256');
      return new jose.SignJWT(body).setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: 'rogue' }).sign(privateKey);
    }
    case 'id-token':
      // Shaped as the provider's ID tokens are: typ JWT, audience the client.
      return new jose.SignJWT({ ...body, aud: 'clinician-app', nonce: 'n' }).setProtectedHeader({ alg: 'ES256', typ: 'JWT', kid: jwk.kid }).sign(key);
    default:
      throw new Error(`unknown forge kind ${kind}`);
  }
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  if (req.url.startsWith('/test/forge')) {
    const u = new URL(req.url, issuer);
    try {
      const extra = JSON.parse(u.searchParams.get('claims') || '{}');
      const token = await forge(u.searchParams.get('kind'), extra);
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(token);
    } catch (e) {
      res.writeHead(400);
      res.end(String(e));
    }
    return;
  }
  callback(req, res);
});
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
