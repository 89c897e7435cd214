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
 *   protection host id → ProtectionRecord: what the lock planner did for the host on its last run
 *   trees      `${host}\0${tree id}` → the tree's subtree and file blob ids (liveness.ts cache;
 *              only the trees of each host's newest snapshot are kept)
 */
import { Level } from 'level';
import type { AbstractSublevel } from 'abstract-level';
import { BulwarkError } from '../common/errors.js';
import type { TreeShape, TreeShapeCache } from './liveness.js';

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

/** What the lock planner did for one host on one run (lock-planner.ts, maintenance.ts protectAhead). */
export interface ProtectionRun {
  /** Controller time of the run. */
  at: number;
  /** 'backup': the look-ahead before a dispatched backup; 'periodic': the maintenance run. */
  trigger: 'backup' | 'periodic';
  target: string;
  /** The backup job the run preceded. */
  jobId?: string;
  /** Packs whose locks were extended, and their stored size. */
  packsExtended: number;
  bytesExtended: number;
  /** Snapshot manifests extended. */
  manifestsExtended: number;
  /** Extensions the store refused because the lock already lasted longer (a low lower bound). */
  alreadyLonger: number;
  failed: number;
  /** Mostly dead packs not extended for the next snapshot: the backup re-protects them. */
  packsReprotect: number;
  /** Their live bytes (uploaded again by the backup) and dead bytes (no longer kept locked). */
  bytesReupload: number;
  bytesReleased: number;
  /** The live fraction below which packs are re-protected. */
  reprotectBelow: number;
  /** Until when the host's newest snapshot stays immutable after the run (0: no snapshot). */
  horizon: number;
  /** Packs whose liveness was measured (0: none lapsed, or not measured). */
  packsMeasured: number;
  /** Why liveness could not be measured (the packs were then extended). */
  livenessError?: string;
}

/** The newest run that asked the host's backup to re-protect packs, and how that backup went. */
export interface ReprotectRecord {
  at: number;
  jobId: string;
  /** Pack ids, with their live fraction. */
  packs: Array<{ id: string; size: number; live: number }>;
  bytesReupload: number;
  bytesReleased: number;
  state: 'dispatched' | 'succeeded' | 'failed';
  snapshotId?: string;
  /** Of `packs`, how many the new snapshot no longer needs. */
  packsDropped?: number;
  /** What that backup uploaded in all (re-protected data and new changes). */
  bytesUploaded?: number;
}

export interface ProtectionRecord {
  hostId: string;
  last: ProtectionRun;
  reprotect?: ReprotectRecord;
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
  readonly protection: Sub<ProtectionRecord>;
  readonly trees: Sub<{ d: string[]; b: string[] }>;

  private constructor(readonly db: Level<string, unknown>) {
    const sub = <V>(name: string) => db.sublevel<string, V>(name, { valueEncoding: 'json' });
    this.targets = sub('targets');
    this.policies = sub('policies');
    this.hosts = sub('hosts');
    this.tokens = sub('tokens');
    this.snapshots = sub('snapshots');
    this.jobs = sub('jobs');
    this.locks = sub('locks');
    this.protection = sub('protection');
    this.trees = sub('trees');
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

  /** The liveness walk's tree cache (liveness.ts), in the `trees` sublevel. */
  treeShapeCache(): TreeShapeCache {
    const key = (host: string, tree: string) => `${host}\0${tree}`;
    return {
      get: async (host, tree) => {
        const v = await this.trees.get(key(host, tree));
        return v ? { dirs: v.d, blobs: v.b } : undefined;
      },
      putMany: async (host, entries: ReadonlyArray<readonly [string, TreeShape]>) => {
        const batch = this.trees.batch();
        for (const [tree, s] of entries) batch.put(key(host, tree), { d: s.dirs, b: s.blobs });
        await batch.write();
      },
      prune: async (host, keep) => {
        const batch = this.trees.batch();
        let n = 0;
        for await (const k of this.trees.keys({ gte: `${host}\0`, lt: `${host}\x01` })) {
          if (keep.has(k.slice(host.length + 1))) continue;
          batch.del(k);
          n++;
        }
        await batch.write();
        return n;
      },
    };
  }
}
