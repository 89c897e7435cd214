/**
 * The watcher: chokidar events on the protected tree → dirty marks in the change journal.
 *
 * Stages, in order:
 *   chokidar event (add, change, unlink, addDir, unlinkDir; absolute path), and chokidar's 'raw'
 *   fs.watch notification for the same change (see `onRaw`: chokidar can drop events under a burst)
 *   → relative POSIX path, excludes applied (chokidar `ignored`, so excluded subtrees are not even watched)
 *   → coalesce in memory: Map<path, event>, the last chokidar event for a path wins; a raw
 *     notification adds 'change' for a path with nothing pending and never replaces a chokidar event
 *   → flush to the journal as ONE `markDirty` batch every `flushIntervalMs`, or at once when
 *     `flushAtPending` paths are waiting, or when `flush()` is called (tests; a backup before it begins).
 * Renames arrive as unlink + add, so both names are marked; deleting a directory marks the directory
 * (unlinkDir) and, as chokidar reports them, its entries.
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
 * - the protected root itself removed: fails.
 * Not detectable from here, so periodic reconciliation (a scheduled full scan) stays the backstop:
 * - libuv drops inotify's queue-overflow notice (IN_Q_OVERFLOW): a kernel queue overflow is silent.
 *   Chokidar re-reads a directory on each later event in it, which recovers most of what was lost.
 * - chokidar reads a new directory before it starts watching it: an entry created in between is seen
 *   only when something else happens in that directory. The backup should therefore list the entries
 *   of a directory marked 'addDir' rather than rely on each entry being marked.
 *
 * Lifecycle (`state`), one run per instance; construct a new Watcher to restart:
 *   'stopped' (not started) → start() → 'starting' → chokidar ready and attached → 'running'
 *   → stop() → 'stopping' (close chokidar, flush what is pending, detach) → 'stopped'
 *   any error above while starting or running → 'failed' (chokidar closed, journal untrusted).
 */
import { lstat, realpath } from 'node:fs/promises';
import { basename, isAbsolute, join, relative, sep } from 'node:path';
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
    onError: options.onError ?? (() => undefined),
    watch: options.watch ?? chokidarWatch,
  };
  for (const [name, v] of [['flushIntervalMs', o.flushIntervalMs], ['flushAtPending', o.flushAtPending], ['maxPending', o.maxPending]] as const) {
    if (!Number.isFinite(v) || v < 1) throw new BulwarkError('INVALID_ARGUMENT', `watcher option ${name} must be a positive number, got ${v}`);
  }
  return o;
}

const WATCHED_EVENTS: ReadonlySet<string> = new Set<DirtyEvent>(['add', 'change', 'unlink', 'addDir', 'unlinkDir']);

export class Watcher {
  private readonly o: CompiledWatcherOptions;
  private lifecycle: WatcherState = 'stopped';
  private started = false;
  private rootAbs = '';
  private fsw: FSWatcher | undefined;
  private pending = new Map<string, DirtyEvent>();
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
        return this.o.exclude(rel, stats ? fileTypeOf(stats) : undefined);
      },
    });
    this.fsw = fsw;
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
  }

  /**
   * A raw fs.watch notification. Chokidar turns these into events only after a stat and, for a
   * directory, a re-read that it throttles; under a burst it can drop some (a re-read that outlives its
   * 1 s throttle loses the "read again" request). Marking the raw path too closes that gap; it also
   * catches what chokidar never reports, such as a chmod on a directory. A notification on a watched
   * entry itself (a file's own watch, or a directory's "self" event) names the entry's basename; one from
   * a directory's watch about a child names the child. Never overrides a pending chokidar event.
   */
  private onRaw(evPath: unknown, details: unknown): void {
    if (this.lifecycle !== 'starting' && this.lifecycle !== 'running' && this.lifecycle !== 'stopping') return;
    const watched = (details as { watchedPath?: unknown } | null)?.watchedPath;
    if (typeof watched !== 'string') return;
    const abs = typeof evPath !== 'string' || evPath === '' || evPath === basename(watched) ? watched : join(watched, evPath);
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
