/**
 * The lock planner: the look-ahead that keeps every restore point immutable (docs/design.md,
 * "Immutability invariant").
 *
 * For a snapshot S with expiry e(S), every object S needs — its manifest, its packs, and the
 * repository's foundation objects (config, key files) — must carry a lock lasting until at least
 * e(S). Backups are incremental, so a new snapshot reuses packs uploaded long ago whose locks were
 * set for older snapshots. Before each backup (and on a periodic run) the planner computes for
 * every object its required-until:
 *
 *   required(O) = max( e(S) for every live snapshot S that needs O,
 *                      e(next) for every object in the newest snapshot of a host whose next
 *                      backup is scheduled: the next snapshot will most likely reuse them )
 *
 * and plans, for each object whose known lock ends earlier:
 *   extend     PutObjectRetention to required(O) + G (G, the lock generation, so that a pack
 *              reused by every backup needs an extension only once per G, as Veeam does), or
 *   reprotect  (packs only) when the target cannot extend, or when extending would keep a mostly
 *              dead pack locked: the host's next backup writes the data afresh (Retrospect's way).
 *
 * Known lock ends are lower bounds: the controller's ledger (what it extended), else the expiry of
 * the newest snapshot that contained the object — the agent refuses to commit a snapshot that
 * needs a pack locked for less than its expiry (agent/backup/backup.ts, lock check). A lower bound
 * can only cause an extension that turns out unneeded (the store then reports the longer lock).
 *
 * Pure: no I/O. The executor (lock-executor.ts) applies the plan and reports.
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
  /** Fraction of a pack still referenced, if known; packs under `deadThreshold` are re-protected. */
  liveFraction?: ReadonlyMap<string, number>;
  deadThreshold?: number;
}

export type LockAction =
  | { kind: 'extend'; key: string; from: number | undefined; to: number; reason: string }
  | { kind: 'reprotect'; key: string; hostId: string; from: number | undefined; requiredUntil: number; reason: string };

export interface LockPlan {
  actions: LockAction[];
  /** Per object: required-until. */
  required: Map<string, number>;
  /** Per host: until when its newest snapshot stays immutable once the plan is applied. */
  horizon: Map<string, number>;
}

/** Who needs each object, and until when. */
export function requiredUntil(input: Pick<PlanInput, 'snapshots' | 'foundationKeys' | 'nextExpiry'>): Map<string, number> {
  const req = new Map<string, number>();
  const need = (key: string, until: number) => {
    const cur = req.get(key);
    if (cur === undefined || until > cur) req.set(key, until);
  };
  const newest = new Map<string, PlannedSnapshot>();
  let latestExpiry = 0;
  for (const s of input.snapshots) {
    need(s.manifestKey, s.expiresAt);
    for (const k of s.packKeys) need(k, s.expiresAt);
    latestExpiry = Math.max(latestExpiry, s.expiresAt);
    const n = newest.get(s.hostId);
    if (!n || s.expiresAt > n.expiresAt) newest.set(s.hostId, s);
  }
  for (const [host, s] of newest) {
    const next = input.nextExpiry.get(host);
    if (next === undefined) continue;
    for (const k of s.packKeys) need(k, next);
    latestExpiry = Math.max(latestExpiry, next);
  }
  for (const h of input.nextExpiry.values()) latestExpiry = Math.max(latestExpiry, h);
  if (latestExpiry > 0) for (const k of input.foundationKeys) need(k, latestExpiry);
  return req;
}

export function planLocks(input: PlanInput): LockPlan {
  const required = requiredUntil(input);
  const actions: LockAction[] = [];
  const hostOf = new Map<string, string>();
  for (const s of input.snapshots) for (const k of s.packKeys) hostOf.set(k, s.hostId);
  const threshold = input.deadThreshold ?? 0.2;
  const effective = new Map(input.knownLocks);
  for (const [key, until] of required) {
    const known = input.knownLocks.get(key);
    if (known !== undefined && known >= until) continue;
    const isPack = hostOf.has(key);
    const live = input.liveFraction?.get(key);
    if (isPack && (!input.canExtend || (live !== undefined && live < threshold))) {
      actions.push({
        kind: 'reprotect',
        key,
        hostId: hostOf.get(key)!,
        from: known,
        requiredUntil: until,
        reason: !input.canExtend ? 'the target cannot extend locks' : `only ${Math.round((live ?? 0) * 100)} % of the pack is still referenced`,
      });
      continue;
    }
    const to = until + input.generationMs;
    actions.push({ kind: 'extend', key, from: known, to, reason: known === undefined ? 'lock unknown' : `lock ends ${new Date(known).toISOString()}, needed until ${new Date(until).toISOString()}` });
    effective.set(key, to);
  }
  // Protection horizon: the newest snapshot of each host is immutable until the earliest lock end
  // among the objects it needs (after the extensions planned here).
  const horizon = new Map<string, number>();
  const newest = new Map<string, PlannedSnapshot>();
  for (const s of input.snapshots) {
    const n = newest.get(s.hostId);
    if (!n || s.expiresAt > n.expiresAt) newest.set(s.hostId, s);
  }
  for (const [host, s] of newest) {
    let h = Infinity;
    for (const k of [s.manifestKey, ...s.packKeys, ...input.foundationKeys]) h = Math.min(h, effective.get(k) ?? 0);
    horizon.set(host, h === Infinity ? 0 : h);
  }
  return { actions, required, horizon };
}

/** The lock generation for a retention: about 10 % of it, at most 30 days (as Veeam). */
export function lockGeneration(retentionMs: number): number {
  return Math.min(Math.round(retentionMs / 10), 30 * 86_400_000);
}
