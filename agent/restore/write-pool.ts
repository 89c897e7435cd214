/**
 * WritePool: the restore's per-byte work and most of its system calls on worker threads.
 *
 * One job = one fetched range of a pack and the blobs in it. Per blob, on a worker:
 *   open     AES-256-GCM with the blob id as associated data (crypto.ts open)
 *   inflate  the compression flag byte, then zstd or raw (compress.ts decompress)
 *   verify   HMAC-SHA256 under the host's id key must equal the blob id (pack.ts openBlob)
 *   write    to each target with synchronous calls: a file made of this one blob is created
 *            ('wx'; with its final mode when the umask allows, else 0600 and an fchmod), written,
 *            given its owner, mode and times, closed, and renamed into place when it was written
 *            to a temporary (not inside a staged directory, see restore.ts);
 *            a part of a larger file is written at its offset into the file the main thread
 *            created
 * and the reply says, per blob, whether it was genuine and, per target, what was written. A blob
 * that fails verification is NOT written: the main thread reads it again through the tamper-proof
 * path. Measured before (docs/benchmarks.md): the restore's main thread was 92 % busy, a third of
 * it decrypting and hashing, another third in the promise machinery of six fs calls per file.
 *
 * The workers run plain JavaScript from a source string (`eval`), like common/repo/seal-pool.ts,
 * with the format's constants; the restore tests run through this pool and compare every byte.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { WorkerPool } from '../../common/worker-pool.js';
import { NONCE_BYTES, TAG_BYTES } from '../../common/repo/crypto.js';
import type { HostKeys } from '../../common/repo/keys.js';
import type { DirectRead } from '../../common/storage/blob-store.js';

/** Where one blob goes. */
export interface WriteTarget {
  /** The caller's handle for the file (echoed back). */
  file: number;
  /** The file to write: a temporary, or the file itself inside a staged directory. */
  path: string;
  offset: number;
  /**
   * Set when this blob is the whole file: the worker creates and finishes it, and renames it to
   * `renameTo` when that is set.
   */
  whole?: { renameTo?: string; mode: number; time: number; owner?: { uid: number; gid: number } };
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

/** Ranges up to this size are fetched into reused buffers (the restore's range groups are ≤ 8 MiB, plus a blob that overhangs). */
const POOLED_BYTES = 9 * 1024 * 1024;
/** Reused range buffers a worker keeps (about the GETs it has in flight). */
const POOL_KEEP = 6;

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createDecipheriv, createHmac, timingSafeEqual } = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const tls = require('node:tls');
const zstd = require(workerData.zstdPath);
const decompressor = new zstd.Decompressor();
const idKey = Buffer.from(workerData.idKey);
const encKey = Buffer.from(workerData.encKey);
const N = ${NONCE_BYTES}, T = ${TAG_BYTES};
const UMASK = workerData.umask;
const TLS_CA = workerData.tlsCa;
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
    // created with its final permission bits when the umask leaves them as they are: one system
    // call less per file (20,000 small files: 20,000 fchmods); set-id and sticky bits always get one
    const mode = t.whole.mode;
    const exact = UMASK >= 0 && (mode & 0o7000) === 0 && (mode & UMASK) === 0;
    const fd = fs.openSync(t.path, 'wx', exact ? mode & 0o777 : 0o600);
    try {
      fs.writeSync(fd, plain, 0, plain.length, 0);
      if (t.whole.owner) { try { fs.fchownSync(fd, t.whole.owner.uid, t.whole.owner.gid); } catch {} }
      if (!exact) fs.fchmodSync(fd, mode);
      fs.futimesSync(fd, t.whole.time, t.whole.time);
    } finally {
      fs.closeSync(fd);
    }
    if (t.whole.renameTo !== undefined) fs.renameSync(t.path, t.whole.renameTo);
    return true;
  }
  const fd = fs.openSync(t.path, 'r+');
  try {
    fs.writeSync(fd, plain, 0, plain.length, t.offset);
  } finally {
    fs.closeSync(fd);
  }
  return false;
}
// Range buffers are reused: a fresh 8 MiB buffer per range meant 1 GB of new pages to fault in
// and zero per GB restored (the kernel's clear_page was 5 % of the restore's samples).
const free = [];
const POOLED = ${POOLED_BYTES};
function takeBuffer(n) {
  if (n > POOLED) return Buffer.allocUnsafe(n);
  return (free.pop() ?? Buffer.allocUnsafe(POOLED)).subarray(0, n);
}
function giveBuffer(b) {
  if (b.buffer.byteLength === POOLED && free.length < ${POOL_KEEP}) free.push(Buffer.from(b.buffer, 0, POOLED));
}
// Ranges are fetched with a minimal HTTP/1.1 GET over a socket (net, or tls for https) whose reads
// land straight in the range's buffer (the socket's onread buffer is the rest of the body): over
// plain HTTP the kernel copies each byte once, over TLS OpenSSL decrypts into it, and nothing else
// touches it: no 64 KiB chunk per read, no stream machinery, no copy into the range buffer (measured
// over HTTP: those were ~25 % of a write worker's CPU with Node's http client). It speaks only what a
// presigned GET needs: a 206 with a Content-Length equal to the range; anything else fails the
// fetch (the socket is dropped) and the range goes through the store.
const HEAD_MAX = 16384;
const idle = new Map(); // "protocol host:port" → idle keep-alive connections
class Conn {
  constructor(secure, host, port, key) {
    this.key = key;
    this.head = Buffer.allocUnsafe(HEAD_MAX);
    this.headLen = 0;
    this.req = undefined;
    this.closed = false;
    const onread = { buffer: () => this.next(), callback: (n) => this.onRead(n) };
    this.sock = secure
      ? tls.connect({ host, port, servername: net.isIP(host) ? undefined : host, ...(TLS_CA ? { ca: TLS_CA } : {}), onread })
      : net.connect({ host, port, onread });
    this.sock.setNoDelay(true);
    this.sock.on('timeout', () => this.fail(new Error('no data for ' + (this.req ? this.req.timeoutMs : 0) + ' ms')));
    this.sock.on('error', (e) => this.fail(e));
    this.sock.on('close', () => this.fail(new Error('connection closed')));
  }
  // where the next read lands: the rest of the body, or header space. Never an empty buffer: a TLS
  // socket handed one reads nothing, forever (the event loop hangs in it), even once destroyed.
  next() {
    const r = this.req;
    if (this.closed) return this.head;
    if (r && r.inBody) return r.out.subarray(r.at);
    return this.head.subarray(this.headLen, HEAD_MAX);
  }
  send(f, path, host, resolve, reject) {
    this.req = { out: undefined, at: 0, inBody: false, length: f.length, timeoutMs: f.timeoutMs, got: false, resolve, reject };
    this.sock.setTimeout(f.timeoutMs);
    this.sock.write('GET ' + path + ' HTTP/1.1\\r\\nHost: ' + host + '\\r\\nRange: bytes=' + f.start + '-' + (f.start + f.length - 1) + '\\r\\n\\r\\n');
  }
  onRead(n) {
    const r = this.req;
    if (!r) return this.fail(new Error('data from the server with no request'));
    r.got = true;
    if (r.inBody) {
      r.at += n;
      if (r.at === r.length) this.done();
      return;
    }
    this.headLen += n;
    const end = this.head.subarray(0, this.headLen).indexOf('\\r\\n\\r\\n');
    if (end < 0) {
      if (this.headLen === HEAD_MAX) this.fail(new Error('response headers too long'));
      return;
    }
    const lines = this.head.toString('latin1', 0, end).split('\\r\\n');
    const status = /^HTTP\\/1\\.[01] (\\d{3})/.exec(lines[0]);
    if (!status) return this.fail(new Error('not an HTTP/1.1 response'));
    if (status[1] !== '206') return this.fail(new Error('HTTP ' + status[1]));
    let length = -1;
    for (let i = 1; i < lines.length; i++) {
      const c = lines[i].indexOf(':');
      const name = lines[i].slice(0, c).trim().toLowerCase();
      const value = lines[i].slice(c + 1).trim();
      if (name === 'content-length') length = Number(value);
      else if (name === 'transfer-encoding') return this.fail(new Error('a chunked body where a range was expected'));
      else if (name === 'connection' && value.toLowerCase() === 'close') r.close = true;
    }
    if (length < 0) return this.fail(new Error('no Content-Length'));
    if (length !== r.length) return this.fail(new Error(length < r.length ? 'body cut short: ' + length + ' of ' + r.length + ' bytes' : 'the server sent more than the range'));
    const extra = this.headLen - end - 4;
    if (extra > r.length) return this.fail(new Error('the server sent more than the range'));
    r.out = takeBuffer(r.length);
    this.head.copy(r.out, 0, end + 4, this.headLen);
    this.headLen = 0;
    r.at = extra;
    r.inBody = true;
    if (r.at === r.length) this.done();
  }
  done() {
    const r = this.req;
    this.req = undefined;
    this.sock.setTimeout(0);
    if (r.close) this.destroy();
    else {
      const list = idle.get(this.key);
      if (list) list.push(this);
      else idle.set(this.key, [this]);
    }
    r.resolve(r.out);
  }
  fail(e) {
    const r = this.req;
    this.req = undefined;
    this.headLen = 0;
    this.destroy();
    if (r) r.reject(Object.assign(e instanceof Error ? e : new Error(String(e)), { before: !r.got }));
  }
  destroy() {
    if (this.closed) return;
    this.closed = true;
    const list = idle.get(this.key);
    const i = list ? list.indexOf(this) : -1;
    if (i >= 0) list.splice(i, 1);
    this.sock.destroy();
  }
}
function fetchRangeRaw(f, u, fresh, ctx) {
  const secure = u.protocol === 'https:';
  const port = Number(u.port || (secure ? 443 : 80));
  const host = u.hostname.replace(/^\\[|\\]$/g, ''); // [::1] → ::1
  const key = u.protocol + host + ':' + port;
  const reused = fresh ? undefined : (idle.get(key) || []).pop();
  const c = reused || new Conn(secure, host, port, key);
  return new Promise((resolve, reject) => c.send(f, u.pathname + u.search, u.host, resolve, reject)).catch((e) => {
    // a kept-alive connection the server had closed fails before any byte: once more on a new one
    if (reused && e.before) {
      ctx.resent++;
      return fetchRangeRaw(f, u, true, ctx);
    }
    throw e;
  });
}
function fetchRange(f, ctx) {
  const u = new URL(f.url);
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return Promise.reject(new Error('not an http(s) URL'));
  return fetchRangeRaw(f, u, false, ctx);
}
parentPort.on('message', async (m) => {
  let bytes;
  const ctx = { resent: 0 };
  if (m.fetch) {
    try {
      bytes = await fetchRange(m.fetch, ctx);
    } catch (e) {
      parentPort.postMessage({ seq: m.seq, fetchError: String(e && e.message || e), out: [], resent: ctx.resent });
      return;
    }
  } else bytes = Buffer.from(m.bytes);
  if (m.verifyOnly) {
    // blobs the main thread wants back (trees): verified here, returned as plain bytes
    const plains = m.blobs.map((b) => {
      try {
        return openBlob(Buffer.from(b.id, 'hex'), bytes.subarray(b.at, b.at + b.length), b.rawLength);
      } catch {
        return undefined;
      }
    });
    if (m.fetch) giveBuffer(bytes);
    parentPort.postMessage({ seq: m.seq, out: [], plains, resent: ctx.resent });
    return;
  }
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
        if (t.whole) { try { fs.rmSync(t.path, { force: true }); } catch {} }
        targets.push({ file: t.file, written: 0, done: false, error: String(e && e.message || e) });
      }
    }
    out.push({ genuine: true, targets });
  }
  if (m.fetch) giveBuffer(bytes);
  parentPort.postMessage({ seq: m.seq, out, resent: ctx.resent });
});
`;

/** The process's umask (Linux: /proc/self/status), or -1 when unknown (every file then gets its fchmod). */
function currentUmask(): number {
  try {
    const m = /^Umask:\s*([0-7]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? parseInt(m[1]!, 8) : -1;
  } catch {
    return -1;
  }
}

interface WorkerReply {
  seq: number;
  out: BlobOutcome[];
  fetchError?: string;
  plains?: Array<Uint8Array | undefined>;
  /** GETs the worker sent again on a new connection (its kept-alive one had closed). */
  resent?: number;
}

export class WritePool {
  private readonly pool: WorkerPool<WorkerReply>;
  /** Worker fetches sent again on a new connection: the kept-alive one closed before any byte of an answer. */
  resent = 0;

  /**
   * `tlsCa`: the certificates (PEM) the workers trust for https ranges instead of Node's defaults
   * (tests; a private CA is otherwise given with NODE_EXTRA_CA_CERTS, as for the S3 client).
   */
  constructor(keys: HostKeys, workers = Math.min(4, os.availableParallelism()), o: { tlsCa?: string } = {}) {
    const zstdPath = createRequire(import.meta.url).resolve('zstd-napi');
    this.pool = new WorkerPool(WORKER_SOURCE, { zstdPath, idKey: new Uint8Array(keys.id), encKey: new Uint8Array(keys.enc), umask: currentUmask(), tlsCa: o.tlsCa }, workers, 'restore');
  }

  /** Verify and write the blobs of one fetched range. `bytes` is moved to the worker (copied first if it shares its buffer). */
  async run(bytes: Uint8Array, blobs: WriteBlob[]): Promise<BlobOutcome[]> {
    const own = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer ? bytes : bytes.slice();
    return (await this.pool.request({ bytes: own.buffer, blobs }, [own.buffer as ArrayBuffer])).out;
  }

  /**
   * Fetch a range on the worker (a plain GET of `read`'s URL with a Range header), then verify and
   * write its blobs as `run` does. Undefined when the fetch failed (the reason in `onFetchError`):
   * nothing was written, and the caller fetches the range its own way.
   */
  async fetchAndRun(read: DirectRead, start: number, length: number, blobs: WriteBlob[], onFetchError?: (reason: string) => void): Promise<BlobOutcome[] | undefined> {
    const r = await this.fetchOnWorker(read, start, length, { blobs });
    if (r.fetchError !== undefined) {
      onFetchError?.(r.fetchError);
      return undefined;
    }
    return r.out;
  }

  /**
   * Fetch a range on the worker and return its blobs verified (decrypted, decompressed, hashed
   * against their ids), one entry per blob, undefined for one that is not genuine. Undefined as a
   * whole when the fetch failed. For blobs the main thread needs itself (the plan's trees).
   */
  async fetchBlobs(read: DirectRead, start: number, length: number, blobs: Array<{ id: string; at: number; length: number; rawLength: number }>): Promise<Array<Uint8Array | undefined> | undefined> {
    const r = await this.fetchOnWorker(read, start, length, { blobs, verifyOnly: true });
    return r.fetchError !== undefined ? undefined : r.plains;
  }

  close(): Promise<void> {
    return this.pool.close();
  }

  /** One range fetched by a worker (with its blobs to write, or to return verified); counts the GETs it resent. */
  private async fetchOnWorker(read: DirectRead, start: number, length: number, job: { blobs: unknown[]; verifyOnly?: true }): Promise<WorkerReply> {
    const r = await this.pool.request({ fetch: { url: read.url, start, length, timeoutMs: read.timeoutMs }, ...job }, []);
    this.resent += r.resent ?? 0;
    return r;
  }
}
