/**
 * Repository: a bucket (+ prefix) in Bulwark's format, opened with the master key (controller) or,
 * for one host, with that host's keys (agent).
 *
 *   Repository.init     writes a key file (master key wrapped by the recovery passphrase) and the
 *                       config, both locked; refuses a bucket without Object Lock.
 *   Repository.open     unlocks the master key with the passphrase (or takes it directly), reads
 *                       and authenticates the config.
 *   HostRepository      one host's namespace: packs, indexes, trees, blobs, snapshots. Every write
 *                       is a new object under a fresh content id, with a lock; every read is
 *                       verified against its id and falls back to older versions (verified-read.ts).
 */
import { BulwarkError, hasCode } from '../errors.js';
import type { BlobStore, ObjectLock } from '../storage/blob-store.js';
import { BlobIndex, type BlobLocation, decodeIndex, encodeIndex } from './blob-index.js';
import { type RepoConfig, decodeConfig, encodeConfig, newRepoConfig } from './config.js';
import { blobId, contentId } from './crypto.js';
import { type HostKeys, configMacKey, deriveHostKeys, newMasterKey, parseKeyFile, unwrapMasterKey, wrapMasterKey } from './keys.js';
import { assertContentId, assertHostId, idOfKey, layout } from './layout.js';
import { type BlobType, type PackEntry, openBlob, parsePack } from './pack.js';
import { type SnapshotManifest, decodeSnapshot, encodeSnapshot } from './snapshot.js';
import { type Tree, decodeTree, encodeTree } from './tree.js';
import { type TamperReport, readVerified } from './verified-read.js';

export interface InitOptions {
  passphrase: string;
  /** Lock of the key file and config; the lock planner extends it as snapshots need. */
  lock: ObjectLock;
  config?: Partial<Pick<RepoConfig, 'chunker' | 'packSize'>>;
}

/** Index objects read at once when a host's index is loaded. */
const INDEX_READS_AHEAD = 8;

export class Repository {
  private constructor(
    readonly store: BlobStore,
    readonly config: RepoConfig,
    readonly masterKey: Buffer,
    /** Version ids of the objects every snapshot needs besides its own (config, key files). */
    readonly foundation: Array<{ key: string; versionId?: string }>,
  ) {}

  static async init(store: BlobStore, o: InitOptions): Promise<Repository> {
    const cfg = await store.bucketConfig();
    if (!cfg.objectLock) {
      throw new BulwarkError('BUCKET_NOT_LOCKED', `${store.description} has no Object Lock: create the bucket with Object Lock enabled`);
    }
    const exists = await firstKey(store, layout.config);
    if (exists) throw new BulwarkError('INVALID_ARGUMENT', `${store.description} already holds a Bulwark repository`);
    const master = newMasterKey();
    const key = await wrapMasterKey(master, o.passphrase);
    const k = await store.put(layout.key(key.id), key.bytes, { lock: o.lock });
    const config = newRepoConfig(o.config);
    const c = await store.put(layout.config, encodeConfig(config, configMacKey(master)), { lock: o.lock });
    return new Repository(store, config, master, [
      { key: layout.config, versionId: c.versionId },
      { key: layout.key(key.id), versionId: k.versionId },
    ]);
  }

  static async open(store: BlobStore, secret: { passphrase: string } | { masterKey: Buffer }, onTamper?: (r: TamperReport) => void): Promise<Repository> {
    const foundation: Array<{ key: string; versionId?: string }> = [];
    let master: Buffer | undefined;
    let sawKey = false;
    if ('masterKey' in secret) master = secret.masterKey;
    // Key files: listed with their versions, so a key hidden behind a delete marker still counts.
    const keyNames = new Set<string>();
    for await (const v of store.listVersions(layout.keysPrefix)) keyNames.add(v.key);
    for (const name of keyNames) {
      const id = idOfKey(name);
      let file;
      try {
        const r = await readVerified(store, name, (b) => {
          if (contentId(b) !== id) throw new BulwarkError('CHECKSUM_MISMATCH', 'key file does not match its id');
          return parseKeyFile(b);
        }, onTamper ? { onTamper } : {});
        file = r.value;
        foundation.push({ key: name, ...(r.versionId ? { versionId: r.versionId } : {}) });
      } catch (err) {
        if (hasCode(err, 'CHECKSUM_MISMATCH', 'NOT_FOUND', 'BAD_REPOSITORY')) continue;
        throw err;
      }
      sawKey = true;
      if (!master && 'passphrase' in secret) {
        try {
          master = await unwrapMasterKey(file, secret.passphrase);
        } catch (err) {
          if (!hasCode(err, 'WRONG_KEY')) throw err;
        }
      }
    }
    if (!sawKey && !('masterKey' in secret)) {
      throw new BulwarkError('BAD_REPOSITORY', `${store.description} holds no Bulwark key file: is this the right bucket and prefix?`);
    }
    if (!master) throw new BulwarkError('WRONG_KEY', 'wrong recovery passphrase: no key file of this repository opens with it');
    const macKey = configMacKey(master);
    let cfg;
    try {
      cfg = await readVerified(store, layout.config, (b) => decodeConfig(b, macKey), onTamper ? { onTamper } : {});
    } catch (err) {
      if (hasCode(err, 'NOT_FOUND')) throw new BulwarkError('BAD_REPOSITORY', `${store.description} has no repository config: run init first`, { cause: err });
      throw err;
    }
    foundation.push({ key: layout.config, ...(cfg.versionId ? { versionId: cfg.versionId } : {}) });
    return new Repository(store, cfg.value, master, foundation);
  }

  hostKeys(hostId: string): HostKeys {
    assertHostId(hostId);
    return deriveHostKeys(this.masterKey, hostId);
  }

  host(hostId: string): HostRepository {
    return new HostRepository(this.store, this.config, this.hostKeys(hostId));
  }

  /** Host ids with anything stored. */
  async hosts(): Promise<string[]> {
    const out = new Set<string>();
    for await (const v of this.store.listVersions(layout.hostsPrefix)) {
      const host = v.key.slice(layout.hostsPrefix.length).split('/')[0];
      if (host) out.add(host);
    }
    return [...out].sort();
  }
}

export interface SavedObject {
  key: string;
  id: string;
  versionId: string;
  size: number;
}

/**
 * Reads a range of a pack and returns its blobs verified (one per blob, undefined for one that is
 * not genuine), or undefined when the range could not be read: another way to fetch than the
 * store's own (the restore's workers). Whatever it cannot give goes through the tamper-proof read.
 */
export type RangeFetcher = (
  pack: string,
  start: number,
  length: number,
  blobs: Array<{ id: string; at: number; length: number; rawLength: number }>,
) => Promise<Array<Uint8Array | undefined> | undefined>;

export class HostRepository {
  readonly hostId: string;
  constructor(
    readonly store: BlobStore,
    readonly config: RepoConfig,
    readonly keys: HostKeys,
    private readonly onTamper?: (r: TamperReport) => void,
  ) {
    assertHostId(keys.hostId);
    this.hostId = keys.hostId;
  }

  blobIdOf(plaintext: Uint8Array): Buffer {
    return blobId(this.keys.id, plaintext);
  }

  /** Store a finished pack; `id` must be the SHA-256 of `bytes` (PackBuilder.finish, SealPool.hashPack): it is the PUT's checksum too. */
  async savePack(pack: { id: string; bytes: Buffer }, lock: ObjectLock, signal?: AbortSignal): Promise<SavedObject> {
    const key = layout.pack(this.hostId, pack.id);
    const r = await this.store.put(key, pack.bytes, { lock, sha256: pack.id, ...(signal ? { signal } : {}) });
    return { key, id: pack.id, versionId: r.versionId, size: pack.bytes.length };
  }

  async saveIndex(packs: ReadonlyArray<{ id: string; entries: readonly PackEntry[] | Buffer }>, lock: ObjectLock, signal?: AbortSignal): Promise<SavedObject> {
    const bytes = encodeIndex(this.keys, packs);
    const id = contentId(bytes);
    const key = layout.index(this.hostId, id);
    const r = await this.store.put(key, bytes, { lock, ...(signal ? { signal } : {}) });
    return { key, id, versionId: r.versionId, size: bytes.length };
  }

  /** Load every index object of this host. Damaged ones are reported and skipped (they are a cache). */
  async loadIndex(signal?: AbortSignal, rank?: (pack: string) => number): Promise<{ index: BlobIndex; damaged: string[] }> {
    const index = new BlobIndex(rank);
    const damaged: string[] = [];
    const keys = await this.keysUnder(layout.indexPrefix(this.hostId), signal);
    const read = (key: string): Promise<Array<{ id: string; entries: PackEntry[] }>> => {
      const id = idOfKey(key);
      const p = readVerified(this.store, key, (b) => {
        if (contentId(b) !== id) throw new BulwarkError('CHECKSUM_MISMATCH', 'index does not match its id');
        return decodeIndex(this.keys, b);
      }, this.readOpts(signal)).then((r) => r.value);
      p.catch(() => undefined); // awaited below, in order (reads still on their way when one fails settle unobserved)
      return p;
    };
    // up to INDEX_READS_AHEAD objects on their way, added in key order as before (one at a time, a
    // repository with a thousand index objects took a thousand round trips to open)
    const ahead = keys.slice(0, INDEX_READS_AHEAD).map(read);
    for (let i = 0; i < keys.length; i++) {
      if (i + INDEX_READS_AHEAD < keys.length) ahead.push(read(keys[i + INDEX_READS_AHEAD]!));
      try {
        for (const p of await ahead.shift()!) index.addPack(p.id, p.entries);
      } catch (err) {
        if (!hasCode(err, 'CHECKSUM_MISMATCH', 'NOT_FOUND', 'BAD_REPOSITORY')) throw err;
        damaged.push(keys[i]!);
      }
    }
    return { index, damaged };
  }

  /** Read a whole pack, verified against its id, and parse its header (index rebuild). */
  async readPackHeader(packId: string, signal?: AbortSignal): Promise<PackEntry[]> {
    assertContentId(packId, 'pack id');
    const { value } = await readVerified(this.store, layout.pack(this.hostId, packId), (b) => {
      if (contentId(b) !== packId) throw new BulwarkError('CHECKSUM_MISMATCH', 'pack does not match its id');
      return parsePack(this.keys, b);
    }, this.readOpts(signal));
    return value;
  }

  /** Add to `index` the blobs of packs it does not know, from the packs' own headers. */
  async completeIndex(index: BlobIndex, packs: Iterable<string>, signal?: AbortSignal): Promise<number> {
    const known = new Set(index.packs());
    let added = 0;
    for (const p of packs) {
      if (known.has(p)) continue;
      index.addPack(p, await this.readPackHeader(p, signal));
      known.add(p);
      added++;
    }
    return added;
  }

  /** Read one blob by range from its pack, decrypt, decompress and verify it. */
  async loadBlob(id: string, loc: BlobLocation, signal?: AbortSignal): Promise<Buffer> {
    const idBytes = Buffer.from(id, 'hex');
    const { value } = await readVerified(
      this.store,
      layout.pack(this.hostId, loc.pack),
      (b) => openBlob(this.keys, idBytes, b, loc.rawLength),
      { ...this.readOpts(signal), range: { offset: loc.offset, length: loc.length } },
    );
    return value;
  }

  /**
   * Load many blobs with few requests: blobs that sit close together in one pack (gap ≤ 64 KiB,
   * span ≤ 4 MiB) come in one ranged GET. Each blob is verified on its own; one that is not
   * genuine, or whose range could not be read, goes through loadBlob (the tamper-proof read).
   * Returns one promise per entry, in order.
   */
  loadBlobs(entries: Array<{ id: string; loc: BlobLocation }>, signal?: AbortSignal, fetchRange?: RangeFetcher): Array<Promise<Buffer>> {
    const fetch = fetchRange ?? this.rangeViaStore(signal);
    const out = new Array<Promise<Buffer>>(entries.length);
    const byPack = new Map<string, number[]>();
    entries.forEach((e, i) => {
      let list = byPack.get(e.loc.pack);
      if (!list) byPack.set(e.loc.pack, (list = []));
      list.push(i);
    });
    for (const [pack, list] of byPack) {
      list.sort((a, b) => entries[a]!.loc.offset - entries[b]!.loc.offset);
      for (let i = 0; i < list.length; ) {
        const start = entries[list[i]!]!.loc.offset;
        let end = start + entries[list[i]!]!.loc.length;
        let j = i + 1;
        for (; j < list.length; j++) {
          const l = entries[list[j]!]!.loc;
          if (l.offset - end > 64 * 1024 || l.offset + l.length - start > 4 * 1024 * 1024) break;
          end = Math.max(end, l.offset + l.length);
        }
        const members = list.slice(i, j);
        i = j;
        const blobs = members.map((m) => ({ id: entries[m]!.id, at: entries[m]!.loc.offset - start, length: entries[m]!.loc.length, rawLength: entries[m]!.loc.rawLength }));
        const got = fetch(pack, start, end - start, blobs).catch((err: unknown) => {
          if (hasCode(err, 'ABORTED')) throw err;
          return undefined;
        });
        members.forEach((m, k) => {
          const e = entries[m]!;
          out[m] = got.then((plains) => {
            const plain = plains?.[k];
            // not fetched, or not genuine: the tamper-proof read finds a version that is
            return plain ? Buffer.from(plain.buffer, plain.byteOffset, plain.byteLength) : this.loadBlob(e.id, e.loc, signal);
          });
        });
      }
    }
    return out;
  }

  /** loadBlobs' way to fetch without a RangeFetcher: one ranged GET through the store, verified here. */
  private rangeViaStore(signal?: AbortSignal): RangeFetcher {
    return async (pack, start, length, blobs) => {
      const bytes = await this.store.get(layout.pack(this.hostId, pack), { range: { offset: start, length }, ...(signal ? { signal } : {}) });
      return blobs.map((b) => {
        if (bytes.length < b.at + b.length) return undefined;
        try {
          return openBlob(this.keys, Buffer.from(b.id, 'hex'), bytes.subarray(b.at, b.at + b.length), b.rawLength);
        } catch {
          return undefined;
        }
      });
    };
  }

  /** Trees by id (see loadBlobs), one promise per id, in order. */
  loadTrees(ids: string[], index: BlobIndex, signal?: AbortSignal, fetchRange?: RangeFetcher): Array<Promise<Tree>> {
    const entries = ids.map((id) => {
      const loc = index.get(id);
      return loc && loc.type === 'tree' ? { id, loc } : undefined;
    });
    const found = entries.filter((e) => e !== undefined);
    const loaded = this.loadBlobs(found, signal, fetchRange);
    let k = 0;
    return entries.map((e, i) =>
      e === undefined ? Promise.reject(new BulwarkError('NOT_FOUND', `tree ${ids[i]} is not in the index of host ${this.hostId}`)) : loaded[k++]!.then(decodeTree),
    );
  }

  async loadTree(id: string, index: BlobIndex, signal?: AbortSignal): Promise<Tree> {
    const loc = index.get(id);
    if (!loc || loc.type !== 'tree') throw new BulwarkError('NOT_FOUND', `tree ${id} is not in the index of host ${this.hostId}`);
    return decodeTree(await this.loadBlob(id, loc, signal));
  }

  async saveSnapshot(m: SnapshotManifest, signal?: AbortSignal): Promise<SavedObject> {
    if (m.hostId !== this.hostId) throw new BulwarkError('INTERNAL', 'snapshot of another host');
    const bytes = encodeSnapshot(this.keys, m);
    const id = contentId(bytes);
    const key = layout.snapshot(this.hostId, id);
    const r = await this.store.put(key, bytes, { lock: m.lock, ...(signal ? { signal } : {}) });
    return { key, id, versionId: r.versionId, size: bytes.length };
  }

  async loadSnapshot(id: string, signal?: AbortSignal): Promise<SnapshotManifest> {
    assertContentId(id, 'snapshot id');
    const { value } = await readVerified(this.store, layout.snapshot(this.hostId, id), (b) => {
      if (contentId(b) !== id) throw new BulwarkError('CHECKSUM_MISMATCH', 'snapshot does not match its id');
      return decodeSnapshot(this.keys, b);
    }, this.readOpts(signal));
    return value;
  }

  /** Snapshot ids of this host, including ones hidden behind delete markers. */
  async snapshotIds(signal?: AbortSignal): Promise<string[]> {
    return (await this.keysUnder(layout.snapshotsPrefix(this.hostId), signal)).map(idOfKey);
  }

  async loadSnapshots(signal?: AbortSignal): Promise<Array<{ id: string; manifest: SnapshotManifest }>> {
    const out: Array<{ id: string; manifest: SnapshotManifest }> = [];
    for (const id of await this.snapshotIds(signal)) {
      try {
        out.push({ id, manifest: await this.loadSnapshot(id, signal) });
      } catch (err) {
        // a forged "snapshot" (not encrypted with this host's key) is ignored, not trusted
        if (!hasCode(err, 'CHECKSUM_MISMATCH', 'NOT_FOUND', 'BAD_REPOSITORY')) throw err;
      }
    }
    return out.sort((a, b) => a.manifest.finishedAt - b.manifest.finishedAt);
  }

  encodeTreeBlob(tree: Tree): { id: Buffer; plain: Buffer; type: BlobType } {
    const plain = encodeTree(tree);
    return { id: this.blobIdOf(plain), plain, type: 'tree' };
  }

  /** Every distinct key under a prefix, from the version listing (so hidden objects count). */
  private async keysUnder(prefix: string, signal?: AbortSignal): Promise<string[]> {
    const keys: string[] = [];
    let last: string | undefined;
    for await (const v of this.store.listVersions(prefix, signal ? { signal } : {})) {
      if (v.key !== last) keys.push(v.key);
      last = v.key;
    }
    return keys;
  }

  private readOpts(signal?: AbortSignal): { signal?: AbortSignal; onTamper?: (r: TamperReport) => void } {
    return { ...(signal ? { signal } : {}), ...(this.onTamper ? { onTamper: this.onTamper } : {}) };
  }
}

async function firstKey(store: BlobStore, key: string): Promise<boolean> {
  for await (const v of store.listVersions(key)) if (v.key === key) return true;
  return false;
}
