/**
 * Packer: the backup's write path for blobs. Stages, per blob:
 *   id + seal  blob id (HMAC-SHA256), compress (zstd) + encrypt (AES-256-GCM): on the main thread
 *              for trees and for the first `inlineBytes` of data, then on SealPool worker threads
 *              (every core), several chunks in flight, in completion order
 *   dedup      already in the index, or already added in this backup? then the sealed copy is dropped
 *   pack       append to the open pack; when it reaches the repository's pack size, close it
 *              (header, then its SHA-256 id on a worker when the pool runs)
 *   upload     PUT with the job's lock, several uploads in flight
 * Backpressure keeps memory bounded: at most `sealBytes` of chunks being sealed, the open pack,
 * and `uploads` packs in flight; a full upload queue stalls sealing, which stalls the reader.
 *
 * A pack's id is only known when it is hashed, so a blob added to the open pack is given a
 * provisional pack reference `~n`, resolved by `resolve()` after `flush()`.
 */
import os from 'node:os';
import { throwIfAborted } from '../../common/errors.js';
import type { BlobIndex } from '../../common/repo/blob-index.js';
import { contentId } from '../../common/repo/crypto.js';
import { type BlobType, ENTRY_BYTES, PackBuilder, type PackEntry, packBufferSize, sealBlobParts } from '../../common/repo/pack.js';
import type { HostRepository } from '../../common/repo/repository.js';
import { SealPool } from '../../common/repo/seal-pool.js';
import type { ObjectLock } from '../../common/storage/blob-store.js';

export interface UploadedPack {
  id: string;
  /**
   * The pack's entries as its header encodes them (pack.ts encodeEntries: ~45 bytes each). A first
   * backup keeps every uploaded pack's entries until it writes its index object; as objects they
   * cost ~160 bytes each in V8's heap (12 MB for 77,000 small files).
   */
  entries: Buffer;
  size: number;
}

export interface PackerOptions {
  lock: ObjectLock;
  /** Packs uploading at once; each holds a pack in memory. */
  uploads?: number;
  /**
   * Seal worker threads (default: available cores, at most 4; 0: everything on the main thread).
   * They start only once `inlineBytes` of data were submitted, so a small incremental costs no
   * thread start-up.
   */
  sealWorkers?: number;
  /** Data sealed on the main thread before the workers start (default 8 MiB). */
  inlineBytes?: number;
  /** Chunk bytes being sealed at once, at most (default 32 MiB per worker: enough to keep the workers busy while the main thread chunks). */
  sealBytes?: number;
  signal?: AbortSignal;
  /** Called after each pack is stored (the agent records it so a crashed backup's packs are reused). */
  onPackUploaded?: (p: UploadedPack) => Promise<void> | void;
}

/** A submitted chunk: `result` settles with its blob id (hex) and pack reference once sealed and packed. */
export interface Submitted {
  result: Promise<{ id: string; ref: string }>;
}

/** Chunks smaller than this are sealed on the main thread. */
const SMALL_CHUNK = 64 * 1024;

export class Packer {
  private builder: PackBuilder | undefined;
  /** Pack buffers whose upload is done, for the next packs (see PackBuilder). */
  private readonly spare: Buffer[] = [];
  private seq = 0;
  private readonly pending = new Map<string, string>(); // blob id → provisional ref of its pack
  private readonly resolved = new Map<string, string>(); // provisional ref → pack id
  private readonly inFlight = new Set<Promise<void>>();
  private failure: unknown;
  readonly uploaded: UploadedPack[] = [];
  bytesUploaded = 0;
  /** Bytes of chunks the seal workers found stored already by their id, so never compressed or encrypted. */
  unsealedBytes = 0;
  private pool: SealPool | undefined;
  private submittedBytes = 0;
  private sealing = 0; // bytes submitted to the pool, not yet packed
  private readonly sealWaiters: Array<() => void> = [];
  private readonly sealed = new Set<Promise<unknown>>();
  private readonly workers: number;
  private readonly sealLimit: number;

  constructor(
    private readonly host: HostRepository,
    private readonly index: BlobIndex,
    private readonly o: PackerOptions,
  ) {
    this.workers = o.sealWorkers ?? Math.min(4, os.availableParallelism());
    this.sealLimit = o.sealBytes ?? 32 * 1024 * 1024 * Math.max(1, this.workers);
  }

  /** The pack (id or provisional ref) holding this blob, if it is stored or staged already. */
  packOf(id: string): string | undefined {
    return this.index.get(id)?.pack ?? this.pending.get(id);
  }

  /** Store a blob whose id the caller computed (trees), sealed on this thread; returns its pack reference. */
  async add(type: BlobType, id: Buffer, plain: Uint8Array): Promise<string> {
    const hex = id.toString('hex');
    const known = this.packOf(hex);
    if (known !== undefined) return known;
    return this.append(type, id, sealBlobParts(this.host.keys, id, plain), plain.length);
  }

  /**
   * Store a data chunk. Resolves once the chunk is accepted (which may wait for room: backpressure);
   * its id and pack reference come later through `result`. `plain` is not kept after this returns.
   */
  async submit(plain: Uint8Array): Promise<Submitted> {
    if (this.failure) throw this.failure;
    throwIfAborted(this.o.signal);
    this.submittedBytes += plain.length;
    // a small chunk costs less to seal here than to send to a worker and back (a message each
    // way, ~40 µs, measured: 20,000 files of 4 KiB spent 8 % of the main thread in postMessage)
    const pool = plain.length >= SMALL_CHUNK ? this.poolFor() : undefined;
    if (!pool) {
      const id = this.host.blobIdOf(plain);
      const hex = id.toString('hex');
      const ref = this.packOf(hex) ?? (await this.append('data', id, sealBlobParts(this.host.keys, id, plain), plain.length));
      return { result: Promise.resolve({ id: hex, ref }) };
    }
    while (this.sealing > 0 && this.sealing + plain.length > this.sealLimit) {
      await new Promise<void>((r) => this.sealWaiters.push(r));
      if (this.failure) throw this.failure;
    }
    const size = plain.length;
    this.sealing += size;
    const result = pool.seal(plain).then(
      async (s) => {
        try {
          const hex = s.id.toString('hex');
          const known = this.packOf(hex);
          if (known !== undefined && s.plain) this.unsealedBytes += size;
          // not stored yet: sealed by the worker, or, when its fingerprint was another blob's
          // (rare: see SealPool), not sealed and sealed here
          const added = known === undefined ? this.append('data', s.id, s.sealed ?? sealBlobParts(this.host.keys, s.id, s.plain), size) : undefined; // copies the sealed bytes at once
          pool.release(s.sealed ?? s.plain);
          return { id: hex, ref: known ?? (await added!) };
        } finally {
          this.release(size);
        }
      },
      (err: unknown) => {
        this.release(size);
        this.failure ??= err;
        throw err;
      },
    );
    result.catch(() => undefined); // the failure is kept and rethrown by the next submit or flush
    this.sealed.add(result);
    void result.finally(() => this.sealed.delete(result)).catch(() => undefined);
    return { result };
  }

  /** Wait for every chunk being sealed, close the open pack (if any) and wait for every upload. */
  async flush(): Promise<void> {
    while (this.sealed.size > 0) await Promise.allSettled([...this.sealed]);
    if (this.failure) throw this.failure;
    if (this.builder) await this.closePack();
    await Promise.all(this.inFlight);
    if (this.failure) throw this.failure;
  }

  /** Stop the seal workers (after flush, or when the backup fails). */
  async close(): Promise<void> {
    this.spare.length = 0;
    const pool = this.pool;
    this.pool = undefined;
    await pool?.close();
  }

  /** A pack reference as a pack id, or undefined while its pack is not hashed yet. */
  tryResolve(ref: string): string | undefined {
    return ref.startsWith('~') ? this.resolved.get(ref) : ref;
  }

  /** A pack reference as a pack id (after flush). */
  resolve(ref: string): string {
    if (!ref.startsWith('~')) return ref;
    const id = this.resolved.get(ref);
    if (!id) throw new Error(`pack reference ${ref} not resolved: flush() first`);
    return id;
  }

  private poolFor(): SealPool | undefined {
    if (this.pool) return this.pool;
    if (this.workers < 1 || this.submittedBytes <= (this.o.inlineBytes ?? 8 * 1024 * 1024)) return undefined;
    const pool = new SealPool(this.host.keys, { workers: this.workers });
    // what is stored already, so that the workers skip sealing duplicates (a changed large file
    // comes back mostly in chunks stored before); append() marks what this backup adds
    this.index.forEachId((ids, at) => pool.markKnown(ids, at));
    for (const hex of this.pending.keys()) pool.markKnown(Buffer.from(hex, 'hex'));
    this.pool = pool;
    return pool;
  }

  private release(size: number): void {
    this.sealing -= size;
    this.sealWaiters.shift()?.();
  }

  private async append(type: BlobType, id: Buffer, sealed: Buffer | Buffer[], rawLength: number): Promise<string> {
    this.builder ??= new PackBuilder(this.spare.pop() ?? Buffer.allocUnsafeSlow(this.packCapacity()));
    this.builder.add(type, id, sealed, rawLength);
    const ref = `~${this.seq}`;
    this.pending.set(id.toString('hex'), ref);
    this.pool?.markKnown(id);
    if (this.builder.size >= this.host.config.packSize) await this.closePack();
    return ref;
  }

  private packCapacity(): number {
    return packBufferSize(this.host.config.packSize);
  }

  /** A pack's buffer back for the next packs, if it is one of ours (a pack that outgrew it is not). */
  private recycle(bytes: Buffer): void {
    const b = bytes.buffer as ArrayBuffer;
    if (bytes.byteOffset === 0 && b.byteLength === this.packCapacity() && this.spare.length < (this.o.uploads ?? 3) + 1) {
      this.spare.push(Buffer.from(b));
    }
  }

  private async closePack(): Promise<void> {
    throwIfAborted(this.o.signal);
    if (this.failure) throw this.failure;
    const ref = `~${this.seq++}`;
    const { bytes, entries, encoded } = this.builder!.finishBytes(this.host.keys);
    this.builder = undefined;
    idsInto(entries, encoded);
    // the pack's SHA-256 (its id, and the checksum of its PUT) on a worker when there are workers,
    // started before waiting for an upload slot so that it is ready when one frees
    // (measured against the local RGW: +7 % end to end, 8 alternating pairs)
    const hashed = this.pool?.hashPack(bytes);
    hashed?.catch(() => undefined); // awaited (and its failure kept) by upload()
    // backpressure: at most `uploads` packs in memory besides the open one
    while (this.inFlight.size >= (this.o.uploads ?? 3)) await Promise.race(this.inFlight);
    if (this.failure) throw this.failure;
    const upload = async (): Promise<void> => {
      try {
        const pack = hashed ? await hashed : { id: contentId(bytes), bytes };
        this.resolved.set(ref, pack.id);
        await this.host.savePack(pack, this.o.lock, this.o.signal);
        const up = { id: pack.id, entries: encoded, size: pack.bytes.length };
        this.recycle(pack.bytes); // the store is done with it (BlobStore.put)
        this.index.addPack(pack.id, entries);
        for (const e of entries) this.pending.delete(e.id.toString('hex'));
        this.uploaded.push(up);
        this.bytesUploaded += up.size;
        await this.o.onPackUploaded?.(up);
      } catch (err) {
        this.failure ??= err;
      }
    };
    const p = upload(); // never rejects: a failure is kept and rethrown by the next add or flush
    this.inFlight.add(p);
    void p.then(() => this.inFlight.delete(p));
  }
}

/**
 * Point each entry's blob id at its copy in the pack's encoded entries: every id from a digest or a
 * worker is a buffer of its own, tens of thousands per pack of small files while it uploads.
 */
function idsInto(entries: PackEntry[], encoded: Buffer): void {
  entries.forEach((e, i) => {
    const at = 4 + i * ENTRY_BYTES + 1; // after the count, then the entry's type byte
    e.id = encoded.subarray(at, at + 32);
  });
}
