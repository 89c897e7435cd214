/**
 * Storage-path throughput, in one run on the same random data:
 *
 *   (a) the in-process backup pipeline on ONE core: FastCDC chunking (default 512 KiB / 1 MiB /
 *       8 MiB, chunkBuffer) → blob id (HMAC-SHA256) → sealBlob (zstd + AES-256-GCM) → PackBuilder
 *       (16 MiB packs built in one reused buffer, finish() incl. the pack's SHA-256 id), on
 *       incompressible random data and on compressible text of the same size; beside it plain
 *       SHA-256 over the same bytes (the floor of the work: every byte is hashed at least twice,
 *       blob id and pack id), each stage on its
 *       own, and the same pipeline in 2 worker threads on the two halves of the data (both cores);
 *       then the backup's own write path, agent/backup/packer.ts: chunks (main thread) submitted to
 *       the Packer, sealed inline or by its SealPool (1, 2 workers), packed, hashed (SHA-256: the
 *       pack's id and its PUT's checksum) and handed to a bucket that drops pack bodies. Compressible data comes twice:
 *       synthetic text (generateText, the same every run) and real text (realText: text files of
 *       this machine, different from machine to machine), each through the one-core pipeline and
 *       the Packer (no workers, 2 workers), with its compression ratio. "MB per CPU-s" (bytes over
 *       this process's CPU time, all threads) compares runs on a machine others are using too.
 *   (b) uploading 16 MiB packs to S3 (the local Ceph RGW by default) with S3Store.put and a
 *       COMPLIANCE lock, 4 and 8 in flight, against `rclone copy` of the same packs as files.
 *   (c) the backup's write path end to end: the Packer (2 seal workers, and none) uploading to S3
 *       with locks, on random data, real text and synthetic text of the same size, in turn, 3 times;
 *       input MB/s, the server's CPU, and text against random data (issue #3's question: does
 *       compression make the backup slower?). It runs before (b), on an emptier server.
 *
 * MB = 10^6 bytes. "cpu" is CPU time over wall time: 1.00 = one core busy for the whole interval;
 * on a shared machine a low figure means something else had the core. Prints figures and asserts
 * nothing; the last line is one JSON object.
 *
 * Run: npm run bench:storage [-- MiB [packs]]   or   npx tsx scripts/bench/storage.ts [MiB [packs]]
 * Env: BENCH_MIB (pipeline data, default 512), BENCH_PACKS (packs uploaded per pass, default 64;
 *      0 skips (b) and (c), and with them S3), BENCH_E2E_MIB (data per input in (c), default 256;
 *      0 skips (c)), BENCH_E2E_ROUNDS (default 3),
 *      BENCH_LOCK_SECONDS (retention of the uploaded packs, default 600), BULWARK_S3_* (the S3
 *      endpoint; when unset, `scripts/s3-local.sh up` is run and its output used).
 *
 * Memory: the texts of (a) are made and run first, one after the other, and dropped before the
 * random data (a SharedArrayBuffer, shared with the workers without a copy, later also the pack
 * bodies) is made, so about MiB + 300 MiB at the peak; (c) then adds its three inputs
 * (3 × BENCH_E2E_MIB). The rclone side writes packs × 16 MiB of files to a temp dir, removed
 * afterwards.
 *
 * Space on the S3 side: each run leaves 2 × packs × 16 MiB locked for BENCH_LOCK_SECONDS in a
 * bucket named bulwark-bench-storage-lock-…; rclone runs first and its buckets are purged at once.
 * A run first removes the buckets of earlier runs (older than 15 min) whose locks have ended. The
 * local RGW (memstore, 8 GiB by default, in RAM) keeps the data of deleted objects until its
 * garbage collector runs (2 h by default), so against it the bench runs `radosgw-admin gc process
 * --include-all` after deleting, and skips the upload part when the OSD has too little room left.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes, randomFillSync } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { CreateBucketCommand, DeleteBucketCommand, ListBucketsCommand } from '@aws-sdk/client-s3';
import { type ChunkerParams, type GearTable, chunkBuffer, compileChunkerOptions, createGearTable } from '../../common/repo/chunker.js';
import { compress } from '../../common/repo/compress.js';
import { newRepoConfig } from '../../common/repo/config.js';
import { blobId, seal } from '../../common/repo/crypto.js';
import { type HostKeys, deriveHostKeys, newMasterKey } from '../../common/repo/keys.js';
import { layout } from '../../common/repo/layout.js';
import { PackBuilder, packBufferSize, sealBlob, sealBlobParts } from '../../common/repo/pack.js';
import type { VersionEntry } from '../../common/storage/blob-store.js';
import { S3Store, type S3StoreOptions } from '../../common/storage/s3-store.js';
import { MemoryStore } from '../../common/storage/memory-store.js';
import type { PutOptions, PutResult } from '../../common/storage/blob-store.js';
import { BlobIndex } from '../../common/repo/blob-index.js';
import { Repository } from '../../common/repo/repository.js';
import { Packer } from '../../agent/backup/packer.js';
import { realText } from './real-text.js';
import { type S3Env, s3Env } from './s3-env.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const PACK_BYTES = 16 * MiB;
const HOST = 'bench';
const BUCKET_PREFIX = 'bulwark-bench-storage-';

// ---------------------------------------------------------------------------------------------
// The pipeline (run by the main thread and by each worker)

interface PipelineSetup {
  keys: HostKeys;
  table: GearTable;
  params: ChunkerParams;
  packSize: number;
}

interface PipelineResult {
  chunks: number;
  packs: number;
  /** Bytes of the finished packs (sealed, compressed blobs + headers). */
  stored: number;
}

function setup(master: Uint8Array): PipelineSetup {
  const cfg = newRepoConfig();
  const keys = deriveHostKeys(master, HOST);
  // keys.chunk and keys.id are HKDF outputs of a random master key: a random 32-byte gear seed
  // and a random 32-byte blob-id key, as in a real repository
  return { keys, table: createGearTable(keys.chunk), params: compileChunkerOptions(cfg.chunker), packSize: cfg.packSize };
}

/** chunk → blob id → seal → pack, as the backup does it; the finished packs are dropped. */
function runPipeline(data: Uint8Array, s: PipelineSetup): PipelineResult {
  const chunks = chunkBuffer(data, s.table, s.params);
  // one pack buffer, reused for every pack as the backup's Packer does
  const into = Buffer.allocUnsafeSlow(packBufferSize(s.packSize));
  let pack = new PackBuilder(into);
  let packs = 0;
  let stored = 0;
  for (const c of chunks) {
    const id = blobId(s.keys.id, c);
    pack.add('data', id, sealBlobParts(s.keys, id, c), c.length);
    if (pack.size >= s.packSize) {
      stored += pack.finish(s.keys).bytes.length;
      packs++;
      pack = new PackBuilder(into);
    }
  }
  if (pack.count > 0) {
    stored += pack.finish(s.keys).bytes.length;
    packs++;
  }
  return { chunks: chunks.length, packs, stored };
}

// ---------------------------------------------------------------------------------------------
// Worker side of the 2-core run

interface WorkerInput {
  sab: SharedArrayBuffer;
  offset: number;
  length: number;
  master: Uint8Array;
}

type WorkerMessage = { type: 'ready' } | { type: 'done'; ms: number; result: PipelineResult };

async function workerMain(): Promise<void> {
  const input = workerData as WorkerInput;
  const port = parentPort!;
  const data = new Uint8Array(input.sab, input.offset, input.length);
  const s = setup(input.master);
  runPipeline(data.subarray(0, Math.min(data.length, 32 * MiB)), s); // warm up the JIT
  const go = new Promise<void>((resolve) => port.once('message', () => resolve()));
  port.postMessage({ type: 'ready' } satisfies WorkerMessage);
  await go;
  const t0 = performance.now();
  const result = runPipeline(data, s);
  port.postMessage({ type: 'done', ms: performance.now() - t0, result } satisfies WorkerMessage);
}

/**
 * The code a worker starts with: register tsx, then import this file (which runs workerMain()).
 * `new Worker(new URL(import.meta.url), { execArgv: process.execArgv })` does NOT work on Node 20
 * under tsx 4: the worker gets tsx's --import flag but still loads its entry point without the
 * hooks and fails with ERR_UNKNOWN_FILE_EXTENSION ".ts" (privatenumber/tsx#354, nodejs/node#47747).
 * Registering tsx through its API before the dynamic import is the known workaround.
 */
function workerBootstrap(): string {
  const api = import.meta.resolve('tsx/esm/api');
  return `import(${JSON.stringify(api)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(import.meta.url)}); });`;
}

/** Run the pipeline in 2 workers, each on its half of `sab`, timed from a common start. */
async function runTwoWorkers(sab: SharedArrayBuffer, master: Uint8Array): Promise<{ ms: number; cpuMs: number; machineMs: number; each: Array<{ bytes: number; ms: number }> }> {
  const size = sab.byteLength;
  const half = Math.floor(size / 2);
  const parts = [
    { offset: 0, length: half },
    { offset: half, length: size - half },
  ];
  const workers = parts.map(
    (p) => new Worker(workerBootstrap(), { eval: true, workerData: { sab, ...p, master } satisfies WorkerInput, execArgv: [] }),
  );
  const next = (w: Worker): Promise<WorkerMessage> =>
    new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      w.once('error', onError);
      w.once('message', (m: WorkerMessage) => {
        w.off('error', onError);
        resolve(m);
      });
    });
  try {
    await Promise.all(workers.map(next)); // both warmed up and waiting
    const done = workers.map(next);
    const m0 = machineBusyMs() ?? NaN;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    for (const w of workers) w.postMessage('go');
    const results = await Promise.all(done);
    const ms = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    return {
      ms,
      cpuMs: (cpu.user + cpu.system) / 1000,
      machineMs: (machineBusyMs() ?? NaN) - m0,
      each: results.map((r, k) => ({ bytes: parts[k]!.length, ms: r.type === 'done' ? r.ms : NaN })),
    };
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers

const mbps = (bytes: number, ms: number): number => bytes / 1e6 / (ms / 1000);
const fmt = (x: number): string => x.toFixed(0).padStart(6);
const round = (x: number): number => Math.round(x * 10) / 10;
const round2 = (x: number): number => Math.round(x * 100) / 100;

/** Time a synchronous function: wall ms, this process's CPU ms and the whole machine's busy CPU ms. */
function time<T>(fn: () => T): { value: T; ms: number; cpuMs: number; machineMs: number } {
  const m0 = machineBusyMs() ?? NaN;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const value = fn();
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  return { value, ms, cpuMs: (cpu.user + cpu.system) / 1000, machineMs: (machineBusyMs() ?? NaN) - m0 };
}

function lineText(label: string, bytes: number, ms: number, note = ''): string {
  return `  ${label.padEnd(46)} ${fmt(mbps(bytes, ms))} MB/s  ${(ms / 1000).toFixed(2).padStart(6)} s${note ? `   ${note}` : ''}`;
}

function line(label: string, bytes: number, ms: number, note = ''): number {
  console.log(lineText(label, bytes, ms, note));
  return mbps(bytes, ms);
}

/**
 * A full garbage collection, between measurements: without it the dropped 512 MiB of text stays
 * allocated beside the random data (nothing else makes V8 run a major GC in time), and garbage of
 * one measurement is collected during the next. (--expose-gc set at run time; the new context
 * picks it up.)
 */
v8.setFlagsFromString('--expose-gc');
const fullGc = runInNewContext('gc') as () => void;

/** A full GC, then a moment for V8's background sweeper to hand freed buffers back, and another. */
async function settle(): Promise<void> {
  fullGc();
  await new Promise((resolve) => setTimeout(resolve, 100));
  fullGc();
}

const cpuNote = (cpuMs: number, ms: number): string => `cpu ${(cpuMs / ms).toFixed(2)}`;
/** "cpu 0.98 of machine 1.97": this process's cores, and all processes' (others' work shows here). */
const cpuNotes = (t: { cpuMs: number; machineMs: number; ms: number }): string =>
  `${cpuNote(t.cpuMs, t.ms)}${Number.isFinite(t.machineMs) ? ` of machine ${(t.machineMs / t.ms).toFixed(2)}` : ''}`;
/** "; 190 MB per CPU-s": bytes over this process's CPU time (all threads), comparable on a busy machine. */
const perCpu = (bytes: number, t: { cpuMs: number }): string => `; ${fmt(bytes / 1e3 / t.cpuMs).trim()} MB per CPU-s`;
const load = (): string => os.loadavg().map((x) => x.toFixed(1)).join(' ');

/**
 * Synthetic text: lines of phrases (1-4 words each) drawn uniformly from 8192 phrases over a
 * vocabulary of 8192 random lower-case words of 2-10 letters. Harder for a fast LZ than real text:
 * no locality, every match is a phrase somewhere in a ~200 KB phrase book (ZSTD_PARAMS: 3.5×,
 * zstd level 3: 4.4×, level 1: 2.7×; real text does not fall off like that, see realText).
 */
function generateText(size: number): Uint8Array {
  const V = 8192;
  const P = 8192;
  const wr = randomBytes(V * 11);
  const words: string[] = [];
  for (let w = 0; w < V; w++) {
    const len = 2 + (wr[w * 11]! % 9);
    let s = '';
    for (let k = 0; k < len; k++) s += String.fromCharCode(97 + (wr[w * 11 + 1 + k]! % 26));
    words.push(s);
  }
  const pr = randomBytes(P * 10);
  const parts: Buffer[] = [];
  const start = new Uint32Array(P + 1);
  for (let p = 0, at = 0; p < P; p++) {
    const n = 1 + (pr[p * 10]! % 4);
    const ws: string[] = [];
    for (let k = 0; k < n; k++) ws.push(words[pr.readUInt16LE(p * 10 + 1 + 2 * k) % V]!);
    const b = Buffer.from(ws.join(' ') + (pr[p * 10 + 9]! % 8 === 0 ? '.\n' : ' '));
    parts.push(b);
    start[p] = at;
    at += b.length;
    start[p + 1] = at;
  }
  const phrases = Buffer.concat(parts);
  const out = new Uint8Array(size);
  const rnd = Buffer.allocUnsafe(MiB);
  let rp = rnd.length;
  for (let o = 0; o < size; ) {
    if (rp + 2 > rnd.length) {
      randomFillSync(rnd);
      rp = 0;
    }
    const p = (rnd[rp]! | (rnd[rp + 1]! << 8)) & (P - 1);
    rp += 2;
    const from = start[p]!;
    const n = Math.min(start[p + 1]! - from, size - o);
    for (let k = 0; k < n; k++) out[o + k] = phrases[from + k]!;
    o += n;
  }
  return out;
}


// ---------------------------------------------------------------------------------------------
// S3, rclone and the local RGW

const storeOptions = (s3: S3Env, bucket: string): S3StoreOptions => ({ ...s3, bucket, forcePathStyle: true });

function bucketName(what: string): string {
  return `${BUCKET_PREFIX}${what}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
}

/** The scripts/s3-local.sh cluster behind a localhost endpoint, when its files are here. */
interface LocalCluster {
  conf: string;
  run: string;
}

function localCluster(endpoint: string): LocalCluster | undefined {
  const u = new URL(endpoint);
  if (u.hostname !== '127.0.0.1' && u.hostname !== 'localhost' && u.hostname !== '[::1]') return undefined;
  const dir = process.env.BULWARK_S3_DIR ?? fileURLToPath(new URL('../../.s3-local', import.meta.url));
  const conf = path.join(dir, 'ceph.conf');
  if (!existsSync(conf)) return undefined;
  // only the cluster that serves this endpoint: another local one's CPU and free space are not this one's
  // (an endpoint of a second cluster with BULWARK_S3_DIR unset read the idle default cluster's CPU)
  const port = /^rgw frontends = beast endpoint=[^:\s]+:(\d+)/m.exec(readFileSync(conf, 'utf8'))?.[1];
  return port === (u.port || '80') ? { conf, run: path.join(dir, 'run') } : undefined;
}

/** Free bytes on the cluster's one OSD (memstore: RAM), from its admin socket. */
function osdAvailable(c: LocalCluster): number | undefined {
  const r = spawnSync('ceph', ['--admin-daemon', path.join(c.run, 'ceph-osd.0.asok'), 'perf', 'dump'], { encoding: 'utf8', timeout: 20_000 });
  try {
    const v = (JSON.parse(r.stdout) as { osd?: { stat_bytes_avail?: number } }).osd?.stat_bytes_avail;
    return typeof v === 'number' ? v : undefined;
  } catch {
    return undefined;
  }
}

/** Free the data of deleted objects now rather than after rgw_gc_obj_min_wait (2 h). */
function rgwGc(c: LocalCluster): void {
  spawnSync('radosgw-admin', ['-c', c.conf, '-n', 'client.admin', 'gc', 'process', '--include-all'], { stdio: 'ignore', timeout: 120_000 });
}

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100;

/** CPU ms used so far by the cluster's radosgw and OSD (undefined when they cannot be read). */
function serverCpuMs(c: LocalCluster | undefined): number | undefined {
  if (!c) return undefined;
  let total = 0;
  for (const f of ['ceph-client.rgw.a.pid', 'ceph-osd.0.pid']) {
    try {
      const pid = readFileSync(path.join(c.run, f), 'utf8').trim();
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields[0] is field 3 (state)
      total += ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK; // utime + stime
    } catch {
      return undefined;
    }
  }
  return total;
}

/** CPU ms the whole machine has spent busy so far (all processes; /proc/stat), or undefined. */
function machineBusyMs(): number | undefined {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
    const [user, nice, system, , , irq, softirq, steal] = f as [number, number, number, number, number, number, number, number];
    return ((user + nice + system + irq + softirq + steal) * 1000) / CLK_TCK;
  } catch {
    return undefined;
  }
}

/**
 * Delete the buckets of earlier runs of this bench whose locks have ended (all their versions,
 * then the bucket). Buckets still holding a locked version are left for a later run, and so are
 * buckets made in the last 15 minutes: they may belong to a run going on now.
 */
async function removeOldBenchBuckets(s3: S3Env, client: S3Store['client']): Promise<{ removed: number; kept: number }> {
  const out = await client.send(new ListBucketsCommand({}));
  let removed = 0;
  let kept = 0;
  for (const b of out.Buckets ?? []) {
    const name = b.Name ?? '';
    if (!name.startsWith(BUCKET_PREFIX)) continue;
    const made = b.CreationDate?.getTime() ?? parseInt(name.split('-').at(-2) ?? '', 36);
    if (!(Date.now() - made > 15 * 60_000)) {
      kept++;
      continue;
    }
    const store = new S3Store(storeOptions(s3, name));
    try {
      const versions: VersionEntry[] = [];
      for await (const v of store.listVersions('')) versions.push(v);
      let failed = 0;
      let next = 0;
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          for (let i = next++; i < versions.length; i = next++) {
            await store.delete(versions[i]!.key, { versionId: versions[i]!.versionId }).catch(() => failed++);
          }
        }),
      );
      if (failed === 0) {
        await client.send(new DeleteBucketCommand({ Bucket: name }));
        removed++;
      } else kept++;
    } catch {
      kept++;
    } finally {
      store.client.destroy();
    }
  }
  return { removed, kept };
}

/** Upload `count` pack bodies with `inFlight` puts at a time. */
async function uploadPacks(
  store: S3Store,
  bodies: readonly Buffer[],
  count: number,
  inFlight: number,
  tag: string,
  lockSeconds: number,
): Promise<{ ms: number; cpuMs: number }> {
  const keys = Array.from({ length: count }, (_, i) => layout.pack(HOST, createHash('sha256').update(`${tag}/${i}`).digest('hex')));
  const lock = { mode: 'COMPLIANCE' as const, retainUntil: Date.now() + lockSeconds * 1000 };
  let next = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      for (let i = next++; i < count; i = next++) await store.put(keys[i]!, bodies[i % bodies.length]!, { lock });
    }),
  );
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  return { ms, cpuMs: (cpu.user + cpu.system) / 1000 };
}

function rcloneArgs(s3: S3Env): string[] {
  return [
    '--config', '/dev/null',
    '--s3-provider', 'Ceph',
    '--s3-endpoint', s3.endpoint,
    '--s3-access-key-id', s3.accessKeyId,
    '--s3-secret-access-key', s3.secretAccessKey,
    '--s3-region', s3.region,
    '--s3-force-path-style=true',
  ];
}

/**
 * Run `env -u AWS_CA_BUNDLE rclone …` (with AWS_CA_BUNDLE set rclone fails at once) under bash,
 * whose `times` gives the CPU time of its children: returns wall ms and rclone's CPU ms.
 */
function runRclone(args: string[]): Promise<{ ms: number; cpuMs: number }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const script = 'env -u AWS_CA_BUNDLE rclone "$@"; rc=$?; times >&2; exit $rc';
    const p = spawn('bash', ['-c', script, 'bash', ...args], { stdio: ['ignore', 'inherit', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => {
      const ms = performance.now() - t0;
      const lines = err.trim().split('\n');
      const m = /^(\d+)m([\d.]+)s\s+(\d+)m([\d.]+)s$/.exec(lines.at(-1)?.trim() ?? '');
      const cpuMs = m ? (Number(m[1]) * 60 + Number(m[2]) + Number(m[3]) * 60 + Number(m[4])) * 1000 : NaN;
      if (code === 0) resolve({ ms, cpuMs });
      else reject(new Error(`rclone ${args[0]} exited ${code}: ${lines.slice(-7, -2).join(' | ')}`));
    });
  });
}

async function countObjects(store: S3Store, prefix: string): Promise<{ n: number; bytes: number }> {
  let n = 0;
  let bytes = 0;
  for await (const o of store.list(prefix)) {
    n++;
    bytes += o.size;
  }
  return { n, bytes };
}

interface CpuMark {
  server: number | undefined;
  machine: number | undefined;
}

const cpuMark = (local: LocalCluster | undefined): CpuMark => ({ server: serverCpuMs(local), machine: machineBusyMs() });

/** "client cpu …, rgw+osd cpu …, machine cpu …": who used how many cores during the transfer. */
function uploadNote(r: { ms: number; cpuMs: number }, m0: CpuMark, m1: CpuMark, extra = ''): string {
  const client = `client ${cpuNote(r.cpuMs, r.ms)}`;
  const server = m0.server !== undefined && m1.server !== undefined ? `, rgw+osd ${((m1.server - m0.server) / r.ms).toFixed(2)}` : '';
  const machine = m0.machine !== undefined && m1.machine !== undefined ? `, machine ${((m1.machine - m0.machine) / r.ms).toFixed(2)}` : '';
  return `${client}${server}${machine}${extra}`;
}

// ---------------------------------------------------------------------------------------------
// The backup's own write path: Packer + SealPool

/**
 * A locked in-memory bucket that drops pack bodies (the upload is measured apart, in (b)), after
 * computing their SHA-256 when the caller did not give it, as S3Store.put does on the main thread.
 */
class DiscardPacks extends MemoryStore {
  override async put(key: string, body: Uint8Array, opts?: PutOptions): Promise<PutResult> {
    if (!key.includes('/data/')) return super.put(key, body, opts);
    if (opts?.sha256 === undefined) createHash('sha256').update(body).digest('hex');
    return { versionId: 'discarded' };
  }
}

/**
 * chunk (main thread, as the backup's reader does) → Packer.submit → SealPool workers (id, zstd,
 * AES-GCM) → pack → SHA-256 on a worker → a store that drops the pack. `workers` 0: all on
 * the main thread, as a backup without workers.
 */
async function runPacker(
  data: Uint8Array,
  workers: number,
  at?: { repo: Repository; host: string; lockSeconds: number },
): Promise<{ ms: number; cpuMs: number; machineMs: number; packs: number; stored: number }> {
  const lock = { mode: 'COMPLIANCE' as const, retainUntil: Date.now() + (at?.lockSeconds ?? 3600) * 1000 };
  const repo = at?.repo ?? (await Repository.init(new DiscardPacks(), { passphrase: 'bench', lock }));
  const host = repo.host(at?.host ?? HOST);
  const table = createGearTable(host.keys.chunk);
  const params = compileChunkerOptions(host.config.chunker);
  const packer = new Packer(host, new BlobIndex(), { lock, sealWorkers: workers, inlineBytes: 0 });
  const m0 = machineBusyMs() ?? NaN;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const results: Array<Promise<unknown>> = [];
  for (let off = 0; off < data.length; off += 64 * MiB) {
    for (const c of chunkBuffer(data.subarray(off, Math.min(off + 64 * MiB, data.length)), table, params)) results.push((await packer.submit(c)).result);
  }
  await Promise.all(results);
  await packer.flush();
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  await packer.close();
  return { ms, cpuMs: (cpu.user + cpu.system) / 1000, machineMs: (machineBusyMs() ?? NaN) - m0, packs: packer.uploaded.length, stored: packer.bytesUploaded };
}

/** (b): uploads of `packCount` 16 MiB packs cut from the random data, ours against rclone; figures into `result`. */
async function uploadPart(sab: SharedArrayBuffer, size: number, packCount: number, lockSeconds: number, result: Record<string, number | null>): Promise<void> {
  fullGc();
  const s3 = s3Env();
  const local = localCluster(s3.endpoint);
  const total = packCount * PACK_BYTES;
  const bodies: Buffer[] = [];
  for (let off = 0; off + PACK_BYTES <= size; off += PACK_BYTES) bodies.push(Buffer.from(sab, off, PACK_BYTES));
  console.log(`(b) upload of ${packCount} packs of 16 MiB (${(total / MiB).toFixed(0)} MiB, bodies cut from the random data) to ${s3.endpoint}, load ${load()}`);

  const lockedBucket = bucketName('lock');
  const store = new S3Store(storeOptions(s3, lockedBucket));
  try {
    const old = await removeOldBenchBuckets(s3, store.client);
    if (local) rgwGc(local);
    if (old.removed + old.kept > 0) console.log(`  earlier runs' buckets: ${old.removed} removed, ${old.kept} kept (still locked, or less than 15 min old)`);
    const avail = local ? osdAvailable(local) : undefined;
    // rclone runs first, one copy at a time, each purged and collected before the next; then the
    // 2 locked passes, which stay: at most 2 × total on the OSD, plus room for everybody else
    const need = 2 * total + 768 * MiB;
    if (avail !== undefined && avail < need) {
      console.log(
        `  SKIPPED: the local OSD has ${(avail / GiB).toFixed(1)} GiB free, the upload part needs ${(need / GiB).toFixed(1)} GiB ` +
          `(wait until earlier runs' locks end, then run again; or pass fewer packs)`,
      );
    } else {
      if (avail !== undefined) console.log(`  local OSD: ${(avail / GiB).toFixed(1)} GiB free`);

      const dir = mkdtempSync(path.join(os.tmpdir(), 'bulwark-bench-'));
      try {
        // fsync'd, so that the first rclone run does not pay for the writeback of the files
        const wf = time(() => {
          for (let i = 0; i < packCount; i++) {
            const fd = openSync(path.join(dir, `pack-${String(i).padStart(5, '0')}`), 'w');
            try {
              const body = bodies[i % bodies.length]!;
              for (let off = 0; off < body.length; ) off += writeSync(fd, body, off);
              fsyncSync(fd);
            } finally {
              closeSync(fd);
            }
          }
        });
        const version = spawnSync('env', ['-u', 'AWS_CA_BUNDLE', 'rclone', 'version'], { encoding: 'utf8' }).stdout?.split('\n')[0] ?? 'rclone';
        console.log(`  ${version}; the packs written as files to ${dir} in ${(wf.ms / 1000).toFixed(2)} s`);
        const variants: Array<[string, string, string[]]> = [
          ['rclone_MBps', 'rclone --transfers 4 --s3-upload-cutoff 200M', ['--transfers', '4', '--s3-upload-cutoff', '200M']],
          ['rclone_default_MBps', 'rclone, default settings', []],
          ['rclone_8_MBps', 'rclone --transfers 8 --s3-upload-cutoff 200M', ['--transfers', '8', '--s3-upload-cutoff', '200M']],
        ];
        for (const [key, label, extra] of variants) {
          const bucket = bucketName('rclone');
          const plain = new S3Store(storeOptions(s3, bucket));
          await plain.client.send(new CreateBucketCommand({ Bucket: bucket }));
          try {
            const m0 = cpuMark(local);
            const r = await runRclone(['copy', dir, `:s3:${bucket}/x`, ...rcloneArgs(s3), ...extra]);
            const m1 = cpuMark(local);
            const got = await countObjects(plain, 'x/');
            result[key] = line(label, total, r.ms, uploadNote(r, m0, m1, `; ${got.n} objects, ${(got.bytes / MiB).toFixed(0)} MiB`));
            if (key === 'rclone_MBps') result.rclone_cpu_s_per_GiB = round2(r.cpuMs / 1000 / (total / GiB));
          } finally {
            await runRclone(['purge', `:s3:${bucket}`, ...rcloneArgs(s3)]).catch((err: Error) => console.log(`  (could not purge ${bucket}: ${err.message})`));
            if (local) rgwGc(local);
            plain.client.destroy();
          }
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }

      await store.client.send(new CreateBucketCommand({ Bucket: lockedBucket, ObjectLockEnabledForBucket: true }));
      await store.put('warmup', Buffer.alloc(1024), { lock: { mode: 'COMPLIANCE', retainUntil: Date.now() + lockSeconds * 1000 } });
      for (const inFlight of [4, 8]) {
        const m0 = cpuMark(local);
        const r = await uploadPacks(store, bodies, packCount, inFlight, `c${inFlight}`, lockSeconds);
        const m1 = cpuMark(local);
        result[inFlight === 4 ? 'upload_MBps' : 'upload_8_MBps'] = line(`S3Store.put, ${inFlight} in flight, COMPLIANCE lock`, total, r.ms, uploadNote(r, m0, m1));
        if (inFlight === 4) result.upload_cpu_s_per_GiB = round2(r.cpuMs / 1000 / (total / GiB));
      }
      const stored = await countObjects(store, layout.dataPrefix(HOST));
      console.log(`  bucket ${lockedBucket}: ${stored.n} packs, ${(stored.bytes / MiB).toFixed(0)} MiB, locked for ${lockSeconds} s`);
    }
  } finally {
    store.client.destroy();
  }
  if (result.upload_MBps && result.rclone_MBps) console.log(`  ours / rclone (4 in flight each) = ${(result.upload_MBps / result.rclone_MBps).toFixed(2)}`);
}

/**
 * (c): the backup's write path end to end. The Packer, with 2 seal workers (the backup's default
 * here) and with none (the backup on one core), uploads its packs with S3Store.put and a
 * COMPLIANCE lock into one locked bucket, each run as a host of its own, on random data, real text
 * and synthetic text of the same size, in turn, `rounds` times.
 * (a) drops the packs, so there a stored byte costs only its AES-GCM, its copy into the pack and
 * the pack's SHA-256; here it also costs its upload, on both sides of the socket. Issue #3 asks
 * whether compression makes the backup slower on text: this is the backup's own answer on this
 * machine (RGW shares its 2 cores, as an S3 server on the backup host would; a remote endpoint
 * takes the server's share off the machine but adds the network's limit).
 */
async function endToEndPart(sizeMiB: number, rounds: number, lockSeconds: number, result: Record<string, number | null>): Promise<void> {
  const s3 = s3Env();
  const local = localCluster(s3.endpoint);
  const size = sizeMiB * MiB;
  const inputs: Array<{ key: string; label: string; data: Uint8Array }> = [];
  const random = new Uint8Array(size);
  for (let off = 0; off < size; off += 64 * MiB) randomFillSync(random, off, Math.min(64 * MiB, size - off));
  inputs.push({ key: 'random', label: 'random data', data: random });
  const real = realText(size);
  if (real.data.length >= 32 * MiB) inputs.push({ key: 'realtext', label: 'real text', data: real.data });
  inputs.push({ key: 'text', label: 'synthetic text', data: generateText(size) });
  const input = inputs.reduce((n, x) => n + x.data.length, 0);
  console.log(
    `(c) the backup's write path end to end: Packer (SealPool 2 workers, and none) → S3Store.put (COMPLIANCE lock) to ${s3.endpoint}; ` +
      `${inputs.map((x) => `${x.label} ${(x.data.length / MiB).toFixed(0)} MiB`).join(', ')}; ${rounds} rounds, load ${load()}`,
  );
  const bucket = bucketName('e2e');
  const store = new S3Store(storeOptions(s3, bucket));
  const old = await removeOldBenchBuckets(s3, store.client);
  if (local) rgwGc(local);
  if (old.removed + old.kept > 0) console.log(`  earlier runs' buckets: ${old.removed} removed, ${old.kept} kept (still locked, or less than 15 min old)`);
  const avail = local ? osdAvailable(local) : undefined;
  // per round and Packer setting: random data stored whole, text at less than half its size
  const need = 2 * rounds * (random.length + (input - random.length) / 2) + 768 * MiB;
  if (avail !== undefined && avail < need) {
    console.log(`  SKIPPED: the local OSD has ${(avail / GiB).toFixed(1)} GiB free, (c) needs ${(need / GiB).toFixed(1)} GiB (wait until earlier runs' locks end)`);
    store.client.destroy();
    return;
  }
  // one bucket and repository for every run, each run a host of its own (its own keys and
  // prefix, nothing to dedup against): the first PUTs into a new bucket take RGW ~0.5–1 s more
  await store.client.send(new CreateBucketCommand({ Bucket: bucket, ObjectLockEnabledForBucket: true }));
  const repo = await Repository.init(store, { passphrase: 'bench', lock: { mode: 'COMPLIANCE', retainUntil: Date.now() + lockSeconds * 1000 } });
  const runs = new Map<string, number[]>();
  let n = 0;
  try {
    for (let round = 1; round <= rounds; round++) {
      for (const [x, workers] of inputs.flatMap((x) => [[x, 2], [x, 0]] as const)) {
        await settle();
        const m0 = cpuMark(local);
        const r = await runPacker(x.data, workers, { repo, host: `${HOST}-${n++}`, lockSeconds });
        const m1 = cpuMark(local);
        const v = line(
          `${x.label}, ${workers ? `${workers} seal workers` : 'no workers'}, round ${round}`,
          x.data.length,
          r.ms,
          `${uploadNote(r, m0, m1)}${perCpu(x.data.length, r)}; ${r.packs} packs, ${(r.stored / MiB).toFixed(0)} MiB stored (${(x.data.length / r.stored).toFixed(2)}×)`,
        );
        const key = `${x.key}${workers ? '' : '_0'}`;
        runs.set(key, [...(runs.get(key) ?? []), v]);
      }
    }
  } finally {
    store.client.destroy();
  }
  const median = (xs: number[]): number => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  };
  for (const [suffix, what] of [['', '2 seal workers'], ['_0', 'no workers (the backup on one core, RGW on the other)']] as const) {
    const base = median(runs.get(`random${suffix}`)!);
    for (const x of inputs) {
      const m = median(runs.get(x.key + suffix)!);
      result[`e2e_${x.key}${suffix}_MBps`] = m;
      console.log(`  ${x.label}, ${what}: median ${fmt(m).trim()} MB/s${x.key === 'random' ? '' : `, ${(m / base).toFixed(2)}× random data`}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<void> {
  const sizeMiB = Math.floor(Number(process.argv[2] ?? process.env.BENCH_MIB ?? 512));
  const packCount = Math.floor(Number(process.argv[3] ?? process.env.BENCH_PACKS ?? 64));
  const lockSeconds = Number(process.env.BENCH_LOCK_SECONDS ?? 600);
  const e2eMiB = Math.floor(Number(process.env.BENCH_E2E_MIB ?? 256));
  const e2eRounds = Math.floor(Number(process.env.BENCH_E2E_ROUNDS ?? 3));
  if (!(sizeMiB >= 64) || !(packCount >= 0) || !(lockSeconds >= 1)) throw new Error('usage: storage.ts [MiB >= 64] [packs >= 0 (0: no upload part)]');
  if (!(e2eMiB === 0 || e2eMiB >= 64) || !(e2eRounds >= 1)) throw new Error('BENCH_E2E_MIB: 0 (no end-to-end part) or >= 64; BENCH_E2E_ROUNDS >= 1');
  const size = sizeMiB * MiB;
  // the SDK's "node >= 22 from 2027" notice would land in the middle of the figures
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  console.log(`storage bench: node ${process.version}, ${os.cpus()[0]?.model ?? '?'} × ${os.availableParallelism()}, load ${load()}; MB = 10^6 bytes`);

  const master = newMasterKey();
  const s = setup(master);

  // --- (a) pipeline -------------------------------------------------------------------------
  // The text is measured first and dropped, so that it never sits in memory beside the random data.
  const gt0 = performance.now();
  let text: Uint8Array | undefined = generateText(size);
  const textGenMs = performance.now() - gt0;
  const textSample = JSON.stringify(Buffer.from(text.subarray(0, 48)).toString());
  runPipeline(text.subarray(0, 32 * MiB), s); // warm up the JIT
  const tz = time(() => runPipeline(text!, s));
  const ratio = size / tz.value.stored;
  const textSeal = time(() => {
    for (const c of chunkBuffer(text!, s.table, s.params)) sealBlob(s.keys, blobId(s.keys.id, c), c);
  });
  // the backup's own path on text: zstd is the bottleneck there, so this is where the workers matter most
  await runPacker(text.subarray(0, 32 * MiB), 2); // warm up
  const textPacker2 = await runPacker(text, 2);
  const textPacker0 = await runPacker(text, 0); // one core, as the backup without workers: all the work, the pack's SHA-256 included
  text = undefined;
  await settle();

  // real text: the same two paths
  let real: ReturnType<typeof realText> | undefined = realText(size);
  const realBytes = real.data.length;
  const realFiles = real.files;
  const realSources = real.sources;
  let realRun: ReturnType<typeof time<PipelineResult>> | undefined;
  let realPacker2: Awaited<ReturnType<typeof runPacker>> | undefined;
  let realPacker0: Awaited<ReturnType<typeof runPacker>> | undefined;
  if (realBytes >= 32 * MiB) {
    runPipeline(real.data.subarray(0, 32 * MiB), s); // warm up
    realRun = time(() => runPipeline(real!.data, s));
    await runPacker(real.data.subarray(0, 32 * MiB), 2); // warm up
    realPacker2 = await runPacker(real.data, 2);
    realPacker0 = await runPacker(real.data, 0);
  }
  real = undefined;
  await settle();

  const sab = new SharedArrayBuffer(size);
  const data = new Uint8Array(sab);
  const g = time(() => {
    for (let off = 0; off < size; off += 64 * MiB) randomFillSync(data, off, Math.min(64 * MiB, size - off));
  });
  console.log(
    `(a) pipeline on ${sizeMiB} MiB of random data (generated in ${(g.ms / 1000).toFixed(2)} s), ` +
      `chunker ${s.params.minSize / 1024}K/${s.params.avgSize / 1024}K/${s.params.maxSize / 1024}K, packs of ${s.packSize / MiB} MiB`,
  );

  const sha = (buf: Uint8Array): ReturnType<typeof time<void>> =>
    time(() => {
      const h = createHash('sha256');
      for (let off = 0; off < buf.length; off += MiB) h.update(buf.subarray(off, Math.min(off + MiB, buf.length)));
      h.digest();
    });
  sha(data.subarray(0, 16 * MiB)); // warm up
  const sh = sha(data);
  const shaMBps = line('sha256 (1 MiB updates): the floor', size, sh.ms, cpuNotes(sh));

  // each stage alone (results are dropped as soon as measured)
  runPipeline(data.subarray(0, 32 * MiB), s); // warm up the JIT
  const st = time(() => chunkBuffer(data, s.table, s.params));
  const chunks = st.value;
  console.log('  stages alone, 1 core:');
  const chunkMBps = line('  chunk (chunkBuffer)', size, st.ms, `${chunks.length} chunks, avg ${(size / chunks.length / 1024).toFixed(0)} KiB`);
  const ids: Buffer[] = [];
  const idT = time(() => {
    for (const c of chunks) ids.push(blobId(s.keys.id, c));
  });
  const idMBps = line('  blob id (HMAC-SHA256)', size, idT.ms);
  const zT = time(() => {
    for (const c of chunks) compress(c);
  });
  const zMBps = line('  compress only (zstd attempt + copy)', size, zT.ms);
  const eT = time(() => {
    for (let k = 0; k < chunks.length; k++) seal(s.keys.enc, chunks[k]!, ids[k]);
  });
  const eMBps = line('  encrypt only (AES-256-GCM + copy)', size, eT.ms);
  const sealT = time(() => {
    for (let k = 0; k < chunks.length; k++) sealBlob(s.keys, ids[k]!, chunks[k]!);
  });
  const sealMBps = line('  sealBlob (compress + encrypt)', size, sealT.ms);
  const packT = time(() => {
    const into = Buffer.allocUnsafeSlow(packBufferSize(s.packSize));
    let pack = new PackBuilder(into);
    for (let k = 0; k < chunks.length; k++) {
      pack.add('data', ids[k]!, chunks[k] as Buffer, chunks[k]!.length); // the chunk stands in for its sealed form
      if (pack.size >= s.packSize) {
        pack.finish(s.keys);
        pack = new PackBuilder(into);
      }
    }
    if (pack.count > 0) pack.finish(s.keys);
  });
  const packMBps = line('  pack (add: copy in, finish: SHA-256 id)', size, packT.ms);
  const stagesMs = st.ms + idT.ms + sealT.ms + packT.ms;
  chunks.length = 0;
  ids.length = 0;
  fullGc();

  const p1 = time(() => runPipeline(data, s));
  const pipeMBps = line(
    'pipeline, 1 core',
    size,
    p1.ms,
    `${cpuNotes(p1)}; ${p1.value.chunks} chunks → ${p1.value.packs} packs, ${(p1.value.stored / MiB).toFixed(1)} MiB; stages alone sum to ${(stagesMs / 1000).toFixed(2)} s`,
  );
  console.log(`  pipeline / sha256 = ${(pipeMBps / shaMBps).toFixed(2)}`);

  fullGc();
  const p2 = await runTwoWorkers(sab, master);
  const pipe2MBps = line(
    'pipeline, 2 cores (2 worker threads)',
    size,
    p2.ms,
    `${cpuNotes(p2)}; each worker ${p2.each.map((e) => fmt(mbps(e.bytes, e.ms)).trim()).join(' + ')} MB/s; × ${(mbps(size, p2.ms) / pipeMBps).toFixed(2)} of 1 core`,
  );

  // the product's path: the backup's Packer with its SealPool
  const packerRows: Record<string, number> = {};
  for (const w of [0, 1, 2]) {
    fullGc();
    await runPacker(data.subarray(0, 32 * MiB), w); // warm up (and start-up of the workers, measured apart)
    fullGc();
    const r = await runPacker(data, w);
    packerRows[`w${w}`] = line(
      `backup Packer, ${w === 0 ? 'no workers' : `SealPool ${w} worker${w > 1 ? 's' : ''}`}`,
      size,
      r.ms,
      `${cpuNotes(r)}${perCpu(size, r)}; ${r.packs} packs; chunking on the main thread, packs hashed ${w ? 'on a worker' : 'inline'}`,
    );
  }

  console.log(`  text: ${sizeMiB} MiB of random phrases (generated in ${(textGenMs / 1000).toFixed(2)} s): ${textSample}…`);
  const textMBps = line(
    'pipeline on text, 1 core',
    size,
    tz.ms,
    `${cpuNotes(tz)}; ${tz.value.chunks} chunks → ${tz.value.packs} packs, ${(tz.value.stored / MiB).toFixed(1)} MiB, compression ${ratio.toFixed(2)}×`,
  );
  line('  chunk + id + sealBlob on text (no packing)', size, textSeal.ms);
  const textPacker0MBps = line('backup Packer on text, no workers', size, textPacker0.ms, `${cpuNotes(textPacker0)}${perCpu(size, textPacker0)}; ${textPacker0.packs} packs`);
  const textPacker2MBps = line('backup Packer on text, SealPool 2 workers', size, textPacker2.ms, `${cpuNotes(textPacker2)}${perCpu(size, textPacker2)}; ${textPacker2.packs} packs`);
  let realMBps: number | undefined;
  let realPacker0MBps: number | undefined;
  let realPacker2MBps: number | undefined;
  let realRatio: number | undefined;
  console.log(`  real text: ${(realBytes / MiB).toFixed(0)} MiB in ${realFiles} files (${realSources.join(', ') || 'none found'})`);
  if (realRun && realPacker2 && realPacker0) {
    realRatio = realBytes / realRun.value.stored;
    realMBps = line(
      'pipeline on real text, 1 core',
      realBytes,
      realRun.ms,
      `${cpuNotes(realRun)}; ${realRun.value.chunks} chunks → ${realRun.value.packs} packs, ${(realRun.value.stored / MiB).toFixed(1)} MiB, compression ${realRatio.toFixed(2)}×`,
    );
    realPacker0MBps = line('backup Packer on real text, no workers', realBytes, realPacker0.ms, `${cpuNotes(realPacker0)}${perCpu(realBytes, realPacker0)}; ${realPacker0.packs} packs`);
    realPacker2MBps = line('backup Packer on real text, SealPool 2 workers', realBytes, realPacker2.ms, `${cpuNotes(realPacker2)}${perCpu(realBytes, realPacker2)}; ${realPacker2.packs} packs`);
  } else console.log('  (less than 32 MiB of real text: not measured)');

  // --- (c) end to end, then (b) upload -------------------------------------------------------
  // (c) first: the local RGW's memstore OSD grows in memory with what it holds (9 GB resident at
  // ~4 GiB stored) and its PUTs slow down with it, by up to half (measured); (b) stores 2 GiB
  const result: Record<string, number | null> = { upload_MBps: null, rclone_MBps: null };
  if (packCount > 0 && e2eMiB > 0) await endToEndPart(e2eMiB, e2eRounds, lockSeconds, result);
  else console.log('(c) end to end: skipped (BENCH_PACKS=0 or BENCH_E2E_MIB=0)');
  if (packCount > 0) await uploadPart(sab, size, packCount, lockSeconds, result);
  else console.log('(b) upload: skipped (0 packs)');

  const r1 = (x: number | null | undefined): number | null => (typeof x === 'number' && Number.isFinite(x) ? round(x) : null);
  console.log(
    JSON.stringify({
      bench: 'storage',
      pipeline_MBps: r1(pipeMBps),
      sha256_MBps: r1(shaMBps),
      upload_MBps: r1(result.upload_MBps),
      rclone_MBps: r1(result.rclone_MBps),
      pipeline_2core_MBps: r1(pipe2MBps),
      packer_MBps: r1(packerRows.w0!),
      packer_1worker_MBps: r1(packerRows.w1!),
      packer_2workers_MBps: r1(packerRows.w2!),
      packer_text_MBps: r1(textPacker0MBps),
      packer_text_2workers_MBps: r1(textPacker2MBps),
      pipeline_text_MBps: r1(textMBps),
      text_compression_ratio: round2(ratio),
      pipeline_realtext_MBps: r1(realMBps),
      packer_realtext_MBps: r1(realPacker0MBps),
      packer_realtext_2workers_MBps: r1(realPacker2MBps),
      realtext_compression_ratio: realRatio === undefined ? null : round2(realRatio),
      realtext_MiB: round(realBytes / MiB),
      pipeline_over_sha256: round2(pipeMBps / shaMBps),
      chunk_MBps: r1(chunkMBps),
      blobid_MBps: r1(idMBps),
      compress_MBps: r1(zMBps),
      encrypt_MBps: r1(eMBps),
      seal_MBps: r1(sealMBps),
      pack_MBps: r1(packMBps),
      upload_8_MBps: r1(result.upload_8_MBps),
      rclone_default_MBps: r1(result.rclone_default_MBps),
      rclone_8_MBps: r1(result.rclone_8_MBps),
      upload_over_rclone: result.upload_MBps && result.rclone_MBps ? round2(result.upload_MBps / result.rclone_MBps) : null,
      e2e_random_MBps: r1(result.e2e_random_MBps),
      e2e_realtext_MBps: r1(result.e2e_realtext_MBps),
      e2e_text_MBps: r1(result.e2e_text_MBps),
      e2e_realtext_over_random: result.e2e_realtext_MBps && result.e2e_random_MBps ? round2(result.e2e_realtext_MBps / result.e2e_random_MBps) : null,
      e2e_random_0_MBps: r1(result.e2e_random_0_MBps),
      e2e_realtext_0_MBps: r1(result.e2e_realtext_0_MBps),
      e2e_text_0_MBps: r1(result.e2e_text_0_MBps),
      upload_cpu_s_per_GiB: result.upload_cpu_s_per_GiB ?? null,
      rclone_cpu_s_per_GiB: result.rclone_cpu_s_per_GiB ?? null,
      data_MiB: sizeMiB,
      packs: packCount,
    }),
  );
}

if (isMainThread) await main();
else await workerMain();
