/**
 * Packer: the backup's write path for blobs. Stages, per blob:
 *   dedup (already in the index, or already added in this backup?) → seal (compress + encrypt)
 *   → append to the open pack → when the pack reaches the repository's pack size, close it
 *   (header, SHA-256 id) and upload it with the job's lock, several uploads in flight, with
 *   backpressure so memory stays bounded (open pack + `uploads` packs in flight).
 *
 * A pack's id is only known when it closes, so a blob added to the open pack is given a
 * provisional pack reference `~n`, resolved by `resolve()` after `flush()`.
 */
import { throwIfAborted } from '../../common/errors.js';
import type { BlobIndex } from '../../common/repo/blob-index.js';
import { type BlobType, PackBuilder, type PackEntry, sealBlob } from '../../common/repo/pack.js';
import type { HostRepository } from '../../common/repo/repository.js';
import type { ObjectLock } from '../../common/storage/blob-store.js';

export interface UploadedPack {
  id: string;
  entries: PackEntry[];
  size: number;
}

export interface PackerOptions {
  lock: ObjectLock;
  /** Packs uploading at once; each holds a pack in memory. */
  uploads?: number;
  signal?: AbortSignal;
  /** Called after each pack is stored (the agent records it so a crashed backup's packs are reused). */
  onPackUploaded?: (p: UploadedPack) => Promise<void> | void;
}

export class Packer {
  private builder = new PackBuilder();
  private seq = 0;
  private readonly pending = new Map<string, string>(); // blob id → provisional ref of its pack
  private readonly resolved = new Map<string, string>(); // provisional ref → pack id
  private readonly inFlight = new Set<Promise<void>>();
  private failure: unknown;
  readonly uploaded: UploadedPack[] = [];
  bytesUploaded = 0;

  constructor(
    private readonly host: HostRepository,
    private readonly index: BlobIndex,
    private readonly o: PackerOptions,
  ) {}

  /** The pack (id or provisional ref) holding this blob, if it is stored or staged already. */
  packOf(id: string): string | undefined {
    return this.index.get(id)?.pack ?? this.pending.get(id);
  }

  /** Store a blob unless it is known; returns its pack reference. */
  async add(type: BlobType, id: Buffer, plain: Uint8Array): Promise<string> {
    const hex = id.toString('hex');
    const known = this.packOf(hex);
    if (known !== undefined) return known;
    this.builder.add(type, id, sealBlob(this.host.keys, id, plain), plain.length);
    const ref = `~${this.seq}`;
    this.pending.set(hex, ref);
    if (this.builder.size >= this.host.config.packSize) await this.closePack();
    return ref;
  }

  /** Close the open pack (if any) and wait for every upload. */
  async flush(): Promise<void> {
    if (this.builder.count > 0) await this.closePack();
    await Promise.all(this.inFlight);
    if (this.failure) throw this.failure;
  }

  /** A pack reference as a pack id (after flush). */
  resolve(ref: string): string {
    if (!ref.startsWith('~')) return ref;
    const id = this.resolved.get(ref);
    if (!id) throw new Error(`pack reference ${ref} not resolved: flush() first`);
    return id;
  }

  private async closePack(): Promise<void> {
    throwIfAborted(this.o.signal);
    if (this.failure) throw this.failure;
    const ref = `~${this.seq++}`;
    const pack = this.builder.finish(this.host.keys);
    this.builder = new PackBuilder();
    this.resolved.set(ref, pack.id);
    // backpressure: at most `uploads` packs in memory besides the open one
    while (this.inFlight.size >= (this.o.uploads ?? 3)) await Promise.race(this.inFlight);
    if (this.failure) throw this.failure;
    const upload = async (): Promise<void> => {
      try {
        await this.host.savePack(pack, this.o.lock, this.o.signal);
        const up = { id: pack.id, entries: pack.entries, size: pack.bytes.length };
        this.index.addPack(pack.id, pack.entries);
        for (const e of pack.entries) this.pending.delete(e.id.toString('hex'));
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
