// Signing keys for the test provider (deploy/local/oidc): a private JWKS file.
//   node keys.mjs FILE            create FILE with one RS256 and one ES256 key, unless it exists
//   node keys.mjs FILE rotate     put a new RS256 and ES256 key first (they sign from now on)
//   node keys.mjs FILE retire     keep only the first key of each algorithm
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { generateKeyPairSync, randomUUID } from 'node:crypto';

const [file, command = 'create'] = process.argv.slice(2);

function newKey(alg) {
  const { privateKey } = alg === 'RS256'
    ? generateKeyPairSync('rsa', { modulusLength: 2048 })
    : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { ...privateKey.export({ format: 'jwk' }), alg, use: 'sig', kid: `${alg}-${randomUUID()}` };
}

function write(keys) {
  writeFileSync(`${file}.tmp`, JSON.stringify({ keys }), { mode: 0o600 });
  renameSync(`${file}.tmp`, file);
}

const current = existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')).keys : null;
if (command === 'create') {
  if (!current) write([newKey('RS256'), newKey('ES256')]);
} else if (command === 'rotate') {
  write([newKey('RS256'), newKey('ES256'), ...(current || [])]);
} else if (command === 'retire') {
  const seen = new Set();
  write((current || []).filter((key) => !seen.has(key.alg) && seen.add(key.alg)));
} else {
  console.error(`unknown command ${command}`);
  process.exit(2);
}
