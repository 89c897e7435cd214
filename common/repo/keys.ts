/**
 * Keys of a repository.
 *
 *   master key (32 random bytes)   held by the controller; escrowed in the bucket as keys/<id>,
 *                                  wrapped by a recovery passphrase (scrypt + AES-256-GCM).
 *   host keys                      derived from the master key with HKDF per host id:
 *                                  `enc` encrypts the host's blobs, pack headers, indexes and
 *                                  manifests; `id` keys the blob-id HMAC; `chunk` seeds the
 *                                  chunker's gear table. An agent receives its own host's keys
 *                                  only, over mTLS; HKDF is one-way, so they open nothing else.
 *   config MAC key                 derived from the master key; authenticates `config`.
 *
 * Deriving host keys rather than storing wrapped random ones means there is no per-host key object
 * to lose, hide or lock; the price is that a host's keys cannot be rotated without a new host id.
 */
import { randomBytes } from 'node:crypto';
import { BulwarkError } from '../errors.js';
import { type KdfParams, contentId, deriveKey, newKdfParams, open, passphraseKey, seal } from './crypto.js';

export interface HostKeys {
  hostId: string;
  enc: Buffer;
  id: Buffer;
  chunk: Buffer;
}

export function newMasterKey(): Buffer {
  return randomBytes(32);
}

export function deriveHostKeys(master: Uint8Array, hostId: string): HostKeys {
  return {
    hostId,
    enc: deriveKey(master, `bulwark/v1/host/${hostId}/enc`),
    id: deriveKey(master, `bulwark/v1/host/${hostId}/id`),
    chunk: deriveKey(master, `bulwark/v1/host/${hostId}/chunk`),
  };
}

export function configMacKey(master: Uint8Array): Buffer {
  return deriveKey(master, 'bulwark/v1/config-mac');
}

interface KeyFile {
  format: 'bulwark-key';
  version: 1;
  created: string;
  kdf: KdfParams;
  /** base64 of seal(passphraseKey, master, aad "bulwark/v1/master-key") */
  wrapped: string;
}

const KEY_AAD = Buffer.from('bulwark/v1/master-key');

/** Encode a key file; its object id is the SHA-256 of the returned bytes. */
export async function wrapMasterKey(master: Uint8Array, passphrase: string, kdf: KdfParams = newKdfParams()): Promise<{ id: string; bytes: Buffer }> {
  const k = await passphraseKey(passphrase, kdf);
  const file: KeyFile = {
    format: 'bulwark-key',
    version: 1,
    created: new Date().toISOString(),
    kdf,
    wrapped: seal(k, master, KEY_AAD).toString('base64'),
  };
  const bytes = Buffer.from(JSON.stringify(file));
  return { id: contentId(bytes), bytes };
}

export function parseKeyFile(bytes: Uint8Array): KeyFile {
  let f: KeyFile;
  try {
    f = JSON.parse(Buffer.from(bytes).toString('utf8')) as KeyFile;
  } catch (err) {
    throw new BulwarkError('BAD_REPOSITORY', 'key file is not valid JSON', { cause: err });
  }
  if (f.format !== 'bulwark-key' || f.version !== 1 || typeof f.wrapped !== 'string' || !f.kdf) {
    throw new BulwarkError('BAD_REPOSITORY', 'not a Bulwark key file');
  }
  return f;
}

/** Unwrap with a passphrase; WRONG_KEY when it is not this key's passphrase. */
export async function unwrapMasterKey(file: KeyFile, passphrase: string): Promise<Buffer> {
  const k = await passphraseKey(passphrase, file.kdf);
  try {
    return open(k, Buffer.from(file.wrapped, 'base64'), KEY_AAD);
  } catch (err) {
    throw new BulwarkError('WRONG_KEY', 'wrong recovery passphrase', { cause: err });
  }
}
