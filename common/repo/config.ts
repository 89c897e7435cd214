/**
 * The repository config object: format version, repository id and the parameters every writer
 * must agree on (chunker sizes, pack size). Written once at `config` with a lock; authenticated
 * by an HMAC under a key derived from the master key, so a garbage or forged overwrite is
 * recognised and the genuine version found among the key's versions (verified-read.ts).
 */
import { randomBytes } from 'node:crypto';
import { BulwarkError } from '../errors.js';
import { equalBytes, hmac } from './crypto.js';

export interface ChunkerSizes {
  minSize: number;
  avgSize: number;
  maxSize: number;
}

export interface RepoConfig {
  format: 'bulwark-repo';
  version: 1;
  repoId: string;
  created: string;
  chunker: ChunkerSizes;
  /** Packs are closed once they reach this size. */
  packSize: number;
}

export function newRepoConfig(over: Partial<Pick<RepoConfig, 'chunker' | 'packSize'>> = {}): RepoConfig {
  return {
    format: 'bulwark-repo',
    version: 1,
    repoId: randomBytes(16).toString('hex'),
    created: new Date().toISOString(),
    // ~1 MiB average chunks: dedup granularity vs. per-chunk overhead (restic uses the same)
    chunker: over.chunker ?? { minSize: 512 * 1024, avgSize: 1024 * 1024, maxSize: 8 * 1024 * 1024 },
    // ~16 MiB packs: a million small files cost hundreds of PUTs and lock extensions, not a
    // million, and stay far below the single-PUT limit (no multipart: RGW drops its lock headers)
    packSize: over.packSize ?? 16 * 1024 * 1024,
  };
}

function canonical(cfg: RepoConfig): string {
  return JSON.stringify({
    format: cfg.format,
    version: cfg.version,
    repoId: cfg.repoId,
    created: cfg.created,
    chunker: { minSize: cfg.chunker.minSize, avgSize: cfg.chunker.avgSize, maxSize: cfg.chunker.maxSize },
    packSize: cfg.packSize,
  });
}

export function encodeConfig(cfg: RepoConfig, macKey: Uint8Array): Buffer {
  const body = canonical(cfg);
  return Buffer.from(JSON.stringify({ config: JSON.parse(body), mac: hmac(macKey, body).toString('hex') }));
}

/** Parse and authenticate; throws CHECKSUM_MISMATCH for a config this master key did not write. */
export function decodeConfig(bytes: Uint8Array, macKey: Uint8Array): RepoConfig {
  let parsed: { config: RepoConfig; mac: string };
  try {
    parsed = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    throw new BulwarkError('CHECKSUM_MISMATCH', 'config is not valid JSON', { cause: err });
  }
  const cfg = parsed?.config;
  if (!cfg || cfg.format !== 'bulwark-repo' || typeof parsed.mac !== 'string') throw new BulwarkError('CHECKSUM_MISMATCH', 'not a Bulwark config');
  if (cfg.version !== 1) throw new BulwarkError('BAD_REPOSITORY', `repository format version ${cfg.version} is newer than this Bulwark understands; upgrade Bulwark`);
  if (!equalBytes(hmac(macKey, canonical(cfg)), Buffer.from(parsed.mac, 'hex'))) {
    throw new BulwarkError('CHECKSUM_MISMATCH', 'config MAC does not match (forged, damaged, or another repository\'s key)');
  }
  return cfg;
}
