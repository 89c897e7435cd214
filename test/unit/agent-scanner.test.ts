/**
 * The full stat walk on real temp trees: order and content of scanTree (symlinks not followed,
 * empty directories, excludes, abort), and reconcile against a real LevelDB journal (modified by size
 * and by utimes, added, deleted, nothing for an unchanged tree, unreadable directories not "deleted").
 */
import { spawnSync } from 'node:child_process';
import { appendFile, chmod, lstat, mkdir, mkdtemp, rename, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { encodeFileState } from '../../agent/file-state.js';
import { Journal, type JournalEntry } from '../../agent/journal.js';
import { reconcile, scanTree, type ReconcileChange } from '../../agent/scanner.js';

let tmp: string;
let root: string;
let journal: Journal | undefined;

beforeEach(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'bulwark-scan-'));
  root = join(tmp, 'root');
  await mkdir(root);
});

afterEach(async () => {
  await journal?.close();
  journal = undefined;
  await rm(tmp, { recursive: true, force: true });
});

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

/** A small tree with a symlink to a directory, an empty directory and names that sort differently by case. */
async function smallTree(): Promise<void> {
  await mkdir(join(root, 'a', 'm'), { recursive: true }); // a/m stays empty
  await writeFile(join(root, 'a', 'z.txt'), 'zz');
  await writeFile(join(root, 'a.txt'), 'a');
  await writeFile(join(root, 'b.txt'), 'bbb');
  await writeFile(join(root, 'Z'), '');
  await symlink('a', join(root, 'link')); // to a directory: must not be entered
}

describe('scanTree', () => {
  it('walks depth first in tree order, describes symlinks without following them, includes empty dirs', async () => {
    await smallTree();
    const entries = await collect(scanTree(root));
    expect(entries.map((e) => e.path)).toEqual(['Z', 'a', 'a/m', 'a/z.txt', 'a.txt', 'b.txt', 'link']);
    const byPath = new Map(entries.map((e) => [e.path, e.state]));
    expect(byPath.get('a')?.type).toBe('dir');
    expect(byPath.get('a/m')?.type).toBe('dir');
    expect(byPath.get('a/z.txt')).toMatchObject({ type: 'file', size: 2 });
    expect(byPath.get('b.txt')).toMatchObject({ type: 'file', size: 3 });
    expect(byPath.get('link')).toMatchObject({ type: 'symlink', size: 1 });
    const st = await lstat(join(root, 'a', 'z.txt'), { bigint: true });
    expect(byPath.get('a/z.txt')?.inode).toBe(st.ino);
    expect(byPath.get('a/z.txt')?.mtimeNs).toBe(st.mtimeNs);
  });

  it('leaves out excluded names and does not enter excluded directories', async () => {
    await smallTree();
    const paths = (await collect(scanTree(root, { exclude: ['*.txt', 'm/'] }))).map((e) => e.path);
    expect(paths).toEqual(['Z', 'a', 'link']);
    const byPredicate = (await collect(scanTree(root, { exclude: (p) => p === 'a' }))).map((e) => e.path);
    expect(byPredicate).toEqual(['Z', 'a.txt', 'b.txt', 'link']);
  });

  it('stops with ABORTED when the signal fires', async () => {
    await smallTree();
    const ac = new AbortController();
    const seen: string[] = [];
    await expect(
      (async () => {
        for await (const e of scanTree(root, { signal: ac.signal })) {
          seen.push(e.path);
          if (e.path === 'a') ac.abort();
        }
      })(),
    ).rejects.toMatchObject({ code: 'ABORTED' });
    expect(seen).toEqual(['Z', 'a']);
  });

  it('refuses a root that is not a directory', async () => {
    await writeFile(join(root, 'f'), 'x');
    await expect(collect(scanTree(join(root, 'f')))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(collect(scanTree(join(root, 'missing')))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('reports a name that is not valid UTF-8 through onError and goes on', async () => {
    await writeFile(join(root, 'ok'), 'x');
    const bad = Buffer.concat([Buffer.from(root + '/'), Buffer.from([0x66, 0xff, 0x6f])]); // "f\xffo"
    await writeFile(bad, 'x');
    const errors: [string, string][] = [];
    const paths = (await collect(scanTree(root, { onError: (p, e) => void errors.push([p, e.code]) }))).map((e) => e.path);
    expect(paths).toEqual(['ok']);
    expect(errors).toEqual([['f\ufffdo', 'INVALID_ARGUMENT']]);
  });
});

/** Record the tree as backed up: what a first full backup commits. */
async function commitScan(j: Journal): Promise<void> {
  await j.watchStarted();
  const states: [string, JournalEntry][] = [];
  for await (const e of scanTree(root)) states.push([e.path, { state: e.state, content: [`blob:${e.path}`] }]);
  await j.commitBackup({ snapshotId: 'snap-1', clearedUpToSeq: j.beginBackup().seq, states });
}

function summary(changes: ReconcileChange[]): [string, string][] {
  return changes.map((c) => [c.path, c.kind]);
}

describe('reconcile', () => {
  it('finds nothing for an unchanged tree, then exactly the added, modified and deleted paths', async () => {
    await smallTree();
    await mkdir(join(root, 'gone', 'deep'), { recursive: true });
    await writeFile(join(root, 'gone', 'deep', 'f'), 'f');
    await writeFile(join(root, 'same-size.txt'), '12345');
    journal = await Journal.open(join(tmp, 'journal'));
    await commitScan(journal);

    expect(await collect(reconcile(root, journal))).toEqual([]);

    await appendFile(join(root, 'b.txt'), 'more'); // size change
    const st = await lstat(join(root, 'same-size.txt'));
    await utimes(join(root, 'same-size.txt'), st.atime, new Date(st.mtimeMs - 3_600_000)); // mtime (and ctime) only
    await writeFile(join(root, 'a', 'new.txt'), 'new'); // added; changes a's mtime
    await rm(join(root, 'gone'), { recursive: true }); // deleted with its subtree
    await rm(join(root, 'a.txt'));

    const changes = await collect(reconcile(root, journal));
    expect(summary(changes)).toEqual([
      ['a', 'modified'],
      ['a/new.txt', 'added'],
      ['a.txt', 'deleted'],
      ['b.txt', 'modified'],
      ['gone', 'deleted'],
      ['gone/deep', 'deleted'],
      ['gone/deep/f', 'deleted'],
      ['same-size.txt', 'modified'],
    ]);
    const b = changes.find((c) => c.path === 'b.txt');
    expect(b?.current?.size).toBe(7);
    expect(b?.previous).toMatchObject({ state: { size: 3 }, content: ['blob:b.txt'] });
    expect(changes.find((c) => c.path === 'gone/deep/f')?.previous?.content).toEqual(['blob:gone/deep/f']);
  });

  it('detects a file replaced by another with the same size and mtime (inode, ctime)', async () => {
    await writeFile(join(root, 'f'), 'abc');
    journal = await Journal.open(join(tmp, 'journal'));
    await commitScan(journal);
    const before = await lstat(join(root, 'f'));
    await writeFile(join(root, 'f.new'), 'xyz');
    await utimes(join(root, 'f.new'), before.atime, before.mtime);
    await rm(join(root, 'f'));
    await rename(join(root, 'f.new'), join(root, 'f'));
    expect(summary(await collect(reconcile(root, journal)))).toEqual([['f', 'modified']]);
  });

  it('reports paths now excluded as deleted', async () => {
    await smallTree();
    journal = await Journal.open(join(tmp, 'journal'));
    await commitScan(journal);
    expect(summary(await collect(reconcile(root, journal, { exclude: ['a/'] })))).toEqual([
      ['a', 'deleted'],
      ['a/m', 'deleted'],
      ['a/z.txt', 'deleted'],
    ]);
  });

  it('an unreadable directory is reported through onError and its subtree is not taken as deleted (unprivileged child process)', async () => {
    await mkdir(join(root, 'locked'));
    await writeFile(join(root, 'locked', 'secret'), 's');
    await writeFile(join(root, 'open'), 'o');
    await writeFile(join(root, 'gone'), 'g');
    await chmod(join(root, 'locked'), 0o000);
    const states: [string, unknown][] = [];
    for await (const e of scanTree(root)) states.push([e.path, encodeFileState(e.state)]); // as root (or owner) this sees 'locked/secret'
    expect(states.map(([p]) => p)).toContain('locked/secret');
    await rm(join(root, 'gone'));

    // The scan itself must run as a user who cannot read 'locked'. Root can read anything, so when the
    // tests run as root the child runs as nobody (65534).
    await chmod(tmp, 0o755);
    await mkdir(join(tmp, 'jdir'), { mode: 0o777 });
    await chmod(join(tmp, 'jdir'), 0o777);
    const child = join(tmp, 'child.mjs');
    await writeFile(child, childScript(), { mode: 0o644 });
    const asRoot = process.getuid?.() === 0;
    let out;
    try {
      out = spawnSync(process.execPath, ['--import', 'tsx', child, root, join(tmp, 'jdir', 'journal'), JSON.stringify(states)], {
        cwd: repoRoot,
        encoding: 'utf8',
        timeout: 60_000,
        ...(asRoot ? { uid: 65534, gid: 65534 } : {}),
      });
    } finally {
      await chmod(join(root, 'locked'), 0o755); // so that afterEach can remove it when not running as root
    }
    expect(out.stderr).toBe('');
    expect(out.status).toBe(0);
    const result = JSON.parse(out.stdout) as { changes: [string, string][]; errors: [string, string][] };
    expect(result.errors).toEqual([['locked', 'ACCESS_DENIED']]);
    expect(result.changes).toEqual([['gone', 'deleted']]); // not 'locked/secret'
  }, 60_000);
});

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

function childScript(): string {
  const fileState = pathToFileURL(join(repoRoot, 'agent/file-state.ts')).href;
  const journalUrl = pathToFileURL(join(repoRoot, 'agent/journal.ts')).href;
  const scanner = pathToFileURL(join(repoRoot, 'agent/scanner.ts')).href;
  return `
import { decodeFileState } from ${JSON.stringify(fileState)};
import { Journal } from ${JSON.stringify(journalUrl)};
import { reconcile } from ${JSON.stringify(scanner)};
const [root, jdir, statesJson] = process.argv.slice(2);
const journal = await Journal.open(jdir);
await journal.watchStarted();
const states = JSON.parse(statesJson).map(([p, s]) => [p, { state: decodeFileState(s), content: [] }]);
await journal.commitBackup({ snapshotId: 's', clearedUpToSeq: journal.beginBackup().seq, states });
const errors = [];
const changes = [];
for await (const c of reconcile(root, journal, { onError: (p, e) => { errors.push([p, e.code]); } })) changes.push([c.path, c.kind]);
await journal.close();
process.stdout.write(JSON.stringify({ changes, errors }));
`;
}
