/**
 * The retention cycle on a MemoryStore whose clock we move: locks really expire, the agent refuses
 * to build on packs whose locks end too early, the planner extends what the next backup needs,
 * and the groomer deletes only what no live snapshot needs, once its lock has ended.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { backup } from '../../agent/backup/backup.js';
import { DirtySet } from '../../agent/backup/dirty-set.js';
import { MemoryTreeCache } from '../../agent/backup/tree-cache.js';
import { restore } from '../../agent/restore/restore.js';
import { ManualClock } from '../../common/clock.js';
import { layout } from '../../common/repo/layout.js';
import { Repository } from '../../common/repo/repository.js';
import { MemoryStore } from '../../common/storage/memory-store.js';
import { type GroomSnapshot, groom, selectExpired } from '../../controller/groomer.js';
import { lockGeneration, planLocks } from '../../controller/lock-planner.js';
import { compareTrees } from '../helpers/fs-tree.js';

const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-cycle-'));
afterAll(() => fs.rm(tmp, { recursive: true, force: true }));
const H = 3_600_000;

async function world() {
  const clock = new ManualClock(Date.now());
  const store = new MemoryStore({ clock });
  const lock0 = { mode: 'COMPLIANCE' as const, retainUntil: clock.now() + 24 * H };
  const repo = await Repository.init(store, { passphrase: 'pw', lock: lock0, config: { chunker: { minSize: 16 * 1024, avgSize: 64 * 1024, maxSize: 256 * 1024 }, packSize: 256 * 1024 } });
  const host = repo.host('h1');
  const src = path.join(tmp, `src-${randomBytes(3).toString('hex')}`);
  await fs.mkdir(src);
  for (let i = 0; i < 10; i++) await fs.writeFile(path.join(src, `f${i}`), randomBytes(100_000));
  return { clock, store, repo, host, src };
}

describe('lock lifecycle (MemoryStore, moving clock)', () => {
  it('a backup does not build on packs whose locks end before its expiry: it writes them afresh', async () => {
    const { clock, host, src } = await world();
    const { index } = await host.loadIndex();
    const cache = new MemoryTreeCache();
    const packLocks = new Map<string, number>();
    const R = 2 * H;
    const l1 = { mode: 'COMPLIANCE' as const, retainUntil: clock.now() + R };
    const s1 = await backup({ host, index, roots: [src], hostname: 'h', lock: l1, expiresAt: clock.now() + R, treeCache: cache, packLocks, clock });
    clock.advance(H); // the next backup expires at now + R, after s1's packs' locks end
    const l2 = { mode: 'COMPLIANCE' as const, retainUntil: clock.now() + R };
    const s2 = await backup({ host, index, roots: [src], hostname: 'h', lock: l2, expiresAt: clock.now() + R, treeCache: cache, packLocks, clock, previous: { id: s1.snapshotId, manifest: s1.manifest }, dirty: new Map([[src, new DirtySet()]]) });
    expect(s2.manifest.packs.filter((p) => s1.manifest.packs.includes(p))).toEqual([]);
    expect(s2.manifest.stats.filesRead).toBe(10);
    // with the planner's extension first, nothing needs re-reading
    const clock2 = clock.now();
    const plan = planLocks({
      now: clock2,
      snapshots: [{ id: s2.snapshotId, hostId: 'h1', expiresAt: clock2 + R, manifestKey: layout.snapshot('h1', s2.snapshotId), packKeys: s2.manifest.packs.map((p) => layout.pack('h1', p)) }],
      foundationKeys: [],
      knownLocks: new Map(s2.manifest.packs.map((p) => [layout.pack('h1', p), clock2 + R])),
      nextExpiry: new Map([['h1', clock2 + H + R]]),
      generationMs: lockGeneration(R),
      canExtend: true,
    });
    // every pack and the manifest (its lock is unknown to this plan) are extended past the next expiry
    expect(plan.actions.filter((a) => a.kind === 'extend').length).toBe(s2.manifest.packs.length + 1);
    expect(plan.horizon.get('h1')).toBe(clock2 + R + lockGeneration(R)); // the manifest needs only its own expiry
    for (const a of plan.actions) if (a.kind === 'extend') {
      const info = await host.store.head(a.key);
      await host.store.extendRetention(a.key, info.versionId, { mode: 'COMPLIANCE', retainUntil: a.to });
    }
    clock.advance(H);
    const s3 = await backup({ host, index, roots: [src], hostname: 'h', lock: { mode: 'COMPLIANCE', retainUntil: clock.now() + R }, expiresAt: clock.now() + R, treeCache: cache, packLocks, clock, previous: { id: s2.snapshotId, manifest: s2.manifest }, dirty: new Map([[src, new DirtySet()]]) });
    expect(s3.manifest.stats.filesRead).toBe(0);
    // nothing changed: even the root tree is the same blob, so no pack is new
    expect(s3.manifest.packs).toEqual(s2.manifest.packs);
    expect(s3.manifest.stats.bytesUploaded).toBe(0);
  });

  it('grooms expired snapshots: deletes what no live snapshot needs once unlocked, reports the rest as retained', async () => {
    const { clock, store, host, src } = await world();
    const { index } = await host.loadIndex();
    const cache = new MemoryTreeCache();
    const R = 2 * H;
    const snap = async (prev?: { id: string; manifest: Awaited<ReturnType<typeof backup>>['manifest'] }) =>
      backup({ host, index, roots: [src], hostname: 'h', lock: { mode: 'COMPLIANCE', retainUntil: clock.now() + R }, expiresAt: clock.now() + R, treeCache: cache, clock, ...(prev ? { previous: prev, dirty: new Map([[src, DirtySet.full()]]) } : {}) });
    const s1 = await snap();
    await fs.writeFile(path.join(src, 'f0'), randomBytes(100_000)); // replaced: f0's old data only in s1
    clock.advance(H);
    const s2 = await snap({ id: s1.snapshotId, manifest: s1.manifest });
    const asGroom = (s: typeof s1, at: number): GroomSnapshot => ({ id: s.snapshotId, hostId: 'h1', expiresAt: at + R, manifestKey: layout.snapshot('h1', s.snapshotId), packKeys: s.manifest.packs.map((p) => layout.pack('h1', p)), indexKeys: s.manifest.indexes.map((i) => layout.index('h1', i)) });
    const t1 = s1.manifest.finishedAt;
    const all = [asGroom(s1, t1), asGroom(s2, t1 + H)];

    clock.advance(H + 1000); // s1 expired, s2 live
    const { expired, live } = selectExpired(all, clock.now());
    expect(expired.map((s) => s.id)).toEqual([s1.snapshotId]);
    const dry = await groom(store, live, { dryRun: true });
    expect(dry.deleted.length + dry.retained.length).toBeGreaterThan(0);
    const report = await groom(store, live);
    const deletedKeys = new Set(report.deleted.map((d) => d.key));
    expect(deletedKeys.has(layout.snapshot('h1', s1.snapshotId))).toBe(true);
    for (const k of live[0]!.packKeys) expect(deletedKeys.has(k)).toBe(false);
    // the live snapshot still restores, byte for byte
    const out = path.join(tmp, 'groomed-out');
    const fresh = (await host.loadIndex()).index;
    const res = await restore({ host, index: fresh, manifest: s2.manifest, target: out });
    expect(res.errors).toEqual([]);
    expect(await compareTrees(src, path.join(out, src), { mtimeOfDirs: false })).toEqual([]);
  });

  it('a still-locked garbage object is reported as retained until its date, not deleted', async () => {
    const { clock, store, host, src } = await world();
    const { index } = await host.loadIndex();
    const s1 = await backup({ host, index, roots: [src], hostname: 'h', lock: { mode: 'COMPLIANCE', retainUntil: clock.now() + 5 * H }, expiresAt: clock.now() + H, treeCache: new MemoryTreeCache(), clock });
    clock.advance(H + 1000); // expired by policy, still locked (lock = expiry + generation)
    const report = await groom(store, []);
    expect(report.deleted).toEqual([]);
    expect(report.retained.length).toBeGreaterThan(s1.manifest.packs.length);
    expect(report.retained.every((r) => r.until! > clock.now())).toBe(true);
  });
});
