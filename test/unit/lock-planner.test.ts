/**
 * The lock planner's decisions, as pure functions: when a lapsing pack is extended, when it is
 * re-protected instead (mostly dead, needed beyond its lock only by the next snapshot), and that
 * whatever it decides, every committed live snapshot stays covered until it expires.
 */
import { describe, expect, it } from 'vitest';
import { DEFAULT_REPROTECT_BELOW, type PlanInput, type PlannedSnapshot, decidePack, lapsingForNext, lockGeneration, planLocks } from '../../controller/lock-planner.js';

const H = 3_600_000;
const R = 10 * H;
const G = lockGeneration(R);
const opts = { canExtend: true, generationMs: G, reprotectBelow: DEFAULT_REPROTECT_BELOW };

describe('decidePack', () => {
  it('keeps a pack whose known lock already covers what is required', () => {
    expect(decidePack({ known: 200, requirement: { snapshots: 100, next: 200 }, live: 0.01 }, opts)).toEqual({ kind: 'keep' });
  });

  it('extends a mostly live pack to required + G', () => {
    expect(decidePack({ known: 100, requirement: { snapshots: 100, next: 200 }, live: 0.9 }, opts)).toMatchObject({ kind: 'extend', to: 200 + G });
  });

  it('extends when liveness was not measured (never less safe than without it)', () => {
    expect(decidePack({ known: 100, requirement: { snapshots: 100, next: 200 }, live: undefined }, opts)).toMatchObject({ kind: 'extend', to: 200 + G });
  });

  it('re-protects a mostly dead pack that only the next snapshot needs beyond its lock, without extending it', () => {
    const d = decidePack({ known: 100, requirement: { snapshots: 100, next: 200 }, live: 0.1 }, opts);
    expect(d).toMatchObject({ kind: 'reprotect' });
    expect(d.kind === 'reprotect' && d.extendTo).toBeUndefined();
    expect(d.kind === 'reprotect' && d.reason).toMatch(/only 10 % of the pack/);
  });

  it('still extends a mostly dead pack as far as committed snapshots need it — exactly that far — and re-protects it for the next', () => {
    expect(decidePack({ known: 50, requirement: { snapshots: 100, next: 200 }, live: 0.1 }, opts)).toMatchObject({ kind: 'reprotect', extendTo: 100 });
    expect(decidePack({ known: undefined, requirement: { snapshots: 100, next: 200 }, live: 0.1 }, opts)).toMatchObject({ kind: 'reprotect', extendTo: 100 });
  });

  it('extends a mostly dead pack that committed snapshots need as long as the next one (nothing to gain)', () => {
    expect(decidePack({ known: 50, requirement: { snapshots: 200, next: 200 }, live: 0.01 }, opts)).toMatchObject({ kind: 'extend', to: 200 + G });
    expect(decidePack({ known: 50, requirement: { snapshots: 200, next: 0 }, live: 0.01 }, opts)).toMatchObject({ kind: 'extend', to: 200 + G });
  });

  it('the threshold is strict, and 0 turns re-protection off', () => {
    expect(decidePack({ known: 100, requirement: { snapshots: 100, next: 200 }, live: 0.5 }, opts).kind).toBe('extend');
    expect(decidePack({ known: 100, requirement: { snapshots: 100, next: 200 }, live: 0.499 }, opts).kind).toBe('reprotect');
    expect(decidePack({ known: 100, requirement: { snapshots: 100, next: 200 }, live: 0 }, { ...opts, reprotectBelow: 0 }).kind).toBe('extend');
  });

  it('re-protects when the target cannot extend locks at all', () => {
    expect(decidePack({ known: 100, requirement: { snapshots: 100, next: 200 }, live: 1 }, { ...opts, canExtend: false })).toMatchObject({ kind: 'reprotect', reason: 'the target cannot extend locks' });
  });
});

const pack = (h: string, p: string) => `hosts/${h}/data/${p.slice(0, 2)}/${p}`;
const snap = (h: string, id: string, expiresAt: number, packs: string[]): PlannedSnapshot => ({ id, hostId: h, expiresAt, manifestKey: `hosts/${h}/snapshots/${id}`, packKeys: packs.map((p) => pack(h, p)) });

describe('planLocks with liveness', () => {
  // host h: s1 (packs aa, bb) then s2 (packs aa, cc); the next backup expires 5 h after s2
  const t = 1_000_000_000_000;
  const e1 = t + R;
  const e2 = t + 2 * H + R;
  const next = e2 + 5 * H;
  const base = (over: Partial<PlanInput> = {}): PlanInput => ({
    now: t + 3 * H,
    snapshots: [snap('h', 's1', e1, ['aa01', 'bb01']), snap('h', 's2', e2, ['aa01', 'cc01'])],
    foundationKeys: ['config'],
    knownLocks: new Map([
      ['config', next + G],
      ['hosts/h/snapshots/s1', e1 + G],
      ['hosts/h/snapshots/s2', e2 + G],
      [pack('h', 'aa01'), e2],
      [pack('h', 'bb01'), e1 + G],
      [pack('h', 'cc01'), e2],
    ]),
    nextExpiry: new Map([['h', next]]),
    generationMs: G,
    canExtend: true,
    ...over,
  });

  it('asks for the liveness of exactly the packs only the next snapshot needs beyond their lock', () => {
    expect(lapsingForNext(base())).toEqual(new Map([['h', [pack('h', 'aa01'), pack('h', 'cc01')]]]));
    expect(lapsingForNext(base({ canExtend: false }))).toEqual(new Map());
    expect(lapsingForNext(base({ nextExpiry: new Map() }))).toEqual(new Map());
  });

  it('re-protects the mostly dead pack, extends the live one, and keeps the horizon', () => {
    const plan = planLocks(base({ liveFraction: new Map([[pack('h', 'aa01'), 0.1], [pack('h', 'cc01'), 0.95]]) }));
    expect(plan.actions.map((a) => [a.kind, a.key, a.kind === 'extend' ? a.to : a.requiredUntil])).toEqual([
      ['reprotect', pack('h', 'aa01'), next],
      ['extend', pack('h', 'cc01'), next + G],
    ]);
    expect(plan.actions[0]).toMatchObject({ kind: 'reprotect', hostId: 'h', live: 0.1 });
    // the newest snapshot stays immutable until its own expiry: aa01's lock still covers it
    expect(plan.horizon.get('h')).toBe(e2);
  });

  it('without liveness everything lapsing is extended, as before', () => {
    const plan = planLocks(base());
    expect(plan.actions.map((a) => [a.kind, a.key])).toEqual([
      ['extend', pack('h', 'aa01')],
      ['extend', pack('h', 'cc01')],
    ]);
  });

  it('a dead pack a live snapshot needs beyond its known lock is extended to that snapshot\'s expiry, and re-protected', () => {
    const known = new Map(base().knownLocks);
    known.set(pack('h', 'aa01'), e1); // only s1's expiry is known
    const plan = planLocks(base({ knownLocks: known, liveFraction: new Map([[pack('h', 'aa01'), 0.2]]) }));
    const aa = plan.actions.filter((a) => a.key === pack('h', 'aa01'));
    expect(aa.map((a) => a.kind)).toEqual(['extend', 'reprotect']);
    expect(aa[0]).toMatchObject({ to: e2 });
    expect(plan.horizon.get('h')).toBe(e2);
  });

  it('never leaves a committed live snapshot uncovered, whatever the liveness (randomized)', () => {
    let seed = 42;
    let reprotections = 0;
    const rand = () => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31);
    for (let round = 0; round < 300; round++) {
      const hosts = ['a', 'b', 'c'].slice(0, 1 + Math.floor(rand() * 3));
      const snapshots: PlannedSnapshot[] = [];
      const knownLocks = new Map<string, number>();
      const liveFraction = new Map<string, number>();
      const nextExpiry = new Map<string, number>();
      for (const h of hosts) {
        const n = 1 + Math.floor(rand() * 5);
        for (let i = 0; i < n; i++) {
          const packs = Array.from({ length: 1 + Math.floor(rand() * 4) }, () => `${Math.floor(rand() * 6)}0pack`);
          const s = snap(h, `s${i}`, t + i * H + R, [...new Set(packs)]);
          snapshots.push(s);
          for (const k of [s.manifestKey, ...s.packKeys]) if (rand() < 0.7) knownLocks.set(k, t + Math.floor(rand() * (n + 2)) * H + R);
          for (const k of s.packKeys) liveFraction.set(k, rand());
        }
        if (rand() < 0.8) nextExpiry.set(h, t + (n + Math.floor(rand() * 3)) * H + R);
      }
      const canExtend = rand() < 0.9;
      const plan = planLocks({ now: t, snapshots, foundationKeys: ['config'], knownLocks, nextExpiry, generationMs: G, canExtend, liveFraction });
      const after = new Map(knownLocks);
      for (const a of plan.actions) if (a.kind === 'extend') after.set(a.key, Math.max(after.get(a.key) ?? 0, a.to));
      const reprotected = new Set(plan.actions.filter((a) => a.kind === 'reprotect').map((a) => a.key));
      if (!canExtend) continue; // nothing can be extended: re-protection is all there is
      reprotections += reprotected.size;
      for (const s of snapshots) for (const k of [s.manifestKey, ...s.packKeys, 'config']) expect(after.get(k) ?? 0, `${k} in ${s.hostId}/${s.id}`).toBeGreaterThanOrEqual(s.expiresAt);
      // and what the next snapshot will build on is either covered or re-protected by it
      for (const [h, e] of nextExpiry) {
        const newest = snapshots.filter((s) => s.hostId === h).sort((x, y) => y.expiresAt - x.expiresAt)[0]!;
        for (const k of newest.packKeys) expect((after.get(k) ?? 0) >= e || reprotected.has(k), k).toBe(true);
      }
    }
    expect(reprotections).toBeGreaterThan(50); // the rounds did exercise re-protection
  });
});
