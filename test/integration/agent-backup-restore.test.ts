/**
 * The agent's pipelines end to end against the real S3 (RGW): real files, real chokidar watchers,
 * real LevelDB journals, real locked objects.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AgentCore } from '../../agent/agent-core.js';
import { compareTrees, makeHostileTree, mutate, rng } from '../helpers/fs-tree.js';
import { freshRepo } from '../helpers/repo.js';
import { sleep } from '../helpers/s3.js';

const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-agent-'));
afterAll(() => fs.rm(tmp, { recursive: true, force: true }));

describe('agent backup and restore against RGW', () => {
  it('restores a hostile tree byte for byte, with types, modes, mtimes and links', async () => {
    const { repo, lock } = await freshRepo('agent-hostile');
    const src = path.join(tmp, 'hostile');
    await makeHostileTree(src);
    const agent = await AgentCore.open({ dataDir: path.join(tmp, 'hostile-data'), hostname: 'h', host: repo.host('host-h'), roots: [src], watch: false });
    try {
      const b = await agent.backup({ lock, expiresAt: lock.retainUntil });
      expect(b.skipped).toEqual([]);
      expect(b.modes[src]).toBe('full');
      const dst = path.join(tmp, 'hostile-out');
      const r = await agent.restore({ manifest: b.manifest, target: dst });
      expect(r.errors).toEqual([]);
      expect(r.hardlinks).toBe(1);
      expect(await compareTrees(src, path.join(dst, src))).toEqual([]);
      // never overwrites unless told
      const again = await agent.restore({ manifest: b.manifest, target: dst });
      expect(again.files).toBe(0);
      expect(again.errors.length).toBeGreaterThan(10);
      expect(again.errors.every((e) => /exists|in the way/.test(e.reason))).toBe(true);
    } finally {
      await agent.close();
    }
  });

  it('a backup large enough for the seal workers and a restore through the write workers round-trip against RGW', async () => {
    const { repo, lock } = await freshRepo('agent-workers');
    const src = path.join(tmp, 'workers');
    await fs.mkdir(path.join(src, 'small'), { recursive: true });
    await fs.writeFile(path.join(src, 'random.bin'), randomBytes(20 * 1024 * 1024 + 333)); // > 8 MiB: the SealPool starts
    await fs.writeFile(path.join(src, 'text.txt'), 'a line of compressible text for the zstd workers\n'.repeat(200_000));
    for (let i = 0; i < 300; i++) await fs.writeFile(path.join(src, 'small', `f${i}`), randomBytes(1 + (i % 7) * 1000)); // ≥ 256 files: the WritePool too
    const host = repo.host('host-w');
    const agent = await AgentCore.open({ dataDir: path.join(tmp, 'workers-data'), hostname: 'w', host, roots: [src], watch: false });
    try {
      const b = await agent.backup({ lock, expiresAt: lock.retainUntil });
      expect(b.skipped).toEqual([]);
      expect(b.manifest.packs.length).toBeGreaterThan(1);
      // every pack was stored whole (RGW checked the workers' Content-MD5), locked, and hashes to its id
      for (const p of b.manifest.packs) {
        const key = `hosts/host-w/data/${p.slice(0, 2)}/${p}`;
        expect((await host.store.head(key)).lock?.retainUntil).toBeGreaterThanOrEqual(lock.retainUntil - 1000);
        expect(createHash('sha256').update(await host.store.get(key)).digest('hex')).toBe(p);
      }
      const dst = path.join(tmp, 'workers-out');
      const r = await agent.restore({ manifest: b.manifest, target: dst });
      expect(r.errors).toEqual([]);
      expect(r.files).toBe(302);
      expect(await compareTrees(src, path.join(dst, src))).toEqual([]);
    } finally {
      await agent.close();
    }
  });

  it('20 rounds of random mutations: watcher-driven incrementals restore to the live tree every time', async () => {
    const { repo, lock } = await freshRepo('agent-rounds');
    const src = path.join(tmp, 'rounds');
    await makeHostileTree(src);
    const dataDir = path.join(tmp, 'rounds-data');
    let agent = await AgentCore.open({ dataDir, hostname: 'r', host: repo.host('host-r'), roots: [src] });
    const rand = rng(20261127);
    const modes: string[] = [];
    try {
      const first = await agent.backup({ lock, expiresAt: lock.retainUntil });
      modes.push(first.modes[src]!);
      for (let round = 1; round <= 20; round++) {
        const ops = await mutate(src, rand, 6);
        if (round === 10) {
          // a restart: the journal is no longer trusted, the next backup reconciles by a full scan
          await agent.close();
          agent = await AgentCore.open({ dataDir, hostname: 'r', host: repo.host('host-r'), roots: [src] });
        }
        await sleep(400); // let chokidar deliver the events
        const b = await agent.backup({ lock, expiresAt: lock.retainUntil });
        modes.push(b.modes[src]!);
        const dst = path.join(tmp, `rounds-out-${round}`);
        const r = await agent.restore({ manifest: b.manifest, target: dst });
        expect(r.errors, `round ${round}: ${ops.join(', ')}`).toEqual([]);
        expect(await compareTrees(src, path.join(dst, src)), `round ${round}: ${ops.join(', ')}`).toEqual([]);
        await fs.rm(dst, { recursive: true });
      }
    } finally {
      await agent.close();
    }
    expect(modes[0]).toBe('full');
    expect(modes[10]).toBe('reconcile');
    expect(modes.filter((m) => m === 'journal').length).toBeGreaterThanOrEqual(18);
  });
});
