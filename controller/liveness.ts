/**
 * Pack liveness: how much of each pack the host's next backup would still build on, measured on
 * the host's newest snapshot (the next incremental reuses its trees and blobs). The lock planner
 * uses it to re-protect mostly dead packs instead of extending them (lock-planner.ts, decidePack).
 * Read-only use of the repository format, with the host's keys (the controller holds the master key).
 *
 *   index  read the host's index objects and keep the entries of the packs the snapshot names (a
 *          pack no index lists is read from its own header): blob → (pack, stored length), and
 *          each pack's size (the stored bytes of all its blobs)
 *   walk   every tree reachable from the snapshot's roots, each once (a visited set), fetching up
 *          to `concurrency` at a time; a tree an earlier walk already read comes from the tree
 *          cache (its subtree ids and file blob ids, in the catalog), so after the first walk only
 *          the directories backups changed since are fetched from the bucket
 *   count  every distinct blob once (file data and the tree blobs: unchanged directories are
 *          reused by the next backup), to the pack the snapshot uses it from
 *   prune  cache entries of trees the newest snapshot no longer has are deleted, so the cache
 *          stays the size of one snapshot's directory structure
 *
 * live(P) = stored bytes of the distinct blobs of P the snapshot uses / stored bytes of P's blobs.
 * Memory: the blob locations of the snapshot's packs (as the agent's index) and the set of tree
 * ids visited, not the trees themselves.
 */
import { BulwarkError, hasCode, throwIfAborted } from '../common/errors.js';
import { BlobIndex, type BlobLocation, decodeIndex } from '../common/repo/blob-index.js';
import { contentId } from '../common/repo/crypto.js';
import { idOfKey, layout } from '../common/repo/layout.js';
import type { PackEntry } from '../common/repo/pack.js';
import type { HostRepository } from '../common/repo/repository.js';
import type { SnapshotManifest } from '../common/repo/snapshot.js';
import type { Tree } from '../common/repo/tree.js';
import { readVerified } from '../common/repo/verified-read.js';

/** A pack's stored size and how much of it the snapshot uses (bytes). */
export interface PackUse {
  size: number;
  live: number;
}

/** What the walk needs of a tree: its subdirectories' trees and its files' blobs. */
export interface TreeShape {
  dirs: string[];
  blobs: string[];
}

export interface TreeShapeCache {
  get(hostId: string, treeId: string): Promise<TreeShape | undefined>;
  putMany(hostId: string, entries: ReadonlyArray<readonly [string, TreeShape]>): Promise<void>;
  /** Delete the host's entries whose tree id is not in `keep`; returns how many. */
  prune(hostId: string, keep: ReadonlySet<string>): Promise<number>;
}

export interface LivenessOptions {
  cache?: TreeShapeCache;
  /** Trees (and index objects) fetched at once. 16: as the audit's HEADs; the walk is latency-bound. */
  concurrency?: number;
  signal?: AbortSignal;
}

export interface LivenessResult {
  /** Per pack id the snapshot names. */
  packs: Map<string, PackUse>;
  /** Trees walked, and of those fetched from the bucket (the rest came from the cache). */
  trees: number;
  fetched: number;
  indexObjects: number;
}

export function liveFraction(u: PackUse): number {
  return u.size > 0 ? Math.min(1, u.live / u.size) : 1;
}

export function shapeOf(tree: Tree): TreeShape {
  const dirs: string[] = [];
  const blobs: string[] = [];
  for (const n of tree.nodes) {
    if (n.type === 'dir' && n.subtree) dirs.push(n.subtree);
    else if (n.type === 'file') for (const b of n.content ?? []) blobs.push(b);
  }
  return { dirs, blobs };
}

export async function measureLiveness(host: HostRepository, manifest: SnapshotManifest, o: LivenessOptions = {}): Promise<LivenessResult> {
  const concurrency = o.concurrency ?? 16;
  const wanted = new Set(manifest.packs);
  const index = new BlobIndex();
  const size = new Map<string, number>();
  const addPack = (pack: string, entries: readonly PackEntry[]) => {
    if (!wanted.has(pack) || size.has(pack)) return;
    size.set(pack, entries.reduce((n, e) => n + e.length, 0));
    index.addPack(pack, entries);
  };

  // index: in key order, up to `concurrency` objects in flight (a damaged one is skipped: the
  // packs it listed are read from their own headers below)
  const indexKeys = await distinctKeys(host, layout.indexPrefix(host.hostId), o.signal);
  await inOrder(indexKeys, concurrency, async (key) => {
    const id = idOfKey(key);
    try {
      const { value } = await readVerified(host.store, key, (b) => {
        if (contentId(b) !== id) throw new BulwarkError('CHECKSUM_MISMATCH', 'index does not match its id');
        return decodeIndex(host.keys, b);
      }, o.signal ? { signal: o.signal } : {});
      return value;
    } catch (err) {
      if (hasCode(err, 'CHECKSUM_MISMATCH', 'NOT_FOUND', 'BAD_REPOSITORY')) return [];
      throw err;
    }
  }, (packs) => {
    for (const p of packs) addPack(p.id, p.entries);
  });
  for (const p of manifest.packs) if (!size.has(p)) addPack(p, await host.readPackHeader(p, o.signal));

  // walk and count
  const live = new Map<string, number>();
  const counted = new Set<BlobLocation>();
  const count = (id: string) => {
    const loc = index.get(id);
    if (!loc || counted.has(loc)) return;
    counted.add(loc);
    live.set(loc.pack, (live.get(loc.pack) ?? 0) + loc.length);
  };
  const visited = new Set<string>();
  const queue: string[] = [];
  for (const r of manifest.roots) {
    if (visited.has(r.tree)) continue;
    visited.add(r.tree);
    queue.push(r.tree);
  }
  let fetched = 0;
  let fresh: Array<[string, TreeShape]> = [];
  const flush = async () => {
    if (!o.cache || fresh.length === 0) return;
    const batch = fresh;
    fresh = [];
    await o.cache.putMany(host.hostId, batch);
  };
  const visit = async (id: string) => {
    throwIfAborted(o.signal);
    count(id); // the tree blob itself
    let shape = await o.cache?.get(host.hostId, id);
    if (!shape) {
      shape = shapeOf(await host.loadTree(id, index, o.signal));
      fetched++;
      fresh.push([id, shape]);
      if (fresh.length >= 1000) await flush();
    }
    for (const b of shape.blobs) count(b);
    for (const d of shape.dirs) {
      if (visited.has(d)) continue; // the same subtree elsewhere: counted once
      visited.add(d);
      queue.push(d);
    }
  };
  await drain(queue, concurrency, visit);
  await flush();
  await o.cache?.prune(host.hostId, visited);

  const packs = new Map<string, PackUse>();
  for (const p of manifest.packs) packs.set(p, { size: size.get(p) ?? 0, live: live.get(p) ?? 0 });
  return { packs, trees: visited.size, fetched, indexObjects: indexKeys.length };
}

/** Every distinct key under a prefix, from the version listing (so hidden objects count). */
async function distinctKeys(host: HostRepository, prefix: string, signal?: AbortSignal): Promise<string[]> {
  const keys = new Set<string>();
  for await (const v of host.store.listVersions(prefix, signal ? { signal } : {})) keys.add(v.key);
  return [...keys].sort();
}

/** Run `fetch` over `items` with up to `n` in flight, handing results to `use` in item order. */
async function inOrder<T, R>(items: readonly T[], n: number, fetch: (item: T) => Promise<R>, use: (r: R) => void): Promise<void> {
  const pending: Array<Promise<R>> = [];
  let next = 0;
  const start = () => {
    while (next < items.length && pending.length < n) {
      const p = fetch(items[next++]!);
      p.catch(() => undefined); // awaited below, in order
      pending.push(p);
    }
  };
  start();
  while (pending.length > 0) {
    use(await pending.shift()!);
    start();
  }
}

/** Process a work queue that grows while it is processed, `n` items at a time. */
async function drain(queue: string[], n: number, work: (id: string) => Promise<void>): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    let active = 0;
    let failed = false;
    const pump = () => {
      if (failed) return;
      while (active < n && queue.length > 0) {
        const id = queue.pop()!;
        active++;
        work(id).then(
          () => {
            active--;
            pump();
          },
          (err) => {
            failed = true;
            reject(err);
          },
        );
      }
      if (active === 0 && queue.length === 0) resolve();
    };
    pump();
  });
}
