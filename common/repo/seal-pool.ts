/**
 * SealPool: the backup's per-byte CPU work on worker threads, so a backup uses every core.
 *
 * Two kinds of job, each on whichever worker is free:
 *   seal   plaintext chunk → blob id (HMAC-SHA256 under the host's id key) → compress (zstd, the
 *          same rule as compress.ts) → AES-256-GCM with the id as associated data (as
 *          pack.ts sealBlob): the sealed bytes in one buffer
 *   hash   a finished pack → its SHA-256 (the pack id, also the checksum its PUT carries)
 * What stays on the main thread: reading files, content-defined chunking (sequential by
 * nature), dedup, packing and uploads. Measured before (docs/benchmarks.md): the main thread was
 * 99 % busy during a full backup with three hash passes, zstd, AES-GCM and their garbage on it.
 *
 * Data crosses by transfer, not by structured copy: a chunk is copied once into a buffer of its own
 * (chunks are views into larger read buffers) and that buffer is moved to the worker; the sealed
 * bytes and a hashed pack are moved back.
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
}

export interface SealedChunk {
  id: Buffer;
  sealed: Buffer;
}

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
parentPort.on('message', (m) => {
  try {
    if (m.kind === 'seal') {
      const plain = new Uint8Array(m.plain);
      const id = createHmac('sha256', idKey).update(plain).digest();
      let packed = false;
      let body = plain;
      if (plain.length < ${PROBE_FROM} || probe(plain)) {
        const n = zstdLength(plain);
        packed = n + (plain.length >> ${MIN_SAVING_SHIFT}) < plain.length;
        if (packed) body = scratch.subarray(0, n); // encrypted out of the scratch buffer below
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
  sealed?: ArrayBuffer;
  hashId?: string;
  bytes?: ArrayBuffer;
}

export class SealPool {
  private readonly pool: WorkerPool<WorkerReply>;

  constructor(keys: HostKeys, o: SealPoolOptions = {}) {
    const workerData = {
      zstdBindingPath: createRequire(import.meta.url).resolve('zstd-napi/binding'),
      zstdParams: { ...ZSTD_PARAMS },
      idKey: new Uint8Array(keys.id),
      encKey: new Uint8Array(keys.enc),
    };
    this.pool = new WorkerPool<WorkerReply>(WORKER_SOURCE, workerData, o.workers ?? Math.min(4, os.availableParallelism()), 'seal');
  }

  get size(): number {
    return this.pool.size;
  }

  /** Id and sealed form of one chunk (as `blobId` + `sealBlob`). `plain` is copied; the caller keeps it. */
  async seal(plain: Uint8Array): Promise<SealedChunk> {
    const copy = new Uint8Array(plain.length);
    copy.set(plain);
    const r = await this.pool.request({ kind: 'seal', plain: copy.buffer }, [copy.buffer]);
    return { id: Buffer.from(r.id!), sealed: Buffer.from(r.sealed!) };
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
