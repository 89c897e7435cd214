/**
 * What the lock planner did, per host, kept in the catalog for the console (`bulwark protection`,
 * the horizon in `bulwark hosts`) rather than only in logs.
 *
 *   measureLapsing   before planning: liveness of the packs whose decision depends on it
 *                    (lock-planner.ts lapsingForNext), through the controller's measurer
 *   hostRuns         after applying: per host, packs and bytes extended, packs to re-protect with
 *                    their live and dead bytes, failures, the new protection horizon
 *   saveRuns         into the catalog (and the horizon into the host record); the newest request
 *                    to re-protect is kept across later runs until the backup's outcome is known
 *   saveOutcome      when that backup ends: which re-protected packs its snapshot no longer needs
 */
import { layout } from '../common/repo/layout.js';
import type { Catalog, JobRecord, ProtectionRecord, ProtectionRun, ReprotectRecord, SnapshotRecord } from './catalog.js';
import { type PlanInput, horizonOf, lapsingForNext } from './lock-planner.js';
import { type PackUse, liveFraction } from './liveness.js';

/** Measures the packs of a host's newest snapshot (controller.ts: liveness.ts with a memo). */
export type LivenessProvider = (hostId: string, newest: SnapshotRecord) => Promise<ReadonlyMap<string, PackUse>>;

export interface Measured {
  /** Pack key → live fraction. */
  fraction: Map<string, number>;
  /** Pack key → size and live bytes. */
  uses: Map<string, PackUse>;
  /** Per host: how many packs were measured, or why they could not be. */
  hosts: Map<string, { measured: number; error?: string }>;
}

export async function measureLapsing(input: Pick<PlanInput, 'snapshots' | 'foundationKeys' | 'nextExpiry' | 'knownLocks' | 'canExtend'>, live: readonly SnapshotRecord[], provider: LivenessProvider | undefined): Promise<Measured> {
  const out: Measured = { fraction: new Map(), uses: new Map(), hosts: new Map() };
  if (!provider) return out;
  for (const [hostId, keys] of lapsingForNext(input)) {
    const newest = live.filter((s) => s.hostId === hostId).reduce<SnapshotRecord | undefined>((a, s) => (!a || s.expiresAt > a.expiresAt ? s : a), undefined);
    if (!newest) continue;
    try {
      const uses = await provider(hostId, newest);
      let measured = 0;
      for (const key of keys) {
        const u = uses.get(idOf(key));
        if (!u) continue;
        out.uses.set(key, u);
        out.fraction.set(key, liveFraction(u));
        measured++;
      }
      out.hosts.set(hostId, { measured });
    } catch (err) {
      // not measured: its packs are extended, as without liveness (never less safe)
      out.hosts.set(hostId, { measured: 0, error: err instanceof Error ? err.message : String(err) });
    }
  }
  return out;
}

/** The parts of protectAhead's report (maintenance.ts ExtendReport) this module reads. */
export interface AppliedReport {
  plan: { actions: ReadonlyArray<{ kind: 'extend' | 'reprotect'; key: string }> };
  /** Extensions that went through ('extended') or found a longer lock ('already-longer'), with the object's size. */
  applied: ReadonlyArray<{ key: string; size: number; result: 'extended' | 'already-longer' }>;
  failed: ReadonlyArray<{ key: string }>;
  horizon: ReadonlyMap<string, number>;
  measured: Measured;
}

export function hostRuns(r: AppliedReport, hosts: Iterable<string>, o: Pick<ProtectionRun, 'at' | 'trigger' | 'target' | 'reprotectBelow'> & { jobId?: string }): Map<string, { run: ProtectionRun; reprotect: ReprotectRecord['packs'] }> {
  const out = new Map<string, { run: ProtectionRun; reprotect: ReprotectRecord['packs'] }>();
  const of = (hostId: string) => {
    let e = out.get(hostId);
    if (!e) {
      const m = r.measured.hosts.get(hostId);
      e = {
        run: {
          ...o,
          packsExtended: 0,
          bytesExtended: 0,
          manifestsExtended: 0,
          alreadyLonger: 0,
          failed: 0,
          packsReprotect: 0,
          bytesReupload: 0,
          bytesReleased: 0,
          horizon: r.horizon.get(hostId) ?? 0,
          packsMeasured: m?.measured ?? 0,
          ...(m?.error ? { livenessError: m.error } : {}),
        },
        reprotect: [],
      };
      out.set(hostId, e);
    }
    return e;
  };
  for (const h of hosts) of(h);
  for (const a of r.applied) {
    const h = hostOfKey(a.key);
    if (!h) continue; // foundation objects belong to no host
    const e = of(h).run;
    if (a.result === 'already-longer') e.alreadyLonger++;
    else if (isPack(a.key)) {
      e.packsExtended++;
      e.bytesExtended += a.size;
    } else e.manifestsExtended++;
  }
  for (const f of r.failed) {
    const h = hostOfKey(f.key);
    if (h) of(h).run.failed++;
  }
  for (const a of r.plan.actions) {
    if (a.kind !== 'reprotect') continue;
    const h = hostOfKey(a.key);
    if (!h) continue;
    const e = of(h);
    const u = r.measured.uses.get(a.key);
    e.run.packsReprotect++;
    if (u) {
      e.run.bytesReupload += u.live;
      e.run.bytesReleased += Math.max(0, u.size - u.live);
    }
    e.reprotect.push({ id: idOf(a.key), size: u?.size ?? 0, live: u ? liveFraction(u) : 0 });
  }
  return out;
}

/**
 * Store each host's run and its new horizon. A run before a backup that asks for re-protection
 * becomes the host's `reprotect` record; a periodic run's re-protections are done by the next
 * backup's own run, so they leave the previous record alone.
 */
export async function saveRuns(catalog: Catalog, runs: ReadonlyMap<string, { run: ProtectionRun; reprotect: ReprotectRecord['packs'] }>): Promise<void> {
  for (const [hostId, { run, reprotect }] of runs) {
    const prev = await catalog.get(catalog.protection, hostId);
    const rec: ProtectionRecord = { hostId, last: run, ...(prev?.reprotect ? { reprotect: prev.reprotect } : {}) };
    if (run.trigger === 'backup' && run.jobId && reprotect.length > 0) {
      rec.reprotect = { at: run.at, jobId: run.jobId, packs: reprotect, bytesReupload: run.bytesReupload, bytesReleased: run.bytesReleased, state: 'dispatched' };
    }
    await catalog.protection.put(hostId, rec);
    const h = await catalog.get(catalog.hosts, hostId);
    if (h && run.horizon > 0) await catalog.hosts.put(hostId, { ...h, horizon: run.horizon });
  }
}

/** The backup that carried a re-protection ended: record whether its snapshot dropped the packs. */
export async function saveOutcome(catalog: Catalog, job: JobRecord, snapshot: SnapshotRecord | undefined): Promise<void> {
  const rec = await catalog.get(catalog.protection, job.hostId);
  if (!rec?.reprotect || rec.reprotect.jobId !== job.id) return;
  const r: ReprotectRecord = { ...rec.reprotect, state: snapshot ? 'succeeded' : 'failed' };
  if (snapshot) {
    const needs = new Set(snapshot.packs);
    r.snapshotId = snapshot.id;
    r.packsDropped = r.packs.filter((p) => !needs.has(p.id)).length;
    r.bytesUploaded = snapshot.bytesUploaded;
  }
  await catalog.protection.put(job.hostId, { ...rec, reprotect: r });
}

/** The horizon of a snapshot just recorded: the earliest known lock among the objects it needs. */
export async function snapshotHorizon(catalog: Catalog, s: SnapshotRecord, foundationKeys: readonly string[]): Promise<number> {
  const keys = [layout.snapshot(s.hostId, s.id), ...s.packs.map((p) => layout.pack(s.hostId, p)), ...foundationKeys];
  const values = await catalog.locks.getMany(keys);
  const known = new Map<string, number>();
  keys.forEach((k, i) => {
    const v = values[i];
    if (v !== undefined) known.set(k, v);
  });
  return horizonOf(keys, known);
}

function hostOfKey(key: string): string | undefined {
  if (!key.startsWith(layout.hostsPrefix)) return undefined;
  return key.slice(layout.hostsPrefix.length).split('/')[0] || undefined;
}

function isPack(key: string): boolean {
  const h = hostOfKey(key);
  return h !== undefined && key.startsWith(layout.dataPrefix(h));
}

function idOf(key: string): string {
  return key.slice(key.lastIndexOf('/') + 1);
}
