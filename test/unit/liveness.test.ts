/**
 * Pack liveness on a MemoryStore: after most of a pack's files change, the controller measures
 * that only a small part of it is still used by the newest snapshot; the tree cache in the
 * catalog makes the next walk read only the directories that changed, and is pruned to the newest
 * snapshot's trees.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { backup } from '../../agent/backup/backup.js';
import { DirtySet } from '../../agent/backup/dirty-set.js';
import { MemoryTreeCache } from '../../agent/backup/tree-cache.js';
import { ManualClock } from '../../common/clock.js';
import { Repository } from '../../common/repo/repository.js';
import { MemoryStore } from '../../common/storage/memory-store.js';
import { Catalog } from '../../controller/catalog.js';
import { liveFraction, measureLiveness } from '../../controller/liveness.js';

const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-liveness-'));
afterAll(() => fs.rm(tmp, { recursive: true, force: true }));
const H = 3_600_000;

describe('pack liveness', () => {
  it('measures the share of each pack the newest snapshot uses; the tree cache reads only changed directories', async () => {
    const clock = new ManualClock(Date.now());
    const store = new MemoryStore({ clock });
    const lock = { mode: 'COMPLIANCE' as const, retainUntil: clock.now() + 24 * H };
    const repo = await Repository.init(store, { passphrase: 'pw', lock, config: { chunker: { minSize: 16 * 1024, avgSize: 64 * 1024, maxSize: 256 * 1024 }, packSize: 4 * 1024 * 1024 } });
    const host = repo.host('h1');
    const src = path.join(tmp, 'src');
    await fs.mkdir(path.join(src, 'stable'), { recursive: true });
    await fs.mkdir(path.join(src, 'churn'), { recursive: true });
    for (let i = 0; i < 3; i++) await fs.writeFile(path.join(src, 'stable', `s${i}`), randomBytes(10_000));
    for (let i = 0; i < 10; i++) await fs.writeFile(path.join(src, 'churn', `f${i}`), randomBytes(10_000));

    const { index } = await host.loadIndex();
    const cache = new MemoryTreeCache();
    const run = (prev?: Awaited<ReturnType<typeof backup>>) =>
      backup({ host, index, roots: [src], hostname: 'h', lock, expiresAt: clock.now() + H, treeCache: cache, clock, ...(prev ? { previous: { id: prev.snapshotId, manifest: prev.manifest }, dirty: new Map([[src, DirtySet.full()]]) } : {}) });
    const s1 = await run();
    expect(s1.manifest.packs.length).toBe(1); // everything in one pack
    const p1 = s1.manifest.packs[0]!;

    const catalog = await Catalog.open(path.join(tmp, 'catalog'));
    try {
      const trees = catalog.treeShapeCache();
      const first = await measureLiveness(host, s1.manifest, { cache: trees });
      expect(first.packs.get(p1)!.live).toBe(first.packs.get(p1)!.size); // a fresh pack is all live
      expect(first).toMatchObject({ trees: 3, fetched: 3 });

      // 9 of the 10 churning files are replaced: their old data in p1 is dead
      for (let i = 0; i < 9; i++) await fs.writeFile(path.join(src, 'churn', `f${i}`), randomBytes(10_000));
      const s2 = await run(s1);
      expect(s2.manifest.packs).toContain(p1);
      const second = await measureLiveness(host, s2.manifest, { cache: trees });
      // the root and churn/ changed; stable/ came from the cache
      expect(second).toMatchObject({ trees: 3, fetched: 2 });
      const u1 = second.packs.get(p1)!;
      expect(u1.size).toBe(first.packs.get(p1)!.size);
      // what is still live in p1: stable/'s three files and tree, and f9 — measured independently
      // from the index and the new snapshot's trees
      const full = (await host.loadIndex()).index;
      const root = await host.loadTree(s2.manifest.roots[0]!.tree, full);
      const stable = await host.loadTree(root.nodes.find((n) => n.name === 'stable')!.subtree!, full);
      const churn = await host.loadTree(root.nodes.find((n) => n.name === 'churn')!.subtree!, full);
      const inP1 = (ids: string[]) => ids.map((id) => full.get(id)!).filter((l) => l.pack === p1).reduce((n, l) => n + l.length, 0);
      const expected = inP1([root.nodes.find((n) => n.name === 'stable')!.subtree!, ...stable.nodes.flatMap((n) => n.content ?? []), ...churn.nodes.flatMap((n) => n.content ?? [])]);
      expect(u1.live).toBe(expected);
      expect(liveFraction(u1)).toBeGreaterThan(0.2);
      expect(liveFraction(u1)).toBeLessThan(0.4); // 4 of 13 files, plus one of p1's three trees
      for (const p of s2.manifest.packs.filter((x) => x !== p1)) expect(liveFraction(second.packs.get(p)!)).toBe(1);

      // measured again with nothing changed: nothing read from the bucket, the same answer
      const again = await measureLiveness(host, s2.manifest, { cache: trees });
      expect(again.fetched).toBe(0);
      expect(again.packs).toEqual(second.packs);
      // pruned to the newest snapshot's trees: s1's root and churn/ are gone from the cache
      let cached = 0;
      for await (const _ of catalog.trees.keys()) cached++;
      expect(cached).toBe(3);
      expect(await trees.get('h1', s1.manifest.roots[0]!.tree)).toBeUndefined();

      // without a cache the same result
      const bare = await measureLiveness(host, s2.manifest);
      expect(bare.packs).toEqual(second.packs);
      expect(bare.fetched).toBe(3);
    } finally {
      await catalog.close();
    }
  });
});
