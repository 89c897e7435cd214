/**
 * SealPool: the backup's per-byte CPU work on worker threads, so a backup uses every core.
 *
 * Two kinds of job, each on whichever worker is free:
 *   seal   plaintext chunk → blob id (HMAC-SHA256 under the host's id key) → compress (zstd, the
 *          same rule as compress.ts) → AES-256-GCM with the id as associated data (as
 *          pack.ts sealBlob): the sealed bytes in one buffer
 *   hash   a finished pack → its SHA-256 (the pack id) and its MD5 (the Content-MD5 of its PUT)
 * What stays on the main thread: reading files, content-defined chunking (sequential by
 * nature), dedup, packing and uploads. Measured before (docs/benchmarks.md): the main thread was
 * 99 % busy during a full backup with three hash passes, zstd, AES-GCM and their garbage on it.
 *
 * Data crosses by transfer, not by structured copy: a chunk is copied once into a buffer of its own
 * (chunks are views into larger read buffers) and that buffer is moved to the worker; the sealed
 * bytes and a hashed pack are moved back.
 *
 * The workers run plain JavaScript from a source string (`eval`), so they start the same way under
 * tsx, compiled JS and vitest. The format rules they apply are this module's constants and
 * compress.ts's (ZSTD_LEVEL, worthCompressing), and a unit test checks that what they produce
 * opens with pack.ts openBlob and equals the main-thread sealBlob's choices.
 */
import { createRequire } from 'node:module';
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { BulwarkError } from '../errors.js';
import { MIN_SAVING_SHIFT, PROBE_FROM, SAMPLE_BYTES, ZSTD_LEVEL } from './compress.js';
import { NONCE_BYTES, TAG_BYTES } from './crypto.js';
import type { HostKeys } from './keys.js';

export interface SealPoolOptions {
  /** Worker threads (default: available cores, at most 4). */
  workers?: number;
}

export interface SealedChunk {
  id: Buffer;
  sealed: Buffer;
}

export interface PackHashes {
  /** SHA-256 of the pack, hex: its id. */
  id: string;
  /** MD5 of the pack, base64: its Content-MD5. */
  md5: string;
  /** The pack's bytes, moved back from the worker. */
  bytes: Buffer;
}

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createCipheriv, createHash, createHmac, randomFillSync } = require('node:crypto');
const zstd = require(workerData.zstdPath);
const compressor = new zstd.Compressor();
compressor.setParameters({ compressionLevel: ${ZSTD_LEVEL} });
const idKey = Buffer.from(workerData.idKey);
const encKey = Buffer.from(workerData.encKey);
function probe(plain) {
  const S = ${SAMPLE_BYTES}, last = plain.length - S;
  for (const at of [0, Math.floor(last / 2), last]) {
    const z = compressor.compress(plain.subarray(at, at + S));
    if (z.length + (S >> ${MIN_SAVING_SHIFT}) < S) return true;
  }
  return false;
}
parentPort.on('message', (m) => {
  try {
    if (m.kind === 'seal') {
      const plain = new Uint8Array(m.plain);
      const id = createHmac('sha256', idKey).update(plain).digest();
      let packed = false;
      let body = plain;
      if (plain.length < ${PROBE_FROM} || probe(plain)) {
        const z = compressor.compress(plain);
        packed = z.length + (plain.length >> ${MIN_SAVING_SHIFT}) < plain.length;
        if (packed) body = z;
      }
      const out = Buffer.allocUnsafeSlow(${NONCE_BYTES} + 1 + body.length + ${TAG_BYTES});
      const nonce = out.subarray(0, ${NONCE_BYTES});
      randomFillSync(nonce);
      const c = createCipheriv('aes-256-gcm', encKey, nonce);
      c.setAAD(id);
      let o = ${NONCE_BYTES};
      o += c.update(Buffer.of(packed ? 1 : 0)).copy(out, o);
      o += c.update(body).copy(out, o);
      o += c.final().copy(out, o);
      c.getAuthTag().copy(out, o);
      const idb = new Uint8Array(id).buffer;
      parentPort.postMessage({ seq: m.seq, id: idb, sealed: out.buffer, plain: m.plain }, [idb, out.buffer, m.plain]);
    } else {
      const bytes = new Uint8Array(m.bytes);
      const id = createHash('sha256').update(bytes).digest('hex');
      const md5 = createHash('md5').update(bytes).digest('base64');
      parentPort.postMessage({ seq: m.seq, hashId: id, md5, bytes: m.bytes }, [m.bytes]);
    }
  } catch (err) {
    parentPort.postMessage({ seq: m.seq, error: String(err && err.stack || err) });
  }
});
`;

interface Pending {
  resolve: (m: WorkerReply) => void;
  reject: (e: Error) => void;
}

interface WorkerReply {
  seq: number;
  error?: string;
  id?: ArrayBuffer;
  sealed?: ArrayBuffer;
  hashId?: string;
  md5?: string;
  bytes?: ArrayBuffer;
}

export class SealPool {
  private readonly workers: Worker[] = [];
  private readonly load: number[] = [];
  private readonly pending = new Map<number, { worker: number } & Pending>();
  private seq = 0;
  private failure: Error | undefined;
  private closed = false;

  constructor(keys: HostKeys, o: SealPoolOptions = {}) {
    const n = o.workers ?? Math.min(4, os.availableParallelism());
    if (!(n >= 1)) throw new BulwarkError('INVALID_ARGUMENT', `a seal pool needs at least one worker, not ${n}`);
    const zstdPath = createRequire(import.meta.url).resolve('zstd-napi');
    for (let i = 0; i < n; i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { zstdPath, idKey: new Uint8Array(keys.id), encKey: new Uint8Array(keys.enc) } });
      w.unref();
      w.on('message', (m: WorkerReply) => this.onReply(i, m));
      w.on('error', (err) => this.fail(new BulwarkError('INTERNAL', `seal worker failed: ${err.message}`, { cause: err })));
      w.on('exit', (code) => {
        if (!this.closed) this.fail(new BulwarkError('INTERNAL', `seal worker exited (code ${code})`));
      });
      this.workers.push(w);
      this.load.push(0);
    }
  }

  get size(): number {
    return this.workers.length;
  }

  /** Id and sealed form of one chunk (as `blobId` + `sealBlob`). `plain` is copied; the caller keeps it. */
  async seal(plain: Uint8Array): Promise<SealedChunk> {
    const copy = new Uint8Array(plain.length);
    copy.set(plain);
    const r = await this.send({ kind: 'seal', plain: copy.buffer }, [copy.buffer]);
    return { id: Buffer.from(r.id!), sealed: Buffer.from(r.sealed!) };
  }

  /**
   * SHA-256 (the pack id) and MD5 of a finished pack. `bytes` must own its ArrayBuffer whole
   * (Buffer.concat of a pack does): it is moved to the worker and comes back as `bytes`.
   */
  async hashPack(bytes: Buffer): Promise<PackHashes> {
    if (bytes.byteOffset !== 0 || bytes.byteLength !== bytes.buffer.byteLength) {
      bytes = Buffer.from(Uint8Array.prototype.slice.call(bytes).buffer);
    }
    const r = await this.send({ kind: 'hash', bytes: bytes.buffer }, [bytes.buffer as ArrayBuffer]);
    return { id: r.hashId!, md5: r.md5!, bytes: Buffer.from(r.bytes!) };
  }

  /** Stop the workers; jobs still waiting fail. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.pending.values()) p.reject(new BulwarkError('ABORTED', 'seal pool closed'));
    this.pending.clear();
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  private send(msg: Record<string, unknown>, transfer: ArrayBuffer[]): Promise<WorkerReply> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new BulwarkError('ABORTED', 'seal pool closed'));
    // the least loaded worker
    let w = 0;
    for (let i = 1; i < this.load.length; i++) if (this.load[i]! < this.load[w]!) w = i;
    const seq = this.seq++;
    this.load[w]!++;
    return new Promise<WorkerReply>((resolve, reject) => {
      this.pending.set(seq, { worker: w, resolve, reject });
      this.workers[w]!.postMessage({ ...msg, seq }, transfer);
    });
  }

  private onReply(worker: number, m: WorkerReply): void {
    const p = this.pending.get(m.seq);
    if (!p) return;
    this.pending.delete(m.seq);
    this.load[worker]!--;
    if (m.error) p.reject(new BulwarkError('INTERNAL', `seal worker: ${m.error}`));
    else p.resolve(m);
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
