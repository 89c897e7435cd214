/**
 * WritePool: the restore's per-byte work and most of its system calls on worker threads.
 *
 * One job = one fetched range of a pack and the blobs in it. Per blob, on a worker:
 *   open     AES-256-GCM with the blob id as associated data (crypto.ts open)
 *   inflate  the compression flag byte, then zstd or raw (compress.ts decompress)
 *   verify   HMAC-SHA256 under the host's id key must equal the blob id (pack.ts openBlob)
 *   write    to each target with synchronous calls: a file made of this one blob is created
 *            ('wx', 0600), written, given its owner, mode and times, closed and renamed into place;
 *            a part of a larger file is written at its offset into the temporary file the main
 *            thread created
 * and the reply says, per blob, whether it was genuine and, per target, what was written. A blob
 * that fails verification is NOT written: the main thread reads it again through the tamper-proof
 * path. Measured before (docs/benchmarks.md): the restore's main thread was 92 % busy, a third of
 * it decrypting and hashing, another third in the promise machinery of six fs calls per file.
 *
 * The workers run plain JavaScript from a source string (`eval`), like common/repo/seal-pool.ts,
 * with the format's constants; the restore tests run through this pool and compare every byte.
 */
import { createRequire } from 'node:module';
import os from 'node:os';
import { WorkerPool } from '../../common/worker-pool.js';
import { NONCE_BYTES, TAG_BYTES } from '../../common/repo/crypto.js';
import type { HostKeys } from '../../common/repo/keys.js';

/** Where one blob goes. */
export interface WriteTarget {
  /** The caller's handle for the file (echoed back). */
  file: number;
  /** Temporary file to write. */
  tmp: string;
  offset: number;
  /** Set when this blob is the whole file: the worker creates, finishes and renames it. */
  whole?: { dest: string; mode: number; time: number; owner?: { uid: number; gid: number } };
}

export interface WriteBlob {
  id: string;
  /** Offset and length of the sealed blob inside the job's bytes. */
  at: number;
  length: number;
  rawLength: number;
  targets: WriteTarget[];
}

export interface BlobOutcome {
  /** False: the bytes were not genuine; nothing was written for this blob. */
  genuine: boolean;
  reason?: string;
  targets: Array<{ file: number; written: number; done: boolean; error?: string }>;
}

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createDecipheriv, createHmac, timingSafeEqual } = require('node:crypto');
const fs = require('node:fs');
const zstd = require(workerData.zstdPath);
const decompressor = new zstd.Decompressor();
const idKey = Buffer.from(workerData.idKey);
const encKey = Buffer.from(workerData.encKey);
const N = ${NONCE_BYTES}, T = ${TAG_BYTES};
function openBlob(id, sealed, rawLength) {
  if (sealed.length < N + T + 1) throw new Error('sealed data too short');
  const d = createDecipheriv('aes-256-gcm', encKey, sealed.subarray(0, N));
  d.setAAD(id);
  d.setAuthTag(sealed.subarray(sealed.length - T));
  let inner;
  try {
    inner = d.update(sealed.subarray(N, sealed.length - T));
    d.final();
  } catch (e) {
    throw new Error('authentication failed: the data was altered or the key is wrong');
  }
  const flag = inner[0];
  let plain;
  if (flag === 0) plain = inner.subarray(1);
  else if (flag === 1) plain = decompressor.decompress(inner.subarray(1));
  else throw new Error('unknown compression flag ' + flag);
  if (plain.length !== rawLength) throw new Error('decompressed to ' + plain.length + ' bytes, expected ' + rawLength);
  const h = createHmac('sha256', idKey).update(plain).digest();
  if (!timingSafeEqual(h, id)) throw new Error('blob does not hash to its id');
  return plain;
}
function writeTarget(t, plain) {
  if (t.whole) {
    const fd = fs.openSync(t.tmp, 'wx', 0o600);
    try {
      fs.writeSync(fd, plain, 0, plain.length, 0);
      if (t.whole.owner) { try { fs.fchownSync(fd, t.whole.owner.uid, t.whole.owner.gid); } catch {} }
      fs.fchmodSync(fd, t.whole.mode);
      fs.futimesSync(fd, t.whole.time, t.whole.time);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(t.tmp, t.whole.dest);
    return true;
  }
  const fd = fs.openSync(t.tmp, 'r+');
  try {
    fs.writeSync(fd, plain, 0, plain.length, t.offset);
  } finally {
    fs.closeSync(fd);
  }
  return false;
}
parentPort.on('message', (m) => {
  const bytes = Buffer.from(m.bytes);
  const out = [];
  for (const b of m.blobs) {
    let plain;
    try {
      plain = openBlob(Buffer.from(b.id, 'hex'), bytes.subarray(b.at, b.at + b.length), b.rawLength);
    } catch (e) {
      out.push({ genuine: false, reason: String(e && e.message || e), targets: [] });
      continue;
    }
    const targets = [];
    for (const t of b.targets) {
      try {
        const done = writeTarget(t, plain);
        targets.push({ file: t.file, written: plain.length, done });
      } catch (e) {
        if (t.whole) { try { fs.rmSync(t.tmp, { force: true }); } catch {} }
        targets.push({ file: t.file, written: 0, done: false, error: String(e && e.message || e) });
      }
    }
    out.push({ genuine: true, targets });
  }
  parentPort.postMessage({ seq: m.seq, out });
});
`;

export class WritePool {
  private readonly pool: WorkerPool<{ seq: number; out: BlobOutcome[] }>;

  constructor(keys: HostKeys, workers = Math.min(4, os.availableParallelism())) {
    const zstdPath = createRequire(import.meta.url).resolve('zstd-napi');
    this.pool = new WorkerPool(WORKER_SOURCE, { zstdPath, idKey: new Uint8Array(keys.id), encKey: new Uint8Array(keys.enc) }, workers, 'restore');
  }

  /** Verify and write the blobs of one fetched range. `bytes` is moved to the worker (copied first if it shares its buffer). */
  async run(bytes: Uint8Array, blobs: WriteBlob[]): Promise<BlobOutcome[]> {
    const own = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer ? bytes : bytes.slice();
    return (await this.pool.request({ bytes: own.buffer, blobs }, [own.buffer as ArrayBuffer])).out;
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
