/**
 * The backup pipeline. Stages, in order:
 *   select   walk each protected root along the DirtySet (journal marks or a reconcile scan);
 *            unchanged entries and whole unchanged subtrees are reused from the previous
 *            snapshot's trees, so k changes cost about k × depth, not n
 *   read     lstat each visited entry; a file whose state (size, mtime, ctime, inode, mode) is
 *            unchanged and whose blobs are all locatable keeps its content; others are read
 *   chunk    content-defined chunks (FastCDC, ~1 MiB; small files are one chunk)
 *   hash     keyed SHA-256 → blob id
 *   dedup    skip blobs the index (or this backup) already holds
 *   pack     compress (zstd) + encrypt (AES-256-GCM) into ~16 MiB packs
 *   upload   PUT each pack with the job's Object Lock and its SHA-256 as checksum (Packer)
 *   trees    each directory's tree blob, bottom-up, into the same packs
 *   index    one index object for the packs this backup added
 *   manifest the snapshot manifest, locked like everything else
 * The caller (agent/backup/run-backup.ts) commits the snapshot at the controller and only then
 * clears the journal's dirty marks. A crash at any point leaves no committed snapshot wrong:
 * nothing is overwritten, and packs already uploaded are reused by the next run.
 *
 * Re-protection (look-ahead): packs in `reprotectPacks` are dropped from the index before the
 * walk, so every file and tree whose blobs lived there is written afresh into new packs with the
 * new lock, and the snapshot no longer needs the old packs.
 *
 * Per-item failures (unreadable, vanished, unsupported) go through `onItemError`; skipped items
 * are listed in the result and keep their previous version when there was one.
 */
import type { BigIntStats } from 'node:fs';
import { lstatSync, readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { type Clock, systemClock } from '../../common/clock.js';
import { BulwarkError, asBulwarkError, hasCode, throwIfAborted } from '../../common/errors.js';
import { layout } from '../../common/repo/layout.js';
import { Semaphore } from '../../common/storage/wrappers.js';
import type { BlobIndex } from '../../common/repo/blob-index.js';
import { Chunker, chunkBuffer, compileChunkerOptions, createGearTable, type GearTable } from '../../common/repo/chunker.js';
import { encodedEntryCount } from '../../common/repo/pack.js';
import type { HostRepository } from '../../common/repo/repository.js';
import type { SnapshotManifest, SnapshotStats } from '../../common/repo/snapshot.js';
import { type Tree, type TreeNode, compareNames, decodeTree } from '../../common/repo/tree.js';
import type { ObjectLock } from '../../common/storage/blob-store.js';
import { type ExcludePredicate, type FileState, fileChanged, statToFileState } from '../file-state.js';
import type { JournalEntry } from '../journal.js';
import { type DirtyNode, DirtySet } from './dirty-set.js';
import { Packer, type UploadedPack } from './packer.js';
import type { TreeCache } from './tree-cache.js';

export interface BackupProgress {
  phase: 'scanning' | 'uploading' | 'finishing' | 'done';
  filesDone: number;
  bytesDone: number;
  filesRead: number;
  bytesRead: number;
  bytesUploaded: number;
  currentPath: string;
  elapsedMs: number;
}

export type ItemDecision = 'skip' | 'abort';

export interface SkippedItem {
  path: string;
  reason: string;
  /** The previous version was kept in the snapshot. */
  keptPrevious: boolean;
}

export interface BackupOptions {
  host: HostRepository;
  /** The host's blob index (loaded by the caller; updated with the new packs). */
  index: BlobIndex;
  roots: string[];
  hostname: string;
  /** The snapshot this one builds on; absent → everything is read. */
  previous?: { id: string; manifest: SnapshotManifest };
  /** What to look at per root (absolute root path → set); a root without one is walked in full. */
  dirty?: Map<string, DirtySet>;
  exclude?: ExcludePredicate;
  lock: ObjectLock;
  expiresAt: number;
  reprotectPacks?: ReadonlySet<string>;
  /** Packs uploaded by an interrupted earlier run, already added to `index`: listed in this run's index object. */
  adoptedPacks?: UploadedPack[];
  treeCache: TreeCache;
  onProgress?: (p: BackupProgress) => void;
  onItemError?: (path: string, err: BulwarkError) => ItemDecision;
  onPackUploaded?: (p: UploadedPack) => Promise<void> | void;
  signal?: AbortSignal;
  clock?: Clock;
  jobId?: string;
  policy?: string;
  /** Packs uploading at once. */
  uploads?: number;
  /** Seal worker threads (see Packer; 0: all on the main thread). */
  sealWorkers?: number;
  /** Data sealed on the main thread before the workers start (see Packer). */
  sealInlineBytes?: number;
  /** Entries per index object, at most (default INDEX_ENTRIES; a pack's entries stay in one object). */
  indexEntries?: number;
  /**
   * Known lock ends of packs (lower bounds: locks only ever grow). Packs the new snapshot reuses
   * whose known lock ends before `expiresAt` are checked with HEAD; updated in place.
   */
  packLocks?: Map<string, number>;
  /** Called when a pack's lock end is learnt (upload or HEAD), to persist the ledger. */
  onPackLock?: (pack: string, retainUntil: number) => Promise<void> | void;
  /** Per root, where new journal states go as the walk produces them (else they are returned in `states`). */
  stateSinks?: Map<string, StateSink>;
  /** Internal: how many re-protection passes ran before this one. */
  reprotectPasses?: number;
}

/**
 * Where the walk puts each path's new journal state (the agent's `Journal.stageStates()`, written
 * to LevelDB in batches as the walk goes: a first backup of 100,000 files held 45 MB of them);
 * `add` returns a promise only when it writes a batch.
 */
export interface StateSink {
  add(path: string, entry: JournalEntry | null): Promise<void> | undefined;
}

export interface BackupResult {
  snapshotId: string;
  manifest: SnapshotManifest;
  skipped: SkippedItem[];
  /** New journal states per root without a `stateSinks` entry: root-relative path → state (null: gone). */
  states: Map<string, Array<[string, JournalEntry | null]>>;
}

interface DirResult {
  id: string;
  packs: Set<string>;
  stats: Counts;
}

interface Counts {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
}

/** Bytes per read of a large file. */
const READ_BYTES = 4 * 1024 * 1024;

const ZERO: Counts = { files: 0, dirs: 0, symlinks: 0, bytes: 0 };
const addCounts = (a: Counts, b: Counts): Counts => ({ files: a.files + b.files, dirs: a.dirs + b.dirs, symlinks: a.symlinks + b.symlinks, bytes: a.bytes + b.bytes });

/** The unchanged-file test, on the state recorded in a tree node. */
export function nodeState(n: TreeNode): FileState | undefined {
  if (n.type !== 'file' || n.inode === undefined || n.ctimeNs === undefined) return undefined;
  return { type: 'file', size: n.size ?? 0, mtimeNs: BigInt(n.mtimeNs), ctimeNs: BigInt(n.ctimeNs), inode: BigInt(n.inode), mode: n.mode };
}

function defaultItemError(): ItemDecision {
  return 'skip';
}

class BackupRun {
  private readonly packer: Packer;
  private readonly gear: GearTable;
  private readonly chunkParams;
  private readonly started: number;
  private readonly cacheWrites: Array<{ id: string; tree: Tree; packs: Set<string>; stats: Counts }> = [];
  readonly skipped: SkippedItem[] = [];
  readonly states = new Map<string, Array<[string, JournalEntry | null]>>();
  private progress: BackupProgress;
  private lastReport = 0;
  private readonly clock: Clock;
  private readonly exclude: ExcludePredicate;

  constructor(private readonly o: BackupOptions) {
    this.clock = o.clock ?? systemClock;
    this.started = this.clock.now();
    this.exclude = o.exclude ?? (() => false);
    this.gear = createGearTable(o.host.keys.chunk);
    this.chunkParams = compileChunkerOptions(o.host.config.chunker);
    if (o.reprotectPacks?.size) o.index.dropPacks(new Set(o.reprotectPacks));
    this.packer = new Packer(o.host, o.index, {
      lock: o.lock,
      uploads: o.uploads ?? 3,
      ...(o.sealWorkers !== undefined ? { sealWorkers: o.sealWorkers } : {}),
      ...(o.sealInlineBytes !== undefined ? { inlineBytes: o.sealInlineBytes } : {}),
      ...(o.signal ? { signal: o.signal } : {}),
      ...(o.onPackUploaded ? { onPackUploaded: o.onPackUploaded } : {}),
    });
    this.progress = { phase: 'scanning', filesDone: 0, bytesDone: 0, filesRead: 0, bytesRead: 0, bytesUploaded: 0, currentPath: '', elapsedMs: 0 };
  }

  async run(): Promise<BackupResult> {
    const o = this.o;
    const roots: Array<{ path: string; tree: string; packs: Set<string>; stats: Counts; meta: { mode: number; uid: number; gid: number; mtimeNs: string } }> = [];
    const prevRoots = new Map((o.previous?.manifest.roots ?? []).map((r) => [r.path, r.tree]));
    for (const root of o.roots) {
      if (!path.isAbsolute(root)) throw new BulwarkError('INVALID_ARGUMENT', `protected path ${JSON.stringify(root)} must be absolute`);
      let st;
      try {
        st = await fs.lstat(root, { bigint: true });
      } catch (err) {
        throw new BulwarkError('INVALID_ARGUMENT', `protected path ${root} cannot be read: ${(err as Error).message}`, { cause: err });
      }
      if (!st.isDirectory()) throw new BulwarkError('INVALID_ARGUMENT', `protected path ${root} is not a directory`);
      const prevTree = prevRoots.get(root);
      const dirty = prevTree ? (o.dirty?.get(root) ?? DirtySet.full()) : DirtySet.full();
      let sink = o.stateSinks?.get(root);
      if (!sink) {
        const states: Array<[string, JournalEntry | null]> = [];
        this.states.set(root, states);
        sink = { add: (p, e) => void states.push([p, e]) };
      }
      const r = await this.dir(root, '', prevTree, dirty.root, dirty.root.full, sink);
      // the root's own metadata, read after its contents so its mtime matches what was stored
      const after = await fs.lstat(root, { bigint: true });
      const meta = { mode: Number(after.mode & 0o7777n), uid: Number(after.uid), gid: Number(after.gid), mtimeNs: after.mtimeNs.toString() };
      roots.push({ path: root, tree: r.id, packs: r.packs, stats: r.stats, meta });
    }
    this.report('finishing', true);
    await this.packer.flush();

    const resolveAll = (refs: Set<string>) => [...new Set([...refs].map((r) => this.packer.resolve(r)))].sort();
    for (const w of this.cacheWrites) await o.treeCache.put(w.id, { tree: w.tree, packs: resolveAll(w.packs), stats: w.stats });
    this.cacheWrites.length = 0;
    const allPacks = new Set<string>();
    for (const r of roots) for (const p of resolveAll(r.packs)) allPacks.add(p);

    // The invariant, enforced where the snapshot is made: every pack it reuses must be locked at
    // least until it expires. A pack that is not (lock ended, groomed away, never locked long
    // enough) is written afresh by a second pass, so the snapshot never depends on it.
    const short = await this.shortPacks(allPacks);
    if (short.size > 0) {
      if ((o.reprotectPasses ?? 0) >= 2) throw new BulwarkError('INTERNAL', `packs still not locked long enough after re-protection: ${[...short].slice(0, 3).join(', ')}`);
      return backup({
        ...o,
        reprotectPacks: new Set([...(o.reprotectPacks ?? []), ...short]),
        adoptedPacks: [...(o.adoptedPacks ?? []), ...this.packer.uploaded],
        reprotectPasses: (o.reprotectPasses ?? 0) + 1,
      });
    }

    // index objects of at most ~INDEX_ENTRIES entries each (a pack's entries stay together): a
    // first backup of 100,000 small files encoded, compressed and sealed one object of 4.9 MB at
    // its very end, a spike of ~19 MB over the whole backup's peak memory
    const indexes: string[] = [];
    for (const group of groupPacks([...(o.adoptedPacks ?? []), ...this.packer.uploaded], o.indexEntries ?? INDEX_ENTRIES)) {
      indexes.push((await o.host.saveIndex(group, o.lock, o.signal)).id);
    }

    const total = roots.reduce((a, r) => addCounts(a, r.stats), ZERO);
    const stats: SnapshotStats = {
      files: total.files,
      dirs: total.dirs,
      symlinks: total.symlinks,
      bytes: total.bytes,
      filesRead: this.progress.filesRead,
      bytesUploaded: this.packer.bytesUploaded,
      packsWritten: this.packer.uploaded.length,
      skipped: this.skipped.length,
    };
    const manifest: SnapshotManifest = {
      version: 1,
      hostId: o.host.hostId,
      hostname: o.hostname,
      roots: roots.map((r) => ({ path: r.path, tree: r.tree, meta: r.meta })),
      startedAt: this.started,
      finishedAt: this.clock.now(),
      expiresAt: o.expiresAt,
      lock: o.lock,
      ...(o.previous ? { parent: o.previous.id } : {}),
      packs: [...allPacks].sort(),
      indexes,
      stats,
      ...(o.policy ? { policy: o.policy } : {}),
      ...(o.jobId ? { jobId: o.jobId } : {}),
    };
    const saved = await o.host.saveSnapshot(manifest, o.signal);
    this.report('done', true);
    return { snapshotId: saved.id, manifest, skipped: this.skipped, states: this.states };
  }

  /** Build one directory's tree. `full`: list it from disk; else visit only dirty children. */
  private async dir(abs: string, rel: string, prevId: string | undefined, dirty: DirtyNode | undefined, full: boolean, states: StateSink): Promise<DirResult> {
    throwIfAborted(this.o.signal);
    const prev = prevId ? await this.cachedTree(prevId) : undefined;
    const prevByName = new Map((prev?.tree.nodes ?? []).map((n) => [n.name, n]));
    let names: string[];
    if (full) {
      try {
        names = await fs.readdir(abs);
      } catch (err) {
        if (this.itemError(abs, err) === 'abort') throw asBulwarkError(err);
        // unreadable directory: keep what the previous snapshot had of it
        if (prev) return { id: prevId!, packs: new Set(prev.packs), stats: prev.stats };
        names = [];
      }
    } else {
      names = [...new Set([...prevByName.keys(), ...(dirty?.children.keys() ?? [])])];
    }
    names.sort(compareNames);

    const nodes: TreeNode[] = [];
    const packs = new Set<string>();
    const sealing: Array<Promise<void>> = [];
    let counts: Counts = { ...ZERO, dirs: 0 };
    for (let ni = 0; ni < names.length; ni++) {
      const name = names[ni]!;
      await this.breathe();
      const prevNode = prevByName.get(name);
      const childDirty = dirty?.children.get(name);
      const childRel = rel === '' ? name : `${rel}/${name}`;
      if (!full && childDirty === undefined && prevNode && (await this.reusable(prevNode, packs))) {
        nodes.push(prevNode);
        counts = addCounts(counts, await this.nodeCounts(prevNode));
        continue;
      }
      const childAbs = path.join(abs, name);
      let st: BigIntStats;
      try {
        st = lstatSync(childAbs, { bigint: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
          if (prevNode) await states.add(childRel, null);
          continue;
        }
        if (!(await this.keepPrevious(childAbs, err, prevNode, nodes, packs))) continue;
        counts = addCounts(counts, await this.nodeCounts(prevNode!));
        continue;
      }
      const state = statToFileState(st);
      if (this.exclude(childRel, state.type)) continue;
      const base = {
        name,
        mode: state.mode,
        uid: Number(st.uid),
        gid: Number(st.gid),
        mtimeNs: st.mtimeNs.toString(),
      };
      try {
        if (state.type === 'file') {
          const node: TreeNode = { ...base, type: 'file', size: state.size, ctimeNs: st.ctimeNs.toString(), inode: st.ino.toString() };
          if (st.nlink > 1n) node.hardlink = { dev: st.dev.toString(), ino: st.ino.toString() };
          const prevState = prevNode ? nodeState(prevNode) : undefined;
          const prevContent = prevNode?.content;
          if (prevContent && !fileChanged(state, prevState) && prevContent.every((id) => this.packer.packOf(id) !== undefined)) {
            node.content = prevContent;
            for (const id of prevContent) packs.add(this.packer.packOf(id)!);
            await states.add(childRel, { state, content: node.content });
          } else {
            // read and chunked now; sealed on worker threads while the walk goes on: the file's
            // blob ids are filled in before this directory's tree is encoded
            const read = await this.readFile(childAbs, state.size, packs);
            sealing.push(read.content.then((content) => {
              node.content = content;
              return states.add(childRel, { state, content });
            }));
            this.progress.filesRead++;
          }
          nodes.push(node);
          counts = addCounts(counts, { files: 1, dirs: 0, symlinks: 0, bytes: state.size });
          this.progress.filesDone++;
          this.progress.bytesDone += state.size;
          this.progress.currentPath = childAbs;
          this.report('scanning');
        } else if (state.type === 'dir') {
          const childFull = full || childDirty?.full === true || prevNode?.type !== 'dir';
          const sub = await this.dir(childAbs, childRel, prevNode?.type === 'dir' ? prevNode.subtree : undefined, childDirty, childFull, states);
          nodes.push({ ...base, type: 'dir', subtree: sub.id });
          await states.add(childRel, { state, content: [] });
          for (const p of sub.packs) packs.add(p);
          counts = addCounts(counts, sub.stats);
        } else if (state.type === 'symlink') {
          const target = await fs.readlink(childAbs);
          nodes.push({ ...base, type: 'symlink', target });
          await states.add(childRel, { state, content: [] });
          counts = addCounts(counts, { files: 0, dirs: 0, symlinks: 1, bytes: 0 });
        } else {
          this.skipped.push({ path: childAbs, reason: 'unsupported file type (device, FIFO or socket)', keptPrevious: false });
        }
      } catch (err) {
        if (hasAbort(err)) throw err;
        if (!(await this.keepPrevious(childAbs, err, prevNode, nodes, packs))) continue;
        counts = addCounts(counts, await this.nodeCounts(prevNode!));
      }
    }
    await Promise.all(sealing);
    const tree: Tree = { nodes };
    const enc = this.o.host.encodeTreeBlob(tree);
    const ref = await this.packer.add('tree', enc.id, enc.plain);
    packs.add(ref);
    const id = enc.id.toString('hex');
    counts = addCounts(counts, { files: 0, dirs: 1, symlinks: 0, bytes: 0 });
    this.cacheWrites.push({ id, tree: decodeTree(enc.plain), packs: new Set(packs), stats: counts });
    if (this.cacheWrites.length >= this.nextDrain) await this.drainCacheWrites();
    return { id, packs, stats: counts };
  }

  /**
   * Write to the tree cache the new trees whose packs all have ids by now (uploaded), instead of
   * holding every tree of a first backup to the end (36 MB of them for 100,000 files).
   */
  private async drainCacheWrites(): Promise<void> {
    const keep: typeof this.cacheWrites = [];
    for (const w of this.cacheWrites) {
      const ids: string[] = [];
      for (const r of w.packs) {
        const id = this.packer.tryResolve(r);
        if (id === undefined) break;
        ids.push(id);
      }
      if (ids.length === w.packs.size) await this.o.treeCache.put(w.id, { tree: w.tree, packs: [...new Set(ids)].sort(), stats: w.stats });
      else keep.push(w);
    }
    this.cacheWrites.length = 0;
    for (const w of keep) this.cacheWrites.push(w);
    this.nextDrain = Math.max(256, 2 * keep.length);
  }
  private nextDrain = 256;

  /** Reused packs whose lock (known, else read with HEAD) ends before the snapshot expires. */
  private async shortPacks(all: Set<string>): Promise<Set<string>> {
    const o = this.o;
    const fresh = new Set(this.packer.uploaded.map((p) => p.id));
    for (const p of fresh) {
      o.packLocks?.set(p, o.lock.retainUntil);
      await o.onPackLock?.(p, o.lock.retainUntil);
    }
    const short = new Set<string>();
    const sem = new Semaphore(16);
    await Promise.all(
      [...all].filter((p) => !fresh.has(p) && (o.packLocks?.get(p) ?? 0) < o.expiresAt).map((p) =>
        sem.run(async () => {
          try {
            const info = await o.host.store.head(layout.pack(o.host.hostId, p), o.signal ? { signal: o.signal } : {});
            const until = info.lock?.retainUntil ?? 0;
            o.packLocks?.set(p, until);
            await o.onPackLock?.(p, until);
            if (until < o.expiresAt) short.add(p);
          } catch (err) {
            if (!hasCode(err, 'NOT_FOUND')) throw err;
            short.add(p);
          }
        }),
      ),
    );
    return short;
  }

  /** Can this node be reused untouched? Adds the packs it needs to `packs` when it can. */
  private async reusable(n: TreeNode, packs: Set<string>): Promise<boolean> {
    if (n.type === 'file') {
      const content = n.content ?? [];
      const refs = content.map((id) => this.packer.packOf(id));
      if (refs.some((r) => r === undefined)) return false;
      for (const r of refs) packs.add(r!);
      return true;
    }
    if (n.type === 'dir') {
      const sub = await this.summaryOf(n.subtree!);
      // every pack must still be known (not re-protected, not groomed away)
      if (!sub.packs.every((p) => this.o.index.hasPack(p))) return false;
      for (const p of sub.packs) packs.add(p);
      return true;
    }
    return true;
  }

  private async nodeCounts(n: TreeNode): Promise<Counts> {
    if (n.type === 'file') return { files: 1, dirs: 0, symlinks: 0, bytes: n.size ?? 0 };
    if (n.type === 'symlink') return { files: 0, dirs: 0, symlinks: 1, bytes: 0 };
    return (await this.summaryOf(n.subtree!)).stats;
  }

  /** The pack set and counts of a tree of the previous snapshot (its entries are not needed to reuse it). */
  private async summaryOf(id: string): Promise<{ packs: string[]; stats: Counts }> {
    return (await this.o.treeCache.summary(id)) ?? (await this.cachedTree(id));
  }

  /** A tree of the previous snapshot, with its pack set and counts (from the cache, else the bucket). */
  private async cachedTree(id: string): Promise<{ tree: Tree; packs: string[]; stats: Counts }> {
    const hit = await this.o.treeCache.get(id);
    if (hit) return hit;
    const tree = await this.o.host.loadTree(id, this.o.index, this.o.signal);
    const own = this.o.index.get(id)?.pack;
    if (!own) throw new BulwarkError('NOT_FOUND', `tree ${id} is in no known pack`);
    const packs = new Set<string>([own]);
    let stats: Counts = { ...ZERO, dirs: 1 };
    for (const n of tree.nodes) {
      if (n.type === 'file') {
        for (const b of n.content ?? []) {
          const p = this.o.index.get(b)?.pack;
          if (p) packs.add(p);
        }
      } else if (n.type === 'dir') {
        for (const p of (await this.summaryOf(n.subtree!)).packs) packs.add(p);
      }
      stats = addCounts(stats, await this.nodeCounts(n));
    }
    const entry = { tree, packs: [...packs].sort(), stats };
    await this.o.treeCache.put(id, entry);
    return entry;
  }

  /**
   * Read and chunk a file, submitting each chunk to the packer. Resolves when the file is read;
   * `content` (its blob ids, in order) when every chunk is sealed and packed.
   */
  private async readFile(abs: string, size: number, packs: Set<string>): Promise<{ content: Promise<string[]> }> {
    const results: Array<Promise<{ id: string; ref: string }>> = [];
    const done = (): { content: Promise<string[]> } => {
      const content = Promise.all(results).then((rs) => {
        for (const r of rs) packs.add(r.ref);
        return rs.map((r) => r.id);
      });
      content.catch(() => undefined); // awaited by the directory; a failure is also the packer's
      return { content };
    };
    const put = async (chunk: Uint8Array) => {
      results.push((await this.packer.submit(chunk)).result);
      this.progress.bytesRead += chunk.length;
      this.progress.bytesUploaded = this.packer.bytesUploaded;
    };
    if (size <= this.chunkParams.minSize) {
      const buf = readFileSync(abs); // see breathe()
      if (buf.length > this.chunkParams.minSize) {
        // grew since lstat: chunk what is there
        for (const c of chunkBuffer(buf, this.gear, this.chunkParams)) await put(c);
      } else if (buf.length > 0) await put(buf);
      return done();
    }
    const chunker = new Chunker(this.gear, this.chunkParams);
    // reads the chunker may still hold views into (the chunk in progress), oldest first
    const held: Array<{ buf: Buffer; n: number }> = [];
    const fh = await fs.open(abs, 'r');
    try {
      for (;;) {
        throwIfAborted(this.o.signal);
        const buf = this.readBuffers.pop() ?? Buffer.allocUnsafeSlow(READ_BYTES);
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        if (bytesRead === 0) {
          this.keepReadBuffer(buf);
          break;
        }
        held.push({ buf, n: bytesRead });
        // (the packer no longer refers to a chunk once submit() has resolved)
        for (const c of chunker.push(buf.subarray(0, bytesRead))) await put(c);
        // the reads wholly before the chunk in progress are free again
        let k = held.length;
        for (let pending = chunker.pendingBytes; k > 0 && pending > 0; k--) pending -= held[k - 1]!.n;
        for (const h of held.splice(0, k)) this.keepReadBuffer(h.buf);
        this.progress.currentPath = abs;
        this.report('scanning');
      }
      const last = chunker.finish();
      if (last) await put(last);
      for (const h of held.splice(0)) this.keepReadBuffer(h.buf);
    } finally {
      await fh.close();
    }
    return done();
  }

  /**
   * Read buffers of large files, reused from read to read and file to file (files are read one at
   * a time). A fresh 4 MiB buffer per read cost 1,024 page faults of a zeroed page each, in the
   * thread that reads: re-reading a changed 1 GiB file spent more CPU on that than on chunking it.
   * At most 4 are kept (with the default chunker a chunk in progress spans at most 3 full reads).
   */
  private readonly readBuffers: Buffer[] = [];
  private keepReadBuffer(buf: Buffer): void {
    if (this.readBuffers.length < 4) this.readBuffers.push(buf);
  }

  /** Apply the item-error policy; returns true when the previous node was kept. */
  private async keepPrevious(abs: string, err: unknown, prevNode: TreeNode | undefined, nodes: TreeNode[], packs: Set<string>): Promise<boolean> {
    const decision = this.itemError(abs, err);
    if (decision === 'abort') throw asBulwarkError(err);
    const keep = prevNode !== undefined && (await this.reusable(prevNode, packs).catch(() => false));
    if (keep) nodes.push(prevNode!);
    this.skipped[this.skipped.length - 1]!.keptPrevious = keep;
    return keep;
  }

  private itemError(abs: string, err: unknown): ItemDecision {
    const e = asBulwarkError(err);
    this.skipped.push({ path: abs, reason: e.message, keptPrevious: false });
    return (this.o.onItemError ?? defaultItemError)(abs, e);
  }

  /**
   * The walk stats entries and reads small files with synchronous calls: a page-cached lstat or
   * 1 KiB read costs a few µs that way, against ~30 µs of promise and thread-pool round trip
   * each (measured on 20,000 files of 1 KiB: 1.3 s async with 16-32 calls in flight, 0.23 s sync,
   * and a sixth of the CPU). Between entries the walk yields to the event loop every 10 ms, so the
   * uploads in flight keep moving while it runs. Large files are still read asynchronously.
   */
  private async breathe(): Promise<void> {
    const now = performance.now();
    if (now - this.lastBreath < 10) return;
    await new Promise<void>((r) => setImmediate(r));
    this.lastBreath = performance.now();
  }
  private lastBreath = 0;

  /** Stop the packer's worker threads. */
  close(): Promise<void> {
    return this.packer.close();
  }

  private report(phase: BackupProgress['phase'], force = false): void {
    const now = Date.now();
    if (!force && now - this.lastReport < 100) return;
    this.lastReport = now;
    this.progress.phase = phase;
    this.progress.elapsedMs = this.clock.now() - this.started;
    this.progress.bytesUploaded = this.packer.bytesUploaded;
    this.o.onProgress?.({ ...this.progress });
  }
}

function hasAbort(err: unknown): boolean {
  return err instanceof BulwarkError && err.code === 'ABORTED';
}

export async function backup(o: BackupOptions): Promise<BackupResult> {
  const run = new BackupRun(o);
  try {
    return await run.run();
  } finally {
    await run.close();
  }
}

/** Entries per index object, at most (unless one pack has more). */
export const INDEX_ENTRIES = 16_384;

/**
 * Packs in groups of at most `limit` entries in all, in order; a pack with more entries than that
 * is a group of its own.
 */
export function groupPacks<P extends { entries: Buffer }>(packs: readonly P[], limit: number): P[][] {
  const groups: P[][] = [];
  let group: P[] = [];
  let n = 0;
  for (const p of packs) {
    const count = encodedEntryCount(p.entries);
    if (group.length > 0 && n + count > limit) {
      groups.push(group);
      group = [];
      n = 0;
    }
    group.push(p);
    n += count;
  }
  if (group.length > 0) groups.push(group);
  return groups;
}
