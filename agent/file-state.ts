/**
 * What the agent remembers about a file system entry, and the pure decisions made from it.
 *
 * - `FileState` is the part of an `lstat` that tells whether an entry changed since the last backup
 *   (type, size, mtime, ctime, inode, mode), plus, for a file with several names (hard links), its
 *   link count and device, so the journal knows which paths share an inode. `statToFileState`
 *   builds it, `fileChanged` compares it, `encodeFileState` / `decodeFileState` turn it into JSON
 *   for the change journal (bigints as decimal strings).
 * - Paths inside the agent are relative to a protected root, with POSIX separators, never empty,
 *   never `.`/`..`: `assertRelativePath` checks one, `comparePaths` orders them in *tree order*
 *   (a directory, then its whole subtree, then its next sibling; siblings by the UTF-8 bytes of their
 *   names). The scanner walks in this order and the journal stores keys in this order, so the two can
 *   be merged in one pass (scanner.ts `reconcile`).
 * - `compileExclude` turns the user's exclude globs (or a predicate) into one predicate that the
 *   watcher and the scanner both use, so they agree on what is protected.
 *
 * Nothing here does I/O.
 */
import type { BigIntStats, Stats } from 'node:fs';
import { BulwarkError } from '../common/errors.js';

export type FileType = 'file' | 'dir' | 'symlink' | 'other';

export interface FileState {
  type: FileType;
  /** Bytes (for a symlink: the length of its target; for a directory: what the file system says). */
  size: number;
  mtimeNs: bigint;
  ctimeNs: bigint;
  inode: bigint;
  /** Permission bits with setuid/setgid/sticky (`st_mode & 0o7777`); the type is in `type`. */
  mode: number;
  /**
   * Only for a regular file with more than one name (hard links): its link count and the device
   * holding its inode (`dev`:`inode` names the inode). Absent means one name, or not known (a state
   * rebuilt from a snapshot's tree). Not compared by `fileChanged`: a link count change changes ctime.
   */
  nlink?: number;
  dev?: bigint;
}

/** The type of an entry from an `lstat` (bigint or not). Devices, FIFOs and sockets are 'other'. */
export function fileTypeOf(st: Pick<Stats | BigIntStats, 'isFile' | 'isDirectory' | 'isSymbolicLink'>): FileType {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  return 'other';
}

/** Build a FileState from `fs.lstat(p, { bigint: true })` (lstat: a symlink is described, not followed). */
export function statToFileState(st: BigIntStats): FileState {
  const state: FileState = {
    type: fileTypeOf(st),
    size: Number(st.size),
    mtimeNs: st.mtimeNs,
    ctimeNs: st.ctimeNs,
    inode: st.ino,
    mode: Number(st.mode & 0o7777n),
  };
  if (state.type === 'file' && st.nlink > 1n) {
    state.nlink = Number(st.nlink);
    state.dev = st.dev;
  }
  return state;
}

/** `dev:inode` of a file with several names (see `FileState.nlink`), else undefined. */
export function linkKeyOf(state: FileState): string | undefined {
  return state.type === 'file' && state.nlink !== undefined && state.nlink > 1 && state.dev !== undefined ? `${state.dev}:${state.inode}` : undefined;
}

/**
 * True when `current` must be backed up again because it differs from the state recorded at the last
 * backup (`previous`), or there was none. ctime is compared as well as mtime because mtime can be set
 * back by anyone (`touch -d`, `utimes`, tar, ransomware covering its tracks) while ctime cannot; the
 * inode catches a file replaced by another with the same size and times.
 */
export function fileChanged(current: FileState, previous: FileState | undefined): boolean {
  if (previous === undefined) return true;
  return (
    current.type !== previous.type ||
    current.size !== previous.size ||
    current.mtimeNs !== previous.mtimeNs ||
    current.ctimeNs !== previous.ctimeNs ||
    current.inode !== previous.inode ||
    current.mode !== previous.mode
  );
}

/** A FileState as stored in the journal (JSON): bigints as decimal strings. */
export interface EncodedFileState {
  type: FileType;
  size: number;
  mtimeNs: string;
  ctimeNs: string;
  inode: string;
  mode: number;
  /** Both present or both absent (see FileState). */
  nlink?: number;
  dev?: string;
}

export function encodeFileState(state: FileState): EncodedFileState {
  const e: EncodedFileState = {
    type: state.type,
    size: state.size,
    mtimeNs: state.mtimeNs.toString(),
    ctimeNs: state.ctimeNs.toString(),
    inode: state.inode.toString(),
    mode: state.mode,
  };
  if (state.nlink !== undefined && state.dev !== undefined) {
    e.nlink = state.nlink;
    e.dev = state.dev.toString();
  }
  return e;
}

const FILE_TYPES: ReadonlySet<string> = new Set<FileType>(['file', 'dir', 'symlink', 'other']);
const DECIMAL = /^-?\d+$/;

/** Parse what `encodeFileState` wrote. A damaged record throws JOURNAL_UNTRUSTED: only a full scan can replace it. */
export function decodeFileState(value: unknown): FileState {
  const bad = (what: string): never => {
    throw new BulwarkError('JOURNAL_UNTRUSTED', `damaged file state in the change journal (${what}); a full scan will rebuild it`);
  };
  if (typeof value !== 'object' || value === null) return bad('not an object');
  const v = value as Record<string, unknown>;
  if (typeof v.type !== 'string' || !FILE_TYPES.has(v.type)) return bad('type');
  if (typeof v.size !== 'number' || !Number.isSafeInteger(v.size) || v.size < 0) return bad('size');
  if (typeof v.mode !== 'number' || !Number.isInteger(v.mode)) return bad('mode');
  for (const k of ['mtimeNs', 'ctimeNs', 'inode'] as const) {
    const s = v[k];
    if (typeof s !== 'string' || !DECIMAL.test(s)) return bad(k);
  }
  const state: FileState = {
    type: v.type as FileType,
    size: v.size,
    mtimeNs: BigInt(v.mtimeNs as string),
    ctimeNs: BigInt(v.ctimeNs as string),
    inode: BigInt(v.inode as string),
    mode: v.mode,
  };
  if (v.nlink !== undefined || v.dev !== undefined) {
    if (typeof v.nlink !== 'number' || !Number.isSafeInteger(v.nlink) || v.nlink < 1) return bad('nlink');
    if (typeof v.dev !== 'string' || !DECIMAL.test(v.dev)) return bad('dev');
    state.nlink = v.nlink;
    state.dev = BigInt(v.dev);
  }
  return state;
}

// ---------------------------------------------------------------------------------------------
// Paths

/**
 * Throw INVALID_ARGUMENT unless `path` is a relative POSIX path naming an entry under a root:
 * non-empty, no leading or trailing '/', no empty, '.' or '..' segment, no NUL.
 */
export function assertRelativePath(path: string): void {
  const ok =
    path.length > 0 &&
    !path.includes('\0') &&
    path.split('/').every((seg) => seg !== '' && seg !== '.' && seg !== '..');
  if (!ok) {
    throw new BulwarkError('INVALID_ARGUMENT', `not a relative path under the protected root: ${JSON.stringify(path)} (use e.g. "docs/a.txt")`);
  }
}

/**
 * Tree order: a directory sorts right before its subtree, and its subtree before its next sibling;
 * siblings by the UTF-8 bytes of their names. It is the byte order of the path with '/' read as the
 * lowest byte (NUL, which no file name contains), which is how the journal encodes its keys.
 */
export function comparePaths(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a.replaceAll('/', '\0'), 'utf8'), Buffer.from(b.replaceAll('/', '\0'), 'utf8'));
}

// ---------------------------------------------------------------------------------------------
// Exclusion

/** Decides whether a relative path is left out; `type` is undefined when the caller has not stat'ed it. */
export type ExcludePredicate = (path: string, type: FileType | undefined) => boolean;

/**
 * Globs (see `compileExclude`) or a predicate. An excluded directory excludes its whole subtree:
 * neither the watcher nor the scanner descends into it.
 */
export type ExcludeOption = readonly string[] | ExcludePredicate;

/**
 * One predicate from the exclude option. Glob rules, gitignore-like and small on purpose:
 * - a pattern without '/' (other than a trailing one) matches the *name* at any depth: `*.tmp`, `node_modules`;
 * - a pattern with '/' matches the whole relative path from the root: `build/out`, `var/**`, `**\/cache`;
 *   a leading '/' is allowed and ignored;
 * - a trailing '/' matches directories only (not when the type is unknown: watch more rather than less);
 * - `*` and `?` do not cross '/', `**` does, `[abc]` / `[!abc]` are character classes.
 */
export function compileExclude(exclude: ExcludeOption | undefined): ExcludePredicate {
  if (exclude === undefined) return () => false;
  if (typeof exclude === 'function') return exclude;
  const rules = (exclude as readonly string[]).map(compileGlob);
  if (rules.length === 0) return () => false;
  return (path, type) => {
    const slash = path.lastIndexOf('/');
    const name = slash < 0 ? path : path.slice(slash + 1);
    return rules.some((r) => (!r.dirOnly || type === 'dir') && r.re.test(r.anchored ? path : name));
  };
}

interface GlobRule {
  re: RegExp;
  anchored: boolean;
  dirOnly: boolean;
}

function compileGlob(pattern: string): GlobRule {
  let p = pattern.trim();
  const dirOnly = p.endsWith('/');
  if (dirOnly) p = p.slice(0, -1);
  const anchored = p.includes('/');
  if (p.startsWith('/')) p = p.slice(1);
  if (p === '') throw new BulwarkError('INVALID_ARGUMENT', `empty exclude pattern ${JSON.stringify(pattern)} (use e.g. "*.tmp" or "cache/")`);
  let re = '';
  for (let i = 0; i < p.length; i++) {
    const c = p[i] as string;
    if (c === '*') {
      if (p[i + 1] === '*') {
        const atStart = i === 0 || p[i - 1] === '/';
        i++;
        if (atStart && p[i + 1] === '/') {
          re += '(?:.*/)?'; // "**/" : zero or more directories
          i++;
        } else {
          re += '.*';
        }
      } else {
        re += '[^/]*';
      }
    } else if (c === '?') {
      re += '[^/]';
    } else if (c === '[') {
      const end = p.indexOf(']', i + 2);
      if (end < 0) {
        re += '\\[';
      } else {
        let cls = p.slice(i + 1, end);
        if (cls.startsWith('!')) cls = '^' + cls.slice(1);
        re += '[' + cls.replaceAll('\\', '\\\\') + ']';
        i = end;
      }
    } else {
      re += c.replace(/[.+^${}()|\\\]]/g, '\\$&');
    }
  }
  return { re: new RegExp('^' + re + '$', 'u'), anchored, dirOnly };
}
