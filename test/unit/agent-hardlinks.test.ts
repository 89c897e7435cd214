/**
 * Files with several names (hard links) through the whole agent — real chokidar watcher (directories
 * only), real LevelDB journal, the backup pipeline on a MemoryStore: a write through a name in another
 * directory, or through a name outside the protected root, produces no event for the other names,
 * yet the watcher-driven incremental picks the change up (the journal's linked paths are re-checked).
 * A new link to a file the journal knew as single makes the journal untrusted until a reconcile has
 * found both names.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AgentCore, type BackupJobResult } from '../../agent/agent-core.js';
import { Repository } from '../../common/repo/repository.js';
import { MemoryStore } from '../../common/storage/memory-store.js';

const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-links-'));
afterAll(() => fs.rm(tmp, { recursive: true, force: true }));

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('hard links and the watcher-driven incremental', () => {
  it('picks up writes through another name in another directory and through a name outside the root', async () => {
    const lock = { mode: 'COMPLIANCE' as const, retainUntil: Date.now() + 3_600_000 };
    const repo = await Repository.init(new MemoryStore(), { passphrase: 'pw', lock });
    const root = path.join(tmp, 'root');
    const outside = path.join(tmp, 'outside');
    for (const d of ['a', 'b', 'c', 'd', 'e']) await fs.mkdir(path.join(root, d), { recursive: true });
    await fs.mkdir(outside);
    const p = (rel: string): string => path.join(root, rel);
    await fs.writeFile(p('a/x'), 'x v1');
    await fs.link(p('a/x'), p('b/y')); // two names in the tree, in different directories
    await fs.writeFile(path.join(outside, 'o'), 'z v1');
    await fs.link(path.join(outside, 'o'), p('c/z')); // one name in the tree, one outside it
    await fs.writeFile(p('e/v'), 'v v1'); // one name, for now
    await fs.writeFile(p('plain'), 'plain');

    const agent = await AgentCore.open({ dataDir: path.join(tmp, 'data'), hostname: 'h', host: repo.host('host-h'), roots: [root] });
    const backup = (): Promise<BackupJobResult> => agent.backup({ lock, expiresAt: lock.retainUntil });
    /** The content of `rel` in a snapshot, restored into a fresh directory. */
    let restores = 0;
    const restored = async (b: BackupJobResult, ...rels: string[]): Promise<string[]> => {
      const dst = path.join(tmp, `restore-${restores++}`);
      const r = await agent.restore({ manifest: b.manifest, target: dst });
      expect(r.errors).toEqual([]);
      return Promise.all(rels.map((rel) => fs.readFile(path.join(dst, root, rel), 'utf8')));
    };
    try {
      const full = await backup();
      expect(full.modes[root]).toBe('full');

      // writes with no event for the names in the tree that were not used
      await fs.writeFile(p('b/y'), 'x v2, written through b/y');
      await fs.writeFile(path.join(outside, 'o'), 'z v2, written outside the root');
      await sleep(400); // chokidar's events, then the watcher's flush
      const second = await backup();
      expect(second.modes[root]).toBe('journal');
      expect(await restored(second, 'a/x', 'b/y', 'c/z', 'plain')).toEqual(['x v2, written through b/y', 'x v2, written through b/y', 'z v2, written outside the root', 'plain']);
      expect(second.manifest.stats.filesRead).toBe(3); // a/x, b/y, c/z; not the unchanged 'plain'

      // a new name for e/v, which the journal knew as a single file: where its other name is, only a scan can tell
      await fs.link(p('e/v'), p('d/w'));
      await sleep(400);
      const third = await backup();
      expect(third.modes[root]).toBe('journal');
      const fourth = await backup();
      expect(fourth.modes[root]).toBe('reconcile'); // the scan finds e/v as the other name of d/w
      await fs.writeFile(p('d/w'), 'v v2, written through d/w');
      await sleep(400);
      const fifth = await backup();
      expect(fifth.modes[root]).toBe('journal');
      expect(await restored(fifth, 'e/v', 'd/w', 'a/x', 'c/z')).toEqual(['v v2, written through d/w', 'v v2, written through d/w', 'x v2, written through b/y', 'z v2, written outside the root']);
      // restored as links again
      const dst = path.join(tmp, 'restore-links');
      await agent.restore({ manifest: fifth.manifest, target: dst });
      const [ev, dw] = await Promise.all([fs.stat(path.join(dst, root, 'e/v')), fs.stat(path.join(dst, root, 'd/w'))]);
      expect(ev.ino).toBe(dw.ino);
    } finally {
      await agent.close();
    }
  }, 60_000);
});
