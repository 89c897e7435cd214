/**
 * Backup → restore round trips through the real pipelines on a MemoryStore (fast). The same
 * scenarios against RGW live in test/integration/backup-restore.test.ts.
 */
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { backup, groupPacks } from '../../agent/backup/backup.js';
import { DirtySet } from '../../agent/backup/dirty-set.js';
import { MemoryTreeCache } from '../../agent/backup/tree-cache.js';
import { restore } from '../../agent/restore/restore.js';
import { ENTRY_BYTES } from '../../common/repo/pack.js';
import { Repository } from '../../common/repo/repository.js';
import { MemoryStore } from '../../common/storage/memory-store.js';
import { compareTrees, makeHostileTree } from '../helpers/fs-tree.js';

const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-br-'));
afterAll(() => fs.rm(tmp, { recursive: true, force: true }));

async function setup() {
  const store = new MemoryStore();
  const lock = { mode: 'COMPLIANCE' as const, retainUntil: Date.now() + 3_600_000 };
  const repo = await Repository.init(store, { passphrase: 'pw', lock, config: { chunker: { minSize: 64 * 1024, avgSize: 256 * 1024, maxSize: 1024 * 1024 }, packSize: 2 * 1024 * 1024 } });
  const host = repo.host('host-a');
  return { store, lock, host };
}

describe('backup and restore (MemoryStore)', () => {
  it('round-trips a hostile tree: content, types, modes, mtimes, links, odd names', async () => {
    const { lock, host } = await setup();
    const src = path.join(tmp, 'src1');
    await makeHostileTree(src);
    const { index } = await host.loadIndex();
    const r = await backup({ host, index, roots: [src], hostname: 'a', lock, expiresAt: lock.retainUntil, treeCache: new MemoryTreeCache() });
    expect(r.skipped).toEqual([]);
    expect(r.manifest.stats.files).toBeGreaterThan(10);
    expect(r.manifest.packs.length).toBeGreaterThan(1);
    const dst = path.join(tmp, 'dst1');
    const fresh = (await host.loadIndex()).index;
    const res = await restore({ host, index: fresh, manifest: await host.loadSnapshot(r.snapshotId), target: dst, workers: 0 });
    expect(res.errors).toEqual([]);
    expect(res.hardlinks).toBe(1);
    expect(await compareTrees(src, path.join(dst, src))).toEqual([]);
    const [a, b] = await Promise.all([fs.stat(path.join(dst, src, 'hardlink-a')), fs.stat(path.join(dst, src, 'hardlink-b'))]);
    expect(a.ino).toBe(b.ino);
  });

  it('splits the index into objects of a bounded number of entries; a fresh index from them restores everything', async () => {
    const { lock, host } = await setup();
    const src = path.join(tmp, 'src-idx');
    await makeHostileTree(src);
    const { index } = await host.loadIndex();
    const r = await backup({ host, index, roots: [src], hostname: 'a', lock, expiresAt: lock.retainUntil, treeCache: new MemoryTreeCache(), indexEntries: 1 });
    expect(r.manifest.stats.packsWritten).toBeGreaterThan(1);
    expect(r.manifest.indexes.length).toBe(r.manifest.stats.packsWritten); // one pack each
    const fresh = (await host.loadIndex()).index;
    expect(fresh.size).toBe(index.size);
    const dst = path.join(tmp, 'dst-idx');
    const res = await restore({ host, index: fresh, manifest: await host.loadSnapshot(r.snapshotId), target: dst, workers: 0 });
    expect(res.errors).toEqual([]);
    expect(await compareTrees(src, path.join(dst, src))).toEqual([]);
  });

  it('groups packs for index objects in order, whole, under the limit unless one pack alone is over it', () => {
    const pack = (id: string, n: number) => {
      const entries = Buffer.alloc(4 + n * ENTRY_BYTES); // encoded pack entries: their count, then n of them
      entries.writeUInt32LE(n, 0);
      return { id, entries };
    };
    const ps = [pack('a', 10), pack('b', 5), pack('c', 20), pack('d', 1), pack('e', 3), pack('f', 16)];
    const ids = (gs: Array<Array<{ id: string }>>) => gs.map((g) => g.map((p) => p.id).join(''));
    expect(ids(groupPacks(ps, 16))).toEqual(['ab', 'c', 'de', 'f']);
    expect(ids(groupPacks(ps, 1000))).toEqual(['abcdef']);
    expect(ids(groupPacks(ps, 1))).toEqual(['a', 'b', 'c', 'd', 'e', 'f']);
    expect(groupPacks([], 16)).toEqual([]);
  });

  it('seals on worker threads: same snapshot content, duplicates stored once, restores exactly', async () => {
    const { lock, host, store } = await setup();
    const src = path.join(tmp, 'src-pool');
    await makeHostileTree(src);
    const big = crypto.randomBytes(3 * 1024 * 1024 + 12345); // chunks of 64 KiB+ go to the workers // several chunks, more than a pack
    await fs.writeFile(path.join(src, 'big-1.bin'), big);
    await fs.writeFile(path.join(src, 'big-2.bin'), big); // the same chunks again: dedup across in-flight seals
    await fs.writeFile(path.join(src, 'text.txt'), 'compressible line of text\n'.repeat(40_000));
    const { index } = await host.loadIndex();
    const r = await backup({ host, index, roots: [src], hostname: 'a', lock, expiresAt: lock.retainUntil, treeCache: new MemoryTreeCache(), sealWorkers: 2, sealInlineBytes: 0 });
    expect(r.skipped).toEqual([]);
    const m = await host.loadSnapshot(r.snapshotId);
    // every blob stored once: the packs hold the hostile tree's own 3 MiB big.bin and ONE copy
    // of big (2 × 3 MiB plus small things), not two (3 × 3 MiB)
    let packBytes = 0;
    for await (const e of store.list(`hosts/host-a/data/`)) packBytes += e.size;
    expect(packBytes).toBeGreaterThan(big.length * 1.9);
    expect(packBytes).toBeLessThan(big.length * 2.5);
    const dst = path.join(tmp, 'dst-pool');
    const res = await restore({ host, index: (await host.loadIndex()).index, manifest: m, target: dst, workers: 2 });
    expect(res.errors).toEqual([]);
    expect(await compareTrees(src, path.join(dst, src))).toEqual([]);
  });

  it('reads large files in pieces through reused buffers: chunks across reads and files come out exact', async () => {
    // chunks of 5-12 MiB, so the one in progress always spans 2-4 reads of 4 MiB, and files back
    // to back: a read buffer freed too early would be overwritten under the chunker
    const store = new MemoryStore();
    const lock = { mode: 'COMPLIANCE' as const, retainUntil: Date.now() + 3_600_000 };
    const MiB = 1024 * 1024;
    const config = { chunker: { minSize: 5 * MiB, avgSize: 8 * MiB, maxSize: 12 * MiB } };
    const host = (await Repository.init(store, { passphrase: 'pw', lock, config })).host('host-a');
    const src = path.join(tmp, 'src-reads');
    await fs.mkdir(src, { recursive: true });
    await fs.writeFile(path.join(src, 'a.bin'), crypto.randomBytes(37 * MiB + 11));
    await fs.writeFile(path.join(src, 'b.bin'), crypto.randomBytes(13 * MiB + 1));
    await fs.writeFile(path.join(src, 'c.bin'), Buffer.concat([Buffer.from('text that compresses\n'.repeat(400_000)), crypto.randomBytes(9 * MiB)]));
    const { index } = await host.loadIndex();
    const r = await backup({ host, index, roots: [src], hostname: 'a', lock, expiresAt: lock.retainUntil, treeCache: new MemoryTreeCache(), sealWorkers: 2, sealInlineBytes: 0 });
    expect(r.skipped).toEqual([]);
    const dst = path.join(tmp, 'dst-reads');
    const res = await restore({ host, index: (await host.loadIndex()).index, manifest: await host.loadSnapshot(r.snapshotId), target: dst, workers: 2 });
    expect(res.errors).toEqual([]);
    expect(await compareTrees(src, path.join(dst, src))).toEqual([]);
  });

  it('an incremental backup reads only the changed files and reuses unchanged subtrees', async () => {
    const { lock, host } = await setup();
    const src = path.join(tmp, 'src2');
    await makeHostileTree(src);
    const cache = new MemoryTreeCache();
    const { index } = await host.loadIndex();
    const first = await backup({ host, index, roots: [src], hostname: 'a', lock, expiresAt: lock.retainUntil, treeCache: cache });
    await fs.writeFile(path.join(src, 'deep/a/b/c/d/leaf.txt'), 'changed leaf');
    await fs.writeFile(path.join(src, 'deep/new.txt'), 'new file');
    const dirty = new DirtySet();
    dirty.add('deep/a/b/c/d/leaf.txt');
    dirty.add('deep/new.txt');
    const second = await backup({ host, index, roots: [src], hostname: 'a', lock, expiresAt: lock.retainUntil, treeCache: cache, previous: { id: first.snapshotId, manifest: first.manifest }, dirty: new Map([[src, dirty]]) });
    expect(second.manifest.stats.filesRead).toBe(2);
    expect(second.manifest.stats.files).toBe(first.manifest.stats.files + 1);
    expect(second.manifest.stats.bytesUploaded).toBeLessThan(20_000);
    const dst = path.join(tmp, 'dst2');
    const res = await restore({ host, index, manifest: second.manifest, target: dst });
    expect(res.errors).toEqual([]);
    expect(await compareTrees(src, path.join(dst, src), { mtimeOfDirs: false })).toEqual([]);
    // the first snapshot still restores the old leaf
    const old = path.join(tmp, 'dst2-old');
    await restore({ host, index, manifest: first.manifest, target: old, paths: [path.join(src, 'deep/a/b/c/d/leaf.txt')] });
    expect(await fs.readFile(path.join(old, src, 'deep/a/b/c/d/leaf.txt'), 'utf8')).toBe('deep leaf');
  });

  it('re-protection writes the data of the named packs afresh, so the new snapshot no longer needs them', async () => {
    const { lock, host } = await setup();
    const src = path.join(tmp, 'src3');
    await makeHostileTree(src);
    const cache = new MemoryTreeCache();
    const { index } = await host.loadIndex();
    const first = await backup({ host, index, roots: [src], hostname: 'a', lock, expiresAt: lock.retainUntil, treeCache: cache });
    const old = new Set(first.manifest.packs);
    const second = await backup({ host, index, roots: [src], hostname: 'a', lock, expiresAt: lock.retainUntil, treeCache: cache, previous: { id: first.snapshotId, manifest: first.manifest }, dirty: new Map([[src, new DirtySet()]]), reprotectPacks: old });
    expect(second.manifest.packs.filter((p) => old.has(p))).toEqual([]);
    // 15 files: all are read again but the empty one (no data) and hardlink-b (its data is
    // hardlink-a's, already written afresh in this run)
    expect(first.manifest.stats.filesRead).toBe(15);
    expect(second.manifest.stats.filesRead).toBe(13);
    // and the new snapshot restores without the old packs
    const dst = path.join(tmp, 'dst3');
    const res = await restore({ host, index, manifest: second.manifest, target: dst });
    expect(res.errors).toEqual([]);
    expect(await compareTrees(src, path.join(dst, src))).toEqual([]);
  });
});
