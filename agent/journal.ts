/**
 * The agent's change journal: a LevelDB database in the agent's data directory that lets an
 * incremental backup cost in proportion to what changed, not to the size of the tree.
 *
 * It holds five sublevels (one LevelDB, so a batch can span them atomically):
 * - `dirty`: `path → { event, seq, at }`, the paths the watcher saw change since they were last backed
 *   up. `seq` is the sequence number of the `markDirty` batch that last marked the path; it only grows,
 *   and is persisted with the marks, so it never repeats across restarts.
 * - `state`: `path → { state, content }`, the FileState of each path at the last committed backup and
 *   the caller's opaque `content` (the backup pipeline keeps each file's blob ids there).
 * - `links`: `path → { k: 'dev:inode', n: link count }` for every file of the last committed backup
 *   that has more than one name (hard links), kept in memory too (small: only such files). See
 *   "Hard links" below.
 * - `staged`: the new states of a backup in progress (`stageStates()`), written as the walk produces
 *   them so the backup does not hold them; moved into `state` by its commit, dropped otherwise.
 *   A full walk's states are a whole new generation instead (`stageStates({ complete: true })`):
 *   written into the next generation's sublevel (`state@<n+1>`), which its commit makes current
 *   by flipping `stateGen`, and the old generation is then cleared. That commit neither reads the
 *   states back nor writes them again (it did: a fifth of the 2.4 GB a first backup of 100,000
 *   files allocated, and most of its commit time).
 * - `meta`: `seq` (the last sequence number handed out), `trust` (`{ trusted, reason, at, seq }`),
 *   `lastSnapshotId`, `watcherStartedAt`, `format` (2: states record link counts), `stateGen` (the
 *   current generation of `state`: sublevel `state` for 0, `state@<n>` after).
 * Paths are relative to the protected root with POSIX separators. Keys store them with '/' replaced by
 * NUL, so LevelDB's byte order is *tree order* (file-state.ts `comparePaths`): iterating `state` visits
 * the tree depth first, like the scanner, and a subtree is one key range.
 *
 * How a backup uses it (agent/backup drives this):
 *   1. `watcher.flush()`, then `start = journal.beginBackup()`: the sequence number `start.seq` and
 *      whether the journal is trusted.
 *   2. trusted: back up `dirtyPaths()` and `linkedPaths()`; untrusted: `reconcile()` (scanner.ts), a
 *      full stat walk.
 *   3. `commitBackup({ snapshotId, states, clearedUpToSeq: start.seq })`, after the controller has
 *      committed the snapshot. `states` is an array, an iterable, or the `StagedStates` of
 *      `stageStates()` that the backup filled as it went (bounded memory: one batch).
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
 * Hard links. The watcher sees a write only under the name it was made through: inotify reports it to
 * that name's directory, and only directories are watched (watcher.ts). A file with several names can
 * therefore change with no event for the others — names in other directories, or outside the
 * protected root, or excluded. So every file the last backup saw with a link count above 1 is listed
 * by `linkedPaths()`, and a trusted backup re-checks each of them (lstat, re-read if changed) besides
 * its dirty marks: cheap when such files are few, in proportion to their number when not. Names the
 * journal does not know yet are found by a scan: when a backup that followed the dirty marks records a
 * file whose link count grew (or a new file with several names) and the journal knows fewer of its
 * names than its link count, the missing names may be in the tree, so the journal becomes untrusted
 * ('hard link with unknown names') and the next backup reconciles. A full walk or a reconcile scan
 * (`scanned`) sees every name in the tree — a link count change changes the ctime of every name — so
 * names it did not find are outside the tree (or excluded), and the re-check covers them. A journal
 * from before link counts were recorded (no `format` 2) has its states
 * cleared on open, so that first reconcile visits, and records, every entry.
 *
 * Crashes. Every method is one LevelDB write (a batch where it writes several keys), except a large
 * `commitBackup` (see there), so a crash leaves each either done or not done; in between:
 * - watcher events not yet flushed are lost, but the restart makes the journal untrusted: a full scan.
 * - crash during a backup, before `commitBackup`: the dirty marks are only deleted by the commit batch,
 *   so they are all still there and those paths are backed up again (the packs already uploaded are
 *   reused by dedup). Safe, some repeated work.
 * - crash after the controller committed the snapshot, before `commitBackup`: the journal still has the
 *   previous states and marks, so the next backup re-reads those files and finds their blobs already
 *   stored. `lastSnapshotId` is stale until then; the controller's catalog is the source of truth.
 * - marks written while a backup runs get a larger seq than `clearedUpToSeq`, so the commit leaves them.
 * - crash during a full walk's commit (a new generation): its first batch flips `stateGen` and sets
 *   `lastSnapshotId` together, so the states are either all the previous backup's or all the new one's;
 *   the old generation (or an uncommitted new one) left behind is cleared on open.
 * - crash during a large commit (more than `commitBatch` operations, written in several batches, the
 *   first of which sets `lastSnapshotId`): some states are the new backup's, the rest the previous
 *   one's, and some marks are not cleared. The restart makes the journal untrusted, so the next backup
 *   reconciles against the snapshot the journal names (the new one), and that is safe with mixed
 *   states: a path whose recorded state matches the disk was recorded, as it is, either by the new
 *   backup or by the previous one with no change since (ctime only moves forward), and in both cases the
 *   new snapshot holds it as it is. Paths with an old or missing state are merely looked at again.
 * Dirty marks are written without fsync (a power cut can lose the last ones, but the restart distrusts
 * the journal anyway); `commitBackup` and `markUntrusted` are written with `sync: true`.
 *
 * All writes go through one in-process queue, so `commitBackup` reads and deletes the dirty marks with
 * no `markDirty` in between (LevelDB's own lock keeps other processes out). Reads do not queue.
 */
import { Level } from 'level';
import { systemClock, type Clock } from '../common/clock.js';
import { asBulwarkError, BulwarkError } from '../common/errors.js';
import { assertRelativePath, decodeFileState, encodeFileState, linkKeyOf, type EncodedFileState, type FileState } from './file-state.js';

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
  /**
   * The backup looked at every entry of the tree (a full walk, or a reconcile scan): a name of a file
   * it did not find is outside the tree (or excluded), not merely unseen. Default false: the backup
   * followed the dirty marks (see "Hard links" in the header).
   */
  scanned?: boolean;
}

export interface CommitResult {
  /** States written and deleted. */
  written: number;
  deleted: number;
  /** LevelDB batches it took (1 unless there were more than `commitBatch` operations). */
  batches: number;
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
  /**
   * Most operations in one LevelDB batch of `commitBackup` (default 2,000). A batch is built in memory
   * (JSON values in JS, then LevelDB's own copy); a full backup of 100,000 files in one batch cost
   * ~150 MB of RSS, in batches of 2,000 a few MB. See the header for what a crash between them leaves.
   */
  commitBatch?: number;
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

/** A file with several names, as the `links` sublevel records it. */
interface LinkValue {
  /** `dev:inode` */
  k: string;
  /** Link count. */
  n: number;
}

/** A staged state: the new state of a path, or `{ gone: 1 }` (the path is gone). */
type StagedValue = StateValue | { gone: 1 };

/** `meta.format`: 2 = file states record link counts (older journals have their states cleared on open). */
const FORMAT = 2;

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

function isLinkValue(v: unknown): v is LinkValue {
  const l = v as Partial<LinkValue> | null;
  return typeof l === 'object' && l !== null && typeof l.k === 'string' && typeof l.n === 'number';
}

function decodeEntry(key: string, value: unknown): JournalEntry {
  const v = value as Partial<StateValue> | null;
  if (typeof v !== 'object' || v === null || !Array.isArray(v.content) || !v.content.every((c) => typeof c === 'string')) {
    throw damaged(`state of ${JSON.stringify(pathOf(key))}`);
  }
  return { state: decodeFileState(v.state), content: v.content };
}

/**
 * The new states of a backup in progress, written to the journal (sublevel `staged`) in batches of
 * `commitBatch` as the walk produces them, so the backup holds at most one batch instead of every
 * state until its commit (100,000 states were ~45 MB of heap during a full backup of 100,000 files).
 * Pass it as `states` to `commitBackup`, which moves them into `state`. Nothing else reads staged
 * states; a stage that is not committed is dropped by the next `stageStates()` and on open.
 */
type StageOp = { type: 'put'; key: string; value: StagedValue } | { type: 'del'; key: string };

export class StagedStates implements AsyncIterable<readonly [string, JournalEntry | null]> {
  private ops: StageOp[] = [];
  private writing: Promise<void> = Promise.resolve();
  private failure: unknown;
  private count = 0;
  /** Paths staged as gone (a complete stage does not write them: its generation simply lacks them). */
  gone = 0;
  /**
   * A complete stage's entries that matter to the `links` records (several names, or a path that has
   * a record or records under it): its commit applies the links from these, not from every state.
   */
  readonly linkEntries: Array<[string, JournalEntry | null]> = [];

  /** @internal created by `Journal.stageStates()` */
  constructor(
    readonly journal: Journal,
    private readonly write: (ops: StageOp[]) => Promise<void>,
    private readonly read: () => AsyncIterable<readonly [string, JournalEntry | null]>,
    private readonly batchSize: number,
    /** The generation this stage writes, when it is a complete one (every path of the tree). */
    readonly generation?: number,
    private readonly linkRelevant?: (path: string, entry: JournalEntry | null) => boolean,
  ) {}

  /** States staged so far (a path staged twice counts twice; the last one wins). */
  get size(): number {
    return this.count;
  }

  /**
   * Stage the new state of `path` (`null`: it is gone). Returns a promise only when a batch is being
   * written; awaiting it keeps at most two batches in memory.
   */
  add(path: string, entry: JournalEntry | null): Promise<void> | undefined {
    if (this.failure !== undefined) throw this.failure;
    assertRelativePath(path);
    this.count++;
    if (this.generation !== undefined) {
      if (this.linkRelevant!(path, entry)) this.linkEntries.push([path, entry]);
      if (entry === null) {
        // gone: the new generation lacks it (a delete only matters if the walk staged it before)
        this.gone++;
        this.ops.push({ type: 'del', key: keyOf(path) });
      } else {
        this.ops.push({ type: 'put', key: keyOf(path), value: { state: encodeFileState(entry.state), content: entry.content } as StagedValue });
      }
    } else {
      const value: StagedValue = entry === null ? { gone: 1 } : { state: encodeFileState(entry.state), content: entry.content };
      this.ops.push({ type: 'put', key: keyOf(path), value });
    }
    return this.ops.length >= this.batchSize ? this.flush() : undefined;
  }

  /** Write what is buffered; resolves when every batch staged so far is written. */
  flush(): Promise<void> {
    const ops = this.ops;
    this.ops = [];
    const previous = this.writing;
    this.writing = (async () => {
      await previous;
      if (ops.length > 0) await this.write(ops);
    })().catch((err: unknown) => {
      this.failure ??= err;
      throw err;
    });
    return this.writing;
  }

  [Symbol.asyncIterator](): AsyncIterator<readonly [string, JournalEntry | null]> {
    return this.read()[Symbol.asyncIterator]();
  }
}

export class Journal {
  private readonly dirty;
  /** The current generation of states (see the header: `stateGen`). */
  private state;
  private stateGen: number;
  private readonly staged;
  private readonly links;
  private readonly meta;
  /** The `links` sublevel in memory: path → its inode and link count, and inode → its known paths. */
  private readonly linkOf = new Map<string, LinkValue>();
  private readonly namesOf = new Map<string, Set<string>>();
  /** Directories with such paths under them → how many (so that only their removal looks for them). */
  private readonly linkDirs = new Map<string, number>();
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  /** The attached watcher: its token and the sequence number taken when it attached. */
  private watch: { token: number; sinceSeq: number } | undefined;
  private nextToken = 1;
  /** Bumped by every markUntrusted, so a commit in flight cannot overwrite it in memory. */
  private trustGeneration = 0;
  /** The stage of the backup in progress (`stageStates()`), if any. */
  private stage: StagedStates | undefined;

  private constructor(
    private readonly db: Level<string, unknown>,
    private readonly clock: Clock,
    private seq: number,
    private trust: TrustStatus,
    private lastSnapshotId: string | undefined,
    private watcherStartedAt: number | undefined,
    private readonly commitBatch: number,
    stateGen: number,
  ) {
    this.dirty = db.sublevel<string, DirtyValue>('dirty', { valueEncoding: 'json' });
    this.stateGen = stateGen;
    this.state = this.stateLevel(stateGen);
    this.links = db.sublevel<string, LinkValue>('links', { valueEncoding: 'json' });
    this.staged = db.sublevel<string, StagedValue>('staged', { valueEncoding: 'json' });
    this.meta = db.sublevel<string, unknown>('meta', { valueEncoding: 'json' });
  }

  /** The sublevel of generation `gen` of the states ('state' for 0, as before generations). */
  private stateLevel(gen: number) {
    return this.db.sublevel<string, StateValue>(gen === 0 ? 'state' : `state@${gen}`, { valueEncoding: 'json' });
  }

  /** Open (or create) the journal in `dir`, applying the start-up rule (see the header). */
  static async open(dir: string, options: JournalOptions = {}): Promise<Journal> {
    const clock = options.clock ?? systemClock;
    const commitBatch = options.commitBatch ?? 2_000;
    if (!Number.isSafeInteger(commitBatch) || commitBatch < 1) throw new BulwarkError('INVALID_ARGUMENT', `commitBatch must be a positive integer, got ${commitBatch}`);
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
      const [seqV, trustV, snapV, watchV, formatV, genV] = await meta.getMany(['seq', 'trust', 'lastSnapshotId', 'watcherStartedAt', 'format', 'stateGen']);
      const gen = Number.isSafeInteger(genV) && (genV as number) >= 0 ? (genV as number) : 0;
      const seq = typeof seqV === 'number' ? seqV : 0;
      const valid = isTrustStatus(trustV);
      const trust: TrustStatus = valid
        ? trustV
        : { trusted: false, reason: trustV === undefined ? 'never scanned' : 'damaged trust record', at: clock.now(), seq };
      const journal = new Journal(db, clock, seq, trust, typeof snapV === 'string' ? snapV : undefined, typeof watchV === 'number' ? watchV : undefined, commitBatch, gen);
      if (formatV !== FORMAT) {
        // states without link counts: forget them, so the next reconcile visits and records every entry
        await journal.state.clear();
        await journal.links.clear();
        await meta.put('format', FORMAT);
      }
      await journal.staged.clear(); // a backup that did not commit
      // a full walk that did not commit (the next generation), or the generation a commit replaced
      // and had not cleared yet when the agent stopped
      await journal.stateLevel(gen + 1).clear();
      if (gen > 0) await journal.stateLevel(gen - 1).clear();
      for await (const [key, value] of journal.links.iterator()) {
        if (!isLinkValue(value)) throw damaged(`link record of ${JSON.stringify(pathOf(key))}`);
        journal.setLink(pathOf(key), value);
      }
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

  /**
   * Every path the last backups recorded as a file with more than one name (see "Hard links" in the
   * header): a trusted backup re-checks each of them, as a write through another name has no event.
   */
  linkedPaths(): string[] {
    this.assertOpen();
    return [...this.linkOf.keys()];
  }

  // -------------------------------------------------------------------------------------------
  // Backed-up states

  /**
   * Start staging the new states of a backup (see `StagedStates`); drops what an earlier stage left.
   * Commit it with `commitBackup({ states: stage, … })`.
   */
  /**
   * A stage for the new states of a backup in progress (see StagedStates). `complete`: the walk
   * visits every path of the tree (a full walk), so its states replace all of the current ones as
   * a new generation; otherwise they are changes to apply to them.
   */
  async stageStates(opts: { complete?: boolean } = {}): Promise<StagedStates> {
    this.assertOpen();
    this.stage = undefined;
    await this.staged.clear();
    let stage: StagedStates;
    if (opts.complete) {
      const next = this.stateGen + 1;
      const level = this.stateLevel(next);
      await level.clear();
      stage = new StagedStates(
        this,
        (ops) => level.batch(ops as Array<{ type: 'put'; key: string; value: StateValue } | { type: 'del'; key: string }>),
        () => this.generationEntries(next),
        this.commitBatch,
        next,
        (path, entry) => (entry !== null && linkKeyOf(entry.state) !== undefined) || this.linkOf.has(path) || this.linkDirs.has(path),
      );
    } else {
      stage = new StagedStates(this, (ops) => this.staged.batch(ops), () => this.stagedEntries(), this.commitBatch);
    }
    this.stage = stage;
    return stage;
  }

  private async *generationEntries(gen: number): AsyncGenerator<readonly [string, JournalEntry | null]> {
    for await (const [key, value] of this.stateLevel(gen).iterator()) yield [pathOf(key), decodeEntry(key, value)];
  }

  private async *stagedEntries(): AsyncGenerator<readonly [string, JournalEntry | null]> {
    for await (const [key, value] of this.staged.iterator()) {
      yield [pathOf(key), value !== null && typeof value === 'object' && 'gone' in value ? null : decodeEntry(key, value)];
    }
  }

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
   * After the controller committed `snapshotId`: write the new states, delete the dirty marks with
   * `seq ≤ clearedUpToSeq`, set `lastSnapshotId` and set trust (trusted only when the rules in the
   * header allow; the result says which), all fsync'ed. Up to `commitBatch` operations this is ONE
   * atomic batch; a larger commit is written in batches of that size, the first one setting
   * `lastSnapshotId`, and if one of them fails the journal is marked untrusted (see the header for
   * why a crash in between is safe). Do not call other journal writes from inside an async `states`
   * iterable: writes queue behind this one.
   */
  async commitBackup(input: CommitBackupInput): Promise<CommitResult> {
    const { snapshotId, states, clearedUpToSeq, scanned = false } = input;
    if (snapshotId === '') throw new BulwarkError('INVALID_ARGUMENT', 'commitBackup needs the snapshot id');
    return this.exclusive(async () => {
      if (!Number.isSafeInteger(clearedUpToSeq) || clearedUpToSeq < 0 || clearedUpToSeq > this.seq) {
        throw new BulwarkError('INVALID_ARGUMENT', `clearedUpToSeq ${clearedUpToSeq} is not a sequence number this journal handed out (last: ${this.seq}); use beginBackup().seq`);
      }
      const staged = states instanceof StagedStates ? states : undefined;
      if (staged !== undefined && (staged.journal !== this || staged !== this.stage)) {
        throw new BulwarkError('INVALID_ARGUMENT', 'these staged states are not the current stage of this journal (stageStates() was called again, or another journal staged them)');
      }
      // a full walk's stage: a new generation of states, made current by this commit
      const newGen = staged?.generation;
      const previousGen = this.stateGen;
      const flip = (): void => {
        if (newGen === undefined || this.stateGen === newGen) return;
        this.stateGen = newGen;
        this.state = this.stateLevel(newGen);
      };
      let batch = this.db.batch();
      let ops = 0;
      let batches = 0;
      /** Changes to the in-memory link maps, applied once the batch holding them is written. */
      let linkChanges: Array<[string, LinkValue | undefined]> = [];
      /** Inodes recorded with a link count that grew (or new): are all their names known? */
      const grown = new Map<string, number>();
      let open = true;
      const write = async (last: boolean): Promise<void> => {
        open = false; // write() closes the batch whether it succeeds or not
        if (batches === 0 && !last) {
          batch.put('lastSnapshotId', snapshotId, { sublevel: this.meta });
          if (newGen !== undefined) batch.put('stateGen', newGen, { sublevel: this.meta });
        }
        await batch.write(last ? { sync: true } : {});
        batches++;
        flip(); // the first batch holds the flip
        for (const [path, link] of linkChanges) this.setLink(path, link);
        linkChanges = [];
        if (!last) {
          batch = this.db.batch();
          ops = 0;
          open = true;
        }
      };
      let written = 0;
      let deleted = 0;
      let cleared = 0;
      /** Put one state into the batch; true when the batch is full. */
      const addState = (path: string, entry: JournalEntry | null): boolean => {
        assertRelativePath(path);
        const key = keyOf(path);
        if (entry === null) {
          batch.del(key, { sublevel: this.state });
          deleted++;
        } else {
          const value: StateValue = { state: encodeFileState(entry.state), content: entry.content };
          batch.put(key, value, { sublevel: this.state });
          written++;
        }
        ops += 1 + this.stageLinks(batch, path, entry?.state, linkChanges, grown);
        return ops >= this.commitBatch;
      };
      try {
        if (staged !== undefined) await staged.flush();
        if (newGen !== undefined) {
          // the states are in place already; only the links records follow them
          const seen = new Set<string>();
          for (const [path, entry] of staged!.linkEntries) {
            seen.add(path);
            ops += this.stageLinks(batch, path, entry?.state, linkChanges, grown);
            if (ops >= this.commitBatch) await write(false);
          }
          for (const path of [...this.linkOf.keys()]) {
            if (seen.has(path)) continue;
            ops += this.stageLinks(batch, path, undefined, linkChanges, grown);
            if (ops >= this.commitBatch) await write(false);
          }
          written = staged!.size - staged!.gone;
          deleted = staged!.gone;
        } else if (Symbol.iterator in states) {
          // an array (the backup's): awaited only between batches, not once per state
          for (const [path, entry] of states) if (addState(path, entry)) await write(false);
        } else {
          for await (const [path, entry] of states) if (addState(path, entry)) await write(false);
        }
        for await (const [key, value] of this.dirty.iterator()) {
          if (decodeDirty(key, value).seq <= clearedUpToSeq) {
            batch.del(key, { sublevel: this.dirty });
            cleared++;
            if (++ops >= this.commitBatch) await write(false);
          }
        }
        const generation = this.trustGeneration;
        let trust = this.trustAfterCommit(clearedUpToSeq);
        // the names of an inode once the changes still staged (those of the last batch) are applied
        const namesAfter = (link: string): Set<string> => {
          const names = new Set(this.namesOf.get(link));
          for (const [p, l] of linkChanges) {
            if (l?.k === link) names.add(p);
            else names.delete(p);
          }
          return names;
        };
        const unknown = scanned ? [] : [...grown].filter(([link, n]) => namesAfter(link).size < n);
        if (trust.trusted && unknown.length > 0) {
          const some = [...namesAfter(unknown[0]![0])][0];
          trust = {
            trusted: false,
            reason: `hard link with unknown names: ${unknown.length} file(s) such as ${JSON.stringify(some)} gained a name the journal has not seen, which may be in the tree; the next backup scans for it`,
            at: this.clock.now(),
            seq: this.seq,
          };
        }
        batch.put('lastSnapshotId', snapshotId, { sublevel: this.meta });
        if (newGen !== undefined) batch.put('stateGen', newGen, { sublevel: this.meta });
        batch.put('trust', trust, { sublevel: this.meta });
        await write(true);
        // A markUntrusted() called while the batch was being written wins; its own write is queued next.
        if (this.trustGeneration === generation) this.trust = trust;
        this.lastSnapshotId = snapshotId;
        if (staged !== undefined) {
          this.stage = undefined;
          // left over, each is dropped on the next stage or open
          if (newGen !== undefined) await this.stateLevel(previousGen).clear().catch(() => undefined);
          else await this.staged.clear().catch(() => undefined);
        }
        return { written, deleted, cleared, batches, trust: { ...this.trust } };
      } catch (err) {
        if (open) await batch.close();
        if (batches > 0) {
          // part of the commit is written: only a full scan may trust the journal again
          this.lastSnapshotId = snapshotId;
          await this.untrustLocked(`a commit of snapshot ${snapshotId} failed after ${batches} of its batches: ${asBulwarkError(err).message}`).catch(() => undefined);
        }
        throw err;
      }
    });
  }

  /**
   * Stage in `batch` the `links` record of `path` given its new state (`undefined`: gone), and the
   * removal of the records under it unless it is a directory; returns the operations added. The
   * in-memory change is appended to `changes`; an inode whose link count grew goes into `grown`.
   */
  private stageLinks(
    batch: ReturnType<Level<string, unknown>['batch']>,
    path: string,
    state: FileState | undefined,
    changes: Array<[string, LinkValue | undefined]>,
    grown: Map<string, number>,
  ): number {
    let ops = 0;
    const link = state ? linkKeyOf(state) : undefined;
    const before = this.linkOf.get(path);
    if (link !== undefined) {
      const value: LinkValue = { k: link, n: state!.nlink! };
      if (before === undefined || before.k !== link || before.n < value.n) grown.set(link, Math.max(value.n, grown.get(link) ?? 0));
      if (before?.k !== value.k || before.n !== value.n) {
        batch.put(keyOf(path), value, { sublevel: this.links });
        changes.push([path, value]);
        ops++;
      }
    } else if (before !== undefined) {
      batch.del(keyOf(path), { sublevel: this.links });
      changes.push([path, undefined]);
      ops++;
    }
    if (state?.type !== 'dir' && this.linkDirs.has(path)) {
      const prefix = path + '/';
      for (const p of this.linkOf.keys()) {
        if (p.startsWith(prefix)) {
          batch.del(keyOf(p), { sublevel: this.links });
          changes.push([p, undefined]);
          ops++;
        }
      }
    }
    return ops;
  }

  private setLink(path: string, link: LinkValue | undefined): void {
    const before = this.linkOf.get(path);
    if (before !== undefined) {
      const names = this.namesOf.get(before.k);
      names?.delete(path);
      if (names?.size === 0) this.namesOf.delete(before.k);
      this.linkOf.delete(path);
      this.countLinkDirs(path, -1);
    }
    if (link === undefined) return;
    this.linkOf.set(path, link);
    let names = this.namesOf.get(link.k);
    if (!names) this.namesOf.set(link.k, (names = new Set()));
    names.add(path);
    this.countLinkDirs(path, 1);
  }

  private countLinkDirs(path: string, delta: number): void {
    for (let i = path.indexOf('/'); i >= 0; i = path.indexOf('/', i + 1)) {
      const dir = path.slice(0, i);
      const n = (this.linkDirs.get(dir) ?? 0) + delta;
      if (n > 0) this.linkDirs.set(dir, n);
      else this.linkDirs.delete(dir);
    }
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
