/**
 * SealPool: the backup's per-byte CPU work on worker threads, so a backup uses every core.
 *
 * Two kinds of job, each on whichever worker is free:
 *   seal   plaintext chunk → blob id (HMAC-SHA256 under the host's id key) → compress (zstd, the
 *          same rule as compress.ts) → AES-256-GCM with the id as associated data (as
 *          pack.ts sealBlob): the sealed bytes in one buffer. Unless the id is one the caller
 *          marked as stored already (`markKnown`): then the chunk comes back unsealed, and the
 *          compression and encryption a duplicate would cost for nothing are skipped.
 *   hash   a finished pack → its SHA-256 (the pack id, also the checksum its PUT carries)
 *
 * Known ids: the workers cannot ask the main thread's blob index without waiting for it, so they
 * share a table of fingerprints (the id's first 4 bytes; open addressing, at most half full, in a
 * SharedArrayBuffer the main thread alone writes, with Atomics). A fingerprint match is only a
 * "probably stored": the caller checks the full id in its index, and seals the chunk itself in the
 * rare case it is not (another id with the same 4 bytes: about n / 2^32 per chunk with n ids known).
 * A worker that has not seen an id marked yet (or holds the table before it grew) only seals a
 * duplicate, as it would have without the table.
 * What stays on the main thread: reading files, content-defined chunking (sequential by
 * nature), dedup, packing and uploads. Measured before (docs/benchmarks.md): the main thread was
 * 99 % busy during a full backup with three hash passes, zstd, AES-GCM and their garbage on it.
 *
 * Data crosses by transfer, not by structured copy: a chunk is copied once into a buffer of the
 * pool's (chunks are views into larger read buffers), at the offset its ciphertext will have in the
 * sealed form (after the nonce and the flag byte), and that buffer moves to the worker. The worker
 * seals into the same buffer: the ciphertext of a chunk stored raw lands where its plaintext was,
 * piece by piece; a compressed one is encrypted out of the worker's zstd scratch buffer. The
 * buffer comes back holding the sealed bytes, and the caller hands it back with `release()` once
 * it has copied them into its pack. A hashed pack moves out and back the same way.
 *
 * Measured before (docs/benchmarks.md, session 7): a fresh buffer per chunk for the copy, one for
 * the sealed bytes and one for the cipher's output meant ~3 new pages per 4 KiB sealed; on this VM
 * the kernel's clear_page made the backup with 2 workers spend ~1.5× the CPU per byte of the
 * backup on the main thread alone.
 *
 * The workers run plain JavaScript from a source string (`eval`), so they start the same way under
 * tsx, compiled JS and vitest. The format rules they apply are compress.ts's (ZSTD_PARAMS, the
 * probe, MIN_SAVING_SHIFT), and a unit test checks that what they produce opens with pack.ts
 * openBlob and equals the main-thread sealBlob's choices. A worker compresses into a scratch buffer
 * of its own (zstd's output does not depend on the room it is given, as long as it is the bound)
 * and encrypts from there.
 */
import { createRequire } from 'node:module';
import os from 'node:os';
import { WorkerPool } from '../worker-pool.js';
import { MIN_SAVING_SHIFT, PROBE_FROM, SAMPLE_BYTES, ZSTD_PARAMS } from './compress.js';
import { NONCE_BYTES, TAG_BYTES } from './crypto.js';
import type { HostKeys } from './keys.js';

export interface SealPoolOptions {
  /** Worker threads (default: available cores, at most 4). */
  workers?: number;
  /** Bytes of released buffers kept for the next chunks, at most (default 64 MiB). */
  keepBytes?: number;
}

/** Bytes before a chunk's ciphertext in its sealed form: the nonce, then the flag byte. */
const HEAD = NONCE_BYTES + 1;
/**
 * Seal buffers are at least this large (a chunk averages ~1 MiB, most are under 2 MiB), so a
 * released buffer fits most later chunks. Smaller ones are not kept.
 */
const SEAL_BUFFER_MIN = 2 * 1024 * 1024 + HEAD + TAG_BYTES;

/**
 * A chunk's id, and its sealed form; or, when its id's fingerprint was marked known, its plaintext
 * instead (not sealed). Either is a view into one of the pool's buffers: give it back with
 * `release()`.
 */
export type SealedChunk = { id: Buffer; sealed: Buffer; plain?: undefined } | { id: Buffer; sealed?: undefined; plain: Buffer };

export interface PackHashes {
  /** SHA-256 of the pack, hex: its id. */
  id: string;
  /** The pack's bytes, moved back from the worker. */
  bytes: Buffer;
}

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createCipheriv, createHash, createHmac, randomFillSync } = require('node:crypto');
// zstd-napi's native binding: a compression context with compress.ts's parameters (numbers, by
// name), and compress2 into a buffer of our own
const { CCtx, CParameter, compressBound } = require(workerData.zstdBindingPath);
const cctx = new CCtx();
for (const [name, value] of Object.entries(workerData.zstdParams)) {
  if (CParameter[name] === undefined || typeof value !== 'number') throw new Error('zstd parameter ' + name + ': ' + value);
  cctx.setParameter(CParameter[name], value);
}
const idKey = Buffer.from(workerData.idKey);
const encKey = Buffer.from(workerData.encKey);
// zstd writes into this buffer (grown to the bound of the largest input, kept): Compressor.compress
// would allocate compressBound(input) per chunk and copy the result out of it
let scratch = Buffer.alloc(0);
function zstdLength(input) {
  const need = compressBound(input.length);
  if (scratch.length < need) scratch = Buffer.allocUnsafeSlow(need);
  return cctx.compress2(scratch, input);
}
function probe(plain) {
  const S = ${SAMPLE_BYTES}, last = plain.length - S;
  for (const at of [0, Math.floor(last / 2), last]) {
    if (zstdLength(plain.subarray(at, at + S)) + (S >> ${MIN_SAVING_SHIFT}) < S) return true;
  }
  return false;
}
// fingerprints of known ids (SealPool.markKnown): Int32Array over a SharedArrayBuffer, or null
let known = null;
function seen(id) {
  if (known === null) return false;
  const mask = known.length - 1;
  const fp = ((id[0] << 24) | (id[1] << 16) | (id[2] << 8) | id[3]) || 1;
  for (let s = fp & mask; ; s = (s + 1) & mask) {
    const v = Atomics.load(known, s);
    if (v === 0) return false;
    if (v === fp) return true;
  }
}
// The cipher's output, a piece at a time: each piece is small enough to come from malloc's free
// lists (one update over a whole chunk allocated, and zeroed, a new buffer of the chunk's size).
const PIECE = 64 * 1024;
// GCM's output is exactly as long as its input, which the in-place writes below rely on: checked.
function encryptInto(c, body, buf, at) {
  for (let i = 0; i < body.length; i += PIECE) {
    const piece = body.subarray(i, i + PIECE);
    const out = c.update(piece);
    if (out.length !== piece.length) throw new Error('cipher output ' + out.length + ' bytes for ' + piece.length);
    at += out.copy(buf, at);
  }
  return at;
}
parentPort.on('message', (m) => {
  try {
    if (m.kind === 'seal') {
      // m.buf: [nonce | flag | plaintext (m.length) | room for the tag]
      const buf = Buffer.from(m.buf);
      const plain = buf.subarray(${HEAD}, ${HEAD} + m.length);
      const id = createHmac('sha256', idKey).update(plain).digest();
      if (seen(id)) {
        const idb = new Uint8Array(id).buffer;
        parentPort.postMessage({ seq: m.seq, id: idb, buf: m.buf, seen: true }, [idb, m.buf]);
        return;
      }
      let packed = false;
      let body = plain;
      if (plain.length < ${PROBE_FROM} || probe(plain)) {
        const n = zstdLength(plain);
        packed = n + (plain.length >> ${MIN_SAVING_SHIFT}) < plain.length;
        if (packed) body = scratch.subarray(0, n); // encrypted out of the scratch buffer below
      }
      randomFillSync(buf, 0, ${NONCE_BYTES});
      const c = createCipheriv('aes-256-gcm', encKey, buf.subarray(0, ${NONCE_BYTES}));
      c.setAAD(id);
      let o = ${NONCE_BYTES};
      o += c.update(Buffer.of(packed ? 1 : 0)).copy(buf, o);
      // raw: piece k's ciphertext overwrites piece k's own plaintext, already read
      o = encryptInto(c, body, buf, o);
      o += c.final().copy(buf, o);
      o += c.getAuthTag().copy(buf, o);
      const idb = new Uint8Array(id).buffer;
      parentPort.postMessage({ seq: m.seq, id: idb, buf: m.buf, sealedLength: o }, [idb, m.buf]);
    } else if (m.kind === 'known') {
      known = new Int32Array(m.table);
    } else {
      const bytes = new Uint8Array(m.bytes, 0, m.length);
      const id = createHash('sha256').update(bytes).digest('hex');
      parentPort.postMessage({ seq: m.seq, hashId: id, bytes: m.bytes }, [m.bytes]);
    }
  } catch (err) {
    parentPort.postMessage({ seq: m.seq, error: String(err && err.stack || err) });
  }
});
`;

interface WorkerReply {
  seq: number;
  error?: string;
  id?: ArrayBuffer;
  buf?: ArrayBuffer;
  sealedLength?: number;
  seen?: boolean;
  hashId?: string;
  bytes?: ArrayBuffer;
}

export class SealPool {
  private readonly pool: WorkerPool<WorkerReply>;
  /** Released seal buffers, reused by the next chunks. */
  private readonly free: ArrayBuffer[] = [];
  private freeBytes = 0;
  private readonly keepBytes: number;
  /** Fingerprints of known ids, shared with the workers (see the top); created by the first markKnown. */
  private known: Int32Array | undefined;
  private knownCount = 0;

  constructor(keys: HostKeys, o: SealPoolOptions = {}) {
    const workerData = {
      zstdBindingPath: createRequire(import.meta.url).resolve('zstd-napi/binding'),
      zstdParams: { ...ZSTD_PARAMS },
      idKey: new Uint8Array(keys.id),
      encKey: new Uint8Array(keys.enc),
    };
    this.keepBytes = o.keepBytes ?? 64 * 1024 * 1024;
    this.pool = new WorkerPool<WorkerReply>(WORKER_SOURCE, workerData, o.workers ?? Math.min(4, os.availableParallelism()), 'seal');
  }

  get size(): number {
    return this.pool.size;
  }

  /**
   * Id and sealed form of one chunk (as `blobId` + `sealBlob`). `plain` is copied; the caller keeps
   * it. The sealed bytes are a view into one of the pool's buffers: give it back with `release()`
   * once done with them (one not given back is simply left to the garbage collector).
   */
  async seal(plain: Uint8Array): Promise<SealedChunk> {
    const buf = this.take(HEAD + plain.length + TAG_BYTES);
    new Uint8Array(buf, HEAD, plain.length).set(plain);
    const r = await this.pool.request({ kind: 'seal', buf, length: plain.length }, [buf]);
    if (r.seen) return { id: Buffer.from(r.id!), plain: Buffer.from(r.buf!, HEAD, plain.length) };
    return { id: Buffer.from(r.id!), sealed: Buffer.from(r.buf!, 0, r.sealedLength!) };
  }

  /**
   * Mark a blob id (32 bytes at `at`) as stored already: chunks with its fingerprint come back from
   * `seal()` unsealed, for the caller to check against its index.
   */
  markKnown(id: Uint8Array, at = 0): void {
    const fp = ((id[at]! << 24) | (id[at + 1]! << 16) | (id[at + 2]! << 8) | id[at + 3]!) || 1;
    if (this.known === undefined || 2 * (this.knownCount + 1) > this.known.length) this.growKnown();
    if (insertFingerprint(this.known!, fp)) this.knownCount++;
  }

  /** A table twice as large (at least 2^12 slots) with the fingerprints so far, sent to every worker. */
  private growKnown(): void {
    const old = this.known;
    const table = new Int32Array(new SharedArrayBuffer(4 * Math.max(4096, 2 * (old?.length ?? 0))));
    if (old) for (let i = 0; i < old.length; i++) if (old[i] !== 0) insertFingerprint(table, old[i]!);
    this.known = table;
    this.pool.broadcast({ kind: 'known', table: table.buffer });
  }

  /** Hand back the buffer of a `seal()` result (its sealed bytes, or its plaintext) once no longer used. */
  release(sealed: Buffer): void {
    const b = sealed.buffer as ArrayBuffer;
    if (b.byteLength < SEAL_BUFFER_MIN || this.freeBytes + b.byteLength > this.keepBytes) return;
    this.free.push(b);
    this.freeBytes += b.byteLength;
  }

  /** The smallest free buffer of at least n bytes, or a new one. */
  private take(n: number): ArrayBuffer {
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const len = this.free[i]!.byteLength;
      if (len >= n && (best < 0 || len < this.free[best]!.byteLength)) best = i;
    }
    if (best < 0) return new ArrayBuffer(Math.max(n, SEAL_BUFFER_MIN));
    const b = this.free[best]!;
    this.free[best] = this.free[this.free.length - 1]!;
    this.free.pop();
    this.freeBytes -= b.byteLength;
    return b;
  }

  /**
   * SHA-256 (the pack id) of a finished pack. A pack that starts at the start of its ArrayBuffer
   * (PackBuilder's do) is not copied: the whole ArrayBuffer moves to the worker and comes back as
   * `bytes`, so nothing else may use it meanwhile. Anything else (a view into a larger buffer, or
   * possibly into Node's shared pool of small buffers) is copied first.
   */
  async hashPack(bytes: Buffer): Promise<PackHashes> {
    if (bytes.byteOffset !== 0 || bytes.buffer.byteLength <= Buffer.poolSize) {
      bytes = Buffer.from(Uint8Array.prototype.slice.call(bytes).buffer);
    }
    const length = bytes.length;
    const r = await this.pool.request({ kind: 'hash', bytes: bytes.buffer, length }, [bytes.buffer as ArrayBuffer]);
    return { id: r.hashId!, bytes: Buffer.from(r.bytes!, 0, length) };
  }

  /** Stop the workers; jobs still waiting fail. */
  close(): Promise<void> {
    return this.pool.close();
  }
}

/** Add a fingerprint to an open-addressing table (not full); false when it was there already. */
function insertFingerprint(table: Int32Array, fp: number): boolean {
  const mask = table.length - 1;
  for (let s = fp & mask; ; s = (s + 1) & mask) {
    const v = table[s]!;
    if (v === fp) return false;
    if (v === 0) {
      Atomics.store(table, s, fp);
      return true;
    }
  }
}
