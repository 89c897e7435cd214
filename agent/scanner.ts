/**
 * The full stat walk: what the agent does instead of trusting the change journal (first run, after
 * a restart, after a watcher error or overflow, and on the periodic reconciliation).
 *
 * - `scanTree(root)` streams every entry under `root` (files, directories, symlinks — not followed —
 *   and others), depth first in *tree order* (a directory, then its subtree; siblings by the UTF-8
 *   bytes of their names; see file-state.ts `comparePaths`). It holds one sorted listing per directory
 *   level being walked, never the tree. Entries are lstat'ed a few at a time, in order.
 * - `reconcile(root, journal)` merges that stream with the journal's backed-up states, which LevelDB
 *   keeps in the same order, in one pass, and yields what the backup must look at: entries added or
 *   changed (`fileChanged`) and paths the journal has that are gone from disk (deleted, or now excluded).
 *
 * Per-item failures (a directory that cannot be read, an entry that cannot be stat'ed, a file name
 * that is not UTF-8) go to `onError(path, err)`, which answers 'skip' (the default) or 'abort'. A
 * skipped directory's subtree is unknown, not deleted: `reconcile` yields nothing under it, so the
 * backup carries it over from the previous snapshot.
 */
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { BulwarkError, throwIfAborted } from '../common/errors.js';
import { comparePaths, compileExclude, fileChanged, statToFileState, type ExcludeOption, type FileState } from './file-state.js';
import type { Journal, JournalEntry } from './journal.js';

export interface ScanOptions {
  /** Globs or a predicate (file-state.ts `compileExclude`); an excluded directory is not entered. */
  exclude?: ExcludeOption;
  signal?: AbortSignal;
  /** Policy for an entry that cannot be read: 'skip' (default when nothing is returned) or 'abort' (throws it). */
  onError?: (path: string, err: BulwarkError) => 'skip' | 'abort' | void;
}

export interface ScanEntry {
  /** Relative to the root, '/' separated. */
  path: string;
  state: FileState;
}

export type ReconcileKind = 'added' | 'modified' | 'deleted';

export interface ReconcileChange {
  path: string;
  kind: ReconcileKind;
  /** On disk now (added, modified). */
  current?: FileState;
  /** In the journal (modified, deleted). */
  previous?: JournalEntry;
}

/** lstat this many entries of a directory at once (order is kept); enough to hide the thread-pool round trip. */
const LSTAT_BATCH = 32;

/** Stream every entry under `root` (not `root` itself) in tree order; see the header. */
export async function* scanTree(root: string, options: ScanOptions = {}): AsyncGenerator<ScanEntry> {
  const exclude = compileExclude(options.exclude);
  const { signal } = options;
  const failed = (path: string, err: BulwarkError): void => {
    if (options.onError?.(path, err) === 'abort') throw err;
  };

  let rootStat;
  try {
    rootStat = await lstat(root);
  } catch (err) {
    throw new BulwarkError('INVALID_ARGUMENT', `cannot scan ${root}: ${(err as Error).message}; the protected path must be an existing directory`, { cause: err });
  }
  if (!rootStat.isDirectory()) {
    throw new BulwarkError('INVALID_ARGUMENT', `cannot scan ${root}: not a directory (a symlink is not followed); give the directory itself`);
  }

  async function* walk(absDir: string, relDir: string): AsyncGenerator<ScanEntry> {
    throwIfAborted(signal);
    let raw: Buffer[];
    try {
      raw = await readdir(absDir, { encoding: 'buffer' });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return; // removed or replaced since it was stat'ed: nothing under it now
      failed(relDir, new BulwarkError(code === 'EACCES' || code === 'EPERM' ? 'ACCESS_DENIED' : 'INTERNAL', `cannot read directory ${absDir}: ${(err as Error).message}`, { cause: err }));
      return;
    }
    raw.sort(Buffer.compare);
    const names: string[] = [];
    for (const b of raw) {
      const name = b.toString('utf8');
      if (!Buffer.from(name, 'utf8').equals(b)) {
        const shown = relDir === '' ? name : `${relDir}/${name}`;
        failed(shown, new BulwarkError('INVALID_ARGUMENT', `file name ${JSON.stringify(shown)} in ${absDir} is not valid UTF-8 and is skipped; rename it to back it up`));
        continue;
      }
      names.push(name);
    }
    raw = [];

    for (let i = 0; i < names.length; i += LSTAT_BATCH) {
      throwIfAborted(signal);
      const chunk = names.slice(i, i + LSTAT_BATCH).map((name) => {
        const rel = relDir === '' ? name : `${relDir}/${name}`;
        return { rel, abs: join(absDir, name) };
      });
      const stats = await Promise.all(
        chunk.map(({ rel, abs }) => (exclude(rel, undefined) ? Promise.resolve(undefined) : lstat(abs, { bigint: true }).catch((err: unknown) => err as Error))),
      );
      for (let k = 0; k < chunk.length; k++) {
        const { rel, abs } = chunk[k]!;
        const st = stats[k];
        if (st === undefined) continue; // excluded by name
        if (st instanceof Error) {
          const code = (st as NodeJS.ErrnoException).code;
          if (code !== 'ENOENT') failed(rel, new BulwarkError(code === 'EACCES' || code === 'EPERM' ? 'ACCESS_DENIED' : 'INTERNAL', `cannot stat ${abs}: ${st.message}`, { cause: st }));
          continue; // ENOENT: removed since the listing
        }
        const state = statToFileState(st);
        if (exclude(rel, state.type)) continue;
        yield { path: rel, state };
        if (state.type === 'dir') yield* walk(abs, rel);
      }
    }
  }

  yield* walk(root, '');
}

/**
 * Compare the tree on disk with the journal's backed-up states, in one streaming merge, and yield
 * what changed (see the header). Use when the journal is untrusted; start it only after the watcher is
 * running, so a change made during the scan is either seen here or marked dirty with a later seq.
 */
export async function* reconcile(root: string, journal: Journal, options: ScanOptions = {}): AsyncGenerator<ReconcileChange> {
  // Entries that could not be stat'ed or listed: what the journal has at or under them is unknown, not deleted.
  const unreadable = new Set<string>();
  const underUnreadable = (path: string): boolean => {
    if (unreadable.size === 0) return false;
    if (unreadable.has('') || unreadable.has(path)) return true;
    for (let i = path.indexOf('/'); i >= 0; i = path.indexOf('/', i + 1)) {
      if (unreadable.has(path.slice(0, i))) return true;
    }
    return false;
  };
  const scan = scanTree(root, {
    ...options,
    onError: (path, err) => {
      const decision = options.onError?.(path, err);
      if (decision !== 'abort' && err.code !== 'INVALID_ARGUMENT') unreadable.add(path);
      return decision;
    },
  });

  const known = journal.states()[Symbol.asyncIterator]();
  try {
    let j = await known.next();
    for await (const entry of scan) {
      // Journal paths that sort before this entry were not found on disk.
      while (!j.done && comparePaths(j.value.path, entry.path) < 0) {
        if (!underUnreadable(j.value.path)) yield { path: j.value.path, kind: 'deleted', previous: j.value.entry };
        j = await known.next();
      }
      if (!j.done && j.value.path === entry.path) {
        if (fileChanged(entry.state, j.value.entry.state)) yield { path: entry.path, kind: 'modified', current: entry.state, previous: j.value.entry };
        j = await known.next();
      } else {
        yield { path: entry.path, kind: 'added', current: entry.state };
      }
    }
    while (!j.done) {
      if (!underUnreadable(j.value.path)) yield { path: j.value.path, kind: 'deleted', previous: j.value.entry };
      j = await known.next();
    }
  } finally {
    await known.return?.(undefined);
  }
}
