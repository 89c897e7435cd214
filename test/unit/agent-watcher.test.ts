/**
 * The watcher with real chokidar on a temp tree and a real LevelDB journal: only directories are
 * watched, yet every change to a file ends up as a dirty mark (renames as both names, directory
 * deletes as unlinkDir, a new directory's files as add), a 20,000-file burst loses no path, overflow,
 * a possible kernel queue overflow and failed flushes untrust the journal, and chokidar errors (one
 * emitted on the FSWatcher, one real ENOSPC from a lowered inotify limit in a private user namespace)
 * untrust it, are reported through onError and fail the watcher.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { appendFile, chmod, mkdir, mkdtemp, rename, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { watch, type FSWatcher } from 'chokidar';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BulwarkError } from '../../common/errors.js';
import { Journal, type DirtyEvent } from '../../agent/journal.js';
import { Watcher, type WatcherOptions } from '../../agent/watcher.js';

let tmp: string;
let root: string;
let journal: Journal;
let watcher: Watcher | undefined;

beforeEach(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'bulwark-watch-'));
  root = join(tmp, 'root');
  await mkdir(root);
  journal = await Journal.open(join(tmp, 'journal'));
});

afterEach(async () => {
  await watcher?.stop();
  watcher = undefined;
  await journal.close();
  await rm(tmp, { recursive: true, force: true });
});

async function startWatcher(options: WatcherOptions = {}): Promise<Watcher> {
  watcher = new Watcher(root, journal, options);
  await watcher.start();
  return watcher;
}

async function marks(): Promise<Map<string, DirtyEvent>> {
  const m = new Map<string, DirtyEvent>();
  for await (const d of journal.dirtyPaths()) m.set(d.path, d.event);
  return m;
}

/**
 * Poll `check` until it returns true; a generous deadline, not a fixed sleep. With `flush`, the watcher
 * is flushed before each check (for checks on the journal).
 */
async function eventually(check: () => Promise<boolean>, what: string, { timeoutMs = 20_000, flush = true } = {}): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (flush) await watcher?.flush().catch(() => undefined);
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('Watcher → journal', () => {
  it('marks created, modified, deleted and renamed files and directories; excluded names stay out', async () => {
    await writeFile(join(root, 'mod.txt'), 'v1');
    await writeFile(join(root, 'del.txt'), 'x');
    await writeFile(join(root, 'old.txt'), 'x');
    await writeFile(join(root, 'untouched.txt'), 'x');
    await mkdir(join(root, 'olddir'));
    await writeFile(join(root, 'olddir', 'inner.txt'), 'x');
    await mkdir(join(root, 'mvdir'));
    await writeFile(join(root, 'mvdir', 'x'), 'x');

    const w = await startWatcher({ exclude: ['*.tmp'] });
    expect(w.state).toBe('running');
    expect(await marks()).toEqual(new Map()); // ignoreInitial: existing files are the scanner's business

    await writeFile(join(root, 'scratch.tmp'), 'excluded');
    await writeFile(join(root, 'new.txt'), 'new');
    await appendFile(join(root, 'mod.txt'), 'v2');
    await rm(join(root, 'del.txt'));
    await rename(join(root, 'old.txt'), join(root, 'renamed.txt'));
    await mkdir(join(root, 'newdir'));
    await writeFile(join(root, 'newdir', 'f'), 'f');
    await rm(join(root, 'olddir'), { recursive: true });
    await rename(join(root, 'mvdir'), join(root, 'mvdir2'));

    // The event for each path. The event is a hint (the backup decides from lstat): files' changes
    // arrive as their directory's raw notifications, recorded as 'change'; directories get chokidar's
    // own events; a raw notification that arrives after chokidar's event was flushed records 'change'.
    const expected: Record<string, DirtyEvent> = {
      'new.txt': 'add',
      'mod.txt': 'change',
      'del.txt': 'unlink',
      'old.txt': 'unlink',
      'renamed.txt': 'add',
      newdir: 'addDir',
      'newdir/f': 'add',
      olddir: 'unlinkDir',
      mvdir: 'unlinkDir',
      mvdir2: 'addDir',
      'mvdir2/x': 'add',
    };
    const matches = (m: Map<string, DirtyEvent>): boolean => Object.entries(expected).every(([p, e]) => m.get(p) === e || m.get(p) === 'change');
    await eventually(async () => matches(await marks()), 'all the changes to be marked').catch(async (err: Error) => {
      throw new Error(`${err.message}; journal has ${JSON.stringify(Object.fromEntries(await marks()))}`);
    });
    const m = await marks();
    expect(matches(m)).toBe(true);
    // directories: chokidar's own events; the file of a directory renamed into place: listed as new
    expect(Object.fromEntries(['newdir', 'olddir', 'mvdir', 'mvdir2', 'mvdir2/x'].map((p) => [p, m.get(p)]))).toEqual({
      newdir: 'addDir',
      olddir: 'unlinkDir',
      mvdir: 'unlinkDir',
      mvdir2: 'addDir',
      'mvdir2/x': 'add',
    });
    expect(m.has('untouched.txt')).toBe(false);
    expect(m.has('scratch.tmp')).toBe(false);
  }, 30_000);

  it('coalesces: events are written in few batches, the last event per path wins', async () => {
    await startWatcher({ flushIntervalMs: 60_000 }); // only flush() and the size trigger write
    for (let i = 0; i < 50; i++) await writeFile(join(root, `f${i}`), 'x');
    await eventually(async () => watcher!.pendingCount === 50, '50 pending paths', { flush: false });
    expect((await marks()).size).toBe(0); // nothing written before the interval or a flush
    await watcher!.flush();
    expect((await marks()).size).toBe(50);
    await mkdir(join(root, 'd0'));
    await eventually(async () => (await marks()).get('d0') === 'addDir', 'd0 to be marked addDir');
    await rm(join(root, 'd0'), { recursive: true });
    await eventually(async () => (await marks()).get('d0') === 'unlinkDir', 'd0 to be marked unlinkDir (the last event wins)');
    const seqs = new Set<number>();
    for await (const d of journal.dirtyPaths()) seqs.add(d.seq);
    expect(seqs.size).toBeLessThanOrEqual(10); // not one batch per event
  });

  it('a burst of 20,000 file creations ends with all 20,000 paths in the journal', async () => {
    await startWatcher();
    const dirs = ['a', 'a/b', 'a/b/c', 'd'];
    for (const d of dirs) await mkdir(join(root, d), { recursive: true });
    const files: string[] = [];
    for (let i = 0; i < 20_000; i++) files.push(`${dirs[i % dirs.length]}/file-${i}`);
    for (let i = 0; i < files.length; i += 200) {
      await Promise.all(files.slice(i, i + 200).map((f) => writeFile(join(root, f), '')));
    }
    let count = 0;
    let missing: string[] = [];
    await eventually(
      async () => {
        const m = await marks();
        count = files.filter((f) => m.has(f)).length; // 'add', or 'change' when only the raw notification got through
        missing = files.filter((f) => !m.has(f));
        return count === files.length;
      },
      'all 20,000 files to be marked',
      { timeoutMs: 60_000 },
    ).catch((err: Error) => {
      throw new Error(`${err.message}: ${count} of ${files.length} marked; missing ${JSON.stringify(missing.slice(0, 60))}`);
    });
    const m = await marks();
    for (const d of dirs) expect(m.get(d)).toBe('addDir');
    let batches = 0;
    const seqs = new Set<number>();
    for await (const d of journal.dirtyPaths()) if (!seqs.has(d.seq)) (seqs.add(d.seq), batches++);
    expect(batches).toBeLessThan(2_000); // coalesced: far fewer batches than paths
  }, 120_000);

  it('stop() flushes what is pending and detaches: the journal is untrusted afterwards', async () => {
    await journal.close();
    journal = await Journal.open(join(tmp, 'journal'));
    const w = await startWatcher({ flushIntervalMs: 60_000 });
    await journal.commitBackup({ snapshotId: 's1', clearedUpToSeq: journal.beginBackup().seq, states: [] });
    expect(await journal.isTrusted()).toBe(true);
    await writeFile(join(root, 'late.txt'), 'x');
    await eventually(async () => w.pendingCount > 0, 'the event to arrive', { flush: false });
    await w.stop();
    expect(w.state).toBe('stopped');
    expect((await marks()).has('late.txt')).toBe(true);
    expect(await journal.trustStatus()).toMatchObject({ trusted: false, reason: 'watcher stopped' });
  });

  it('a new directory: entries made before chokidar watched it are marked, and a subdirectory made then is watched', async () => {
    // Make `late/sub/f` at the moment chokidar's listing of the new directory `late` ends: after the
    // listing, before chokidar starts watching `late`, so no event will ever report them.
    const watchLate = (p: string, o: Parameters<typeof watch>[1]): FSWatcher => {
      const fsw = watch(p, o);
      const list = fsw._readdirp.bind(fsw);
      fsw._readdirp = (dir, opts) => {
        const listing = list(dir, opts);
        if (dir.endsWith('late')) {
          listing?.once('end', () => {
            mkdirSync(join(root, 'late/sub'));
            writeFileSync(join(root, 'late/sub/f'), 'x');
          });
        }
        return listing;
      };
      return fsw;
    };
    await startWatcher({ watch: watchLate });
    await mkdir(join(root, 'late'));
    await eventually(async () => (await marks()).get('late/sub/f') === 'add', 'the file made in the gap to be marked');
    expect((await marks()).get('late/sub')).toBe('addDir');
    // and the subdirectory is watched: a later change in it has an event
    await writeFile(join(root, 'late/sub/g'), 'later');
    await eventually(async () => (await marks()).has('late/sub/g'), 'a later file in the subdirectory to be marked');
  });

  it('watches directories only, and still marks every kind of change to existing files', async () => {
    for (const d of ['a', 'a/a', 'b']) await mkdir(join(root, d));
    const files = ['top.txt', 'a/w.txt', 'a/t.txt', 'a/c.txt', 'a/a/x', 'b/d.txt', 'b/same'];
    for (const f of files) await writeFile(join(root, f), 'content');
    let fsw: FSWatcher | undefined;
    await startWatcher({ watch: (p, o) => (fsw = watch(p, o)) });
    // chokidar tracks the directories and nothing inside them but directories
    const watched = fsw!.getWatched();
    expect(Object.keys(watched).sort()).toEqual([join(root, '..'), root, join(root, 'a'), join(root, 'a/a'), join(root, 'b')].sort());
    expect(Object.values(watched).flat().sort()).toEqual(['a', 'a', 'b', 'root']);

    await appendFile(join(root, 'top.txt'), 'more'); // write
    await writeFile(join(root, 'a/w.txt'), 'replaced'); // truncate + write
    await truncate(join(root, 'a/t.txt'), 1); // truncate only
    await chmod(join(root, 'a/c.txt'), 0o600); // attributes only
    await appendFile(join(root, 'a/a/x'), 'more'); // a file named like its directory's own name
    await rm(join(root, 'b/d.txt')); // delete
    await writeFile(join(root, 'b/same'), 'content'); // same size, same content
    await eventually(async () => {
      const m = await marks();
      return files.every((f) => m.has(f));
    }, 'every file to be marked').catch(async (err: Error) => {
      throw new Error(`${err.message}; journal has ${JSON.stringify(Object.fromEntries(await marks()))}`);
    });
  });
});

describe('Watcher errors', () => {
  it('a chokidar error untrusts the journal, is reported through onError and fails the watcher', async () => {
    let fsw: FSWatcher | undefined;
    const errors: BulwarkError[] = [];
    const w = await startWatcher({
      onError: (e) => errors.push(e),
      watch: (p, o) => (fsw = watch(p, o)),
    });
    await journal.commitBackup({ snapshotId: 's1', clearedUpToSeq: journal.beginBackup().seq, states: [] });
    expect(await journal.isTrusted()).toBe(true);

    const cause = Object.assign(new Error('EMFILE: too many open files, watch'), { code: 'EMFILE' });
    fsw!.emit('error', cause);

    expect(await journal.isTrusted()).toBe(false); // at once, in memory
    await eventually(async () => w.state === 'failed' && fsw!.closed, 'the watcher to fail', { flush: false });
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ code: 'JOURNAL_UNTRUSTED', cause });
    expect(errors[0]!.message).toMatch(/EMFILE.*LimitNOFILE/);
    expect((await journal.trustStatus()).reason).toMatch(/EMFILE/);
    // Detached: a full-scan backup committed now cannot make the journal trusted again.
    const r = await journal.commitBackup({ snapshotId: 's2', clearedUpToSeq: journal.beginBackup().seq, states: [] });
    expect(r.trust.trusted).toBe(false);
  });

  it('a failed flush to LevelDB is reported and fails the watcher', async () => {
    const errors: BulwarkError[] = [];
    const w = await startWatcher({ flushIntervalMs: 60_000, onError: (e) => errors.push(e) });
    await writeFile(join(root, 'x'), 'x');
    await eventually(async () => w.pendingCount > 0, 'the event to arrive', { flush: false });
    await journal.close(); // the database goes away under the watcher
    await expect(w.flush()).rejects.toMatchObject({ code: 'JOURNAL_UNTRUSTED' });
    expect(w.state).toBe('failed');
    expect(errors[0]?.message).toMatch(/could not record 1 changed paths/);
    journal = await Journal.open(join(tmp, 'journal')); // for afterEach
  });

  it('overflow drops the waiting paths, untrusts the journal and keeps watching', async () => {
    const errors: BulwarkError[] = [];
    const w = await startWatcher({ flushIntervalMs: 60_000, flushAtPending: 1_000, maxPending: 10, onError: (e) => errors.push(e) });
    await journal.commitBackup({ snapshotId: 's1', clearedUpToSeq: journal.beginBackup().seq, states: [] });
    for (let i = 0; i < 11; i++) await writeFile(join(root, `f${i}`), 'x');
    await eventually(async () => errors.length > 0, 'the overflow', { flush: false });
    expect(errors[0]?.message).toMatch(/overflow/);
    expect(await journal.trustStatus()).toMatchObject({ trusted: false, reason: expect.stringMatching(/overflow/) });
    expect(w.state).toBe('running');
    // Still watching, and still attached: a backup begun after the overflow restores trust.
    await writeFile(join(root, 'after'), 'x');
    await eventually(async () => (await marks()).has('after'), 'a later change to be marked');
    const r = await journal.commitBackup({ snapshotId: 's2', clearedUpToSeq: journal.beginBackup().seq, states: [] });
    expect(r.trust.trusted).toBe(true);
  });

  it('a burst of notifications in one event-loop turn (the kernel queue may have overflowed) untrusts the journal and keeps watching', async () => {
    const errors: BulwarkError[] = [];
    const w = await startWatcher({ kernelQueueLimit: 100, onError: (e) => errors.push(e) });
    await journal.commitBackup({ snapshotId: 's1', clearedUpToSeq: journal.beginBackup().seq, states: [] });
    expect(await journal.isTrusted()).toBe(true);
    // a few at a time: the event loop turns between them, no turn sees 100 notifications
    for (let i = 0; i < 150; i++) await writeFile(join(root, `slow-${i}`), 'x');
    await eventually(async () => (await marks()).has('slow-149'), 'the slow writes to be marked');
    expect(errors).toEqual([]);
    expect(await journal.isTrusted()).toBe(true);
    // synchronously, the event loop blocked: the notifications queue up and arrive in one turn
    for (let i = 0; i < 150; i++) writeFileSync(join(root, `fast-${i}`), 'x');
    await eventually(async () => errors.length > 0, 'the suspected queue overflow', { flush: false });
    expect(errors[0]).toMatchObject({ code: 'JOURNAL_UNTRUSTED', message: expect.stringMatching(/inotify queue may have overflowed/) });
    expect(await journal.trustStatus()).toMatchObject({ trusted: false, reason: expect.stringMatching(/max_queued_events/) });
    expect(w.state).toBe('running');
    await eventually(async () => (await marks()).has('fast-149'), 'the fast writes to be marked all the same');
  });

  it('a watcher that cannot attach to the journal fails its start instead of hanging', async () => {
    await startWatcher();
    const errors: BulwarkError[] = [];
    const second = new Watcher(root, journal, { onError: (e) => errors.push(e) });
    try {
      await expect(second.start()).rejects.toMatchObject({ code: 'JOURNAL_UNTRUSTED' });
      expect(second.state).toBe('failed');
      expect(errors[0]?.message).toMatch(/could not attach/);
    } finally {
      await second.stop();
    }
  });

  it('a root that is not a directory is refused', async () => {
    await writeFile(join(tmp, 'file'), 'x');
    watcher = new Watcher(join(tmp, 'file'), journal);
    await expect(watcher.start()).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(watcher.state).toBe('failed');
  });

  // A real ENOSPC: the watcher runs in a child process inside a new user namespace whose own inotify
  // watch limit (/proc/sys/user/max_inotify_watches, per user namespace) is set to 4. The machine's
  // sysctls are not touched. Needs user namespaces (unshare -U), which every machine this project
  // runs on has; where they are missing the test fails and says so rather than being skipped.
  it('a real ENOSPC (inotify watch limit) untrusts the journal and is reported', async () => {
    const probe = spawnSync('unshare', ['-U', '-r', 'sh', '-c', 'echo 4 > /proc/sys/user/max_inotify_watches'], { encoding: 'utf8' });
    expect(probe.status, `this test needs user namespaces (unshare -U -r): ${probe.stderr}`).toBe(0);
    for (const d of ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h']) await mkdir(join(root, d));
    const child = join(tmp, 'child.mjs');
    await writeFile(child, childScript());
    const out = spawnSync(
      'unshare',
      ['-U', '-r', 'sh', '-c', 'echo 4 > /proc/sys/user/max_inotify_watches && exec "$0" "$@"', process.execPath, '--import', 'tsx', child, root, join(tmp, 'child-journal')],
      { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 },
    );
    expect(out.stderr).toBe('');
    expect(out.status).toBe(0);
    const result = JSON.parse(out.stdout) as {
      errors: { code: string; causeCode: string; message: string }[];
      startError: string | null;
      state: string;
      trust: { trusted: boolean; reason: string };
    };
    expect(result.errors.length).toBeGreaterThan(0);
    expect(result.errors[0]).toMatchObject({ code: 'JOURNAL_UNTRUSTED', causeCode: 'ENOSPC' });
    expect(result.errors[0]!.message).toMatch(/max_user_watches/);
    expect(result.startError).toBe('JOURNAL_UNTRUSTED');
    expect(result.state).toBe('failed');
    expect(result.trust.trusted).toBe(false);
    expect(result.trust.reason).toMatch(/ENOSPC/);
  }, 60_000);
});

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

function childScript(): string {
  const journalUrl = pathToFileURL(join(repoRoot, 'agent/journal.ts')).href;
  const watcherUrl = pathToFileURL(join(repoRoot, 'agent/watcher.ts')).href;
  return `
import { Journal } from ${JSON.stringify(journalUrl)};
import { Watcher } from ${JSON.stringify(watcherUrl)};
const [root, jdir] = process.argv.slice(2);
const journal = await Journal.open(jdir);
const errors = [];
const w = new Watcher(root, journal, { onError: (e) => errors.push({ code: e.code, causeCode: e.cause?.code, message: e.message }) });
let startError = null;
try { await w.start(); } catch (e) { startError = e.code; }
for (let i = 0; i < 100 && w.state !== 'failed'; i++) await new Promise((r) => setTimeout(r, 20));
const trust = await journal.trustStatus();
await w.stop();
await journal.close();
process.stdout.write(JSON.stringify({ errors, startError, state: w.state, trust }));
`;
}
