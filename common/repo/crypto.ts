/**
 * Cryptographic primitives of the repository format, in one place.
 *
 *   seal/open      AES-256-GCM, random 96-bit nonce, optional associated data;
 *                  layout nonce(12) ‖ ciphertext ‖ tag(16). Authenticated: a flipped bit fails.
 *   blobId         HMAC-SHA256 of the plaintext under the host's id key ("keyed SHA-256"):
 *                  dedup within a host, and ids that say nothing about content across hosts.
 *   contentId      SHA-256 of stored bytes: the name of every write-once object, so any reader
 *                  can check an object against its own key.
 *   wrap/unwrap    scrypt-derived key encrypting the master key under a recovery passphrase.
 *   deriveKey      HKDF-SHA256, for per-host keys from the master key.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';
import { BulwarkError } from '../errors.js';

const scrypt = promisify(scryptCb) as (pw: string | Buffer, salt: Buffer, keylen: number, opts: { N: number; r: number; p: number; maxmem: number }) => Promise<Buffer>;

export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
export const SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES;

/**
 * Random nonces, drawn from the CSPRNG 1,024 at a time: one call into OpenSSL's RNG per blob cost
 * 2.7 % of a 100,000-file backup. A pool buffer is never rewritten (a new one is drawn), so a
 * nonce handed out stays valid.
 */
let noncePool = Buffer.alloc(0);
let nonceAt = 0;
function nextNonce(): Buffer {
  if (nonceAt + NONCE_BYTES > noncePool.length) {
    noncePool = randomBytes(NONCE_BYTES * 1024);
    nonceAt = 0;
  }
  const n = noncePool.subarray(nonceAt, nonceAt + NONCE_BYTES);
  nonceAt += NONCE_BYTES;
  return n;
}

export function seal(key: Uint8Array, plaintext: Uint8Array, aad?: Uint8Array): Buffer {
  return Buffer.concat(sealParts(key, [plaintext], aad));
}

/**
 * seal() of the concatenation of `parts`, returned as pieces (nonce, ciphertexts, tag) whose
 * concatenation is the sealed bytes: the plaintext is never joined and the ciphertext never copied,
 * so a pack builder can copy each byte once, into the pack.
 */
export function sealParts(key: Uint8Array, parts: readonly Uint8Array[], aad?: Uint8Array): Buffer[] {
  const nonce = nextNonce();
  const c = createCipheriv('aes-256-gcm', key, nonce);
  if (aad) c.setAAD(aad);
  const out: Buffer[] = [nonce];
  for (const p of parts) out.push(c.update(p));
  const tail = c.final(); // empty for GCM; kept for form
  if (tail.length > 0) out.push(tail);
  out.push(c.getAuthTag());
  return out;
}

/** Decrypt and authenticate; CHECKSUM_MISMATCH when the bytes or the associated data were altered. */
export function open(key: Uint8Array, sealed: Uint8Array, aad?: Uint8Array): Buffer {
  if (sealed.length < SEAL_OVERHEAD) throw new BulwarkError('CHECKSUM_MISMATCH', `sealed data too short (${sealed.length} bytes)`);
  const nonce = sealed.subarray(0, NONCE_BYTES);
  const tag = sealed.subarray(sealed.length - TAG_BYTES);
  const d = createDecipheriv('aes-256-gcm', key, nonce);
  if (aad) d.setAAD(aad);
  d.setAuthTag(tag);
  try {
    const body = d.update(sealed.subarray(NONCE_BYTES, sealed.length - TAG_BYTES));
    const tail = d.final(); // empty for GCM: no copy of the plaintext
    return tail.length === 0 ? body : Buffer.concat([body, tail]);
  } catch (err) {
    throw new BulwarkError('CHECKSUM_MISMATCH', 'authentication failed: the data was altered or the key is wrong', { cause: err });
  }
}

export function blobId(idKey: Uint8Array, plaintext: Uint8Array): Buffer {
  return createHmac('sha256', idKey).update(plaintext).digest();
}

export function contentId(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export function hmac(key: Uint8Array, data: Uint8Array | string): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

export function deriveKey(master: Uint8Array, info: string, length = 32): Buffer {
  return Buffer.from(hkdfSync('sha256', master, Buffer.alloc(0), info, length));
}

/** scrypt parameters: N=2^15, r=8, p=1 is about 32 MiB and ~100 ms here, restic's choice too. */
export interface KdfParams {
  N: number;
  r: number;
  p: number;
  salt: string; // base64
}

export function newKdfParams(): KdfParams {
  return { N: 2 ** 15, r: 8, p: 1, salt: randomBytes(32).toString('base64') };
}

export async function passphraseKey(passphrase: string, kdf: KdfParams): Promise<Buffer> {
  if (passphrase.length === 0) throw new BulwarkError('INVALID_ARGUMENT', 'the recovery passphrase must not be empty');
  return scrypt(passphrase.normalize('NFC'), Buffer.from(kdf.salt, 'base64'), 32, { N: kdf.N, r: kdf.r, p: kdf.p, maxmem: 256 * kdf.N * kdf.r + 1024 * 1024 });
}
