/**
 * The controller's work on the bucket, with the maintainer credential: look-ahead lock extension
 * before backups, recording committed snapshots, grooming, auditing, catalog checkpoints and the
 * rebuild of the catalog from the bucket alone.
 */
import { BulwarkError, hasCode } from '../common/errors.js';
import { deriveKey, open, seal } from '../common/repo/crypto.js';
import { layout } from '../common/repo/layout.js';
import type { Repository } from '../common/repo/repository.js';
import type { SnapshotManifest } from '../common/repo/snapshot.js';
import { readVerified } from '../common/repo/verified-read.js';
import { Semaphore } from '../common/storage/wrappers.js';
import { type AuditReport, audit } from './auditor.js';
import { Catalog, type PolicyRecord, type SnapshotRecord, type TargetRecord } from './catalog.js';
import { type GroomReport, type GroomSnapshot, groom, selectExpired } from './groomer.js';
import { type LockPlan, horizons, lockGeneration, planLocks } from './lock-planner.js';
import { type LivenessProvider, type Measured, measureLapsing } from './protection.js';

const toPlanned = (s: SnapshotRecord) => ({
  id: s.id,
  hostId: s.hostId,
  expiresAt: s.expiresAt,
  manifestKey: layout.snapshot(s.hostId, s.id),
  packKeys: s.packs.map((p) => layout.pack(s.hostId, p)),
});

export function foundationKeys(repo: Repository): string[] {
  return [...new Set(repo.foundation.map((f) => f.key))];
}

export interface ExtendReport {
  plan: LockPlan;
  extended: number;
  alreadyLonger: number;
  failed: Array<{ key: string; reason: string }>;
  reprotect: Map<string, string[]>;
  /** Each extension that went through or found a longer lock, with the object's size. */
  applied: Array<{ key: string; size: number; result: 'extended' | 'already-longer' }>;
  /** Per host: until when its newest snapshot stays immutable, from the locks known after applying. */
  horizon: Map<string, number>;
  /** Liveness of the packs whose decision depended on it (protection.ts). */
  measured: Measured;
}

export interface ProtectAheadOptions {
  /** Measures pack liveness; without it every lapsing pack is extended. */
  liveness?: LivenessProvider;
  /** lock-planner.ts DEFAULT_REPROTECT_BELOW. */
  reprotectBelow?: number;
}

/**
 * Plan and apply the look-ahead for the snapshots of `target` in the catalog; `nextExpiry` gives the
 * expiry of each host's next snapshot (the backup about to be dispatched, or the next scheduled).
 */
export async function protectAhead(catalog: Catalog, target: TargetRecord, repo: Repository, nextExpiry: Map<string, number>, now: number, retentionMs: number, hostId?: string, o: ProtectAheadOptions = {}): Promise<ExtendReport> {
  // before one host's backup only that host's snapshots matter (plus the foundation); the
  // periodic run covers the fleet
  const live = (await catalog.snapshotsOf(hostId)).filter((s) => s.target === target.name && s.expiresAt > now);
  const keys = [...foundationKeys(repo), ...live.flatMap((s) => [layout.snapshot(s.hostId, s.id), ...s.packs.map((p) => layout.pack(s.hostId, p))])];
  const knownLocks = new Map<string, number>();
  const values = await catalog.locks.getMany(keys);
  keys.forEach((k, i) => {
    const v = values[i];
    if (v !== undefined) knownLocks.set(k, v);
  });
  const input = {
    now,
    snapshots: live.map(toPlanned),
    foundationKeys: foundationKeys(repo),
    knownLocks,
    nextExpiry,
    generationMs: lockGeneration(retentionMs),
    canExtend: target.canExtend,
  };
  // liveness only where it decides: packs only the next snapshot needs beyond their lock
  const measured = await measureLapsing(input, live, o.liveness);
  const plan = planLocks({ ...input, liveFraction: measured.fraction, ...(o.reprotectBelow !== undefined ? { reprotectBelow: o.reprotectBelow } : {}) });
  const report: ExtendReport = { plan, extended: 0, alreadyLonger: 0, failed: [], reprotect: new Map(), applied: [], horizon: new Map(), measured };
  const locksAfter = new Map(knownLocks);
  const store = repo.store;
  for (const a of plan.actions) {
    if (a.kind === 'reprotect') {
      const list = report.reprotect.get(a.hostId) ?? [];
      list.push(a.key.slice(a.key.lastIndexOf('/') + 1));
      report.reprotect.set(a.hostId, list);
      continue;
    }
    try {
      // The genuine version of a write-once object is its oldest; later versions can only be an
      // attacker's overwrites, which must not be the ones kept alive.
      let oldest: { versionId: string; lastModified: number } | undefined;
      for await (const v of store.listVersions(a.key)) {
        if (v.key !== a.key || v.isDeleteMarker) continue;
        if (!oldest || v.lastModified <= oldest.lastModified) oldest = v;
      }
      if (!oldest) throw new BulwarkError('NOT_FOUND', 'no version');
      const mode = (await store.head(a.key, { versionId: oldest.versionId })).lock?.mode ?? 'COMPLIANCE';
      let result: 'extended' | 'already-longer' = 'extended';
      try {
        await store.extendRetention(a.key, oldest.versionId, { mode, retainUntil: a.to });
        report.extended++;
      } catch (err) {
        if (!hasCode(err, 'OBJECT_LOCKED')) throw err;
        report.alreadyLonger++; // our lower bound was low: the lock already lasts longer
        result = 'already-longer';
      }
      const h = await store.head(a.key, { versionId: oldest.versionId });
      await catalog.locks.put(a.key, h.lock?.retainUntil ?? a.to);
      locksAfter.set(a.key, h.lock?.retainUntil ?? a.to);
      report.applied.push({ key: a.key, size: h.size, result });
    } catch (err) {
      report.failed.push({ key: a.key, reason: err instanceof Error ? err.message : String(err) });
    }
  }
  report.horizon = horizons(input.snapshots, input.foundationKeys, locksAfter);
  return report;
}

/** A catalog record from a manifest and the times and policy the controller vouches for. */
function snapshotRecord(id: string, target: TargetRecord, m: SnapshotManifest, vouched: Pick<SnapshotRecord, 'policy' | 'time' | 'expiresAt' | 'lockUntil'>): SnapshotRecord {
  return {
    id,
    hostId: m.hostId,
    target: target.name,
    ...vouched,
    roots: m.roots.map((r) => r.path),
    packs: m.packs,
    indexes: m.indexes,
    files: m.stats.files,
    bytes: m.stats.bytes,
    bytesUploaded: m.stats.bytesUploaded,
  };
}

/** Record a snapshot an agent committed: the manifest is read from the bucket, times are ours. */
export async function recordSnapshot(catalog: Catalog, target: TargetRecord, repo: Repository, hostId: string, snapshotId: string, job: { policy: string; expiresAt: number; lockUntil: number }, now: number): Promise<SnapshotRecord> {
  const m = await repo.host(hostId).loadSnapshot(snapshotId);
  if (m.hostId !== hostId) throw new BulwarkError('ACCESS_DENIED', `snapshot ${snapshotId} belongs to another host`);
  const rec = snapshotRecord(snapshotId, target, m, { policy: job.policy, time: now, expiresAt: job.expiresAt, lockUntil: job.lockUntil });
  await catalog.putSnapshot(rec);
  // the agent committed only after checking each pack is locked at least until the expiry. Packs
  // the catalog has never seen are (nearly always) the ones this backup uploaded, locked until the
  // job's lockUntil: their real lock is read, so the next look-ahead does not extend them for nothing
  const batch = catalog.locks.batch();
  const sem = new Semaphore(8);
  await Promise.all(
    m.packs.map((p) =>
      sem.run(async () => {
        const key = layout.pack(hostId, p);
        const cur = (await catalog.locks.get(key)) ?? 0;
        let until = job.expiresAt;
        if (cur === 0) until = Math.max(until, (await repo.store.head(key).catch(() => undefined))?.lock?.retainUntil ?? 0);
        if (until > cur) batch.put(key, until);
      }),
    ),
  );
  batch.put(layout.snapshot(hostId, snapshotId), job.lockUntil);
  await batch.write();
  return rec;
}

const toGroom = (s: SnapshotRecord): GroomSnapshot => ({ ...toPlanned(s), indexKeys: s.indexes.map((i) => layout.index(s.hostId, i)) });

export async function groomTarget(catalog: Catalog, target: TargetRecord, repo: Repository, now: number, o: { dryRun?: boolean; busyHosts?: ReadonlySet<string> } = {}): Promise<{ expired: SnapshotRecord[]; report: GroomReport }> {
  const all = (await catalog.snapshotsOf()).filter((s) => s.target === target.name);
  const { expired, live } = selectExpired(all, now);
  const report = await groom(repo.store, live.map(toGroom), { dryRun: o.dryRun ?? false, ...(o.busyHosts ? { protectedHosts: o.busyHosts } : {}) });
  if (!o.dryRun) {
    for (const s of expired) await catalog.deleteSnapshot(s);
    for (const d of report.deleted) await catalog.locks.del(d.key);
  }
  return { expired, report };
}

export async function auditTarget(catalog: Catalog, target: TargetRecord, repo: Repository): Promise<AuditReport> {
  const snaps = (await catalog.snapshotsOf()).filter((s) => s.target === target.name);
  return audit(repo.store, snaps.map((s) => ({ id: s.id, hostId: s.hostId, expiresAt: s.expiresAt, keys: [layout.snapshot(s.hostId, s.id), ...s.packs.map((p) => layout.pack(s.hostId, p))] })), { foundationKeys: foundationKeys(repo) });
}

interface Checkpoint {
  version: 1;
  seq: number;
  at: number;
  hosts: Array<{ id: string; hostname: string }>;
  /** Policies on this target (restored by rebuild onto the target it is run for). */
  policies?: PolicyRecord[];
  snapshots: Array<{ id: string; hostId: string; time: number; expiresAt: number; lockUntil: number; policy: string }>;
}

const CHECKPOINT_AAD = Buffer.from('bulwark/v1/catalog');

/** Write the catalog's snapshot list as a locked, encrypted checkpoint object in the bucket. */
export async function writeCheckpoint(catalog: Catalog, target: TargetRecord, repo: Repository, now: number, seq: number): Promise<void> {
  const snaps = (await catalog.snapshotsOf()).filter((s) => s.target === target.name);
  const hosts = (await catalog.all(catalog.hosts)).map((h) => ({ id: h.id, hostname: h.hostname }));
  const policies = (await catalog.all(catalog.policies)).filter((p) => p.target === target.name);
  const cp: Checkpoint = { version: 1, seq, at: now, hosts, policies, snapshots: snaps.map((s) => ({ id: s.id, hostId: s.hostId, time: s.time, expiresAt: s.expiresAt, lockUntil: s.lockUntil, policy: s.policy })) };
  const until = Math.max(now + 86_400_000, ...snaps.map((s) => s.lockUntil));
  const key = deriveKey(repo.masterKey, 'bulwark/v1/catalog');
  await repo.store.put(layout.catalog(seq), seal(key, Buffer.from(JSON.stringify(cp)), CHECKPOINT_AAD), { lock: { mode: 'COMPLIANCE', retainUntil: until } });
}

/**
 * Recreate hosts and snapshots from the bucket alone. Times and expiries come from the newest
 * genuine checkpoint (encrypted under the master key, so a forged one is ignored); a snapshot in
 * the bucket that no checkpoint lists (committed after the last checkpoint) takes the manifest's
 * own expiry — it was written by an agent holding the host's key, and its objects' locks last at
 * least that long.
 */
export async function rebuildCatalog(catalog: Catalog, target: TargetRecord, repo: Repository): Promise<{ hosts: number; snapshots: number; policies: number }> {
  const key = deriveKey(repo.masterKey, 'bulwark/v1/catalog');
  const cpKeys = new Set<string>();
  for await (const v of repo.store.listVersions(layout.catalogPrefix)) cpKeys.add(v.key);
  let best: Checkpoint | undefined;
  for (const k of [...cpKeys].sort().reverse()) {
    try {
      const { value } = await readVerified(repo.store, k, (b) => JSON.parse(open(key, b, CHECKPOINT_AAD).toString('utf8')) as Checkpoint);
      best = value;
      break;
    } catch {
      continue; // forged or damaged: try an older one
    }
  }
  const known = new Map((best?.snapshots ?? []).map((s) => [s.id, s]));
  let nPolicies = 0;
  for (const p of best?.policies ?? []) {
    if (await catalog.get(catalog.policies, p.name)) continue;
    await catalog.policies.put(p.name, { ...p, target: target.name });
    nPolicies++;
  }
  let nHosts = 0;
  let nSnaps = 0;
  for (const hostId of await repo.hosts()) {
    const host = repo.host(hostId);
    const snaps = await host.loadSnapshots();
    if (snaps.length === 0) continue;
    nHosts++;
    const name = best?.hosts.find((h) => h.id === hostId)?.hostname ?? snaps.at(-1)!.manifest.hostname;
    const existing = await catalog.get(catalog.hosts, hostId);
    if (!existing) await catalog.hosts.put(hostId, { id: hostId, hostname: name, enrolledAt: 0, certFingerprint: '', revoked: false, lastSeen: 0 });
    for (const { id, manifest: m } of snaps) {
      const cp = known.get(id);
      const rec = snapshotRecord(id, target, m, {
        policy: cp?.policy ?? m.policy ?? '',
        time: cp?.time ?? m.finishedAt,
        expiresAt: cp?.expiresAt ?? m.expiresAt,
        lockUntil: cp?.lockUntil ?? m.lock.retainUntil,
      });
      await catalog.putSnapshot(rec);
      nSnaps++;
    }
    const last = snaps.at(-1)!;
    const h = (await catalog.get(catalog.hosts, hostId))!;
    await catalog.hosts.put(hostId, { ...h, lastSnapshotId: last.id, lastBackup: known.get(last.id)?.time ?? last.manifest.finishedAt });
  }
  return { hosts: nHosts, snapshots: nSnaps, policies: nPolicies };
}

export { Catalog };
