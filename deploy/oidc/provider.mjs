// A real OpenID Connect provider (npm oidc-provider) on loopback, for flagtrail's tests.
// Started by deploy/local/oidc; never a production identity provider.
//
// Each test person is a client using the client_credentials grant (interaction-free),
// so the access token's `sub` is the person. Access tokens are JWTs (RFC 9068,
// resourceIndicators with accessTokenFormat 'jwt') carrying `groups`; an approval
// asks for an RFC 9396 `authorization_details` entry of type "flagtrail_change"
// (flag_key, environment, change_digest) which the token then carries.
//
// Resources pick the signing algorithm and the audience:
//   urn:flagtrail:rs256  audience "flagtrail", RS256
//   urn:flagtrail:es256  audience "flagtrail", ES256
//   urn:flagtrail:short  audience "flagtrail", RS256, lives 2 s (expiry tests)
//   urn:other:service    audience "other-service", RS256 (wrong-audience tests)
//
// Environment: OIDC_PORT, OIDC_KEYS (a private JWKS file; the first key of each
// algorithm signs, so a rotation puts the new key first).
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT);
const jwks = JSON.parse(readFileSync(process.env.OIDC_KEYS, 'utf8'));
const issuer = `http://127.0.0.1:${port}`;

// person -> groups; "dana" has a string where a list belongs (a provider that
// collapses one group), "mallory" belongs to no group
const PEOPLE = {
  'alice@example.com': ['flag-release-managers', 'engineering'],
  'bob@example.com': ['flag-release-managers', 'auditors'],
  'carol@example.com': ['engineering'],
  'dana@example.com': 'flag-release-managers',
  'mallory@example.com': [],
};

const RESOURCES = {
  'urn:flagtrail:rs256': { audience: 'flagtrail', alg: 'RS256' },
  'urn:flagtrail:es256': { audience: 'flagtrail', alg: 'ES256' },
  'urn:flagtrail:short': { audience: 'flagtrail', alg: 'RS256', ttl: 2 },
  'urn:other:service': { audience: 'other-service', alg: 'RS256' },
};

const CHANGE_FIELDS = ['flag_key', 'environment', 'change_digest'];

const provider = new Provider(issuer, {
  jwks,
  clients: Object.keys(PEOPLE).map((id) => ({
    client_id: id,
    client_secret: `secret-of-${id}`,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_post',
    authorization_details_types: ['flagtrail_change'],
  })),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:flagtrail:rs256',
      useGrantedResource: () => true,
      getResourceServerInfo(ctx, indicator) {
        const resource = RESOURCES[indicator];
        if (!resource) throw new Provider.errors.InvalidTarget();
        return {
          scope: 'flags',
          audience: resource.audience,
          accessTokenTTL: resource.ttl || 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: resource.alg } },
        };
      },
    },
    richAuthorizationRequests: {
      enabled: true,
      types: {
        flagtrail_change: {
          validate(ctx, detail) {
            for (const field of CHANGE_FIELDS) {
              if (typeof detail[field] !== 'string' || !detail[field]) {
                throw new Provider.errors.InvalidAuthorizationDetails(`${field} is required`);
              }
            }
          },
        },
      },
      authorizationDetailsForAccessToken(ctx) {
        // what the approver asked for, checked by validate() above
        return JSON.parse(ctx.oidc.params.authorization_details);
      },
    },
  },
  extraTokenClaims(ctx, token) {
    return { groups: PEOPLE[token.clientId] };
  },
});

provider.on('server_error', (ctx, error) => console.error('server_error', error));
provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider ${issuer} ready`);
});
