/**
 * Where each object lives in the bucket (one repository = bucket + optional prefix, handled by
 * the store). Every object but `config` is named by the SHA-256 of its stored bytes, so a reader
 * can check any object against its own key; `config` is authenticated by a MAC instead.
 *
 *   config                                   format version, repository id, chunker and pack sizes
 *   keys/<id>                                master key wrapped by the recovery passphrase (scrypt)
 *   hosts/<host>/data/<xx>/<pack-id>         packs: encrypted blobs + encrypted trailer header
 *   hosts/<host>/index/<index-id>            blob id → pack, offset, length (a cache of the headers)
 *   hosts/<host>/snapshots/<snapshot-id>     encrypted manifest
 *   catalog/<seq>                            controller checkpoints
 */
import { BulwarkError } from '../errors.js';

const HEX64 = /^[0-9a-f]{64}$/;
const HOST = /^[a-z0-9][a-z0-9._-]{0,62}$/;

export function assertContentId(id: string, what = 'object id'): void {
  if (!HEX64.test(id)) throw new BulwarkError('INVALID_ARGUMENT', `${JSON.stringify(id)} is not a valid ${what} (64 hex digits)`);
}

export function assertHostId(host: string): void {
  if (!HOST.test(host)) {
    throw new BulwarkError('INVALID_ARGUMENT', `${JSON.stringify(host)} is not a valid host id: use 1-63 of a-z 0-9 . _ - starting with a letter or digit`);
  }
}

export const layout = {
  config: 'config',
  keysPrefix: 'keys/',
  key: (id: string) => `keys/${id}`,
  hostsPrefix: 'hosts/',
  hostPrefix: (host: string) => `hosts/${host}/`,
  dataPrefix: (host: string) => `hosts/${host}/data/`,
  pack: (host: string, id: string) => `hosts/${host}/data/${id.slice(0, 2)}/${id}`,
  indexPrefix: (host: string) => `hosts/${host}/index/`,
  index: (host: string, id: string) => `hosts/${host}/index/${id}`,
  snapshotsPrefix: (host: string) => `hosts/${host}/snapshots/`,
  snapshot: (host: string, id: string) => `hosts/${host}/snapshots/${id}`,
  catalogPrefix: 'catalog/',
  catalog: (seq: number) => `catalog/${seq.toString().padStart(15, '0')}`,
};

/** The last path segment of a key: the object's id. */
export function idOfKey(key: string): string {
  return key.slice(key.lastIndexOf('/') + 1);
}
