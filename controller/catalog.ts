/**
 * The controller's catalog: an index in LevelDB (the controller's data dir) of what the bucket
 * holds and what the controller decided. The bucket stays the source of truth: `catalog rebuild`
 * recreates hosts and snapshots from it (rebuild.ts), with the times the controller recorded taken
 * from its locked checkpoints.
 *
 * Sublevels (one LevelDB, so a batch can span them):
 *   targets    name → TargetRecord (credentials and the master key: the data dir is 0700)
 *   policies   name → PolicyRecord
 *   hosts      id → HostRecord
 *   tokens     sha256(secret) → TokenRecord (secrets are never stored)
 *   snapshots  `${host}\0${time}\0${id}` → SnapshotRecord (so a host's snapshots list in time order)
 *   jobs       id → JobRecord
 *   locks      object key → known lock end (a lower bound; see lock-planner.ts)
 */
import { Level } from 'level';
import type { AbstractSublevel } from 'abstract-level';
import { BulwarkError } from '../common/errors.js';

export interface TargetRecord {
  name: string;
  endpoint?: string;
  region: string;
  bucket: string;
  prefix: string;
  agentAccessKeyId: string;
  agentSecretAccessKey: string;
  maintainerAccessKeyId: string;
  maintainerSecretAccessKey: string;
  /** base64 */
  masterKey: string;
  repoId: string;
  canExtend: boolean;
}

export interface PolicyRecord {
  name: string;
  target: string;
  hosts: string[];
  paths: string[];
  excludes: string[];
  /** `every <duration>` or a cron expression (schedule.ts). */
  schedule: string;
  retention: string;
  retentionMs: number;
  lockMode: 'COMPLIANCE' | 'GOVERNANCE';
}

export interface HostRecord {
  id: string;
  hostname: string;
  enrolledAt: number;
  certFingerprint: string;
  revoked: boolean;
  lastSeen: number;
  lastBackup?: number;
  lastSnapshotId?: string;
  horizon?: number;
}

export interface TokenRecord {
  expiresAt: number;
  used: boolean;
}

export interface SnapshotRecord {
  id: string;
  hostId: string;
  target: string;
  policy: string;
  /** Commit time, recorded by the controller. */
  time: number;
  /** Expiry by the policy, computed by the controller at dispatch. */
  expiresAt: number;
  lockUntil: number;
  roots: string[];
  packs: string[];
  indexes: string[];
  files: number;
  bytes: number;
  bytesUploaded: number;
}

export type JobState = 'queued' | 'dispatched' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface JobRecord {
  id: string;
  hostId: string;
  kind: 'backup' | 'restore';
  state: JobState;
  created: number;
  updated: number;
  policy?: string;
  /** backup: the lock and expiry planned at dispatch */
  lockUntil?: number;
  expiresAt?: number;
  /** restore */
  restore?: { sourceHostId: string; snapshotId: string; paths: string[]; targetDir: string; overwrite: boolean };
  progress?: { filesDone: number; bytesDone: number; filesTotal: number; bytesTotal: number; bytesUploaded: number; currentPath: string; phase: string };
  error?: { code: string; message: string };
  snapshotId?: string;
  issues?: Array<{ path: string; reason: string }>;
}

type Sub<V> = AbstractSublevel<Level<string, unknown>, string | Buffer | Uint8Array, string, V>;

export class Catalog {
  readonly targets: Sub<TargetRecord>;
  readonly policies: Sub<PolicyRecord>;
  readonly hosts: Sub<HostRecord>;
  readonly tokens: Sub<TokenRecord>;
  readonly snapshots: Sub<SnapshotRecord>;
  readonly jobs: Sub<JobRecord>;
  readonly locks: Sub<number>;

  private constructor(readonly db: Level<string, unknown>) {
    const sub = <V>(name: string) => db.sublevel<string, V>(name, { valueEncoding: 'json' });
    this.targets = sub('targets');
    this.policies = sub('policies');
    this.hosts = sub('hosts');
    this.tokens = sub('tokens');
    this.snapshots = sub('snapshots');
    this.jobs = sub('jobs');
    this.locks = sub('locks');
  }

  static async open(dir: string): Promise<Catalog> {
    const db = new Level<string, unknown>(dir, { valueEncoding: 'json' });
    try {
      await db.open();
    } catch (err) {
      throw new BulwarkError('INVALID_ARGUMENT', `cannot open the catalog in ${dir}: ${(err as Error).message} (is another controller running on this data dir?)`, { cause: err });
    }
    return new Catalog(db);
  }

  async close(): Promise<void> {
    await this.db.close();
  }

  static snapshotKey(s: Pick<SnapshotRecord, 'hostId' | 'time' | 'id'>): string {
    return `${s.hostId}\0${String(s.time).padStart(15, '0')}\0${s.id}`;
  }

  async all<V>(sub: Sub<V>, opts: { gte?: string; lt?: string } = {}): Promise<V[]> {
    const out: V[] = [];
    for await (const v of sub.values(opts)) out.push(v);
    return out;
  }

  async snapshotsOf(hostId?: string): Promise<SnapshotRecord[]> {
    return hostId ? this.all(this.snapshots, { gte: `${hostId}\0`, lt: `${hostId}\x01` }) : this.all(this.snapshots);
  }

  async putSnapshot(s: SnapshotRecord): Promise<void> {
    await this.snapshots.put(Catalog.snapshotKey(s), s);
  }

  async deleteSnapshot(s: SnapshotRecord): Promise<void> {
    await this.snapshots.del(Catalog.snapshotKey(s));
  }

  async get<V>(sub: Sub<V>, key: string): Promise<V | undefined> {
    return (await sub.get(key)) ?? undefined;
  }
}
