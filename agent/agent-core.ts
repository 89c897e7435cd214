/**
 * AgentCore: the agent's backup and restore engine as a library — what the gRPC session drives,
 * and what tests and benchmarks call directly.
 *
 * It owns, in the agent's data dir:
 *   journal/<root-hash>/   one change journal per protected root (journal.ts), fed by a Watcher
 *   trees/                 the tree cache (tree-cache.ts)
 *   packlog/               packs uploaded by a backup that has not committed yet, with their lock
 *                          end, so that a crashed backup's uploads are reused by the next one
 *   locks/                 the lock-end ledger: what the agent knows of each pack's lock, so a
 *                          backup checks with HEAD only the packs it cannot vouch for
 * and keeps the host's blob index in memory between backups.
 *
 * A backup, in order: flush watchers → note each journal's sequence and trust → build each root's
 * DirtySet (trusted: the journal's marks; untrusted: a reconcile scan against the journal's
 * states, or a full walk when the journal does not describe the parent snapshot) → backup() →
 * `commit` (the controller records the snapshot) → commit each journal (clear the marks the backup
 * covered, store the new states) → clear the pack log. Skipped paths are marked dirty again so the
 * next backup retries them.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Level } from 'level';
import { BulwarkError, hasCode } from '../common/errors.js';
import type { BlobIndex } from '../common/repo/blob-index.js';
import { decodeEntries } from '../common/repo/pack.js';
import type { HostRepository } from '../common/repo/repository.js';
import type { SnapshotManifest } from '../common/repo/snapshot.js';
import type { ObjectLock } from '../common/storage/blob-store.js';
import { type BackupProgress, type BackupResult, backup } from './backup/backup.js';
import { DirtySet } from './backup/dirty-set.js';
import type { UploadedPack } from './backup/packer.js';
import { LevelTreeCache } from './backup/tree-cache.js';
import { compileExclude } from './file-state.js';
import { Journal, type StagedStates } from './journal.js';
import { withBoundedHeapGrowth } from './process-tuning.js';
import { type RestoreProgress, type RestoreResult, restore } from './restore/restore.js';
import { reconcile } from './scanner.js';
import { Watcher } from './watcher.js';

export interface AgentCoreOptions {
  dataDir: string;
  hostname: string;
  host: HostRepository;
  roots: string[];
  exclude?: string[];
  /** Run chokidar watchers (default true). Without them every backup reconciles by a full scan. */
  watch?: boolean;
  onWatcherError?: (root: string, err: BulwarkError) => void;
}

export interface BackupJob {
  lock: ObjectLock;
  expiresAt: number;
  /** The snapshot to build on; default: the last one this agent committed. */
  previous?: { id: string; manifest: SnapshotManifest } | null;
  reprotectPacks?: ReadonlySet<string>;
  jobId?: string;
  policy?: string;
  signal?: AbortSignal;
  onProgress?: (p: BackupProgress) => void;
  /** Record the snapshot at the controller; the journal is committed only after this resolves. */
  commit?: (r: BackupResult) => Promise<void>;
}

export interface BackupJobResult extends BackupResult {
  /** How each root's changes were found. */
  modes: Record<string, 'journal' | 'reconcile' | 'full'>;
}

export interface RestoreJob {
  manifest: SnapshotManifest;
  /** The host whose snapshot this is, when it is not this agent's own (restore to another host). */
  host?: HostRepository;
  target: string;
  paths?: string[];
  overwrite?: boolean;
  hardlinks?: 'link' | 'copy';
  signal?: AbortSignal;
  onProgress?: (p: RestoreProgress) => void;
  /** Fallbacks worth a line in the log (the workers could not fetch from the store). */
  onNotice?: (message: string) => void;
}

interface PackLogEntry {
  retainUntil: number;
  /** The pack's entries, encoded as in its header (pack.ts encodeEntries), in base64; absent in logs of earlier builds. */
  header?: string;
}

export class AgentCore {
  private index: BlobIndex | undefined;
  private busy = false;

  private constructor(
    private readonly o: AgentCoreOptions,
    private readonly journals: Map<string, Journal>,
    private readonly watchers: Map<string, Watcher>,
    private readonly trees: LevelTreeCache,
    private readonly packLog: Level<string, PackLogEntry>,
    private readonly lockLedger: Level<string, number>,
    private readonly packLocks: Map<string, number>,
  ) {}

  static async open(o: AgentCoreOptions): Promise<AgentCore> {
    if (o.roots.length === 0) throw new BulwarkError('INVALID_ARGUMENT', 'nothing to protect: give at least one path');
    const roots = o.roots.map((r) => path.resolve(r));
    await fs.mkdir(o.dataDir, { recursive: true });
    const journals = new Map<string, Journal>();
    const watchers = new Map<string, Watcher>();
    for (const root of roots) {
      const dir = path.join(o.dataDir, 'journal', createHash('sha256').update(root).digest('hex').slice(0, 16));
      await fs.mkdir(dir, { recursive: true });
      journals.set(root, await Journal.open(dir));
    }
    const trees = await LevelTreeCache.open(path.join(o.dataDir, 'trees'));
    const packLog = new Level<string, PackLogEntry>(path.join(o.dataDir, 'packlog'), { valueEncoding: 'json' });
    await packLog.open();
    // what the agent knows of its packs' lock ends (lower bounds; locks only ever grow)
    const lockLedger = new Level<string, number>(path.join(o.dataDir, 'locks'), { valueEncoding: 'json' });
    await lockLedger.open();
    const packLocks = new Map<string, number>();
    for await (const [k, v] of lockLedger.iterator()) packLocks.set(k, v);
    const core = new AgentCore({ ...o, roots }, journals, watchers, trees, packLog, lockLedger, packLocks);
    if (o.watch !== false) for (const root of roots) await core.startWatcher(root);
    return core;
  }

  get host(): HostRepository {
    return this.o.host;
  }

  get roots(): string[] {
    return this.o.roots;
  }

  private async startWatcher(root: string): Promise<void> {
    const w = new Watcher(root, this.journals.get(root)!, {
      ...(this.o.exclude ? { exclude: this.o.exclude } : {}),
      onError: (err) => this.o.onWatcherError?.(root, err),
    });
    this.watchers.set(root, w);
    await w.start();
  }

  /** The host's blob index, loaded from the bucket once and kept up to date by each backup. */
  async loadIndex(signal?: AbortSignal): Promise<BlobIndex> {
    // a blob in two packs (re-protected): the copy in the pack locked longest
    if (!this.index) this.index = (await this.o.host.loadIndex(signal, (p) => this.packLocks.get(p) ?? 0)).index;
    return this.index;
  }

  async backup(job: BackupJob): Promise<BackupJobResult> {
    if (this.busy) throw new BulwarkError('INVALID_ARGUMENT', 'a backup or restore is already running on this agent');
    this.busy = true;
    try {
      // a tight heap during the backup (agent/process-tuning.ts; process-wide for its duration)
      return await withBoundedHeapGrowth(() => this.runBackup(job));
    } finally {
      this.busy = false;
    }
  }

  private async runBackup(job: BackupJob): Promise<BackupJobResult> {
    const host = this.o.host;
    for (const w of this.watchers.values()) if (w.state === 'running') await w.flush();
    const starts = new Map([...this.journals].map(([root, j]) => [root, j.beginBackup()]));

    let previous = job.previous ?? undefined;
    if (job.previous === undefined) {
      const last = (await this.journals.get(this.o.roots[0]!)!.getMeta()).lastSnapshotId;
      if (last) previous = await host.loadSnapshot(last, job.signal).then((manifest) => ({ id: last, manifest }), (err) => {
        if (hasCode(err, 'NOT_FOUND', 'CHECKSUM_MISMATCH')) return undefined;
        throw err;
      });
    }
    const index = await this.loadIndex(job.signal);
    if (previous) await host.completeIndex(index, previous.manifest.packs, job.signal);
    const adopted = await this.adoptPacks(index, job.expiresAt);

    const exclude = compileExclude(this.o.exclude);
    const dirty = new Map<string, DirtySet>();
    const modes: Record<string, 'journal' | 'reconcile' | 'full'> = {};
    for (const root of this.o.roots) {
      const journal = this.journals.get(root)!;
      const start = starts.get(root)!;
      const meta = await journal.getMeta();
      const describesParent = previous !== undefined && meta.lastSnapshotId === previous.id;
      if (!previous || !previous.manifest.roots.some((r) => r.path === root)) {
        modes[root] = 'full';
        continue;
      }
      const set = new DirtySet();
      if (start.trusted && describesParent) {
        // a directory that (re)appeared is listed in full: entries made before chokidar watched it
        // may have no mark of their own
        for await (const m of journal.dirtyPaths()) set.add(m.path, m.event === 'addDir');
        // files with several names: a write through another name (elsewhere, even outside the root) has no event here
        for (const p of journal.linkedPaths()) set.add(p);
        modes[root] = 'journal';
      } else if (describesParent) {
        for await (const c of reconcile(root, journal, { exclude, ...(job.signal ? { signal: job.signal } : {}) })) set.add(c.path);
        modes[root] = 'reconcile';
      } else {
        dirty.set(root, DirtySet.full());
        modes[root] = 'full';
        continue;
      }
      dirty.set(root, set);
    }

    // the new journal states of a full or reconcile walk go to LevelDB as the walk produces them,
    // not into memory (a full walk's as a whole new generation); an incremental's few are simply kept
    const stages = new Map<string, StagedStates>();
    for (const [root, journal] of this.journals) if (modes[root] !== 'journal') stages.set(root, await journal.stageStates({ complete: modes[root] === 'full' }));
    const result = await backup({
      stateSinks: stages,
      host,
      index,
      roots: this.o.roots,
      hostname: this.o.hostname,
      ...(previous ? { previous } : {}),
      dirty,
      exclude,
      lock: job.lock,
      expiresAt: job.expiresAt,
      ...(job.reprotectPacks ? { reprotectPacks: job.reprotectPacks } : {}),
      adoptedPacks: adopted,
      treeCache: this.trees,
      ...(job.onProgress ? { onProgress: job.onProgress } : {}),
      onPackUploaded: (p) => this.logPack(p, job.lock.retainUntil),
      packLocks: this.packLocks,
      onPackLock: (p, until) => this.lockLedger.put(p, until),
      ...(job.signal ? { signal: job.signal } : {}),
      ...(job.jobId ? { jobId: job.jobId } : {}),
      ...(job.policy ? { policy: job.policy } : {}),
    });

    await job.commit?.(result);
    for (const [root, journal] of this.journals) {
      await journal.commitBackup({ snapshotId: result.snapshotId, states: stages.get(root) ?? result.states.get(root) ?? [], clearedUpToSeq: starts.get(root)!.seq, scanned: modes[root] !== 'journal' });
    }
    await this.packLog.clear();
    // retry skipped paths next time
    for (const s of result.skipped) {
      const root = this.o.roots.find((r) => s.path.startsWith(r + '/'));
      if (root) await this.journals.get(root)!.markDirty([{ path: s.path.slice(root.length + 1), event: 'change' }]);
    }
    return { ...result, modes };
  }

  async restore(job: RestoreJob): Promise<RestoreResult> {
    if (this.busy) throw new BulwarkError('INVALID_ARGUMENT', 'a backup or restore is already running on this agent');
    this.busy = true;
    try {
      const host = job.host ?? this.o.host;
      // another host's blobs: its own index, from the packs the snapshot names
      const index = job.host ? (await host.loadIndex(job.signal)).index : await this.loadIndex(job.signal);
      await host.completeIndex(index, job.manifest.packs, job.signal);
      return await restore({
        host,
        index,
        manifest: job.manifest,
        target: job.target,
        ...(job.paths ? { paths: job.paths } : {}),
        ...(job.overwrite !== undefined ? { overwrite: job.overwrite } : {}),
        ...(job.hardlinks ? { hardlinks: job.hardlinks } : {}),
        ...(job.signal ? { signal: job.signal } : {}),
        ...(job.onProgress ? { onProgress: job.onProgress } : {}),
        ...(job.onNotice ? { onNotice: job.onNotice } : {}),
      });
    } finally {
      this.busy = false;
    }
  }

  async close(): Promise<void> {
    for (const w of this.watchers.values()) await w.stop().catch(() => undefined);
    for (const j of this.journals.values()) await j.close();
    await this.trees.close();
    await this.packLog.close();
    await this.lockLedger.close();
  }

  private async logPack(p: UploadedPack, retainUntil: number): Promise<void> {
    await this.packLog.put(p.id, { retainUntil, header: p.entries.toString('base64') }, { sync: true });
  }

  /**
   * Packs an interrupted backup uploaded: reuse those locked at least as long as the new snapshot
   * must live (an older, shorter lock would break the invariant); the rest are left to the groomer.
   */
  private async adoptPacks(index: BlobIndex, expiresAt: number): Promise<UploadedPack[]> {
    const out: UploadedPack[] = [];
    for await (const [id, e] of this.packLog.iterator()) {
      // a log of an earlier build (entries as JSON) is not read: its packs are left to the groomer
      if (e.retainUntil < expiresAt || e.header === undefined || index.hasPack(id)) continue;
      const header = Buffer.from(e.header, 'base64');
      index.addPack(id, decodeEntries(header));
      out.push({ id, entries: header, size: 0 });
    }
    return out;
  }
}
