/**
 * The agent's pure file decisions: fileChanged, the journal encoding of a FileState, tree order of
 * paths, relative-path checks and exclude globs.
 */
import { mkdtemp, rm, symlink, writeFile, lstat, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BulwarkError } from '../../common/errors.js';
import {
  assertRelativePath,
  comparePaths,
  compileExclude,
  decodeFileState,
  encodeFileState,
  fileChanged,
  statToFileState,
  type FileState,
} from '../../agent/file-state.js';

const base: FileState = {
  type: 'file',
  size: 1234,
  mtimeNs: 1_700_000_000_123_456_789n,
  ctimeNs: 1_700_000_001_000_000_000n,
  inode: 987_654_321n,
  mode: 0o644,
};

describe('fileChanged', () => {
  it('is true when there is no previous state', () => {
    expect(fileChanged(base, undefined)).toBe(true);
  });

  it('is false for an identical state (a copy, not the same object)', () => {
    expect(fileChanged(base, { ...base })).toBe(false);
  });

  it.each<[string, Partial<FileState>]>([
    ['type', { type: 'symlink' }],
    ['size', { size: 1235 }],
    ['mtime (1 ns)', { mtimeNs: base.mtimeNs + 1n }],
    ['ctime only (mtime set back by utimes)', { ctimeNs: base.ctimeNs + 1_000n }],
    ['inode (replaced by another file)', { inode: base.inode + 1n }],
    ['mode', { mode: 0o600 }],
  ])('is true when the %s differs', (_what, change) => {
    expect(fileChanged({ ...base, ...change }, base)).toBe(true);
  });
});

describe('encodeFileState / decodeFileState', () => {
  it('round-trips through JSON, keeping bigints above 2^53 exact', () => {
    const big: FileState = { ...base, mtimeNs: 2n ** 62n + 7n, inode: 2n ** 63n - 1n };
    const json = JSON.stringify(encodeFileState(big));
    expect(decodeFileState(JSON.parse(json))).toEqual(big);
  });

  it.each([null, 'x', { ...encodeFileState(base), type: 'fifo' }, { ...encodeFileState(base), mtimeNs: '12a' }, { ...encodeFileState(base), size: -1 }])(
    'rejects a damaged record %j as JOURNAL_UNTRUSTED',
    (value) => {
      expect(() => decodeFileState(value)).toThrowError(expect.objectContaining({ code: 'JOURNAL_UNTRUSTED' }));
    },
  );
});

describe('statToFileState', () => {
  it('describes a file and a symlink (not followed) from lstat', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bulwark-fs-'));
    try {
      await writeFile(join(dir, 'f'), 'hello');
      await symlink('f', join(dir, 'l'));
      await mkdir(join(dir, 'd'));
      const f = statToFileState(await lstat(join(dir, 'f'), { bigint: true }));
      const l = statToFileState(await lstat(join(dir, 'l'), { bigint: true }));
      const d = statToFileState(await lstat(join(dir, 'd'), { bigint: true }));
      expect(f).toMatchObject({ type: 'file', size: 5 });
      expect(f.mode & ~0o7777).toBe(0);
      expect(l).toMatchObject({ type: 'symlink', size: 1 }); // the length of "f", not the target's size
      expect(l.inode).not.toBe(f.inode);
      expect(d.type).toBe('dir');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('comparePaths (tree order)', () => {
  it('puts a directory right before its subtree and the subtree before the next sibling', () => {
    const paths = ['b', 'a.txt', 'a/z', 'a', 'a/b/c', 'a/b', 'ab', 'a b'];
    expect([...paths].sort(comparePaths)).toEqual(['a', 'a/b', 'a/b/c', 'a/z', 'a b', 'a.txt', 'ab', 'b']);
  });

  it('orders names by UTF-8 bytes, not UTF-16 code units', () => {
    // U+FF5E (EF BD 9E) sorts before U+1F600 (F0 9F 98 80) in UTF-8, after it in UTF-16.
    expect(comparePaths('\uff5e', '\u{1f600}')).toBeLessThan(0);
    expect('\uff5e' < '\u{1f600}').toBe(false);
  });
});

describe('assertRelativePath', () => {
  it.each(['a', 'a/b', '.hidden', 'a..b', 'dir/with space'])('accepts %j', (p) => {
    expect(() => assertRelativePath(p)).not.toThrow();
  });
  it.each(['', '/a', 'a/', 'a//b', './a', 'a/../b', '..', 'a\0b'])('rejects %j', (p) => {
    expect(() => assertRelativePath(p)).toThrowError(BulwarkError);
  });
});

describe('compileExclude', () => {
  const ex = compileExclude(['*.tmp', 'node_modules', 'cache/', 'build/out', 'var/**', '**/logs/*.log', '[!a]x']);
  it.each<[string, 'file' | 'dir' | undefined, boolean]>([
    ['a.tmp', 'file', true],
    ['deep/er/a.tmp', 'file', true],
    ['a.tmpx', 'file', false],
    ['x/node_modules', 'dir', true],
    ['cache', 'dir', true],
    ['cache', 'file', false], // trailing '/' is directories only
    ['cache', undefined, false], // type unknown: watch rather than skip
    ['build/out', 'dir', true],
    ['x/build/out', 'dir', false], // a pattern with '/' is anchored at the root
    ['var/a/b', 'file', true],
    ['var', 'dir', false],
    ['logs/a.log', 'file', true],
    ['srv/logs/a.log', 'file', true],
    ['srv/logs/sub/a.log', 'file', false],
    ['bx', 'file', true],
    ['ax', 'file', false],
    ['docs/readme', 'file', false],
  ])('%s (%s) → %s', (path, type, expected) => {
    expect(ex(path, type)).toBe(expected);
  });

  it('passes a predicate through and excludes nothing by default', () => {
    expect(compileExclude((p) => p === 'x')('x', 'file')).toBe(true);
    expect(compileExclude(undefined)('anything', 'file')).toBe(false);
  });
});
