/**
 * The change journal on a real LevelDB in a temp dir: dirty marks, commitBackup's atomic clearing by
 * sequence number (and its batches when large), persistence across reopen, the trust lifecycle, and
 * the paths of files with several names (hard links).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../common/clock.js';
import { comparePaths, type FileState } from '../../agent/file-state.js';
import { Journal, type DirtyMark, type JournalEntry } from '../../agent/journal.js';

let dir: string;
let journal: Journal | undefined;
const clock = new ManualClock(1_700_000_000_000);

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulwark-journal-'));
});

afterEach(async () => {
  await journal?.close();
  journal = undefined;
  await rm(dir, { recursive: true, force: true });
});

async function open(options: { commitBatch?: number } = {}): Promise<Journal> {
  journal = await Journal.open(join(dir, 'journal'), { clock, ...options });
  return journal;
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

function entry(size: number, content: string[] = [`blob-${size}`]): JournalEntry {
  const state: FileState = { type: 'file', size, mtimeNs: 10n ** 18n + BigInt(size), ctimeNs: 2n * 10n ** 18n, inode: 2n ** 60n + BigInt(size), mode: 0o640 };
  return { state, content };
}

/** A file with `nlink` names on inode `inode` of device 7. */
function linked(inode: number, nlink: number): JournalEntry {
  const state: FileState = { type: 'file', size: 1, mtimeNs: 1n, ctimeNs: 1n, inode: BigInt(inode), mode: 0o644, nlink, dev: 7n };
  return { state, content: ['blob'] };
}

describe('dirty marks', () => {
  it('markDirty → dirtyPaths round-trips, one seq per batch, last event per path wins, tree order', async () => {
    const j = await open();
    const seq1 = await j.markDirty([
      { path: 'b.txt', event: 'add' },
      { path: 'a/x', event: 'add' },
    ]);
    clock.advance(5);
    const seq2 = await j.markDirty([
      { path: 'a', event: 'addDir' },
      { path: 'b.txt', event: 'change' },
      { path: 'a.txt', event: 'unlink' },
    ]);
    expect(seq2).toBeGreaterThan(seq1);
    const marks = await collect(j.dirtyPaths());
    expect(marks).toEqual<DirtyMark[]>([
      { path: 'a', event: 'addDir', seq: seq2, at: clock.now() },
      { path: 'a/x', event: 'add', seq: seq1, at: clock.now() - 5 },
      { path: 'a.txt', event: 'unlink', seq: seq2, at: clock.now() },
      { path: 'b.txt', event: 'change', seq: seq2, at: clock.now() },
    ]);
  });

  it('rejects a path that is not relative to the root, writing nothing', async () => {
    const j = await open();
    await expect(j.markDirty([{ path: 'ok', event: 'add' }, { path: '../etc/passwd', event: 'add' }])).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(await collect(j.dirtyPaths())).toEqual([]);
  });

  it('returns every mark of a large batch, in tree order', async () => {
    const j = await open();
    const paths = Array.from({ length: 12_000 }, (_, i) => `d${i % 7}/f${i}`);
    await j.markDirty(paths.map((path) => ({ path, event: 'add' as const })));
    const got = (await collect(j.dirtyPaths())).map((m) => m.path);
    expect(got).toEqual([...paths].sort(comparePaths));
  });
});

describe('states', () => {
  it('getState and states(dir) read what commitBackup wrote; null deletes', async () => {
    const j = await open();
    await j.watchStarted();
    await j.commitBackup({
      snapshotId: 's1',
      clearedUpToSeq: j.beginBackup().seq,
      states: new Map<string, JournalEntry | null>([
        ['docs', entry(0, [])],
        ['docs/a', entry(1)],
        ['docs/sub/b', entry(2, ['x', 'y'])],
        ['docs.txt', entry(3)],
        ['other', entry(4)],
      ]),
    });
    expect(await j.getState('docs/sub/b')).toEqual(entry(2, ['x', 'y']));
    expect(await j.getState('missing')).toBeUndefined();
    expect((await collect(j.states('docs'))).map((s) => s.path)).toEqual(['docs/a', 'docs/sub/b']);
    expect((await collect(j.states())).map((s) => s.path)).toEqual(['docs', 'docs/a', 'docs/sub/b', 'docs.txt', 'other']);

    const r = await j.commitBackup({ snapshotId: 's2', clearedUpToSeq: j.beginBackup().seq, states: [['docs/a', null], ['other', entry(5)]] });
    expect(r).toMatchObject({ written: 1, deleted: 1 });
    expect(await j.getState('docs/a')).toBeUndefined();
    expect((await j.getState('other'))?.state.size).toBe(5);
    expect((await j.getMeta()).lastSnapshotId).toBe('s2');
  });
});

describe('commitBackup', () => {
  it('clears only marks with seq ≤ clearedUpToSeq: a mark set after the backup began survives', async () => {
    const j = await open();
    await j.watchStarted();
    await j.markDirty([
      { path: 'a', event: 'add' },
      { path: 'b', event: 'add' },
      { path: 'c', event: 'add' },
    ]);
    const start = j.beginBackup();
    // While the backup runs: 'b' changes again and 'd' appears.
    await j.markDirty([
      { path: 'b', event: 'change' },
      { path: 'd', event: 'add' },
    ]);
    const r = await j.commitBackup({
      snapshotId: 'snap-1',
      clearedUpToSeq: start.seq,
      states: [
        ['a', entry(1)],
        ['b', entry(2)],
        ['c', entry(3)],
      ],
    });
    expect(r.cleared).toBe(2);
    expect((await collect(j.dirtyPaths())).map((m) => [m.path, m.event])).toEqual([
      ['b', 'change'],
      ['d', 'add'],
    ]);
    expect(await j.getState('b')).toEqual(entry(2));
  });

  it('is atomic: a commit that fails half-way writes no state, clears no mark, keeps the last snapshot id', async () => {
    const j = await open();
    await j.watchStarted();
    await j.markDirty([{ path: 'a', event: 'add' }]);
    await j.commitBackup({ snapshotId: 'snap-1', clearedUpToSeq: j.beginBackup().seq, states: [['a', entry(1)]] });
    await j.markDirty([{ path: 'a', event: 'change' }, { path: 'b', event: 'add' }]);
    const seq = j.beginBackup().seq;
    async function* states(): AsyncGenerator<[string, JournalEntry | null]> {
      yield ['a', entry(10)];
      yield ['b', entry(20)];
      throw new Error('upload failed half-way');
    }
    await expect(j.commitBackup({ snapshotId: 'snap-2', clearedUpToSeq: seq, states: states() })).rejects.toThrow('upload failed half-way');
    await expect(j.commitBackup({ snapshotId: 'snap-2', clearedUpToSeq: seq, states: [['a/../x', entry(1)]] })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(await j.getState('a')).toEqual(entry(1));
    expect(await j.getState('b')).toBeUndefined();
    expect((await collect(j.dirtyPaths())).map((m) => m.path)).toEqual(['a', 'b']);
    expect((await j.getMeta()).lastSnapshotId).toBe('snap-1');
    // And the journal still works after the failed batch.
    await j.commitBackup({ snapshotId: 'snap-2', clearedUpToSeq: seq, states: [['b', entry(20)]] });
    expect(await collect(j.dirtyPaths())).toEqual([]);
  });

  it('refuses a clearedUpToSeq the journal never handed out', async () => {
    const j = await open();
    await expect(j.commitBackup({ snapshotId: 's', clearedUpToSeq: j.currentSeq() + 1, states: [] })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('does not lose a mark written concurrently with the commit', async () => {
    const j = await open();
    await j.watchStarted();
    await j.markDirty([{ path: 'x', event: 'add' }]);
    const start = j.beginBackup();
    const commit = j.commitBackup({ snapshotId: 's', clearedUpToSeq: start.seq, states: [['x', entry(1)]] });
    const mark = j.markDirty([{ path: 'x', event: 'change' }]);
    await Promise.all([commit, mark]);
    expect((await collect(j.dirtyPaths())).map((m) => [m.path, m.event])).toEqual([['x', 'change']]);
  });
});

describe('large commits', () => {
  it('are written in batches of commitBatch operations, with the same result', async () => {
    const j = await open({ commitBatch: 3 });
    await j.watchStarted();
    await j.markDirty(Array.from({ length: 5 }, (_, i) => ({ path: `m${i}`, event: 'change' as const })));
    const states: Array<[string, JournalEntry]> = Array.from({ length: 10 }, (_, i) => [`f${i}`, entry(i)]);
    const r = await j.commitBackup({ snapshotId: 'big', clearedUpToSeq: j.beginBackup().seq, states });
    expect(r).toMatchObject({ written: 10, cleared: 5, trust: { trusted: true } });
    expect(r.batches).toBe(6); // 15 operations in batches of 3, then the last one with the trust record
    expect((await collect(j.states())).map((s) => s.path)).toEqual(states.map(([p]) => p).sort(comparePaths));
    expect(await collect(j.dirtyPaths())).toEqual([]);
    expect((await j.getMeta()).lastSnapshotId).toBe('big');
  });

  it('one that fails after a batch was written names the new snapshot and untrusts the journal', async () => {
    const j = await open({ commitBatch: 3 });
    await j.watchStarted();
    await j.commitBackup({ snapshotId: 's1', clearedUpToSeq: j.beginBackup().seq, states: [['a', entry(1)]] });
    expect(await j.isTrusted()).toBe(true);
    async function* states(): AsyncGenerator<[string, JournalEntry | null]> {
      for (let i = 0; i < 7; i++) yield [`f${i}`, entry(i)];
      throw new Error('failed half-way');
    }
    await expect(j.commitBackup({ snapshotId: 's2', clearedUpToSeq: j.beginBackup().seq, states: states() })).rejects.toThrow('failed half-way');
    // some states are s2's, the rest s1's: only a reconcile scan against s2 is safe now (see journal.ts)
    expect(await j.trustStatus()).toMatchObject({ trusted: false, reason: expect.stringMatching(/commit of snapshot s2 failed/) });
    expect((await j.getMeta()).lastSnapshotId).toBe('s2');
    expect(await j.getState('f0')).toEqual(entry(0));
  });
});

describe('staged states (a backup that does not hold its states)', () => {
  it('are written in batches as they come and moved into the states by the commit', async () => {
    const j = await open({ commitBatch: 3 });
    await j.watchStarted();
    await j.commitBackup({ snapshotId: 's1', clearedUpToSeq: j.beginBackup().seq, states: [['gone', entry(1)], ['kept', entry(2)]] });
    const start = j.beginBackup();
    const stage = await j.stageStates();
    for (let i = 0; i < 7; i++) await stage.add(`f${i}`, entry(10 + i));
    await stage.add('gone', null);
    await stage.add('x/linked', linked(30, 2));
    await stage.add('y/linked', linked(30, 2));
    expect(stage.size).toBe(10);
    const r = await j.commitBackup({ snapshotId: 's2', clearedUpToSeq: start.seq, states: stage });
    expect(r).toMatchObject({ written: 9, deleted: 1, trust: { trusted: true } });
    expect((await collect(j.states())).map((s) => s.path)).toEqual(['f0', 'f1', 'f2', 'f3', 'f4', 'f5', 'f6', 'kept', 'x/linked', 'y/linked']);
    expect(await j.getState('f6')).toEqual(entry(16));
    expect(j.linkedPaths().sort()).toEqual(['x/linked', 'y/linked']);
    // the staged copies are gone, and the stage cannot be committed twice
    await expect(j.commitBackup({ snapshotId: 's3', clearedUpToSeq: j.beginBackup().seq, states: stage })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(await collect(await j.stageStates())).toEqual([]);
  });

  it('a stage that is not committed is dropped: by the next stage, and on reopen', async () => {
    let j = await open({ commitBatch: 2 });
    const first = await j.stageStates();
    for (let i = 0; i < 5; i++) await first.add(`old${i}`, entry(i));
    await first.flush();
    expect((await collect(first)).length).toBe(5);
    const second = await j.stageStates();
    expect(await collect(second)).toEqual([]);
    expect(() => first.add('late', entry(9))).not.toThrow(); // harmless, but it cannot be committed:
    await expect(j.commitBackup({ snapshotId: 's', clearedUpToSeq: j.beginBackup().seq, states: first })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await second.add('a', entry(1));
    await second.flush();
    await j.close();
    j = await open();
    expect(await collect(await j.stageStates())).toEqual([]);
    expect(await collect(j.states())).toEqual([]);
  });
});

/** Keys of the journal's raw LevelDB under sublevel `name` (the journal closed). */
async function rawKeys(name: string): Promise<string[]> {
  const db = new Level<string, string>(join(dir, 'journal'));
  try {
    const keys: string[] = [];
    for await (const k of db.keys({ gt: `!${name}!`, lt: `!${name}!\uffff` })) keys.push(k);
    return keys;
  } finally {
    await db.close();
  }
}

describe('complete stages (a full walk: a new generation of states)', () => {
  it('replace every state at the commit without moving them; the old generation is cleared; reads follow across reopen', async () => {
    let j = await open({ commitBatch: 3 });
    await j.watchStarted();
    await j.commitBackup({ snapshotId: 's1', clearedUpToSeq: j.beginBackup().seq, states: [['old-only', entry(1)], ['kept', entry(2)], ['d/x', entry(3)]] });
    await j.markDirty([{ path: 'kept', event: 'change' }]);
    const start = j.beginBackup();
    const stage = await j.stageStates({ complete: true });
    // still the previous states while the walk stages the new ones
    for (let i = 0; i < 7; i++) await stage.add(`f${i}`, entry(10 + i));
    await stage.add('kept', entry(20));
    await stage.add('d/x', null);
    expect((await collect(j.states())).map((x) => x.path)).toEqual(['d/x', 'kept', 'old-only']);
    const r = await j.commitBackup({ snapshotId: 's2', clearedUpToSeq: start.seq, states: stage, scanned: true });
    expect(r).toMatchObject({ written: 8, deleted: 1, cleared: 1, trust: { trusted: true } });
    // exactly what the walk staged: 'old-only' (not seen by the walk) and 'd/x' (gone) are not there
    expect((await collect(j.states())).map((x) => x.path)).toEqual(['f0', 'f1', 'f2', 'f3', 'f4', 'f5', 'f6', 'kept']);
    expect(await j.getState('kept')).toEqual(entry(20));
    expect(await j.getState('old-only')).toBeUndefined();
    expect(await collect(j.dirtyPaths())).toEqual([]);
    await j.close();
    journal = undefined;
    expect(await rawKeys('state')).toEqual([]); // generation 0, replaced
    expect((await rawKeys('state@1')).length).toBe(8);
    j = await open();
    expect(await j.getState('f6')).toEqual(entry(16));
    expect((await j.getMeta()).lastSnapshotId).toBe('s2');
    // and again: generation 2, then a plain (incremental) commit on top of it
    const again = await j.stageStates({ complete: true });
    await again.add('only', entry(5));
    await j.commitBackup({ snapshotId: 's3', clearedUpToSeq: j.beginBackup().seq, states: again, scanned: true });
    await j.commitBackup({ snapshotId: 's4', clearedUpToSeq: j.beginBackup().seq, states: [['more', entry(6)]] });
    expect((await collect(j.states())).map((x) => x.path)).toEqual(['more', 'only']);
    await j.close();
    journal = undefined;
    expect(await rawKeys('state@1')).toEqual([]);
    expect((await rawKeys('state@2')).length).toBe(2);
  });

  it('one that is not committed (a crash mid-walk) leaves the previous states, and is cleared on open', async () => {
    let j = await open({ commitBatch: 2 });
    await j.commitBackup({ snapshotId: 's1', clearedUpToSeq: j.beginBackup().seq, states: [['a', entry(1)]] });
    const stage = await j.stageStates({ complete: true });
    for (let i = 0; i < 5; i++) await stage.add(`n${i}`, entry(i));
    await stage.flush();
    await j.close();
    journal = undefined;
    expect((await rawKeys('state@1')).length).toBe(5);
    j = await open();
    expect((await collect(j.states())).map((x) => x.path)).toEqual(['a']);
    expect((await j.getMeta()).lastSnapshotId).toBe('s1');
    await j.close();
    journal = undefined;
    expect(await rawKeys('state@1')).toEqual([]);
  });

  it('rebuilds the hard-link records from the walk: names seen stay, names not seen leave', async () => {
    const j = await open({ commitBatch: 2 });
    await j.commitBackup({ snapshotId: 's1', clearedUpToSeq: j.beginBackup().seq, states: [['a/x', linked(10, 2)], ['b/y', linked(10, 2)], ['c/z', linked(11, 2)], ['c/w', linked(11, 2)]] });
    expect(j.linkedPaths().sort()).toEqual(['a/x', 'b/y', 'c/w', 'c/z']);
    const stage = await j.stageStates({ complete: true });
    await stage.add('a/x', linked(10, 2));
    await stage.add('b/y', linked(10, 2));
    await stage.add('c/z', entry(1)); // now a single name; c/w not seen at all
    await stage.add('n/new', linked(12, 2));
    await stage.add('n/new2', linked(12, 2));
    await j.commitBackup({ snapshotId: 's2', clearedUpToSeq: j.beginBackup().seq, states: stage, scanned: true });
    expect(j.linkedPaths().sort()).toEqual(['a/x', 'b/y', 'n/new', 'n/new2']);
    expect((await j.trustStatus()).trusted).toBe(false); // no watcher attached: the commit's own rule
  });
});

describe('files with several names (hard links)', () => {
  it('linkedPaths lists them; a name gone, now single or under a removed directory leaves; it survives a reopen', async () => {
    let j = await open();
    await j.watchStarted();
    await j.commitBackup({
      snapshotId: 's1',
      clearedUpToSeq: j.beginBackup().seq,
      states: [
        ['a/x', linked(10, 2)],
        ['b/y', linked(10, 2)],
        ['c/one', linked(11, 3)],
        ['c/two', linked(11, 3)],
        ['c/sub/three', linked(11, 3)],
        ['plain', entry(1)],
      ],
    });
    expect(j.linkedPaths().sort()).toEqual(['a/x', 'b/y', 'c/one', 'c/sub/three', 'c/two']);
    await j.commitBackup({ snapshotId: 's2', clearedUpToSeq: j.beginBackup().seq, states: [['b/y', null], ['a/x', entry(2)], ['c/sub', null]] });
    expect(j.linkedPaths().sort()).toEqual(['c/one', 'c/two']);
    await j.close();
    j = await open();
    expect(j.linkedPaths().sort()).toEqual(['c/one', 'c/two']);
  });

  it('a new name the journal cannot place untrusts it once; names all known, or a count that did not grow, do not', async () => {
    const j = await open();
    await j.watchStarted();
    // both names seen: trusted
    let r = await j.commitBackup({ snapshotId: 's1', clearedUpToSeq: j.beginBackup().seq, states: [['a/x', linked(10, 2)], ['b/y', linked(10, 2)]] });
    expect(r.trust.trusted).toBe(true);
    // a new file with two names, one unknown (e.g. a link made to a file recorded as single): may be in the tree
    r = await j.commitBackup({ snapshotId: 's2', clearedUpToSeq: j.beginBackup().seq, states: [['d/w', linked(20, 2)]] });
    expect(r.trust).toMatchObject({ trusted: false, reason: expect.stringMatching(/hard link with unknown names.*"d\/w"/) });
    // the reconcile after it did not find the other name (outside the tree): trusted again
    r = await j.commitBackup({ snapshotId: 's3', clearedUpToSeq: j.beginBackup().seq, states: [['d/w', linked(20, 3)]], scanned: true });
    expect(r.trust.trusted).toBe(true);
    // a count that did not grow, after a backup that followed the marks
    r = await j.commitBackup({ snapshotId: 's3b', clearedUpToSeq: j.beginBackup().seq, states: [['d/w', linked(20, 3)]] });
    expect(r.trust.trusted).toBe(true);
    // a third name for inode 10, in the tree and recorded: all names known
    r = await j.commitBackup({ snapshotId: 's4', clearedUpToSeq: j.beginBackup().seq, states: [['a/x', linked(10, 3)], ['b/y', linked(10, 3)], ['c/z', linked(10, 3)]] });
    expect(r.trust.trusted).toBe(true);
    // a fourth name somewhere unknown
    r = await j.commitBackup({ snapshotId: 's5', clearedUpToSeq: j.beginBackup().seq, states: [['a/x', linked(10, 4)]] });
    expect(r.trust.trusted).toBe(false);
  });

  it('a journal from before link counts were recorded has its states cleared on open', async () => {
    let j = await open();
    await j.commitBackup({ snapshotId: 's1', clearedUpToSeq: j.beginBackup().seq, states: [['a', entry(1)]] });
    await j.close();
    journal = undefined;
    const db = new Level<string, unknown>(join(dir, 'journal'), { valueEncoding: 'json' });
    await db.sublevel('meta', { valueEncoding: 'json' }).del('format');
    await db.close();
    j = await open();
    expect(await collect(j.states())).toEqual([]);
    expect((await j.getMeta()).lastSnapshotId).toBe('s1'); // the next backup reconciles against s1: every entry is looked at
    await j.commitBackup({ snapshotId: 's2', clearedUpToSeq: j.beginBackup().seq, states: [['a', entry(1)]] });
    await j.close();
    j = await open();
    expect(await j.getState('a')).toEqual(entry(1)); // not cleared again
  });
});

describe('persistence', () => {
  it('keeps marks, states, seq and the last snapshot across close and reopen', async () => {
    let j = await open();
    await j.watchStarted();
    await j.markDirty([{ path: 'kept', event: 'add' }]);
    const start = j.beginBackup();
    await j.markDirty([{ path: 'later', event: 'change' }]);
    await j.commitBackup({ snapshotId: 'snap-9', clearedUpToSeq: start.seq, states: [['kept', entry(7, ['b1', 'b2'])]] });
    const seqBefore = j.currentSeq();
    await j.close();

    j = await open();
    expect(await j.getState('kept')).toEqual(entry(7, ['b1', 'b2']));
    expect((await collect(j.dirtyPaths())).map((m) => m.path)).toEqual(['later']);
    const meta = await j.getMeta();
    expect(meta.lastSnapshotId).toBe('snap-9');
    expect(meta.watcherStartedAt).toBe(clock.now());
    expect(j.currentSeq()).toBeGreaterThan(seqBefore); // the restart distrust takes a new seq; seqs never repeat
    const next = await j.markDirty([{ path: 'new', event: 'add' }]);
    expect(next).toBeGreaterThan(seqBefore);
  });
});

describe('trust', () => {
  it('first run: untrusted, never scanned', async () => {
    const j = await open();
    expect(await j.isTrusted()).toBe(false);
    expect((await j.trustStatus()).reason).toBe('never scanned');
    expect(j.beginBackup()).toMatchObject({ trusted: false, reason: 'never scanned' });
  });

  it('full lifecycle: commit with a watcher → trusted; error → untrusted; restart → untrusted', async () => {
    let j = await open();
    await j.watchStarted();
    await j.commitBackup({ snapshotId: 's1', clearedUpToSeq: j.beginBackup().seq, states: [] });
    expect(await j.isTrusted()).toBe(true);

    await j.markUntrusted('watcher error: ENOSPC');
    expect(await j.trustStatus()).toMatchObject({ trusted: false, reason: 'watcher error: ENOSPC' });
    await j.commitBackup({ snapshotId: 's2', clearedUpToSeq: j.beginBackup().seq, states: [] }); // the full-scan backup
    expect(await j.isTrusted()).toBe(true);

    await j.close();
    j = await open();
    expect(await j.trustStatus()).toMatchObject({ trusted: false, reason: expect.stringMatching(/agent restarted/) });
  });

  it('an untrust during a backup survives that backup’s commit', async () => {
    const j = await open();
    await j.watchStarted();
    const start = j.beginBackup();
    await j.markUntrusted('watcher overflow');
    const r = await j.commitBackup({ snapshotId: 's', clearedUpToSeq: start.seq, states: [] });
    expect(r.trust).toMatchObject({ trusted: false, reason: 'watcher overflow' });
    expect(await j.isTrusted()).toBe(false);
  });

  it('a commit cannot make the journal trusted without a watcher attached since before the backup', async () => {
    const j = await open();
    const early = j.beginBackup();
    const token = await j.watchStarted();
    let r = await j.commitBackup({ snapshotId: 's', clearedUpToSeq: early.seq, states: [] });
    expect(r.trust.trusted).toBe(false); // the watcher attached after the backup began
    expect(r.trust.reason).toMatch(/no watcher/);

    await j.watchStopped(token, 'watcher stopped');
    expect((await j.trustStatus()).reason).toBe('watcher stopped');
    r = await j.commitBackup({ snapshotId: 's', clearedUpToSeq: j.beginBackup().seq, states: [] });
    expect(r.trust.trusted).toBe(false);
  });

  it('untrusted state is persisted with its reason', async () => {
    let j = await open();
    await j.markUntrusted('watcher error: EMFILE');
    await j.close();
    j = await open();
    expect(await j.trustStatus()).toMatchObject({ trusted: false, reason: 'watcher error: EMFILE' });
  });

  it('only one watcher attaches at a time', async () => {
    const j = await open();
    await j.watchStarted();
    await expect(j.watchStarted()).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});
