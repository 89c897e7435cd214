/**
 * LevelTreeCache: its in-memory layer is bounded by tree entries, and what it evicts is still
 * served from LevelDB; summaries (packs, counts) stay in memory for many more trees.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type CachedTree, LevelTreeCache } from '../../agent/backup/tree-cache.js';

const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-tree-cache-'));
afterAll(() => fs.rm(tmp, { recursive: true, force: true }));

const entry = (i: number, files: number): CachedTree => ({
  tree: { nodes: Array.from({ length: files }, (_, k) => ({ name: `f${k}`, type: 'file' as const, mode: 0o644, uid: 0, gid: 0, mtimeNs: String(k), size: k, content: [] })) },
  packs: [`pack-${i}`],
  stats: { files, dirs: 1, symlinks: 0, bytes: i },
});

describe('LevelTreeCache', () => {
  it('serves every tree after its memory layer evicted most of them (60 trees × 1,000 entries), and their summaries', async () => {
    const dir = path.join(tmp, 'c1');
    const cache = await LevelTreeCache.open(dir);
    try {
      for (let i = 0; i < 60; i++) await cache.put(`t${i}`, entry(i, 1000));
      for (let i = 0; i < 60; i++) {
        expect(await cache.summary(`t${i}`)).toEqual({ packs: [`pack-${i}`], stats: { files: 1000, dirs: 1, symlinks: 0, bytes: i } });
        const e = await cache.get(`t${i}`);
        expect(e?.tree.nodes).toHaveLength(1000);
        expect(e?.tree.nodes[999]?.name).toBe('f999');
      }
      expect(await cache.get('missing')).toBeUndefined();
      expect(await cache.summary('missing')).toBeUndefined();
    } finally {
      await cache.close();
    }
    // and after a restart, from LevelDB alone
    const again = await LevelTreeCache.open(dir);
    try {
      expect((await again.summary('t7'))?.packs).toEqual(['pack-7']);
      expect((await again.get('t59'))?.tree.nodes).toHaveLength(1000);
    } finally {
      await again.close();
    }
  });
});
