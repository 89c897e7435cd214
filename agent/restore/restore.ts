/**
 * The restore pipeline. Stages, in order:
 *   plan     walk the snapshot's trees (the selected paths only); check every name before any
 *            write (no absolute paths, no `..`, no `/` or NUL in a name, nothing outside the
 *            target); create directories, one level at a time, refusing to pass through a symlink
 *            or a non-directory; list each file's blobs and group all blob uses by pack
 *   fetch    per pack, ranged GETs covering neighbouring blobs, several packs at once
 *   verify   decrypt, decompress, and hash each blob against its id; a blob that fails is
 *            fetched again through the tamper-proof read (older versions of the pack)
 *   write    at offsets into a temporary file beside the destination; when a file is complete,
 *            set mode and times and rename it into place (so a crash never leaves a half file
 *            under the real name)
 *   links    hard links (as links to the first restored path, or as copies), then symlinks
 *            (last, so no later write can pass through a restored link)
 *   metadata directories' mode and times, deepest first
 * Existing files are never replaced unless `overwrite` is set. Files that cannot be restored
 * (missing or corrupt objects) are listed with the reason; the rest is restored.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { BulwarkError, asBulwarkError, throwIfAborted } from '../../common/errors.js';
import type { BlobIndex, BlobLocation } from '../../common/repo/blob-index.js';
import { openBlob } from '../../common/repo/pack.js';
import { layout } from '../../common/repo/layout.js';
import type { HostRepository } from '../../common/repo/repository.js';
import type { SnapshotManifest } from '../../common/repo/snapshot.js';
import { type Tree, type TreeNode, isSafeName } from '../../common/repo/tree.js';
import { Semaphore } from '../../common/storage/wrappers.js';

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
  /** Packs fetched at once. */
  concurrency?: number;
  /** Restore uid/gid (only effective as root). Default: when running as root. */
  owners?: boolean;
  onProgress?: (p: RestoreProgress) => void;
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
}

interface FileJob {
  dest: string;
  tmp: string;
  node: TreeNode;
  remaining: number;
  written: number;
  /** Creates the temporary file once, however many blob writes race for it. */
  created?: Promise<void>;
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

class RestoreRun {
  readonly result: RestoreResult = { files: 0, dirs: 0, symlinks: 0, hardlinks: 0, bytes: 0, errors: [] };
  private readonly byPack = new Map<string, Map<string, BlobUse>>();
  private readonly files: FileJob[] = [];
  private readonly symlinks: Array<{ dest: string; node: TreeNode }> = [];
  private readonly links: Array<{ dest: string; first: FileJob; node: TreeNode }> = [];
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

  constructor(private readonly o: RestoreOptions) {
    this.target = path.resolve(o.target);
    this.owners = o.owners ?? process.getuid?.() === 0;
  }

  async run(): Promise<RestoreResult> {
    await this.ensureDir(this.target, true);
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
    await this.finishLinks();
    await this.finishDirs();
    this.report(true);
    return this.result;
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
    for (const node of tree.nodes) {
      throwIfAborted(this.o.signal);
      await this.planNode(node, dest, depth + 1);
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
        this.symlinks.push({ dest, node });
      } else if (node.type === 'file') {
        if (await this.refuseExisting(dest)) return;
        this.progress.filesTotal++;
        const key = node.hardlink ? `${node.hardlink.dev}:${node.hardlink.ino}` : undefined;
        const first = key ? this.firstOfInode.get(key) : undefined;
        if (first && (this.o.hardlinks ?? 'link') === 'link') {
          this.links.push({ dest, first, node });
          return;
        }
        const job: FileJob = { dest, tmp: path.join(parentDest, `.bwr-${randomBytes(6).toString('hex')}`), node, remaining: 0, written: 0, failed: false };
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
      }
    } catch (err) {
      this.result.errors.push({ path: dest, reason: asBulwarkError(err).message });
    }
  }

  private async fetchAll(): Promise<void> {
    const sem = new Semaphore(this.o.concurrency ?? 4);
    await Promise.all([...this.byPack].map(([pack, uses]) => sem.run(() => this.fetchPack(pack, [...uses.values()]))));
  }

  private async fetchPack(pack: string, uses: BlobUse[]): Promise<void> {
    throwIfAborted(this.o.signal);
    uses.sort((a, b) => a.loc.offset - b.loc.offset);
    // merge blobs whose gap is small into one ranged GET (fewer requests, little waste)
    const GAP = 256 * 1024;
    const MAX = 32 * 1024 * 1024;
    const writes: Array<Promise<void>> = [];
    let i = 0;
    while (i < uses.length) {
      let j = i + 1;
      const start = uses[i]!.loc.offset;
      let end = start + uses[i]!.loc.length;
      while (j < uses.length && uses[j]!.loc.offset - end <= GAP && uses[j]!.loc.offset + uses[j]!.loc.length - start <= MAX) {
        end = Math.max(end, uses[j]!.loc.offset + uses[j]!.loc.length);
        j++;
      }
      const group = uses.slice(i, j);
      let bytes: Uint8Array | undefined;
      try {
        bytes = await this.o.host.store.get(layout.pack(this.o.host.hostId, pack), { range: { offset: start, length: end - start }, ...(this.o.signal ? { signal: this.o.signal } : {}) });
      } catch (err) {
        if (asBulwarkError(err).code === 'ABORTED') throw err;
        bytes = undefined; // fall back to per-blob tamper-proof reads
      }
      for (const use of group) {
        let plain: Buffer;
        try {
          if (!bytes || bytes.length < use.loc.offset - start + use.loc.length) throw new BulwarkError('CHECKSUM_MISMATCH', 'short read');
          plain = openBlob(this.o.host.keys, Buffer.from(use.id, 'hex'), bytes.subarray(use.loc.offset - start, use.loc.offset - start + use.loc.length), use.loc.rawLength);
        } catch {
          try {
            plain = await this.o.host.loadBlob(use.id, use.loc, this.o.signal);
          } catch (err) {
            const e = asBulwarkError(err);
            if (e.code === 'ABORTED') throw e;
            for (const t of use.targets) this.failFile(t.file, `pack ${pack}: ${e.message}`);
            continue;
          }
        }
        // writes of one range run concurrently (bounded): small files are a handful of system
        // calls each, and awaiting them one by one left the restore idle most of the time
        for (const t of use.targets) writes.push(this.writers.run(() => this.write(t.file, plain, t.offset)));
      }
      await Promise.all(writes.splice(0));
      i = j;
    }
  }

  private async write(job: FileJob, data: Buffer, offset: number): Promise<void> {
    if (job.failed) return;
    try {
      if (offset === 0 && job.remaining === 1 && !job.created) {
        // the whole file in one blob: create and write in one call ('wx': never follow or reuse
        // something that appeared at the temporary name)
        job.created = fs.writeFile(job.tmp, data, { flag: 'wx', mode: 0o600 });
        await job.created;
      } else {
        await this.create(job);
        const fh = await fs.open(job.tmp, 'r+');
        try {
          await fh.write(data, 0, data.length, offset);
        } finally {
          await fh.close();
        }
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
    if (job.written !== (n.size ?? 0)) {
      // the blobs were genuine but do not add up to the recorded size: say so, keep the file
      this.result.errors.push({ path: job.dest, reason: `restored ${job.written} bytes, snapshot recorded ${n.size}` });
    }
    if (this.owners && (n.uid !== this.uid || n.gid !== this.gid)) await fs.lchown(job.tmp, n.uid, n.gid).catch(() => undefined);
    await fs.chmod(job.tmp, n.mode);
    const t = nsToTime(n.mtimeNs);
    await fs.utimes(job.tmp, t, t);
    await fs.rename(job.tmp, job.dest);
    this.result.files++;
    this.result.bytes += job.written;
    this.progress.filesDone++;
  }

  private create(job: FileJob): Promise<void> {
    // 'wx': never follow or reuse something that appeared at the temporary name
    job.created ??= fs.open(job.tmp, 'wx', 0o600).then((fh) => fh.close());
    return job.created;
  }

  private failFile(job: FileJob, reason: string): void {
    if (job.failed) return;
    job.failed = true;
    this.result.errors.push({ path: job.dest, reason });
    this.dropFile(job);
  }

  private dropFile(job: FileJob): void {
    void fs.rm(job.tmp, { force: true });
  }

  private async finishLinks(): Promise<void> {
    for (const l of this.links) {
      try {
        if (l.first.failed) throw new BulwarkError('NOT_FOUND', `its first link ${l.first.dest} could not be restored`);
        await fs.link(l.first.dest, l.dest);
        this.result.hardlinks++;
        this.progress.filesDone++;
      } catch (err) {
        this.result.errors.push({ path: l.dest, reason: asBulwarkError(err).message });
      }
    }
    for (const s of this.symlinks) {
      try {
        await fs.symlink(s.node.target ?? '', s.dest);
        const t = nsToTime(s.node.mtimeNs);
        await fs.lutimes(s.dest, t, t);
        if (this.owners) await fs.lchown(s.dest, s.node.uid, s.node.gid).catch(() => undefined);
        this.result.symlinks++;
      } catch (err) {
        this.result.errors.push({ path: s.dest, reason: asBulwarkError(err).message });
      }
    }
  }

  private async finishDirs(): Promise<void> {
    this.dirs.sort((a, b) => b.depth - a.depth);
    for (const d of this.dirs) {
      if (!d.node) continue;
      try {
        if (this.owners) await fs.lchown(d.dest, d.node.uid, d.node.gid).catch(() => undefined);
        await fs.chmod(d.dest, d.node.mode);
        const t = nsToTime(d.node.mtimeNs);
        await fs.utimes(d.dest, t, t);
      } catch (err) {
        this.result.errors.push({ path: d.dest, reason: asBulwarkError(err).message });
      }
    }
  }

  /** Make sure `dest` is a real directory (not a symlink); create it when missing. */
  private async ensureDir(dest: string, isTarget: boolean): Promise<boolean> {
    try {
      const st = await fs.lstat(dest);
      if (st.isDirectory()) return true;
      if (isTarget) throw new BulwarkError('INVALID_ARGUMENT', `restore target ${dest} exists and is not a directory`);
      this.result.errors.push({ path: dest, reason: st.isSymbolicLink() ? 'a symlink is in the way; refusing to restore through it' : 'a non-directory is in the way' });
      return false;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    await fs.mkdir(dest, { recursive: isTarget, mode: 0o700 });
    return true;
  }

  /** True (and an error listed) when something exists at dest and overwrite is off. */
  private async refuseExisting(dest: string): Promise<boolean> {
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
  private async tree(id: string): Promise<Tree> {
    const hit = this.trees.get(id);
    if (hit) return hit;
    const t = await this.o.host.loadTree(id, this.o.index, this.o.signal);
    if (this.trees.size > 1024) this.trees.clear();
    this.trees.set(id, t);
    return t;
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
