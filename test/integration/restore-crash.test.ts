/**
 * kill -9 of an agent in the middle of a restore, at random points (seeded; see
 * test/helpers/kill-child.ts). Under their real names the target only ever holds complete,
 * correct files; a rerun into the same directory removes the killed run's temporary files and
 * staged directories and, with `overwrite`, ends byte-identical to the source; without it, the
 * rerun restores the rest and names each file already in place. Half the rounds restore into a
 * fresh directory (everything staged, agent/restore/restore.ts), half into one where the root and
 * bulk/ exist already (their files go through temporaries, the other directories are staged). A
 * restore never writes to the bucket: the snapshot and every object it needs are exactly as before.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AgentCore } from '../../agent/agent-core.js';
import type { BlobStore } from '../../common/storage/blob-store.js';
import { compareTrees, makeHostileTree } from '../helpers/fs-tree.js';
import { killLog, runChild, s3Env } from '../helpers/kill-child.js';
import { TEST_PASSPHRASE, freshRepo } from '../helpers/repo.js';

const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-restore-crash-'));
afterAll(() => fs.rm(tmp, { recursive: true, force: true }));

const TEMP = /^\.bwr-/;

/** Every version (and delete marker) in the bucket, as sorted "key versionId" lines. */
async function versions(store: BlobStore): Promise<string[]> {
  const out: string[] = [];
  for await (const v of store.listVersions('')) out.push(`${v.key} ${v.versionId}${v.isDeleteMarker ? ' marker' : ''}`);
  return out.sort();
}

const digest = async (p: string) => createHash('sha256').update(await fs.readFile(p)).digest('hex');

/**
 * What a killed restore left under `actual` (the restored copy of `expected`): every entry under
 * its real name must be right — a regular file complete, with its content, size, mode and mtime —
 * and temporary files and staged directories are counted (not entered: nothing in them has its
 * real path yet). Returns the problems, the non-directory entries in place, and the temporaries.
 */
async function inspectPartial(expected: string, actual: string): Promise<{ problems: string[]; inPlace: string[]; temporaries: number; staged: number }> {
  const r = { problems: [] as string[], inPlace: [] as string[], temporaries: 0, staged: 0 };
  async function walk(rel: string): Promise<void> {
    let names: string[];
    try {
      names = await fs.readdir(path.join(actual, rel));
    } catch {
      return; // not created before the kill
    }
    for (const name of names) {
      const p = path.join(rel, name);
      const a = await fs.lstat(path.join(actual, p));
      if (TEMP.test(name) && a.isFile()) {
        r.temporaries++;
        continue;
      }
      if (TEMP.test(name) && a.isDirectory()) {
        r.staged++;
        continue;
      }
      const e = await fs.lstat(path.join(expected, p)).catch(() => undefined);
      if (!e) r.problems.push(`${p}: not in the source`);
      else if (a.isDirectory()) {
        if (!e.isDirectory()) r.problems.push(`${p}: a directory, should not be`);
        else await walk(p);
      } else if (a.isSymbolicLink()) {
        r.inPlace.push(p);
        if (!e.isSymbolicLink() || (await fs.readlink(path.join(actual, p))) !== (await fs.readlink(path.join(expected, p)))) r.problems.push(`${p}: wrong symlink`);
      } else {
        r.inPlace.push(p);
        if (!e.isFile() || a.size !== e.size) r.problems.push(`${p}: partial (${a.size} of ${e.size} bytes)`);
        else if ((a.mode & 0o7777) !== (e.mode & 0o7777) || Math.floor(a.mtimeMs) !== Math.floor(e.mtimeMs)) r.problems.push(`${p}: mode or mtime not restored`);
        else if ((await digest(path.join(actual, p))) !== (await digest(path.join(expected, p)))) r.problems.push(`${p}: wrong content`);
      }
    }
  }
  await walk('');
  return r;
}

/** Temporary files anywhere under dir. */
async function temporaries(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const d of await fs.readdir(dir, { withFileTypes: true, recursive: true })) if (TEMP.test(d.name)) out.push(path.join(d.parentPath, d.name));
  return out;
}

/** Regular files under dir (each hard link counted). */
async function countFiles(dir: string): Promise<number> {
  return (await fs.readdir(dir, { withFileTypes: true, recursive: true })).filter((d) => d.isFile()).length;
}

describe('kill -9 during a restore', () => {
  it('at random points: no partial file under a real name; a rerun cleans up and ends byte-identical; the bucket is untouched', async () => {
    const { rand, note } = killLog('restore kill points');
    const { repo, lock, bucket, store } = await freshRepo('restore-crash');
    const src = path.join(tmp, 'src');
    // the hostile tree (odd names, links, modes, a hard link pair, a 3 MiB file) and 7 MiB more in
    // files of random sizes, some of them hard links across directories
    await makeHostileTree(src);
    await fs.mkdir(path.join(src, 'bulk', 'sub'), { recursive: true });
    for (let i = 0; i < 24; i++) await fs.writeFile(path.join(src, 'bulk', i % 3 ? '' : 'sub', `f${i}.bin`), randomBytes(20_000 + Math.floor(rand() * 600_000)));
    await fs.link(path.join(src, 'bulk', 'f1.bin'), path.join(src, 'bulk', 'sub', 'f1-link.bin'));
    await fs.link(path.join(src, 'bulk', 'f2.bin'), path.join(src, 'f2-link.bin'));
    const files = await countFiles(src);

    const host = repo.host('rc');
    const backupAgent = await AgentCore.open({ dataDir: path.join(tmp, 'backup-agent'), hostname: 'rc', host, roots: [src], watch: false });
    const snap = await backupAgent.backup({ lock, expiresAt: lock.retainUntil });
    await backupAgent.close();
    const before = await versions(store);

    // the restoring agent: killed in a child, restarted here
    const dataDir = path.join(tmp, 'restore-agent');
    const env = (target: string) => ({ ...s3Env(), BUCKET: bucket, PASSPHRASE: TEST_PASSPHRASE, DATA_DIR: dataDir, ROOT: src, HOST: 'rc', SNAPSHOT: snap.snapshotId, TARGET: target });
    const rerun = async (target: string, overwrite: boolean) => {
      const core = await AgentCore.open({ dataDir, hostname: 'rc', host, roots: [src], watch: false });
      try {
        return await core.restore({ manifest: snap.manifest, target, overwrite });
      } finally {
        await core.close();
      }
    };

    // a whole restore in the child: how many steps it takes (the range of kill points)
    const full = path.join(tmp, 'full');
    const calibration = await runChild('restore-child.ts', env(full));
    expect(JSON.parse(calibration.done!).errors).toEqual([]);
    expect(await compareTrees(src, path.join(full, src))).toEqual([]);
    const steps = calibration.steps;
    expect(steps).toBeGreaterThan(10);
    note(`a whole restore: ${steps} steps (reads, directories made, renames, modes set, links)`);
    // killed just after it finished: a rerun without overwrite names every file and replaces none;
    // with overwrite it replaces every file, link and symlink and ends identical
    const kept = await rerun(full, false);
    expect(kept.files + kept.hardlinks).toBe(0);
    expect(kept.errors.length).toBe((await inspectPartial(src, path.join(full, src))).inPlace.length);
    for (const err of kept.errors) expect(err.reason).toBe('exists; not replaced (use overwrite)');
    const again = await rerun(full, true);
    expect(again.errors).toEqual([]);
    expect(again.files + again.hardlinks).toBe(files);
    expect(await compareTrees(src, path.join(full, src))).toEqual([]);

    const ROUNDS = 8;
    let killed = 0;
    for (let round = 0; round < ROUNDS; round++) {
      // just before a random step (0: as it starts planning), or a little after it
      const point = { step: Math.floor(rand() * steps), jitterMs: rand() < 0.5 ? 0 : 1 + Math.floor(rand() * 8) };
      const out = path.join(tmp, `out-${round}`);
      if (round % 2 === 0) await fs.mkdir(path.join(out, src, 'bulk'), { recursive: true });
      const run = await runChild('restore-child.ts', env(out), point);
      const left = await inspectPartial(src, path.join(out, src));
      note(`round ${round}: kill at step ${point.step} + ${point.jitterMs} ms → ${run.killed ? 'killed' : 'finished'} after ${run.steps} steps; ${left.inPlace.length} entries in place, ${left.temporaries} temporaries, ${left.staged} staged directories`);
      if (run.killed) killed++;
      expect(left.problems, `round ${round}`).toEqual([]);

      if (round % 2 === 0) {
        // restarted without overwrite: the rest is restored, what was in place is named, not replaced
        const r = await rerun(out, false);
        expect(r.errors.map((e) => path.relative(path.join(out, src), e.path)).sort(), `round ${round}`).toEqual(left.inPlace.sort());
        for (const err of r.errors) expect(err.reason).toBe('exists; not replaced (use overwrite)');
        expect(await temporaries(out), `round ${round}`).toEqual([]);
      }
      // restarted with overwrite: complete and identical, nothing left over
      const r = await rerun(out, true);
      expect(r.errors, `round ${round}`).toEqual([]);
      expect(r.files + r.hardlinks, `round ${round}`).toBe(files);
      expect(await compareTrees(src, path.join(out, src)), `round ${round}`).toEqual([]);
      expect(await temporaries(out), `round ${round}`).toEqual([]);
    }
    expect(killed, 'most kill points land inside the restore').toBeGreaterThanOrEqual(ROUNDS - 2);

    // the restores read only: the bucket holds exactly the versions it held, and the snapshot's
    // manifest and every pack still verify against their ids
    expect(await versions(store)).toEqual(before);
    expect((await host.loadSnapshot(snap.snapshotId)).packs).toEqual(snap.manifest.packs);
    for (const p of snap.manifest.packs) expect((await host.readPackHeader(p)).length).toBeGreaterThan(0);
  });
});
