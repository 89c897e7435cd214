/**
 * The restore pipeline. Stages, in order:
 *   plan     walk the snapshot's trees (the selected paths only); check every name before any
 *            write (no absolute paths, no `..`, no `/` or NUL in a name, nothing outside the
 *            target); create directories, one level at a time, refusing to pass through a symlink
 *            or a non-directory; list each file's blobs and group all blob uses by pack
 *   fetch    per pack, ranged GETs covering neighbouring blobs, several packs at once
 *   verify   decrypt, decompress, and hash each blob against its id; a blob that fails is
 *            fetched again through the tamper-proof read (older versions of the pack)
 *   write    at offsets into the file; when it is complete, set its mode and times. A file
 *            is written under its real name only inside a staged directory (below); in a
 *            directory that existed before the restore it is written to a temporary beside its
 *            destination and renamed into place when complete
 *   links    hard links (as links to the first restored path, or as copies), then symlinks
 *            (last, so no later write can pass through a restored link)
 *   metadata directories' mode and times, deepest first; then each staged directory is renamed
 *            to its real name, then the times of the directories that existed before
 * Staged directories: a directory the restore creates in one that existed before is created
 * under a temporary name (`.bwr-<pid>-<random>`, mode 0700), and everything below it is created
 * under its real name inside it. Nothing in it is visible under its real path until the whole
 * directory is renamed into place, so a crash still never leaves a half file under its real
 * name, and a restore into a new directory renames once instead of once per file (a temporary
 * name and a rename per file cost ~60 % more file-system time per small file; docs/design.md).
 * Existing files are never replaced unless `overwrite` is set. Files that cannot be restored
 * (missing or corrupt objects) are listed with the reason; the rest is restored.
 *
 * Killed midway (kill -9, power loss), a restore leaves complete files under their real names
 * (in directories that existed before it), and temporaries: files and staged directories named
 * `.bwr-<pid>-<random>`. Run again into the same target, it removes the temporaries of processes
 * that are gone from every existing directory it restores into; with `overwrite` it replaces what
 * the first run finished (files, hard links, symlinks), so the result is the snapshot; without, it
 * restores the rest and lists each file already in place as "exists; not replaced (use
 * overwrite)". A restore that fails or is cancelled removes its unfinished files and renames its
 * staged directories into place: what it completed stays, as before staging.
 */
import { randomBytes } from 'node:crypto';
import fs, { type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BulwarkError, asBulwarkError, throwIfAborted } from '../../common/errors.js';
import type { BlobIndex, BlobLocation } from '../../common/repo/blob-index.js';
import { openBlob } from '../../common/repo/pack.js';
import { layout } from '../../common/repo/layout.js';
import type { HostRepository, RangeFetcher } from '../../common/repo/repository.js';
import type { SnapshotManifest } from '../../common/repo/snapshot.js';
import { type Tree, type TreeNode, isSafeName } from '../../common/repo/tree.js';
import { Semaphore } from '../../common/storage/wrappers.js';
import type { DirectRead } from '../../common/storage/blob-store.js';
import { type BlobOutcome, type WriteBlob, type WriteTarget, WritePool } from './write-pool.js';

export interface RestoreOptions {
  host: HostRepository;
  /** An index covering the snapshot's packs (see HostRepository.completeIndex). */
  index: BlobIndex;
  manifest: SnapshotManifest;
  /** Directory to restore into; each root lands at target + its original absolute path. */
  target: string;
  /** Original absolute paths to restore (files or directories); all when absent. */
  paths?: string[];
  overwrite?: boolean;
  /** Files that were hard links of each other: restored as links (default) or as copies. */
  hardlinks?: 'link' | 'copy';
  /** Ranged GETs in flight (default 8). */
  concurrency?: number;
  /** Worker threads verifying and writing (default: available cores, at most 4; 0: all on the main thread). */
  workers?: number;
  /** Fetched bytes not yet written, at most (default 256 MiB): bounds memory whatever the snapshot's size. */
  memoryBytes?: number;
  /** Restore uid/gid (only effective as root). Default: when running as root. */
  owners?: boolean;
  /**
   * Let the worker threads fetch pack ranges themselves when the store can hand out URLs for it
   * (S3: presigned GETs). Default true; false: every range comes through the store on the main thread.
   */
  directReads?: boolean;
  /**
   * A pack the plan's walk has not used for this many blob uses is fetched while the walk goes on
   * (default 512; see dispatch). For tests that want it to happen on small trees.
   */
  fetchIdleAfter?: number;
  onProgress?: (p: RestoreProgress) => void;
  /** Things worth telling the user that are not errors (a fallback taken). */
  onNotice?: (message: string) => void;
  signal?: AbortSignal;
}

export interface RestoreProgress {
  filesDone: number;
  filesTotal: number;
  bytesDone: number;
  bytesTotal: number;
  currentPath: string;
}

export interface RestoreResult {
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  bytes: number;
  errors: Array<{ path: string; reason: string }>;
  /**
   * How pack ranges were fetched: by the worker threads themselves (`direct`, with the store's
   * presigned URLs) or through the store on the main thread (`viaStore`); `directFailed` counts
   * worker fetches that failed and were fetched again through the store (with its retries);
   * `directResent` counts worker fetches sent again at once on a new connection because the kept-alive
   * one they went out on closed before any byte of an answer (the server's keep-alive timeout, a reset).
   */
  ranges: { direct: number; directFailed: number; directResent: number; viaStore: number };
}

interface FileJob {
  /** Its position in RestoreRun.files (how a worker's reply names it). */
  idx: number;
  /** Its real path (what reports name). */
  dest: string;
  /** Where its bytes are written: a temporary beside dest, or (inPlace) its own name inside a staged directory. */
  at: string;
  /** Written where it stays (a staged directory): no temporary, no rename. */
  inPlace: boolean;
  node: TreeNode;
  remaining: number;
  written: number;
  /** Creates the temporary file once, however many blob writes race for it. */
  created?: Promise<void>;
  /** Open while a file of several blobs is being written. */
  handle?: Promise<FileHandle> | undefined;
  failed: boolean;
}

interface BlobUse {
  id: string;
  loc: BlobLocation;
  targets: Array<{ file: FileJob; offset: number }>;
}

/** Check a root path from a manifest: absolute, normalised, every segment a safe name. */
export function safeRootPath(p: string): string[] {
  if (!p.startsWith('/')) throw new BulwarkError('CHECKSUM_MISMATCH', `snapshot root ${JSON.stringify(p)} is not absolute`);
  const segs = p.split('/').filter((s) => s !== '');
  if (!segs.every(isSafeName)) throw new BulwarkError('CHECKSUM_MISMATCH', `snapshot root ${JSON.stringify(p)} has an unsafe segment`);
  return segs;
}

/**
 * Nanoseconds (decimal string) → fractional seconds for utimes. Node passes a double, which holds
 * about 0.2 µs at today's epoch, and libuv truncates: so times are restored to the microsecond,
 * with half a microsecond added to land inside the right one.
 */
const nsToTime = (ns: string): number => Number(BigInt(ns) / 1000n) / 1e6 + 5e-7;

/** Blob uses planned since a pack's last one after which it is fetched, mid-plan (see dispatch). */
const FLUSH_AFTER = 512;

/** Failed worker fetches in a row after which the restore stops asking workers to fetch. */
const DIRECT_GIVE_UP = 3;

/**
 * Subtrees loaded ahead of the walk, per directory level: at least this many, in batches of up to
 * twice as many (one GET per run of neighbouring trees in a pack). One GET per tree, 16 ahead, made
 * the plan of 22,000 files in 220 directories take 1.4 s, most of it request overhead and waiting.
 */
const TREES_AHEAD = 64;

/** Temporary files are named `.bwr-<pid>-<random>`, beside their destination. */
const TEMP_NAME = /^\.bwr-(\d+)-[0-9a-f]{12}$/;

/** Is process `pid` alive on this machine? (EPERM: alive, another user's.) */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

class RestoreRun {
  readonly result: RestoreResult = { files: 0, dirs: 0, symlinks: 0, hardlinks: 0, bytes: 0, errors: [], ranges: { direct: 0, directFailed: 0, directResent: 0, viaStore: 0 } };
  private readonly byPack = new Map<string, Map<string, BlobUse>>();
  private readonly files: FileJob[] = [];
  /** `at`: where each is made (its real path, or its place in a staged directory; see ioPath). */
  private readonly symlinks: Array<{ dest: string; at: string; node: TreeNode }> = [];
  private readonly links: Array<{ dest: string; at: string; first: FileJob; node: TreeNode }> = [];
  private readonly dirs: Array<{ dest: string; node?: TreeNode; depth: number }> = [];
  private readonly firstOfInode = new Map<string, FileJob>();
  private readonly progress: RestoreProgress = { filesDone: 0, filesTotal: 0, bytesDone: 0, bytesTotal: 0, currentPath: '' };
  private readonly target: string;
  private readonly owners: boolean;
  private readonly uid = process.getuid?.() ?? -1;
  private readonly gid = process.getgid?.() ?? -1;
  /** Bounds file writes in flight across all packs. */
  private readonly writers = new Semaphore(32);
  private lastReport = 0;
  /** Temporary names: `.bwr-<pid>-` + 6 random hex digits per run + a 6-digit hex counter (one RNG call per run, not per file). */
  private readonly tempPrefix = `.bwr-${process.pid}-${randomBytes(3).toString('hex')}`;
  private tempSeq = 0;
  private tempName(): string {
    return this.tempPrefix + (this.tempSeq++ & 0xffffff).toString(16).padStart(6, '0');
  }
  private pool: WritePool | undefined;

  constructor(private readonly o: RestoreOptions) {
    this.target = path.resolve(o.target);
    this.owners = o.owners ?? process.getuid?.() === 0;
  }

  async run(): Promise<RestoreResult> {
    await this.ensureDir(this.target, true);
    // a big snapshot: the workers start now, so the plan's trees come through them too
    const stats = this.o.manifest.stats;
    if (stats.files >= 256 || stats.bytes >= 8 * 1024 * 1024) this.startFetching(false);
    let failed = false;
    try {
      await this.planAndFetch();
      throwIfAborted(this.o.signal);
    } catch (err) {
      // the plan failed (or was cancelled) with fetches on their way: the rest of them give up
      failed = true;
      if (this.fetch) this.fetch.failure ??= err;
      throw err;
    } finally {
      if (this.fetch) await Promise.allSettled(this.fetch.inFlight);
      if (this.pool) this.result.ranges.directResent = this.pool.resent;
      await this.pool?.close();
      if (failed) {
        await this.removeTemporaries();
        await this.publishStaged();
      }
    }
    await this.finishLinks();
    await this.finishDirs();
    this.report(true);
    return this.result;
  }

  private async planAndFetch(): Promise<void> {
    const wanted = (this.o.paths ?? []).map((p) => path.posix.normalize(p).replace(/\/+$/, '') || '/');
    for (const root of this.o.manifest.roots) {
      const segs = safeRootPath(root.path);
      const rootPath = '/' + segs.join('/');
      const selected = wanted.length === 0 ? [[]] : wanted.filter((w) => w === rootPath || w.startsWith(rootPath + '/') || rootPath.startsWith(w === '/' ? '/' : w + '/')).map((w) => (w.length > rootPath.length ? w.slice(rootPath.length + 1).split('/') : []));
      if (selected.length === 0) continue;
      // create the root's parents under the target
      let dest = this.target;
      let usable = true;
      for (const s of segs) {
        dest = path.join(dest, s);
        if (!(await this.ensureDir(dest, false))) {
          usable = false; // something that is not a directory (a planted symlink) is in the way
          break;
        }
      }
      if (!usable) continue;
      if (root.meta && selected.some((s) => s.length === 0)) {
        this.dirs.push({ dest, node: { name: segs.at(-1) ?? '', type: 'dir', ...root.meta }, depth: 0 });
      }
      for (const sel of selected) await this.planSelection(root.tree, dest, sel);
    }
    for (const w of wanted) if (!this.o.manifest.roots.some((r) => w === r.path || w.startsWith(r.path + '/') || r.path.startsWith(w === '/' ? '/' : w + '/'))) {
      this.result.errors.push({ path: w, reason: 'not in this snapshot' });
    }
    await this.fetchAll();
  }

  /** Walk from a root tree down a selected relative path, then plan everything below it. */
  private async planSelection(treeId: string, rootDest: string, sel: string[]): Promise<void> {
    let tree = await this.tree(treeId);
    let dest = rootDest;
    for (let i = 0; i < sel.length; i++) {
      const name = sel[i]!;
      const node = tree.nodes.find((n) => n.name === name);
      if (!node) {
        this.result.errors.push({ path: path.join(rootDest, ...sel), reason: 'not in this snapshot' });
        return;
      }
      if (i === sel.length - 1) return this.planNode(node, dest, i + 1);
      if (node.type !== 'dir') {
        this.result.errors.push({ path: path.join(rootDest, ...sel), reason: 'not in this snapshot' });
        return;
      }
      dest = path.join(dest, name);
      if (!(await this.ensureDir(dest, false))) return;
      tree = await this.tree(node.subtree!);
    }
    await this.planTree(tree, dest, 0);
  }

  private async planTree(tree: Tree, dest: string, depth: number): Promise<void> {
    // the subtrees of the next TREES_AHEAD directories load while this one is walked: loading
    // them one at a time, each a round trip, was most of the plan's time on wide trees
    const nodes = tree.nodes;
    if (this.made.has(dest)) await this.makeChildDirs(nodes, dest);
    let ahead = 0;
    for (let i = 0; i < nodes.length; i++) {
      throwIfAborted(this.o.signal);
      if (ahead < nodes.length && ahead < i + TREES_AHEAD) {
        // the next batch: up to 2 × TREES_AHEAD directories' trees, in as few GETs as their packs allow
        const ids: string[] = [];
        for (ahead = Math.max(ahead, i); ahead < nodes.length && ahead < i + 2 * TREES_AHEAD; ahead++) {
          const n = nodes[ahead]!;
          if (n.type === 'dir' && n.subtree && !this.trees.has(n.subtree) && !this.treesAhead.has(n.subtree)) ids.push(n.subtree);
        }
        this.treesAheadBatch(ids);
      }
      await this.planNode(nodes[i]!, dest, depth + 1);
    }
  }

  private async planNode(node: TreeNode, parentDest: string, depth: number): Promise<void> {
    if (!isSafeName(node.name)) {
      this.result.errors.push({ path: path.join(parentDest, JSON.stringify(node.name)), reason: 'unsafe name in snapshot; refused' });
      return;
    }
    const dest = path.join(parentDest, node.name);
    if (!dest.startsWith(this.target + path.sep)) {
      this.result.errors.push({ path: dest, reason: 'outside the restore target; refused' });
      return;
    }
    try {
      if (node.type === 'dir') {
        if (!(await this.ensureDir(dest, false))) return;
        this.dirs.push({ dest, node, depth });
        await this.planTree(await this.tree(node.subtree!), dest, depth);
        this.result.dirs++;
      } else if (node.type === 'symlink') {
        if (await this.refuseExisting(dest)) return;
        this.symlinks.push({ dest, at: this.ioPath(parentDest, node.name), node });
      } else if (node.type === 'file') {
        if (await this.refuseExisting(dest)) return;
        this.progress.filesTotal++;
        const key = node.hardlink ? `${node.hardlink.dev}:${node.hardlink.ino}` : undefined;
        const first = key ? this.firstOfInode.get(key) : undefined;
        if (first && (this.o.hardlinks ?? 'link') === 'link') {
          this.links.push({ dest, at: this.ioPath(parentDest, node.name), first, node });
          return;
        }
        const inPlace = this.made.has(parentDest);
        const at = inPlace ? this.ioPath(parentDest, node.name) : path.join(parentDest, this.tempName());
        const job: FileJob = { idx: this.files.length, dest, at, inPlace, node, remaining: 0, written: 0, failed: false };
        if (key && !first) this.firstOfInode.set(key, job);
        this.files.push(job);
        this.progress.bytesTotal += node.size ?? 0;
        let offset = 0;
        for (const id of node.content ?? []) {
          const loc = this.o.index.get(id);
          if (!loc) {
            job.failed = true;
            this.result.errors.push({ path: dest, reason: `blob ${id} is in no pack of this snapshot` });
            break;
          }
          let uses = this.byPack.get(loc.pack);
          if (!uses) this.byPack.set(loc.pack, (uses = new Map()));
          this.lastUseOf.set(loc.pack, ++this.usesPlanned);
          let use = uses.get(id);
          if (!use) uses.set(id, (use = { id, loc, targets: [] }));
          use.targets.push({ file: job, offset });
          offset += loc.rawLength;
          job.remaining++;
        }
        if (job.failed) {
          this.dropFile(job);
          return;
        }
        if (job.remaining === 0) await this.completeFile(job); // empty file
        this.flushIdlePacks();
      }
    } catch (err) {
      this.result.errors.push({ path: dest, reason: asBulwarkError(err).message });
    }
  }

  /**
   * The fetch → verify → write pipeline. Each pack's blob uses become ranged GETs (neighbours
   * merged); up to `concurrency` GETs run at once and the next ones start while earlier ranges are
   * still being verified and written, bounded by `memoryBytes` of fetched, unwritten data. (The
   * first version fetched each pack's ranges one after the other and waited for the writes before
   * the next GET: S3 was idle half the time, and the main thread 53 %.)
   *
   * It starts while the plan is still walking: a pack the walk has not used for FLUSH_AFTER blob
   * uses is fetched at once (a backup writes packs in walk order, so the walk is done with it).
   * A later file that needs a blob of a pack already on its way gets it with a GET of its own.
   * (Planning first and fetching after left the restore of 22,000 files idle for its first 1.4 s,
   * which went to tree GETs and directory creation.)
   */
  private fetch: { gets: Semaphore; budget: ByteBudget; inFlight: Array<Promise<void>>; failure?: unknown } | undefined;
  private usesPlanned = 0;
  private readonly lastUseOf = new Map<string, number>();

  /** During the plan: start fetching the packs the walk has moved past. */
  private flushIdlePacks(): void {
    const after = this.o.fetchIdleAfter ?? FLUSH_AFTER;
    if (this.usesPlanned - this.lastIdleCheck < after / 4) return;
    this.lastIdleCheck = this.usesPlanned;
    for (const [pack, last] of this.lastUseOf) if (this.usesPlanned - last >= after) this.flushPack(pack);
  }
  private lastIdleCheck = 0;

  private flushPack(pack: string): void {
    const uses = this.byPack.get(pack);
    this.byPack.delete(pack);
    this.lastUseOf.delete(pack);
    if (!uses) return;
    if (!this.fetch) this.startFetching(false);
    for (const g of rangeGroups(pack, [...uses.values()])) this.dispatch(g);
  }

  /**
   * Worker threads pay off beyond a few files or megabytes (each costs ~30 ms to start): decided
   * at the end of the plan for a small restore, at the first pack fetched mid-walk for a big one.
   */
  private startFetching(planDone: boolean): void {
    const workers = this.o.workers ?? Math.min(4, os.availableParallelism());
    let volume = 0;
    for (const uses of this.byPack.values()) for (const u of uses.values()) volume += u.loc.length;
    if (workers > 0 && (!planDone || volume >= 8 * 1024 * 1024 || this.files.length >= 256 || this.o.workers !== undefined)) {
      this.pool = new WritePool(this.o.host.keys, workers);
      this.directOn = this.o.host.store.directRead !== undefined && this.o.directReads !== false;
    }
    this.fetch = { gets: new Semaphore(this.o.concurrency ?? 8), budget: new ByteBudget(this.o.memoryBytes ?? 256 * 1024 * 1024), inFlight: [] };
  }

  private dispatch(g: RangeGroup): void {
    const f = this.fetch!;
    const size = g.end - g.start;
    const done = (async () => {
      await f.budget.acquire(size);
      try {
        if (f.failure !== undefined) return;
        throwIfAborted(this.o.signal);
        if (this.pool && this.directOn) {
          // fetched, verified and written on a worker; the main thread never touches the bytes
          await f.gets.run(() => this.writeGroupOnWorker(this.pool!, g, undefined));
          return;
        }
        const bytes = await f.gets.run(() => this.getRange(g));
        await this.writeGroup(g, bytes);
      } catch (err) {
        f.failure ??= err;
      } finally {
        f.budget.release(size);
      }
    })();
    f.inFlight.push(done);
  }

  /** After the plan: fetch what is left, and wait for everything. */
  private async fetchAll(): Promise<void> {
    if (!this.fetch) this.startFetching(true);
    for (const pack of [...this.byPack.keys()]) this.flushPack(pack);
    const f = this.fetch!;
    await Promise.all(f.inFlight);
    if (f.failure !== undefined) throw f.failure;
  }

  /** The workers fetch ranges themselves (with the store's directRead URLs) until that fails too often. */
  private directOn = false;
  private directFailures = 0;
  private readonly directUrls = new Map<string, DirectRead>();

  /** A URL for a worker to read `pack` with, reused while it is fresh (one per pack). */
  private async directUrl(pack: string): Promise<DirectRead> {
    const hit = this.directUrls.get(pack);
    if (hit && hit.expiresAt > Date.now()) return hit;
    const d = await this.o.host.store.directRead!(layout.pack(this.o.host.hostId, pack));
    // ranges come pack by pack: a small cache is enough, and a restore of 100,000 packs holds no 60 MB of URLs
    if (this.directUrls.size >= 256) this.directUrls.clear();
    this.directUrls.set(pack, d);
    return d;
  }

  /**
   * A worker's fetch failed (nothing was written): the range is fetched here, through the store's
   * retries, instead. After DIRECT_GIVE_UP failures in a row the workers stop fetching (a proxy or
   * a server that refuses presigned URLs) and every later range comes through the store.
   */
  private directFailed(reason: string): void {
    this.result.ranges.directFailed++;
    if (++this.directFailures >= DIRECT_GIVE_UP && this.directOn) {
      this.directOn = false;
      this.o.onNotice?.(`the restore's workers could not fetch from the store (${reason}); fetching through the main thread instead`);
    }
  }

  /** One ranged GET; undefined when it failed (each blob then goes through the tamper-proof read). */
  private async getRange(g: RangeGroup): Promise<Uint8Array | undefined> {
    this.result.ranges.viaStore++;
    try {
      return await this.o.host.store.get(layout.pack(this.o.host.hostId, g.pack), { range: { offset: g.start, length: g.end - g.start }, ...(this.o.signal ? { signal: this.o.signal } : {}) });
    } catch (err) {
      if (asBulwarkError(err).code === 'ABORTED') throw err;
      return undefined;
    }
  }

  private async writeGroup(g: RangeGroup, bytes: Uint8Array | undefined): Promise<void> {
    if (this.pool && bytes) return this.writeGroupOnWorker(this.pool, g, bytes);
    const writes: Array<Promise<void>> = [];
    for (const use of g.uses) {
      let plain: Buffer;
      try {
        if (!bytes || bytes.length < use.loc.offset - g.start + use.loc.length) throw new BulwarkError('CHECKSUM_MISMATCH', 'short read');
        plain = openBlob(this.o.host.keys, Buffer.from(use.id, 'hex'), bytes.subarray(use.loc.offset - g.start, use.loc.offset - g.start + use.loc.length), use.loc.rawLength);
      } catch {
        try {
          plain = await this.o.host.loadBlob(use.id, use.loc, this.o.signal);
        } catch (err) {
          const e = asBulwarkError(err);
          if (e.code === 'ABORTED') throw e;
          for (const t of use.targets) this.failFile(t.file, `pack ${g.pack}: ${e.message}`);
          continue;
        }
      }
      // writes run concurrently (bounded): small files are a handful of system calls each, and
      // awaiting them one by one left the restore idle most of the time
      for (const t of use.targets) writes.push(this.writers.run(() => this.write(t.file, plain, t.offset)));
    }
    await Promise.all(writes);
  }

  /**
   * A range verified and written by a worker (write-pool.ts). Files of one blob are finished there;
   * parts of larger files are written into temporaries created here; a blob that is not genuine
   * is fetched again through the tamper-proof read and written here.
   */
  private async writeGroupOnWorker(pool: WritePool, g: RangeGroup, fetched: Uint8Array | undefined): Promise<void> {
    const blobs: WriteBlob[] = [];
    const sent: BlobUse[] = [];
    const creating: Array<Promise<void>> = [];
    for (const use of g.uses) {
      const targets: WriteTarget[] = [];
      for (const t of use.targets) {
        const job = t.file;
        if (job.failed) continue;
        const n = job.node;
        if (t.offset === 0 && job.remaining === 1 && !job.created && (n.size ?? 0) === use.loc.rawLength) {
          job.created = Promise.resolve(); // the worker creates it
          const owner = this.owners && (n.uid !== this.uid || n.gid !== this.gid) ? { uid: n.uid, gid: n.gid } : undefined;
          targets.push({ file: job.idx, path: job.at, offset: 0, whole: { ...(job.inPlace ? {} : { renameTo: job.dest }), mode: n.mode, time: nsToTime(n.mtimeNs), ...(owner ? { owner } : {}) } });
        } else {
          creating.push(this.create(job).catch((err: unknown) => this.failFile(job, asBulwarkError(err).message)));
          targets.push({ file: job.idx, path: job.at, offset: t.offset });
        }
      }
      blobs.push({ id: use.id, at: use.loc.offset - g.start, length: use.loc.length, rawLength: use.loc.rawLength, targets });
      sent.push(use);
    }
    await Promise.all(creating);
    for (const b of blobs) b.targets = b.targets.filter((t) => t.whole || !this.files[t.file]!.failed);
    let outcomes: BlobOutcome[] | undefined;
    if (fetched) outcomes = await pool.run(fetched, blobs);
    else {
      this.result.ranges.direct++;
      outcomes = await pool.fetchAndRun(await this.directUrl(g.pack), g.start, g.end - g.start, blobs, (reason) => this.directFailed(reason));
      if (outcomes) this.directFailures = 0;
      else {
        const bytes = await this.getRange(g);
        // not even through the store: every blob goes through the tamper-proof read
        outcomes = bytes ? await pool.run(bytes, blobs) : blobs.map(() => ({ genuine: false, targets: [] }));
      }
    }
    const later: Array<Promise<void>> = [];
    for (let i = 0; i < outcomes.length; i++) {
      const o = outcomes[i]!;
      const use = sent[i]!;
      if (!o.genuine) {
        later.push(this.refetch(g.pack, use, blobs[i]!.targets.map((t) => ({ file: this.files[t.file]!, offset: t.offset, whole: t.whole !== undefined }))));
        continue;
      }
      for (const r of o.targets) {
        const job = this.files[r.file]!;
        if (r.error !== undefined) {
          this.failFile(job, r.error);
          continue;
        }
        job.written += r.written;
        this.progress.bytesDone += r.written;
        this.progress.currentPath = job.dest;
        if (r.done) {
          job.remaining = 0;
          this.result.files++;
          this.result.bytes += job.written;
          this.progress.filesDone++;
        } else if (--job.remaining === 0) later.push(this.completeFile(job).catch((err: unknown) => this.failFile(job, asBulwarkError(err).message)));
      }
    }
    this.report();
    await Promise.all(later);
  }

  /** A blob whose fetched bytes were not genuine: the tamper-proof read (older versions of the pack), then written here. */
  private async refetch(pack: string, use: BlobUse, targets: Array<{ file: FileJob; offset: number; whole: boolean }>): Promise<void> {
    let plain: Buffer;
    try {
      plain = await this.o.host.loadBlob(use.id, use.loc, this.o.signal);
    } catch (err) {
      const e = asBulwarkError(err);
      if (e.code === 'ABORTED') throw e;
      for (const t of targets) this.failFile(t.file, `pack ${pack}: ${e.message}`);
      return;
    }
    for (const t of targets) {
      // a whole-file target was not created by the worker: write it the main thread's way. (Only
      // those: the first blob of a larger file whose other blobs are written already also has
      // offset 0 and one blob to go, and its temporary exists.)
      if (t.whole) t.file.created = undefined;
      await this.writers.run(() => this.write(t.file, plain, t.offset));
    }
  }

  private async write(job: FileJob, data: Buffer, offset: number): Promise<void> {
    if (job.failed) return;
    try {
      if (offset === 0 && job.remaining === 1 && !job.created) {
        // the whole file in one blob: create and write in one call ('wx': never follow or reuse
        // something that appeared at the temporary name)
        job.created = fs.writeFile(job.at, data, { flag: 'wx', mode: 0o600 });
        await job.created;
      } else {
        // a file of several blobs keeps one handle open until its last blob is written; its
        // temporary may exist already (created for the workers, when this blob is one they refused)
        if (!job.handle) {
          const created = job.created;
          job.handle = created ? created.then(() => fs.open(job.at, 'r+')) : fs.open(job.at, 'wx', 0o600);
          job.created ??= job.handle.then(() => undefined);
        }
        const fh = await job.handle;
        await fh.write(data, 0, data.length, offset);
      }
      job.written += data.length;
      this.progress.bytesDone += data.length;
      this.progress.currentPath = job.dest;
      this.report();
      if (--job.remaining === 0) await this.completeFile(job);
    } catch (err) {
      this.failFile(job, asBulwarkError(err).message);
    }
  }

  private async completeFile(job: FileJob): Promise<void> {
    const n = job.node;
    await this.create(job);
    if (job.handle) await this.closeHandle(job);
    if (job.written !== (n.size ?? 0)) {
      // the blobs were genuine but do not add up to the recorded size: say so, keep the file
      this.result.errors.push({ path: job.dest, reason: `restored ${job.written} bytes, snapshot recorded ${n.size}` });
    }
    if (this.owners && (n.uid !== this.uid || n.gid !== this.gid)) await fs.lchown(job.at, n.uid, n.gid).catch(() => undefined);
    await fs.chmod(job.at, n.mode);
    const t = nsToTime(n.mtimeNs);
    await fs.utimes(job.at, t, t);
    if (!job.inPlace) await fs.rename(job.at, job.dest);
    this.result.files++;
    this.result.bytes += job.written;
    this.progress.filesDone++;
  }

  private create(job: FileJob): Promise<void> {
    // 'wx': never follow or reuse something that appeared at the temporary name
    job.created ??= fs.open(job.at, 'wx', 0o600).then((fh) => fh.close());
    return job.created;
  }

  private async closeHandle(job: FileJob): Promise<void> {
    const h = job.handle;
    job.handle = undefined;
    await h?.then((fh) => fh.close(), () => undefined);
  }

  /**
   * A restore that stops (cancelled, or a failure it cannot go on from) removes the temporaries of
   * the files it had not finished: a later restore by this same process would leave them alone
   * (they carry a live pid). Files already renamed into place stay.
   */
  private async removeTemporaries(): Promise<void> {
    for (const job of this.files) {
      if (job.remaining === 0 || job.failed || job.created === undefined) continue;
      await this.closeHandle(job);
      await fs.rm(job.at, { force: true }).catch(() => undefined);
    }
  }

  private failFile(job: FileJob, reason: string): void {
    if (job.failed) return;
    job.failed = true;
    this.result.errors.push({ path: job.dest, reason });
    this.dropFile(job);
  }

  private dropFile(job: FileJob): void {
    void this.closeHandle(job).then(() => fs.rm(job.at, { force: true }));
  }

  private async finishLinks(): Promise<void> {
    for (const l of this.links) {
      try {
        if (l.first.failed) throw new BulwarkError('NOT_FOUND', `its first link ${l.first.dest} could not be restored`);
        // with overwrite, what is at the name goes (a rerun finds its own earlier link there)
        if (this.o.overwrite) await fs.rm(l.at, { force: true });
        await fs.link(l.first.inPlace ? l.first.at : l.first.dest, l.at);
        this.result.hardlinks++;
        this.progress.filesDone++;
      } catch (err) {
        this.result.errors.push({ path: l.dest, reason: asBulwarkError(err).message });
      }
    }
    for (const s of this.symlinks) {
      try {
        if (this.o.overwrite) await fs.rm(s.at, { force: true });
        await fs.symlink(s.node.target ?? '', s.at);
        const t = nsToTime(s.node.mtimeNs);
        await fs.lutimes(s.at, t, t);
        if (this.owners) await fs.lchown(s.at, s.node.uid, s.node.gid).catch(() => undefined);
        this.result.symlinks++;
      } catch (err) {
        this.result.errors.push({ path: s.dest, reason: asBulwarkError(err).message });
      }
    }
  }

  /**
   * Directories' owner, mode and times, deepest first: those in staged directories, then the
   * staged directories are renamed into place, then those that existed before (whose times the
   * renames would otherwise change).
   */
  private async finishDirs(): Promise<void> {
    this.dirs.sort((a, b) => b.depth - a.depth);
    for (const d of this.dirs) if (this.made.has(d.dest)) await this.finishDir(d.dest, d.node);
    await this.publishStaged();
    for (const d of this.dirs) if (!this.made.has(d.dest)) await this.finishDir(d.dest, d.node);
  }

  private async finishDir(dest: string, node: TreeNode | undefined): Promise<void> {
    if (!node) return;
    const at = this.made.get(dest) ?? dest;
    try {
      if (this.owners) await fs.lchown(at, node.uid, node.gid).catch(() => undefined);
      await fs.chmod(at, node.mode);
      const t = nsToTime(node.mtimeNs);
      await fs.utimes(at, t, t);
    } catch (err) {
      this.result.errors.push({ path: dest, reason: asBulwarkError(err).message });
    }
  }

  /**
   * Directories this run created, each with where it is: its place in a staged directory (see the
   * top of this file). Nothing can be in the way inside them (they are created 0700 and were
   * empty), so their entries are created without an lstat first: on a restore into an empty
   * target that saves one system call and one ENOENT error per file and directory.
   */
  private readonly made = new Map<string, string>();

  /** Where the entry `name` of directory `dir` (a real path) is made. */
  private ioPath(dir: string, name: string): string {
    return path.join(this.made.get(dir) ?? dir, name);
  }

  /**
   * Create directory `dest` (its parent exists): in its place inside a staged directory, else as
   * a new staged directory under a temporary name beside it.
   */
  private async makeDir(dest: string): Promise<void> {
    const parent = path.dirname(dest);
    const inStaged = this.made.get(parent);
    const at = inStaged !== undefined ? path.join(inStaged, path.basename(dest)) : path.join(parent, this.tempName());
    await fs.mkdir(at, { mode: 0o700 });
    this.made.set(dest, at);
  }

  /**
   * Rename each staged directory (one this run made in a directory it did not make) to its real
   * name. One whose name was taken meanwhile (something created there during the restore) is
   * renamed beside it instead, and reported: a rename would replace an empty directory, and fail
   * on anything else. Called once: at the end of the restore, or when it stops.
   */
  private async publishStaged(): Promise<void> {
    for (const [dest, at] of this.made) {
      if (this.made.has(path.dirname(dest))) continue; // inside a staged directory: moves with it
      try {
        const taken = await fs.lstat(dest).then(() => true, (err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? false : Promise.reject(err)));
        const to = taken ? `${dest}.restored-${randomBytes(4).toString('hex')}` : dest;
        await fs.rename(at, to);
        if (taken) this.result.errors.push({ path: dest, reason: `something was created at this path during the restore; restored to ${to} instead` });
      } catch (err) {
        this.result.errors.push({ path: dest, reason: `could not move it into place from ${at}: ${asBulwarkError(err).message}` });
      }
    }
  }

  /**
   * The subdirectories of a directory this run created, all at once (up to 16 mkdirs in flight):
   * made one by one as the walk reached them, while the workers wrote, each took several ms.
   * Names that planNode will refuse are left to it.
   */
  private async makeChildDirs(nodes: readonly TreeNode[], dest: string): Promise<void> {
    const dirs = nodes.filter((n) => n.type === 'dir' && isSafeName(n.name)).map((n) => path.join(dest, n.name));
    let next = 0;
    const one = async (): Promise<void> => {
      while (next < dirs.length) {
        const d = dirs[next++]!;
        try {
          await this.makeDir(d);
        } catch {
          // planNode's ensureDir tries again and reports it
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(16, dirs.length) }, one));
  }

  /** Make sure `dest` is a real directory (not a symlink); create it when missing. */
  private async ensureDir(dest: string, isTarget: boolean): Promise<boolean> {
    if (!isTarget && this.made.has(dest)) return true; // made by makeChildDirs
    if (this.made.has(path.dirname(dest))) {
      await this.makeDir(dest);
      return true;
    }
    try {
      const st = await fs.lstat(dest);
      if (st.isDirectory()) {
        await this.sweepTemporaries(dest);
        return true;
      }
      if (isTarget) throw new BulwarkError('INVALID_ARGUMENT', `restore target ${dest} exists and is not a directory`);
      this.result.errors.push({ path: dest, reason: st.isSymbolicLink() ? 'a symlink is in the way; refusing to restore through it' : 'a non-directory is in the way' });
      return false;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (isTarget) await fs.mkdir(dest, { recursive: true, mode: 0o700 });
    else await this.makeDir(dest);
    return true;
  }

  /**
   * Remove the temporary files a restore killed midway (kill -9, power loss) left in `dir`:
   * regular files named like ours whose process is gone. A live restore's are left alone, so two
   * restores into one directory do not break each other.
   */
  private async sweepTemporaries(dir: string): Promise<void> {
    for (const name of await fs.readdir(dir)) {
      const m = TEMP_NAME.exec(name);
      if (!m || processAlive(Number(m[1]))) continue;
      const p = path.join(dir, name);
      const st = await fs.lstat(p).catch(() => undefined);
      // a file, or a staged directory with what the killed run had restored into it (rm does not follow symlinks)
      if (st?.isFile() || st?.isDirectory()) await fs.rm(p, { recursive: true, force: true });
    }
  }

  /** True (and an error listed) when something exists at dest and overwrite is off. */
  private async refuseExisting(dest: string): Promise<boolean> {
    if (this.made.has(path.dirname(dest))) return false;
    try {
      const st = await fs.lstat(dest);
      if (!this.o.overwrite || st.isDirectory()) {
        this.result.errors.push({ path: dest, reason: st.isDirectory() ? 'a directory is in the way' : 'exists; not replaced (use overwrite)' });
        return true;
      }
      if (st.isSymbolicLink()) await fs.unlink(dest);
      return false;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  private readonly trees = new Map<string, Tree>();
  /** Subtrees being loaded ahead of the walk (see planTree). */
  private readonly treesAhead = new Map<string, Promise<Tree>>();
  private async tree(id: string): Promise<Tree> {
    const hit = this.trees.get(id);
    if (hit) return hit;
    const ahead = this.treesAhead.get(id);
    this.treesAhead.delete(id);
    const t = await (ahead ?? this.o.host.loadTree(id, this.o.index, this.o.signal));
    if (this.trees.size > 1024) this.trees.clear();
    this.trees.set(id, t);
    return t;
  }

  /** Start loading subtrees the walk will soon need (neighbours in a pack share one ranged GET). */
  private treesAheadBatch(ids: string[]): void {
    if (ids.length === 0) return;
    const pool = this.pool;
    const viaWorkers: RangeFetcher | undefined =
      pool && this.directOn
        ? async (pack, start, length, blobs) => {
            this.result.ranges.direct++;
            const plains = await pool.fetchBlobs(await this.directUrl(pack), start, length, blobs);
            if (plains) this.directFailures = 0;
            else this.directFailed('a tree range');
            return plains;
          }
        : undefined;
    const loads = this.o.host.loadTrees(ids, this.o.index, this.o.signal, viaWorkers);
    ids.forEach((id, i) => {
      const p = loads[i]!;
      p.catch(() => undefined); // consumed (and its error reported) by tree()
      this.treesAhead.set(id, p);
    });
  }

  private report(force = false): void {
    const now = Date.now();
    if (!force && now - this.lastReport < 100) return;
    this.lastReport = now;
    this.o.onProgress?.({ ...this.progress });
  }
}

export async function restore(o: RestoreOptions): Promise<RestoreResult> {
  return new RestoreRun(o).run();
}

interface RangeGroup {
  pack: string;
  start: number;
  end: number;
  uses: BlobUse[];
}

/**
 * What a file costs a worker besides its bytes (creating, timing and closing it, and renaming it
 * outside a staged directory: 25–40 µs here, the time its verification and write take for about
 * this many bytes), counted against a range's size limit.
 */
const FILE_COST = 32 * 1024;

/**
 * Blobs whose gap is small share one ranged GET (fewer requests, little waste); ranges stay small
 * enough to pipeline, and to balance across the workers: a range's bytes plus FILE_COST per file it
 * writes stay under `max`. (Bytes alone put ~2,000 small files in one range, 0.1 s of a worker's
 * time; at the end of a restore one worker still had a few such ranges queued while the other was
 * done: ~0.3 s of one idle core.)
 */
function rangeGroups(pack: string, uses: BlobUse[], gap = 256 * 1024, max = 8 * 1024 * 1024): RangeGroup[] {
  uses.sort((a, b) => a.loc.offset - b.loc.offset);
  const out: RangeGroup[] = [];
  let i = 0;
  while (i < uses.length) {
    let j = i + 1;
    const start = uses[i]!.loc.offset;
    let end = start + uses[i]!.loc.length;
    let files = uses[i]!.targets.length;
    while (j < uses.length) {
      const u = uses[j]!;
      const uEnd = Math.max(end, u.loc.offset + u.loc.length);
      if (u.loc.offset - end > gap || uEnd - start + (files + u.targets.length) * FILE_COST > max) break;
      end = uEnd;
      files += u.targets.length;
      j++;
    }
    out.push({ pack, start, end, uses: uses.slice(i, j) });
    i = j;
  }
  return out;
}

/** Waits until `n` more bytes fit under the limit (FIFO; one request larger than the limit runs alone). */
class ByteBudget {
  private used = 0;
  private readonly waiting: Array<{ n: number; go: () => void }> = [];
  constructor(private readonly limit: number) {}
  async acquire(n: number): Promise<void> {
    if (this.waiting.length === 0 && (this.used === 0 || this.used + n <= this.limit)) {
      this.used += n;
      return;
    }
    await new Promise<void>((go) => this.waiting.push({ n, go }));
  }
  release(n: number): void {
    this.used -= n;
    while (this.waiting.length > 0) {
      const next = this.waiting[0]!;
      if (this.used !== 0 && this.used + next.n > this.limit) break;
      this.waiting.shift();
      this.used += next.n;
      next.go();
    }
  }
}
