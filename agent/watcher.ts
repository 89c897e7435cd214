/**
 * The watcher: chokidar events on the protected tree → dirty marks in the change journal.
 *
 * What is watched: DIRECTORIES only. chokidar walks the tree and keeps one fs.watch (inotify) per
 * directory; files, symlinks and other entries are `ignored` by it, so it holds nothing per file. A
 * directory's inotify watch reports every change to the entries in it — created, written, truncated,
 * chmod'ed/chown'ed/touched, deleted, renamed from or to — by name, and chokidar passes these on as
 * 'raw' events. (Watching every file as well, as chokidar does by default, cost ~580 MB of RSS and
 * 100,000 fs.watch handles for 100,000 files; directories only: one handle per directory, ~50 MB;
 * see docs/benchmarks.md.)
 *
 * Stages, in order:
 *   chokidar's events for directories (addDir, unlinkDir; absolute path), and chokidar's 'raw'
 *   notification for every change to an entry of a watched directory (see `onRaw`)
 *   → relative POSIX path, excludes applied (chokidar `ignored`, so excluded subtrees are not even watched)
 *   → coalesce in memory: Map<path, event>, the last chokidar event for a path wins; a raw
 *     notification adds 'change' for a path with nothing pending and never replaces a chokidar event
 *   → flush to the journal as ONE `markDirty` batch every `flushIntervalMs`, or at once when
 *     `flushAtPending` paths are waiting, or when `flush()` is called (tests; a backup before it begins).
 * Renames mark both names (the directory reports the old name and the new one); deleting a directory
 * marks the directory (unlinkDir) and each entry deleted in it. A new directory (addDir) is listed
 * once chokidar watches it, and its files marked 'add' (chokidar reports only its subdirectories):
 * what was made in it before is in that listing, what is made after has events.
 *
 * Hard links: inotify reports a write to the directory of the name it was made through, so a file
 * with several names can change with no event for its other names (in another directory, or outside
 * the root). The journal keeps the paths of such files and every trusted backup re-checks them; see
 * "Hard links" in journal.ts.
 *
 * Trust (see journal.ts). When chokidar is ready the watcher attaches to the journal
 * (`watchStarted`); from then on it is the journal's witness. Anything that may lose a change is
 * reported through `onError` (a BulwarkError with code JOURNAL_UNTRUSTED) and marks the journal
 * untrusted, so the next backup does a full scan — never ignored:
 * - a chokidar 'error' (ENOSPC: inotify watch limit reached, EMFILE, EACCES on a directory, …): some
 *   directory may not be watched from now on, so the watcher FAILS: it closes chokidar, detaches from
 *   the journal (which then cannot become trusted again until a new watcher attaches) and ends in
 *   'failed'. The agent's supervisor starts a new Watcher, with backoff.
 * - a failed flush to LevelDB: the marks in that batch are lost; the watcher fails the same way.
 * - overflow (more than `maxPending` paths waiting, i.e. the journal cannot keep up): the waiting
 *   paths are dropped and the journal marked untrusted; the watcher keeps running (it still sees every
 *   change, so a full scan after this point can restore trust).
 * - the kernel's inotify queue may have overflowed: libuv drops inotify's overflow notice
 *   (IN_Q_OVERFLOW), so it is inferred: libuv drains the queue completely each time it reads it, so an
 *   overflow (the queue held `max_queued_events` events) shows as at least that many notifications
 *   in one turn of the event loop. At `kernelQueueLimit` notifications in one turn (all watchers of
 *   the process together: they share the queue) the journal is marked untrusted; the watcher keeps
 *   running.
 * - the protected root itself removed: fails.
 * Periodic reconciliation (a scheduled full scan) stays the backstop for what cannot be seen from
 * here, e.g. an overflow whose events libuv mostly did not pass on (for watches just removed; the
 * threshold is half the queue to allow for some). And the backup lists a directory marked 'addDir'
 * in full rather than rely on each of its entries being marked.
 *
 * Lifecycle (`state`), one run per instance; construct a new Watcher to restart:
 *   'stopped' (not started) → start() → 'starting' → chokidar ready and attached → 'running'
 *   → stop() → 'stopping' (close chokidar, flush what is pending, detach) → 'stopped'
 *   any error above while starting or running → 'failed' (chokidar closed, journal untrusted).
 */
import { readFileSync } from 'node:fs';
import { lstat, readdir, realpath } from 'node:fs/promises';
import { basename, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { watch as chokidarWatch, type ChokidarOptions, type FSWatcher } from 'chokidar';
import { asBulwarkError, BulwarkError } from '../common/errors.js';
import { compileExclude, fileTypeOf, type ExcludeOption, type ExcludePredicate } from './file-state.js';
import type { DirtyEvent, Journal } from './journal.js';

export type WatcherState = 'starting' | 'running' | 'stopping' | 'stopped' | 'failed';

export interface WatcherOptions {
  /** Paths left out (globs or a predicate, see file-state.ts `compileExclude`); excluded directories are not watched. */
  exclude?: ExcludeOption;
  /** How long events are coalesced before a flush, in ms. */
  flushIntervalMs?: number;
  /** Flush at once when this many distinct paths are waiting. */
  flushAtPending?: number;
  /** More waiting paths than this is an overflow (see the header). */
  maxPending?: number;
  /**
   * This many raw notifications in one event-loop turn means the kernel's inotify queue may have
   * overflowed (see the header). Default: half of /proc/sys/fs/inotify/max_queued_events (16,384 by
   * default), half to allow for events libuv reads but does not pass on.
   */
  kernelQueueLimit?: number;
  /** Every error that makes the journal untrusted is passed here (code JOURNAL_UNTRUSTED). */
  onError?: (err: BulwarkError) => void;
  /** chokidar's `watch`; replaceable to observe or wrap the FSWatcher it returns. */
  watch?: (path: string, options: ChokidarOptions) => FSWatcher;
}

interface CompiledWatcherOptions {
  exclude: ExcludePredicate;
  flushIntervalMs: number;
  flushAtPending: number;
  maxPending: number;
  kernelQueueLimit: number;
  onError: (err: BulwarkError) => void;
  watch: (path: string, options: ChokidarOptions) => FSWatcher;
}

export function compileWatcherOptions(options: WatcherOptions = {}): CompiledWatcherOptions {
  const o = {
    exclude: compileExclude(options.exclude),
    // 150 ms: an editor's save (write temp, fsync, rename, chmod) lands in one batch, and a mark is in
    // LevelDB well within a second of the change, which is all a backup scheduled in minutes needs.
    flushIntervalMs: options.flushIntervalMs ?? 150,
    // 5,000 paths: one LevelDB batch of well under a megabyte, written in milliseconds; keeps memory flat
    // during a burst (an `npm install`, an unpacked archive) without a write per event.
    flushAtPending: options.flushAtPending ?? 5_000,
    // 500,000 paths (~100 MB of strings at worst) waiting means LevelDB is not keeping up at all; past
    // that, dropping them and rescanning is cheaper than growing without bound.
    maxPending: options.maxPending ?? 500_000,
    kernelQueueLimit: options.kernelQueueLimit ?? Math.floor(maxQueuedEvents() / 2),
    onError: options.onError ?? (() => undefined),
    watch: options.watch ?? chokidarWatch,
  };
  for (const [name, v] of [['flushIntervalMs', o.flushIntervalMs], ['flushAtPending', o.flushAtPending], ['maxPending', o.maxPending], ['kernelQueueLimit', o.kernelQueueLimit]] as const) {
    if (!Number.isFinite(v) || v < 1) throw new BulwarkError('INVALID_ARGUMENT', `watcher option ${name} must be a positive number, got ${v}`);
  }
  return o;
}

const WATCHED_EVENTS: ReadonlySet<string> = new Set<DirtyEvent>(['add', 'change', 'unlink', 'addDir', 'unlinkDir']);

/** The kernel's inotify queue size (events), or its default when it cannot be read. */
function maxQueuedEvents(): number {
  try {
    const n = Number(readFileSync('/proc/sys/fs/inotify/max_queued_events', 'utf8').trim());
    return Number.isSafeInteger(n) && n > 1 ? n : 16_384;
  } catch {
    return 16_384;
  }
}

/**
 * Make chokidar list directories with `readdir` file types alone. chokidar lists a directory when it
 * starts watching it and again after each change in it, through readdirp with `alwaysStat`: an lstat
 * of every entry, files included, and up to 256 of them in flight per directory, for every directory
 * of the tree at once when it starts (100,000 Stats objects, ~280 MB of RSS on a 100,000-file tree).
 * Files are ignored anyway (see the header), so its listings here keep only real directories, known
 * from their directory entries, and chokidar stats each directory itself when it adds it. It reads
 * only `isDirectory()` / `isSymbolicLink()` of an entry's "stats" (the Dirent has both) before that.
 * Must be called before chokidar reads anything: right after `watch()`, whose first read comes after
 * an `await`.
 */
function listDirectoriesOnly(fsw: FSWatcher, onListing: (dir: string, listing: NonNullable<ReturnType<FSWatcher['_readdirp']>>) => void): void {
  const list = fsw._readdirp.bind(fsw);
  fsw._readdirp = (root, opts = {}) => {
    const listing = list(root, {
      ...opts,
      alwaysStat: false,
      fileFilter: () => false,
      directoryFilter: (entry) => {
        if (entry.dirent?.isDirectory() !== true) return false; // a symlink to a directory is not a directory here
        entry.stats ??= entry.dirent as unknown as NonNullable<typeof entry.stats>;
        return typeof opts.directoryFilter === 'function' ? opts.directoryFilter(entry) : true;
      },
    });
    if (listing) onListing(root, listing);
    return listing;
  };
}

/**
 * Raw notifications delivered in the current event-loop turn, over every watcher of the process (they
 * share libuv's one inotify queue); reset in the turn's check phase. See the header.
 */
const turn = { count: 0, resetQueued: false, watchers: new Set<Watcher>() };

function countRawNotification(): void {
  if (!turn.resetQueued) {
    turn.resetQueued = true;
    setImmediate(() => {
      turn.count = 0;
      turn.resetQueued = false;
    }).unref();
  }
  turn.count++;
  for (const w of turn.watchers) w.onNotificationCount(turn.count);
}

export class Watcher {
  private readonly o: CompiledWatcherOptions;
  private lifecycle: WatcherState = 'stopped';
  private started = false;
  private rootAbs = '';
  private fsw: FSWatcher | undefined;
  private pending = new Map<string, DirtyEvent>();
  /** New directories (addDir) whose first listing by chokidar has not started: absolute path → relative. */
  private readonly newDirs = new Map<string, string>();
  private timer: NodeJS.Timeout | undefined;
  private flushChain: Promise<void> = Promise.resolve();
  private flushQueued = false;
  /** watchStarted() in progress or done: resolves to the journal token, or undefined if it failed. */
  private attach: Promise<number | undefined> | undefined;
  private detached = false;
  private readonly readyPromise: Promise<void>;
  private resolveReady: () => void = () => undefined;
  private rejectReady: (err: BulwarkError) => void = () => undefined;

  constructor(
    readonly root: string,
    private readonly journal: Journal,
    options: WatcherOptions = {},
  ) {
    this.o = compileWatcherOptions(options);
    this.readyPromise = new Promise<void>((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.readyPromise.catch(() => undefined); // awaited by start()/ready(); never an unhandled rejection
  }

  get state(): WatcherState {
    return this.lifecycle;
  }

  /** Paths waiting for the next flush. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /**
   * Start watching; resolves once chokidar has walked the tree and the watcher is attached to the
   * journal (state 'running'). Rejects if the root is not a directory or anything fails first.
   */
  async start(): Promise<void> {
    if (this.started) throw new BulwarkError('INVALID_ARGUMENT', 'a Watcher runs once; create a new one to restart');
    this.started = true;
    this.lifecycle = 'starting';
    try {
      this.rootAbs = await realpath(this.root);
      if (!(await lstat(this.rootAbs)).isDirectory()) throw new Error('not a directory');
    } catch (err) {
      const e = new BulwarkError('INVALID_ARGUMENT', `cannot watch ${this.root}: ${(err as Error).message}; the protected path must be an existing directory`, { cause: err });
      this.lifecycle = 'failed';
      this.rejectReady(e);
      throw e;
    }
    const fsw = this.o.watch(this.rootAbs, {
      persistent: true,
      ignoreInitial: true, // the journal's reconciliation scan, not chokidar, accounts for what exists
      followSymlinks: false, // a symlink is backed up as a link; its target may be outside the root
      alwaysStat: false, // the backup stats again anyway; an extra stat per event is wasted
      atomic: false, // report unlink + add as they happen; both paths must be marked
      awaitWriteFinish: false, // the backup re-checks content; waiting would only delay the mark
      ignorePermissionErrors: false, // a directory we cannot watch is an error, not a silent gap
      usePolling: false,
      ignored: (p: string, stats?: { isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean }) => {
        const rel = this.relativePath(p);
        if (rel === undefined || rel === '') return false;
        // directories only (see the header): an entry's changes come from its directory's raw events
        if (stats !== undefined && !stats.isDirectory()) return true;
        return this.o.exclude(rel, stats ? fileTypeOf(stats) : undefined);
      },
    });
    listDirectoriesOnly(fsw, (dir, listing) => this.onListing(dir, listing));
    this.fsw = fsw;
    turn.watchers.add(this);
    fsw.on('all', (event, path) => this.onEvent(event, path));
    fsw.on('raw', (_event, evPath, details) => this.onRaw(evPath, details));
    fsw.on('error', (err) => void this.onChokidarError(err));
    fsw.once('ready', () => void this.onReady());
    await this.readyPromise;
  }

  /** Resolves when chokidar is ready and the watcher attached ('running'); rejects if it failed or was stopped first. */
  ready(): Promise<void> {
    return this.readyPromise;
  }

  /**
   * Write every path waiting now to the journal (one batch) and resolve when it is written. Rejects
   * (and reports, and fails the watcher) if the write fails.
   */
  flush(): Promise<void> {
    const run = this.flushChain.then(() => this.writePending());
    this.flushChain = run.catch(() => undefined);
    return run;
  }

  /** Graceful stop: close chokidar, flush what is pending, detach from the journal. Never rejects. */
  async stop(): Promise<void> {
    if (!this.started || this.lifecycle === 'stopping' || this.lifecycle === 'stopped') return;
    turn.watchers.delete(this);
    this.rejectReady(new BulwarkError('ABORTED', 'the watcher was stopped before it was ready'));
    if (this.lifecycle === 'failed') {
      this.clearTimer();
      await this.fsw?.close().catch(() => undefined);
      return;
    }
    this.lifecycle = 'stopping';
    await this.fsw?.close().catch(() => undefined);
    try {
      await this.flush();
    } catch {
      // reported by writePending; the watcher is 'failed' now
    }
    this.clearTimer();
    await this.detach('watcher stopped');
    if (this.lifecycle === 'stopping') this.lifecycle = 'stopped';
  }

  // -------------------------------------------------------------------------------------------

  private async onReady(): Promise<void> {
    if (this.lifecycle !== 'starting') return;
    const attempt = this.journal.watchStarted();
    this.attach = attempt.then(
      (token) => token,
      () => undefined,
    );
    try {
      await attempt;
    } catch (err) {
      await this.fail(new BulwarkError('JOURNAL_UNTRUSTED', `the watcher could not attach to the change journal: ${asBulwarkError(err).message}`, { cause: err }));
      return;
    }
    if (this.lifecycle !== 'starting') return; // failed or stopped meanwhile; they detach
    this.lifecycle = 'running';
    this.resolveReady();
  }

  private onEvent(event: string, absPath: string): void {
    if (!WATCHED_EVENTS.has(event)) return;
    if (this.lifecycle !== 'starting' && this.lifecycle !== 'running' && this.lifecycle !== 'stopping') return;
    const rel = this.relativePath(absPath);
    if (rel === undefined) return;
    if (rel === '') {
      if (event === 'unlinkDir') {
        void this.fail(new BulwarkError('JOURNAL_UNTRUSTED', `the protected directory ${this.rootAbs} was removed; restore it or change the policy, then restart the agent`));
      }
      return;
    }
    this.pending.set(rel, event as DirtyEvent);
    this.afterMark();
    if (event === 'addDir') this.newDirs.set(resolve(absPath), rel);
    else if (event === 'unlinkDir') this.newDirs.delete(resolve(absPath));
  }

  /**
   * chokidar starts listing a directory. For a new one (addDir), its files must be marked: chokidar
   * reports only subdirectories, and files only through raw events once it watches the directory,
   * which it does right after this listing ends. So the directory is listed again then (after the
   * listing's end, chokidar's continuation runs first, as a microtask): an entry made before that
   * listing is in it, one made after has an event.
   */
  private onListing(dir: string, listing: NodeJS.EventEmitter): void {
    const abs = resolve(dir);
    const rel = this.newDirs.get(abs);
    if (rel === undefined) return;
    this.newDirs.delete(abs);
    listing.once('end', () => setImmediate(() => void this.markEntriesOf(abs, rel)));
  }

  /**
   * Mark the entries of a new directory: 'add', and 'addDir' for subdirectories. chokidar reports the
   * subdirectories it saw in its own listing (their addDir is normally pending by now); one made
   * after that listing but before the watch started it would only see at the next change in this
   * directory, so it is handed to chokidar now (as chokidar adds a directory it finds itself; should
   * chokidar have seen it after all, the second add costs one more listener on the same fs.watch).
   * Never replaces a pending chokidar event.
   */
  private async markEntriesOf(absDir: string, relDir: string): Promise<void> {
    let entries;
    try {
      entries = await readdir(absDir, { withFileTypes: true });
    } catch {
      return; // gone again, or unreadable (chokidar reports that)
    }
    if (this.lifecycle !== 'starting' && this.lifecycle !== 'running' && this.lifecycle !== 'stopping') return;
    let marked = false;
    for (const e of entries) {
      const rel = `${relDir}/${e.name}`;
      const dir = e.isDirectory();
      const pending = this.pending.get(rel);
      if ((pending !== undefined && pending !== 'change') || this.o.exclude(rel, dir ? 'dir' : undefined)) continue;
      this.pending.set(rel, dir ? 'addDir' : 'add');
      marked = true;
      if (dir) this.fsw?.add(join(absDir, e.name), undefined, true);
    }
    if (marked) this.afterMark();
  }

  /** Called with the number of raw notifications in this event-loop turn so far (see the header). */
  onNotificationCount(count: number): void {
    if (count !== this.o.kernelQueueLimit || this.lifecycle !== 'running') return;
    void this.untrust(
      new BulwarkError(
        'JOURNAL_UNTRUSTED',
        `${count} file system notifications arrived at once: the kernel's inotify queue may have overflowed and dropped some; the next backup will scan the whole tree. Raise fs.inotify.max_queued_events if this recurs.`,
      ),
    );
  }

  /**
   * A raw fs.watch notification: how changes to files (and every other non-directory) arrive, and a
   * second source for directories. chokidar turns a directory's notifications into addDir/unlinkDir
   * only after a re-read that it throttles, and can drop some under a burst; marking the raw path too
   * closes that gap, and catches what chokidar never reports, such as a chmod. A notification from a
   * directory's watch names the child it is about (`evPath`); one about the watched directory itself
   * names the directory's own basename, which a child may share — so that name marks both. Never
   * overrides a pending chokidar event.
   */
  private onRaw(evPath: unknown, details: unknown): void {
    if (this.lifecycle !== 'starting' && this.lifecycle !== 'running' && this.lifecycle !== 'stopping') return;
    const watched = (details as { watchedPath?: unknown } | null)?.watchedPath;
    if (typeof watched !== 'string') return;
    countRawNotification();
    if (typeof evPath !== 'string' || evPath === '' || evPath === basename(watched)) this.markRaw(watched);
    if (typeof evPath === 'string' && evPath !== '') this.markRaw(join(watched, evPath));
  }

  private markRaw(abs: string): void {
    const rel = this.relativePath(abs);
    if (rel === undefined || rel === '' || this.pending.has(rel) || this.o.exclude(rel, undefined)) return;
    this.pending.set(rel, 'change');
    this.afterMark();
  }

  private afterMark(): void {
    if (this.pending.size > this.o.maxPending) {
      const dropped = this.pending.size;
      this.pending = new Map();
      this.clearTimer();
      const err = new BulwarkError(
        'JOURNAL_UNTRUSTED',
        `watcher overflow: ${dropped} changed paths were waiting for the change journal; they were dropped and the next backup will scan the whole tree`,
      );
      void this.untrust(err);
    } else if (this.pending.size >= this.o.flushAtPending) {
      this.requestFlush();
    } else if (this.timer === undefined) {
      this.timer = setTimeout(() => this.requestFlush(), this.o.flushIntervalMs);
      this.timer.unref();
    }
  }

  private onChokidarError(raw: unknown): void {
    const code = (raw as { code?: unknown } | null)?.code;
    const hint =
      code === 'ENOSPC'
        ? ' Raise the inotify watch limit (sysctl fs.inotify.max_user_watches) or exclude large directories.'
        : code === 'EMFILE'
          ? ' Raise the open-file limit of the agent (LimitNOFILE) or exclude large directories.'
          : '';
    const message = raw instanceof Error ? raw.message : String(raw);
    void this.fail(
      new BulwarkError('JOURNAL_UNTRUSTED', `watcher error on ${this.rootAbs}: ${message}; changes may be missed, so the next backup will scan the whole tree.${hint}`, {
        cause: raw,
      }),
    );
  }

  private requestFlush(): void {
    if (this.flushQueued) return;
    this.flushQueued = true;
    this.flush().catch(() => undefined); // reported by writePending
  }

  private async writePending(): Promise<void> {
    this.flushQueued = false;
    this.clearTimer();
    if (this.pending.size === 0) return;
    const batch = this.pending;
    this.pending = new Map();
    try {
      await this.journal.markDirty(Array.from(batch, ([path, event]) => ({ path, event })));
    } catch (err) {
      const e = new BulwarkError(
        'JOURNAL_UNTRUSTED',
        `could not record ${batch.size} changed paths in the change journal: ${asBulwarkError(err).message}; the next backup will scan the whole tree`,
        { cause: err },
      );
      await this.fail(e);
      throw e;
    }
  }

  /** Mark the journal untrusted (in memory at once, then on disk) and report. */
  private async untrust(err: BulwarkError): Promise<void> {
    const written = this.journal.markUntrusted(err.message);
    this.report(err);
    try {
      await written;
    } catch (e) {
      this.report(new BulwarkError('JOURNAL_UNTRUSTED', `could not record in the change journal that it is untrusted: ${asBulwarkError(e).message}`, { cause: e }));
    }
  }

  /** Untrust and report; if starting or running, stop watching and detach: 'failed'. */
  private async fail(err: BulwarkError): Promise<void> {
    const active = this.lifecycle === 'starting' || this.lifecycle === 'running' || this.lifecycle === 'stopping';
    turn.watchers.delete(this);
    if (active) {
      this.lifecycle = 'failed';
      this.rejectReady(err);
      this.clearTimer();
      this.pending = new Map(); // lost; the untrusted journal makes the next backup scan for them
    }
    await this.untrust(err);
    if (active) {
      await this.detach(err.message);
      await this.fsw?.close().catch(() => undefined);
    }
  }

  private async detach(reason: string): Promise<void> {
    if (this.detached || this.attach === undefined) return;
    this.detached = true;
    const token = await this.attach;
    if (token === undefined) return;
    try {
      await this.journal.watchStopped(token, reason);
    } catch (e) {
      this.report(asBulwarkError(e));
    }
  }

  private report(err: BulwarkError): void {
    try {
      this.o.onError(err);
    } catch {
      // a failing callback must not break the watcher
    }
  }

  private clearTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** The path relative to the root with '/' separators; '' for the root; undefined if outside it. */
  private relativePath(absPath: string): string | undefined {
    const rel = relative(this.rootAbs, absPath);
    if (rel === '') return '';
    if (rel === '..' || rel.startsWith('..' + sep) || isAbsolute(rel)) return undefined;
    return sep === '/' ? rel : rel.split(sep).join('/');
  }
}
