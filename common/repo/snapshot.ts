/**
 * Snapshot manifests: what a restore point is. Encrypted with the host's key and stored at
 * hosts/<host>/snapshots/<SHA-256 of the stored bytes>. It names everything a restore needs: the
 * root tree of each protected path and every pack holding a blob reachable from them. The lock
 * planner and the audit work from `packs`; times a client claims are informational only — the
 * controller records its own (grooming trusts those, never these).
 */
import { BulwarkError } from '../errors.js';
import { open, seal } from './crypto.js';
import type { HostKeys } from './keys.js';

export interface SnapshotStats {
  files: number;
  dirs: number;
  symlinks: number;
  /** Bytes of all files in the snapshot. */
  bytes: number;
  /** Files read this time (changed, new, or re-protected). */
  filesRead: number;
  /** Bytes stored this time, after dedup and compression. */
  bytesUploaded: number;
  packsWritten: number;
  /** Files skipped by the per-item error policy. */
  skipped: number;
}

export interface SnapshotManifest {
  version: 1;
  hostId: string;
  hostname: string;
  /** Protected roots (absolute paths), their trees, and the root directory's own metadata. */
  roots: Array<{ path: string; tree: string; meta?: { mode: number; uid: number; gid: number; mtimeNs: string } }>;
  startedAt: number;
  finishedAt: number;
  /** Retention end the policy gives this snapshot, as planned by the controller. */
  expiresAt: number;
  lock: { mode: 'COMPLIANCE' | 'GOVERNANCE'; retainUntil: number };
  parent?: string;
  /** Every pack this snapshot needs, sorted. */
  packs: string[];
  /** Index objects written for the packs this snapshot added (a cache; see blob-index.ts). */
  indexes: string[];
  stats: SnapshotStats;
  policy?: string;
  jobId?: string;
}

const AAD = Buffer.from('bulwark/v1/snapshot');

export function encodeSnapshot(keys: HostKeys, m: SnapshotManifest): Buffer {
  return seal(keys.enc, Buffer.from(JSON.stringify(m)), AAD);
}

export function decodeSnapshot(keys: HostKeys, stored: Uint8Array): SnapshotManifest {
  const m = JSON.parse(open(keys.enc, stored, AAD).toString('utf8')) as SnapshotManifest;
  if (m.version !== 1 || m.hostId !== keys.hostId || !Array.isArray(m.roots) || !Array.isArray(m.packs)) {
    throw new BulwarkError('CHECKSUM_MISMATCH', 'not a snapshot manifest of this host');
  }
  return m;
}
