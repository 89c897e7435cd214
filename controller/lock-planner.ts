/**
 * The lock planner: the look-ahead that keeps every restore point immutable (docs/design.md,
 * "Immutability invariant").
 *
 * For a snapshot S with expiry e(S), every object S needs — its manifest, its packs, and the
 * repository's foundation objects (config, key files) — must carry a lock lasting until at least
 * e(S). Backups are incremental, so a new snapshot reuses packs uploaded long ago whose locks were
 * set for older snapshots. Before each backup (and on a periodic run) the planner computes for
 * every object two requirements:
 *
 *   snapshots(O) = max e(S) over the live snapshots S that need O (committed: cannot change)
 *   next(O)      = e(next) for every object in the newest snapshot of a host whose next backup is
 *                  scheduled: the next snapshot will most likely reuse them
 *   required(O)  = max(snapshots(O), next(O))
 *
 * and decides, for each object whose known lock ends before required(O) (decidePack):
 *   extend     PutObjectRetention to required(O) + G (G, the lock generation, so that a pack
 *              reused by every backup needs an extension only once per G, as Veeam does), or
 *   reprotect  (packs only) when the target cannot extend, or when the pack is mostly dead and
 *              only the next snapshot needs it beyond its lock: less than `reprotectBelow` of its
 *              bytes are still used by the host's newest snapshot (which the next backup builds
 *              on). The pack is then extended no further than the live snapshots need (exactly
 *              snapshots(O), when that is beyond its lock) and the host's next backup writes its
 *              live blobs afresh into new packs (Retrospect's way), so the dead bytes are not kept
 *              locked another generation.
 *
 * Known lock ends are lower bounds: the controller's ledger (what it extended), else the expiry of
 * the newest snapshot that contained the object — the agent refuses to commit a snapshot that
 * needs a pack locked for less than its expiry (agent/backup/backup.ts, lock check). A lower bound
 * can only cause an extension that turns out unneeded (the store then reports the longer lock).
 *
 * Pure: no I/O. maintenance.ts (protectAhead) measures liveness (liveness.ts), applies the plan
 * and reports.
 */

export interface PlannedSnapshot {
  id: string;
  hostId: string;
  expiresAt: number;
  /** Key of the manifest object. */
  manifestKey: string;
  /** Keys of the packs it needs. */
  packKeys: string[];
}

export interface PlanInput {
  now: number;
  /** Live snapshots (not expired). */
  snapshots: PlannedSnapshot[];
  /** Objects every snapshot needs (config, key files). */
  foundationKeys: string[];
  /** Known lock end (a lower bound) per object key. */
  knownLocks: ReadonlyMap<string, number>;
  /** Expiry the next scheduled snapshot of each host will have (time of next run + retention). */
  nextExpiry: ReadonlyMap<string, number>;
  /** Lock generation G in ms. */
  generationMs: number;
  /** The target supports PutObjectRetention with the maintainer credential. */
  canExtend: boolean;
  /**
   * Per pack key: the fraction of its bytes the host's newest snapshot still uses (liveness.ts).
   * Packs not measured are extended.
   */
  liveFraction?: ReadonlyMap<string, number>;
  /** Re-protect instead of extending packs whose live fraction is below this (DEFAULT_REPROTECT_BELOW). */
  reprotectBelow?: number;
}

/**
 * The default for `reprotectBelow`: 0.5. Re-protecting a pack uploads its live bytes once more
 * (live × size) and frees its dead bytes ((1 − live) × size) once its current lock ends;
 * extending keeps all of it locked another generation, and every generation after that while the
 * live part stays in use. Below one half the dead bytes kept locked outweigh the bytes uploaded
 * again; above it the upload costs more than the space it frees. 0 turns re-protection off.
 */
export const DEFAULT_REPROTECT_BELOW = 0.5;

export type LockAction =
  | { kind: 'extend'; key: string; from: number | undefined; to: number; reason: string }
  | { kind: 'reprotect'; key: string; hostId: string; from: number | undefined; requiredUntil: number; live?: number; reason: string };

export interface LockPlan {
  actions: LockAction[];
  /** Per object: required-until. */
  required: Map<string, number>;
  /** Per host: until when its newest snapshot stays immutable once the plan is applied. */
  horizon: Map<string, number>;
}

/** Until when an object is needed: by committed live snapshots, and by the next ones (0: not). */
export interface Requirement {
  snapshots: number;
  next: number;
}

/** Who needs each object, and until when. */
export function requirements(input: Pick<PlanInput, 'snapshots' | 'foundationKeys' | 'nextExpiry'>): Map<string, Requirement> {
  const req = new Map<string, Requirement>();
  const need = (key: string, until: number, by: keyof Requirement) => {
    const cur = req.get(key);
    if (!cur) req.set(key, { snapshots: 0, next: 0, [by]: until });
    else if (until > cur[by]) cur[by] = until;
  };
  const newest = newestByHost(input.snapshots);
  let latestSnap = 0;
  let latestNext = 0;
  for (const s of input.snapshots) {
    need(s.manifestKey, s.expiresAt, 'snapshots');
    for (const k of s.packKeys) need(k, s.expiresAt, 'snapshots');
    latestSnap = Math.max(latestSnap, s.expiresAt);
  }
  for (const [host, s] of newest) {
    const next = input.nextExpiry.get(host);
    if (next === undefined) continue;
    for (const k of s.packKeys) need(k, next, 'next');
  }
  for (const h of input.nextExpiry.values()) latestNext = Math.max(latestNext, h);
  for (const k of input.foundationKeys) {
    if (latestSnap > 0) need(k, latestSnap, 'snapshots');
    if (latestNext > 0) need(k, latestNext, 'next');
  }
  return req;
}

export function requiredUntil(input: Pick<PlanInput, 'snapshots' | 'foundationKeys' | 'nextExpiry'>): Map<string, number> {
  return new Map([...requirements(input)].map(([k, r]) => [k, Math.max(r.snapshots, r.next)]));
}

export interface PackFacts {
  /** Known lock end (a lower bound), if any. */
  known: number | undefined;
  requirement: Requirement;
  /** Fraction of the pack the host's newest snapshot still uses; undefined: not measured. */
  live: number | undefined;
}

export type PackDecision =
  | { kind: 'keep' }
  | { kind: 'extend'; to: number; reason: string }
  /** `extendTo`: extend first to exactly this (what committed snapshots need), no further. */
  | { kind: 'reprotect'; extendTo?: number; reason: string };

/**
 * The decision for one pack (see the module comment). A snapshot already committed cannot
 * change, so what live snapshots need is always covered when the target can extend; only the
 * look-ahead for the next snapshot is traded for re-protection.
 */
export function decidePack(f: PackFacts, o: { canExtend: boolean; generationMs: number; reprotectBelow: number }): PackDecision {
  const { snapshots, next } = f.requirement;
  const required = Math.max(snapshots, next);
  if (f.known !== undefined && f.known >= required) return { kind: 'keep' };
  if (!o.canExtend) return { kind: 'reprotect', reason: 'the target cannot extend locks' };
  if (next > snapshots && f.live !== undefined && f.live < o.reprotectBelow) {
    const reason = `only ${pct(f.live)} of the pack is still used by the newest snapshot (below ${pct(o.reprotectBelow)}): the next backup writes that data afresh`;
    return f.known === undefined || f.known < snapshots ? { kind: 'reprotect', extendTo: snapshots, reason } : { kind: 'reprotect', reason };
  }
  return { kind: 'extend', to: required + o.generationMs, reason: f.known === undefined ? 'lock unknown' : `lock ends ${new Date(f.known).toISOString()}, needed until ${new Date(required).toISOString()}` };
}

/**
 * Per host: the packs of its newest snapshot whose decision depends on liveness — the next
 * snapshot needs them beyond their known lock and beyond what the live snapshots need. The
 * controller measures liveness only for hosts that have some (liveness.ts walks the host's trees).
 */
export function lapsingForNext(input: Pick<PlanInput, 'snapshots' | 'foundationKeys' | 'nextExpiry' | 'knownLocks' | 'canExtend'>): Map<string, string[]> {
  const out = new Map<string, string[]>();
  if (!input.canExtend) return out;
  const req = requirements(input);
  for (const [host, s] of newestByHost(input.snapshots)) {
    const list: string[] = [];
    for (const k of s.packKeys) {
      const r = req.get(k)!;
      const known = input.knownLocks.get(k) ?? 0;
      if (r.next > r.snapshots && r.next > known) list.push(k);
    }
    if (list.length) out.set(host, list);
  }
  return out;
}

export function planLocks(input: PlanInput): LockPlan {
  const req = requirements(input);
  const required = new Map([...req].map(([k, r]) => [k, Math.max(r.snapshots, r.next)]));
  const actions: LockAction[] = [];
  const hostOf = new Map<string, string>();
  for (const s of input.snapshots) for (const k of s.packKeys) hostOf.set(k, s.hostId);
  const reprotectBelow = input.reprotectBelow ?? DEFAULT_REPROTECT_BELOW;
  const effective = new Map(input.knownLocks);
  for (const [key, r] of req) {
    const known = input.knownLocks.get(key);
    const until = Math.max(r.snapshots, r.next);
    if (known !== undefined && known >= until) continue;
    if (!hostOf.has(key)) {
      // manifests and foundation objects: always extended
      const to = until + input.generationMs;
      actions.push({ kind: 'extend', key, from: known, to, reason: known === undefined ? 'lock unknown' : `lock ends ${new Date(known).toISOString()}, needed until ${new Date(until).toISOString()}` });
      effective.set(key, to);
      continue;
    }
    const live = input.liveFraction?.get(key);
    const d = decidePack({ known, requirement: r, live }, { canExtend: input.canExtend, generationMs: input.generationMs, reprotectBelow });
    if (d.kind === 'extend') {
      actions.push({ kind: 'extend', key, from: known, to: d.to, reason: d.reason });
      effective.set(key, d.to);
    } else if (d.kind === 'reprotect') {
      if (d.extendTo !== undefined) {
        actions.push({ kind: 'extend', key, from: known, to: d.extendTo, reason: `needed by live snapshots until ${new Date(d.extendTo).toISOString()} (not beyond: re-protected)` });
        effective.set(key, d.extendTo);
      }
      actions.push({ kind: 'reprotect', key, hostId: hostOf.get(key)!, from: known, requiredUntil: until, ...(live !== undefined ? { live } : {}), reason: d.reason });
    }
  }
  return { actions, required, horizon: horizons(input.snapshots, input.foundationKeys, effective) };
}

/**
 * Protection horizon: the newest snapshot of each host is immutable until the earliest lock end
 * among the objects it needs.
 */
export function horizons(snapshots: readonly PlannedSnapshot[], foundationKeys: readonly string[], locks: ReadonlyMap<string, number>): Map<string, number> {
  const out = new Map<string, number>();
  for (const [host, s] of newestByHost(snapshots)) out.set(host, horizonOf([s.manifestKey, ...s.packKeys, ...foundationKeys], locks));
  return out;
}

/** The earliest known lock end among `keys` (0 when one is unknown): until when they all stay locked. */
export function horizonOf(keys: Iterable<string>, locks: ReadonlyMap<string, number>): number {
  let h = Infinity;
  for (const k of keys) h = Math.min(h, locks.get(k) ?? 0);
  return h === Infinity ? 0 : h;
}

/** The lock generation for a retention: about 10 % of it, at most 30 days (as Veeam). */
export function lockGeneration(retentionMs: number): number {
  return Math.min(Math.round(retentionMs / 10), 30 * 86_400_000);
}

function newestByHost(snapshots: readonly PlannedSnapshot[]): Map<string, PlannedSnapshot> {
  const newest = new Map<string, PlannedSnapshot>();
  for (const s of snapshots) {
    const n = newest.get(s.hostId);
    if (!n || s.expiresAt > n.expiresAt) newest.set(s.hostId, s);
  }
  return newest;
}

function pct(f: number): string {
  return `${Math.round(f * 100)} %`;
}
