/**
 * The agent's change journal: a LevelDB database in the agent's data directory that lets an
 * incremental backup cost in proportion to what changed, not to the size of the tree.
 *
 * It holds three sublevels (one LevelDB, so a batch can span them atomically):
 * - `dirty`: `path → { event, seq, at }`, the paths the watcher saw change since they were last backed
 *   up. `seq` is the sequence number of the `markDirty` batch that last marked the path; it only grows,
 *   and is persisted with the marks, so it never repeats across restarts.
 * - `state`: `path → { state, content }`, the FileState of each path at the last committed backup and
 *   the caller's opaque `content` (the backup pipeline keeps each file's blob ids there).
 * - `meta`: `seq` (the last sequence number handed out), `trust` (`{ trusted, reason, at, seq }`),
 *   `lastSnapshotId`, `watcherStartedAt`.
 * Paths are relative to the protected root with POSIX separators. Keys store them with '/' replaced by
 * NUL, so LevelDB's byte order is *tree order* (file-state.ts `comparePaths`): iterating `state` visits
 * the tree depth first, like the scanner, and a subtree is one key range.
 *
 * How a backup uses it (agent/backup drives this):
 *   1. `watcher.flush()`, then `start = journal.beginBackup()`: the sequence number `start.seq` and
 *      whether the journal is trusted.
 *   2. trusted: back up `dirtyPaths()`; untrusted: `reconcile()` (scanner.ts), a full stat walk.
 *   3. `commitBackup({ snapshotId, states, clearedUpToSeq: start.seq })`, after the controller has
 *      committed the snapshot.
 *
 * Trust. The journal is trusted when its dirty marks are known to hold every change since the last
 * committed backup. That needs a watcher that was running, without error, from before the backup began
 * until now. So:
 * - First run: untrusted, 'never scanned'.
 * - Start-up rule: `Journal.open` always marks the journal untrusted ('agent restarted'), clean shutdown
 *   or not. Whatever changed while the agent was not running was seen by nobody; a clean-shutdown flag
 *   proves the last events were flushed, not that nothing changed while the agent was down (a reboot,
 *   an admin editing files with the service stopped, an attacker stopping it first). The first backup
 *   after a start is therefore a full scan. (`distrustOnOpen: false` exists for read-only inspection.)
 * - The watcher calls `watchStarted()` once chokidar is ready and `watchStopped()` when it stops or
 *   fails; a watcher error, overflow or a failed flush calls `markUntrusted(reason)`.
 * - `commitBackup` sets trusted only when nothing made the journal untrusted after the backup began
 *   (every `markUntrusted` takes a sequence number; it must be ≤ `clearedUpToSeq`) and a watcher has been
 *   attached since before the backup began. Otherwise it keeps (or explains) the untrusted state, and the
 *   next backup is a full scan again. Callers must follow "untrusted at `beginBackup` → full scan".
 *
 * Crashes. Every method is one LevelDB write (a batch where it writes several keys), so a crash leaves
 * each either done or not done; in between:
 * - watcher events not yet flushed are lost, but the restart makes the journal untrusted: a full scan.
 * - crash during a backup, before `commitBackup`: the dirty marks are only deleted by the commit batch,
 *   so they are all still there and those paths are backed up again (the packs already uploaded are
 *   reused by dedup). Safe, some repeated work.
 * - crash after the controller committed the snapshot, before `commitBackup`: the journal still has the
 *   previous states and marks, so the next backup re-reads those files and finds their blobs already
 *   stored. `lastSnapshotId` is stale until then; the controller's catalog is the source of truth.
 * - marks written while a backup runs get a larger seq than `clearedUpToSeq`, so the commit leaves them.
 * Dirty marks are written without fsync (a power cut can lose the last ones, but the restart distrusts
 * the journal anyway); `commitBackup` and `markUntrusted` are written with `sync: true`.
 *
 * All writes go through one in-process queue, so `commitBackup` reads and deletes the dirty marks with
 * no `markDirty` in between (LevelDB's own lock keeps other processes out). Reads do not queue.
 */
import { Level } from 'level';
import { systemClock, type Clock } from '../common/clock.js';
import { asBulwarkError, BulwarkError } from '../common/errors.js';
import { assertRelativePath, decodeFileState, encodeFileState, type EncodedFileState, type FileState } from './file-state.js';

/**
 * The last watcher event for a path. A hint only: the backup decides from lstat. 'change' is also what
 * the watcher records from a raw fs.watch notification that chokidar did not (or not yet) classify.
 */
export type DirtyEvent = 'add' | 'change' | 'unlink' | 'addDir' | 'unlinkDir';

export interface DirtyMark {
  path: string;
  event: DirtyEvent;
  /** Sequence number of the markDirty batch that last marked this path. */
  seq: number;
  /** When it was marked (ms since the epoch, from the journal's clock). */
  at: number;
}

/** What the journal keeps for a path after a backup. */
export interface JournalEntry {
  state: FileState;
  /** Opaque to the journal: the backup pipeline's blob ids for the file's content. */
  content: string[];
}

export interface TrustStatus {
  trusted: boolean;
  /** Why it is not trusted (absent when trusted). */
  reason?: string;
  /** When this status was set (ms since the epoch). */
  at: number;
  /** Sequence number taken when this status was set. */
  seq: number;
}

export interface JournalMeta {
  trust: TrustStatus;
  /** The last sequence number handed out. */
  seq: number;
  lastSnapshotId?: string;
  /** When a watcher last attached (ms since the epoch). */
  watcherStartedAt?: number;
}

/** What a backup notes when it begins (see the header). */
export interface BackupStart {
  /** Pass as `clearedUpToSeq` to `commitBackup`. */
  seq: number;
  trusted: boolean;
  reason?: string;
}

export interface CommitBackupInput {
  snapshotId: string;
  /** New state of each path backed up; `null` deletes the state (the path is gone). */
  states: Iterable<readonly [string, JournalEntry | null]> | AsyncIterable<readonly [string, JournalEntry | null]>;
  /** Dirty marks with `seq ≤ clearedUpToSeq` are deleted; later marks survive. */
  clearedUpToSeq: number;
}

export interface CommitResult {
  /** States written and deleted. */
  written: number;
  deleted: number;
  /** Dirty marks cleared. */
  cleared: number;
  /** Trust after the commit. */
  trust: TrustStatus;
}

export interface JournalOptions {
  clock?: Clock;
  /**
   * Default true: opening marks the journal untrusted ('agent restarted'), see the header. Only a tool
   * that inspects a journal without watching the tree may pass false.
   */
  distrustOnOpen?: boolean;
}

interface DirtyValue {
  event: DirtyEvent;
  seq: number;
  at: number;
}

interface StateValue {
  state: EncodedFileState;
  content: string[];
}

const DIRTY_EVENTS: ReadonlySet<string> = new Set<DirtyEvent>(['add', 'change', 'unlink', 'addDir', 'unlinkDir']);

/** Key for a relative path: '/' becomes NUL, so byte order is tree order. */
function keyOf(path: string): string {
  return path.replaceAll('/', '\0');
}

function pathOf(key: string): string {
  return key.replaceAll('\0', '/');
}

function damaged(what: string, cause?: unknown): BulwarkError {
  return new BulwarkError('JOURNAL_UNTRUSTED', `damaged record in the change journal (${what}); a full scan will rebuild it`, { cause });
}

function isTrustStatus(v: unknown): v is TrustStatus {
  const t = v as Partial<TrustStatus> | null;
  return (
    typeof t === 'object' && t !== null && typeof t.trusted === 'boolean' && typeof t.at === 'number' && typeof t.seq === 'number' && (t.reason === undefined || typeof t.reason === 'string')
  );
}

function decodeDirty(key: string, value: unknown): DirtyMark {
  const v = value as Partial<DirtyValue> | null;
  if (typeof v !== 'object' || v === null || typeof v.event !== 'string' || !DIRTY_EVENTS.has(v.event) || typeof v.seq !== 'number' || typeof v.at !== 'number') {
    throw damaged(`dirty mark ${JSON.stringify(pathOf(key))}`);
  }
  return { path: pathOf(key), event: v.event, seq: v.seq, at: v.at };
}

function decodeEntry(key: string, value: unknown): JournalEntry {
  const v = value as Partial<StateValue> | null;
  if (typeof v !== 'object' || v === null || !Array.isArray(v.content) || !v.content.every((c) => typeof c === 'string')) {
    throw damaged(`state of ${JSON.stringify(pathOf(key))}`);
  }
  return { state: decodeFileState(v.state), content: v.content };
}

export class Journal {
  private readonly dirty;
  private readonly state;
  private readonly meta;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  /** The attached watcher: its token and the sequence number taken when it attached. */
  private watch: { token: number; sinceSeq: number } | undefined;
  private nextToken = 1;
  /** Bumped by every markUntrusted, so a commit in flight cannot overwrite it in memory. */
  private trustGeneration = 0;

  private constructor(
    private readonly db: Level<string, unknown>,
    private readonly clock: Clock,
    private seq: number,
    private trust: TrustStatus,
    private lastSnapshotId: string | undefined,
    private watcherStartedAt: number | undefined,
  ) {
    this.dirty = db.sublevel<string, DirtyValue>('dirty', { valueEncoding: 'json' });
    this.state = db.sublevel<string, StateValue>('state', { valueEncoding: 'json' });
    this.meta = db.sublevel<string, unknown>('meta', { valueEncoding: 'json' });
  }

  /** Open (or create) the journal in `dir`, applying the start-up rule (see the header). */
  static async open(dir: string, options: JournalOptions = {}): Promise<Journal> {
    const clock = options.clock ?? systemClock;
    const db = new Level<string, unknown>(dir, { valueEncoding: 'json' });
    try {
      await db.open();
    } catch (err) {
      throw new BulwarkError(
        'INTERNAL',
        `cannot open the change journal at ${dir}: ${(err as Error).message}. Is another agent running with the same data directory?`,
        { cause: err },
      );
    }
    try {
      const meta = db.sublevel<string, unknown>('meta', { valueEncoding: 'json' });
      const [seqV, trustV, snapV, watchV] = await meta.getMany(['seq', 'trust', 'lastSnapshotId', 'watcherStartedAt']);
      const seq = typeof seqV === 'number' ? seqV : 0;
      const valid = isTrustStatus(trustV);
      const trust: TrustStatus = valid
        ? trustV
        : { trusted: false, reason: trustV === undefined ? 'never scanned' : 'damaged trust record', at: clock.now(), seq };
      const journal = new Journal(db, clock, seq, trust, typeof snapV === 'string' ? snapV : undefined, typeof watchV === 'number' ? watchV : undefined);
      if (!valid) {
        await journal.writeTrust(trust);
      } else if (trust.trusted && options.distrustOnOpen !== false) {
        await journal.markUntrusted('agent restarted: changes made while it was not running were not observed');
      }
      return journal;
    } catch (err) {
      await db.close().catch(() => undefined);
      throw asBulwarkError(err);
    }
  }

  /** Wait for queued writes, then close the database. */
  async close(): Promise<void> {
    if (this.closed) return;
    const drained = this.queue.catch(() => undefined);
    this.closed = true;
    this.watch = undefined;
    await drained;
    await this.db.close();
  }

  /** The last sequence number handed out. */
  currentSeq(): number {
    return this.seq;
  }

  /** Note the sequence number and trust at the start of a backup (flush the watcher first). */
  beginBackup(): BackupStart {
    this.assertOpen();
    return { seq: this.seq, trusted: this.trust.trusted, ...(this.trust.reason !== undefined ? { reason: this.trust.reason } : {}) };
  }

  // -------------------------------------------------------------------------------------------
  // Dirty marks

  /**
   * Mark paths dirty in ONE batch, all with the same new sequence number (returned). A path listed
   * twice keeps its last event.
   */
  async markDirty(marks: Iterable<{ path: string; event: DirtyEvent }>): Promise<number> {
    const list = [...marks];
    for (const m of list) {
      assertRelativePath(m.path);
      if (!DIRTY_EVENTS.has(m.event)) throw new BulwarkError('INVALID_ARGUMENT', `unknown watcher event ${JSON.stringify(m.event)}`);
    }
    return this.exclusive(async () => {
      if (list.length === 0) return this.seq;
      const seq = this.seq + 1;
      const at = this.clock.now();
      const batch = this.db.batch();
      for (const m of list) batch.put(keyOf(m.path), { event: m.event, seq, at }, { sublevel: this.dirty });
      batch.put('seq', seq, { sublevel: this.meta });
      await batch.write();
      this.seq = seq;
      return seq;
    });
  }

  /**
   * The dirty marks, in tree order, streamed from LevelDB (an implicit LevelDB snapshot: marks written
   * while iterating may or may not be seen, and are left for the next backup).
   */
  async *dirtyPaths(): AsyncGenerator<DirtyMark> {
    this.assertOpen();
    for await (const [key, value] of this.dirty.iterator()) yield decodeDirty(key, value);
  }

  // -------------------------------------------------------------------------------------------
  // Backed-up states

  async getState(path: string): Promise<JournalEntry | undefined> {
    assertRelativePath(path);
    this.assertOpen();
    const key = keyOf(path);
    const value = await this.state.get(key);
    return value === undefined ? undefined : decodeEntry(key, value);
  }

  /**
   * The states of every path under `dir` (not `dir` itself; '' or omitted: the whole tree), in tree
   * order, streamed.
   */
  async *states(dir = ''): AsyncGenerator<{ path: string; entry: JournalEntry }> {
    this.assertOpen();
    let range = {};
    if (dir !== '') {
      assertRelativePath(dir);
      const k = keyOf(dir);
      range = { gt: k + '\0', lt: k + '\x01' };
    }
    for await (const [key, value] of this.state.iterator(range)) yield { path: pathOf(key), entry: decodeEntry(key, value) };
  }

  /**
   * After the controller committed `snapshotId`: in ONE atomic batch (fsync'ed) write the new states,
   * delete the dirty marks with `seq ≤ clearedUpToSeq`, set `lastSnapshotId` and set trust (trusted
   * only when the rules in the header allow; the result says which). Do not call other journal writes
   * from inside an async `states` iterable: writes queue behind this one.
   */
  async commitBackup(input: CommitBackupInput): Promise<CommitResult> {
    const { snapshotId, states, clearedUpToSeq } = input;
    if (snapshotId === '') throw new BulwarkError('INVALID_ARGUMENT', 'commitBackup needs the snapshot id');
    return this.exclusive(async () => {
      if (!Number.isSafeInteger(clearedUpToSeq) || clearedUpToSeq < 0 || clearedUpToSeq > this.seq) {
        throw new BulwarkError('INVALID_ARGUMENT', `clearedUpToSeq ${clearedUpToSeq} is not a sequence number this journal handed out (last: ${this.seq}); use beginBackup().seq`);
      }
      const batch = this.db.batch();
      let done = false;
      try {
        let written = 0;
        let deleted = 0;
        let cleared = 0;
        for await (const [path, entry] of states) {
          assertRelativePath(path);
          if (entry === null) {
            batch.del(keyOf(path), { sublevel: this.state });
            deleted++;
          } else {
            const value: StateValue = { state: encodeFileState(entry.state), content: [...entry.content] };
            batch.put(keyOf(path), value, { sublevel: this.state });
            written++;
          }
        }
        for await (const [key, value] of this.dirty.iterator()) {
          if (decodeDirty(key, value).seq <= clearedUpToSeq) {
            batch.del(key, { sublevel: this.dirty });
            cleared++;
          }
        }
        const generation = this.trustGeneration;
        const trust = this.trustAfterCommit(clearedUpToSeq);
        batch.put('lastSnapshotId', snapshotId, { sublevel: this.meta });
        batch.put('trust', trust, { sublevel: this.meta });
        done = true; // write() closes the batch whether it succeeds or not
        await batch.write({ sync: true });
        // A markUntrusted() called while the batch was being written wins; its own write is queued next.
        if (this.trustGeneration === generation) this.trust = trust;
        this.lastSnapshotId = snapshotId;
        return { written, deleted, cleared, trust: { ...this.trust } };
      } finally {
        if (!done) await batch.close();
      }
    });
  }

  private trustAfterCommit(clearedUpToSeq: number): TrustStatus {
    const at = this.clock.now();
    if (!this.trust.trusted && this.trust.seq > clearedUpToSeq) return this.trust; // became untrusted during the backup
    if (this.watch === undefined || this.watch.sinceSeq > clearedUpToSeq) {
      return {
        trusted: false,
        reason: 'no watcher ran for the whole backup, so changes made during it may be unrecorded',
        at,
        seq: this.seq,
      };
    }
    return { trusted: true, at, seq: this.seq };
  }

  // -------------------------------------------------------------------------------------------
  // Trust and meta

  async isTrusted(): Promise<boolean> {
    return this.trust.trusted;
  }

  async trustStatus(): Promise<TrustStatus> {
    return { ...this.trust };
  }

  async getMeta(): Promise<JournalMeta> {
    return {
      trust: { ...this.trust },
      seq: this.seq,
      ...(this.lastSnapshotId !== undefined ? { lastSnapshotId: this.lastSnapshotId } : {}),
      ...(this.watcherStartedAt !== undefined ? { watcherStartedAt: this.watcherStartedAt } : {}),
    };
  }

  /**
   * The journal may be missing changes: the next backup must scan. Takes effect in memory at once (so a
   * backup in this process sees it even if the write fails), then is written with fsync.
   */
  async markUntrusted(reason: string): Promise<void> {
    this.assertOpen();
    this.trustGeneration++;
    this.trust = { trusted: false, reason, at: this.clock.now(), seq: this.seq + 1 };
    await this.exclusive(() => this.untrustLocked(reason));
  }

  /** A watcher is ready and sees every change from now on. Returns a token for `watchStopped`. */
  async watchStarted(): Promise<number> {
    return await this.exclusive(async () => {
      if (this.watch !== undefined) {
        throw new BulwarkError('INVALID_ARGUMENT', 'a watcher is already attached to this journal; stop it first');
      }
      const seq = this.seq + 1;
      const at = this.clock.now();
      const batch = this.db.batch();
      batch.put('seq', seq, { sublevel: this.meta });
      batch.put('watcherStartedAt', at, { sublevel: this.meta });
      await batch.write();
      this.seq = seq;
      this.watcherStartedAt = at;
      const token = this.nextToken++;
      this.watch = { token, sinceSeq: seq };
      return token;
    });
  }

  /** The watcher with `token` stopped or failed: changes are no longer recorded, so the journal is untrusted. */
  async watchStopped(token: number, reason: string): Promise<void> {
    if (this.watch?.token !== token) return;
    this.watch = undefined;
    await this.markUntrusted(reason);
  }

  // -------------------------------------------------------------------------------------------

  private async untrustLocked(reason: string): Promise<void> {
    const seq = this.seq + 1;
    const trust: TrustStatus = { trusted: false, reason, at: this.clock.now(), seq };
    this.trustGeneration++;
    this.trust = trust; // in memory first: stays untrusted in this process even if the write fails
    const batch = this.db.batch();
    batch.put('seq', seq, { sublevel: this.meta });
    batch.put('trust', trust, { sublevel: this.meta });
    await batch.write({ sync: true });
    this.seq = seq;
  }

  private async writeTrust(trust: TrustStatus): Promise<void> {
    await this.db.batch([{ type: 'put', sublevel: this.meta, key: 'trust', value: trust }], { sync: true });
  }

  private assertOpen(): void {
    if (this.closed) throw new BulwarkError('INTERNAL', 'the change journal is closed');
  }

  /** Run `fn` after every write queued before it; a failure does not block the ones after. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    this.assertOpen();
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }
}
