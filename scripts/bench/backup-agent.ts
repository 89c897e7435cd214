/**
 * The agent side of scripts/bench/backup.ts: ONE Bulwark operation in its own process, so that the
 * process's peak RSS is the agent's alone. Not meant to be run by hand.
 *
 *   node --import tsx scripts/bench/backup-agent.ts <op> '<json args>'
 *
 * ops:
 *   full      AgentCore (no watcher) → one full backup of `root` → result line.
 *   watched   AgentCore with the chokidar watcher → full backup → prints `READY` → waits for a line
 *             on stdin (the parent changes files meanwhile) → sleeps `waitMs` → incremental backup
 *             (must be watcher-driven: mode 'journal') → result line.
 *   restore   a fresh agent (empty data dir, index loaded from the bucket) restores a snapshot.
 *
 * The repository's master key comes in env BENCH_MASTER_KEY (hex), the S3 endpoint in BULWARK_S3_*.
 * The result is printed as one line `@@RESULT {json}` on stdout; everything else goes to stderr.
 * Timings are of the operation only (AgentCore.backup / .restore), measured in this process;
 * opening the repository and the agent is timed separately.
 */
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { AgentCore } from '../../agent/agent-core.js';
import type { BackupProgress } from '../../agent/backup/backup.js';
import { Repository } from '../../common/repo/repository.js';
import type { SnapshotManifest } from '../../common/repo/snapshot.js';
import type {
  BlobStore,
  BucketConfig,
  GetOptions,
  ListEntry,
  ObjectInfo,
  ObjectLock,
  PutOptions,
  PutResult,
  VersionEntry,
} from '../../common/storage/blob-store.js';
import { wrapStore } from '../../common/storage/open-store.js';
import { S3Store } from '../../common/storage/s3-store.js';

// ---------------------------------------------------------------------------------------------
// Request accounting: sits under the retry/limit wrappers, so it sees each S3 request as sent.

interface OpStats {
  n: number;
  bytes: number;
  /** Sum of request durations (ms). */
  sumMs: number;
}

class CountingStore implements BlobStore {
  readonly description: string;
  readonly ops = new Map<string, OpStats>();
  private inFlight = 0;
  private busySince = 0;
  /** Wall time during which at least one request was in flight (ms). */
  busyMs = 0;

  /** Passed through, counted as `directRead` (URLs handed out; the GETs made with them are not seen here). */
  readonly directRead?: BlobStore['directRead'];

  constructor(private readonly inner: BlobStore) {
    this.description = inner.description;
    const direct = inner.directRead;
    if (direct) this.directRead = (key, opts) => this.track('directRead', () => direct(key, opts), () => 0);
  }

  reset(): void {
    this.ops.clear();
    this.busyMs = 0;
    if (this.inFlight > 0) this.busySince = performance.now();
  }

  snapshot(): { busyMs: number; ops: Record<string, OpStats> } {
    const busy = this.busyMs + (this.inFlight > 0 ? performance.now() - this.busySince : 0);
    return { busyMs: Math.round(busy), ops: Object.fromEntries([...this.ops].map(([k, v]) => [k, { ...v, sumMs: Math.round(v.sumMs) }])) };
  }

  private async track<T>(op: string, f: () => Promise<T>, bytesOf: (r: T) => number): Promise<T> {
    const t0 = performance.now();
    if (this.inFlight++ === 0) this.busySince = t0;
    try {
      const r = await f();
      const s = this.ops.get(op) ?? { n: 0, bytes: 0, sumMs: 0 };
      s.n++;
      s.bytes += bytesOf(r);
      s.sumMs += performance.now() - t0;
      this.ops.set(op, s);
      return r;
    } finally {
      if (--this.inFlight === 0) this.busyMs += performance.now() - this.busySince;
    }
  }

  put(key: string, body: Uint8Array, opts?: PutOptions): Promise<PutResult> {
    return this.track('put', () => this.inner.put(key, body, opts), () => body.length);
  }
  get(key: string, opts?: GetOptions): Promise<Uint8Array> {
    return this.track('get', () => this.inner.get(key, opts), (b) => b.length);
  }
  head(key: string, opts?: { versionId?: string; signal?: AbortSignal }): Promise<ObjectInfo> {
    return this.track('head', () => this.inner.head(key, opts), () => 0);
  }
  async *list(prefix: string, opts?: { signal?: AbortSignal }): AsyncIterable<ListEntry> {
    const s = this.ops.get('list') ?? { n: 0, bytes: 0, sumMs: 0 };
    s.n++;
    this.ops.set('list', s);
    yield* this.inner.list(prefix, opts);
  }
  async *listVersions(prefix: string, opts?: { signal?: AbortSignal }): AsyncIterable<VersionEntry> {
    const s = this.ops.get('listVersions') ?? { n: 0, bytes: 0, sumMs: 0 };
    s.n++;
    this.ops.set('listVersions', s);
    yield* this.inner.listVersions(prefix, opts);
  }
  delete(key: string, opts?: { versionId?: string; signal?: AbortSignal }): Promise<void> {
    return this.track('delete', () => this.inner.delete(key, opts), () => 0);
  }
  extendRetention(key: string, versionId: string, lock: ObjectLock, opts?: { signal?: AbortSignal }): Promise<void> {
    return this.track('extendRetention', () => this.inner.extendRetention(key, versionId, lock, opts), () => 0);
  }
  bucketConfig(opts?: { signal?: AbortSignal }): Promise<BucketConfig> {
    return this.track('bucketConfig', () => this.inner.bucketConfig(opts), () => 0);
  }
  serverTime(opts?: { signal?: AbortSignal }): Promise<number> {
    return this.track('serverTime', () => this.inner.serverTime(opts), () => 0);
  }
}

// ---------------------------------------------------------------------------------------------

interface Args {
  bucket: string;
  prefix: string;
  hostId: string;
  dataDir: string;
  concurrency?: number;
  // backup ops
  root?: string;
  lock?: ObjectLock;
  /** full/watched: write the snapshot id here. */
  snapshotFile?: string;
  /** watched: ms to wait after the parent's go-ahead before the incremental. */
  waitMs?: number;
  // restore
  snapshotId?: string;
  /** restore: only these original paths (all when absent) */
  paths?: string[];
  target?: string;
}

const env = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

/** Peak RSS (VmHWM) and current RSS of this process, in MB (10^6 bytes). */
function memory(): { peakMB: number; rssMB: number } {
  const status = readFileSync('/proc/self/status', 'utf8');
  const mb = (field: string): number => Math.round((Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024) / 1e6);
  return { peakMB: mb('VmHWM'), rssMB: mb('VmRSS') };
}

/** Reset VmHWM to the current RSS (Linux: write 5 to clear_refs), so a later phase's peak can be read alone. */
function resetPeak(): boolean {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

/** CPU seconds (user, sys) of the main thread and of all other threads (libuv pool, V8, LevelDB, …) so far. */
interface ThreadCpu {
  mainUser: number;
  mainSys: number;
  otherUser: number;
  otherSys: number;
}
const CLK_TCK = 100;
function threadCpu(): ThreadCpu {
  const out = { mainUser: 0, mainSys: 0, otherUser: 0, otherSys: 0 };
  for (const tid of readdirSync('/proc/self/task')) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    } catch {
      continue; // thread gone
    }
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const user = Number(f[11]) / CLK_TCK;
    const sys = Number(f[12]) / CLK_TCK;
    if (Number(tid) === process.pid) {
      out.mainUser += user;
      out.mainSys += sys;
    } else {
      out.otherUser += user;
      out.otherSys += sys;
    }
  }
  return out;
}
function threadCpuSince(a: ThreadCpu): ThreadCpu {
  const b = threadCpu();
  const r = (n: number): number => Math.round(n * 100) / 100;
  return { mainUser: r(b.mainUser - a.mainUser), mainSys: r(b.mainSys - a.mainSys), otherUser: r(b.otherUser - a.otherUser), otherSys: r(b.otherSys - a.otherSys) };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function result(obj: unknown): void {
  process.stdout.write(`@@RESULT ${JSON.stringify(obj)}\n`);
}

/** Phase timestamps from the backup's progress reports, relative to the call (ms). */
function phaseRecorder(t0: () => number): { onProgress: (p: BackupProgress) => void; phases: Record<string, number> } {
  const phases: Record<string, number> = {};
  return {
    phases,
    onProgress: (p) => {
      const key = `first_${p.phase}`;
      if (!(key in phases)) phases[key] = Math.round(performance.now() - t0());
    },
  };
}

/** Time a backup: wall, CPU (user+sys of the whole process), event-loop utilisation, S3 traffic, phases. */
async function timedBackup(core: AgentCore, counting: CountingStore, lock: ObjectLock) {
  counting.reset();
  let start = 0;
  const rec = phaseRecorder(() => start);
  const cpu0 = process.cpuUsage();
  const threads0 = threadCpu();
  const elu0 = performance.eventLoopUtilization();
  const us0 = Number(process.hrtime.bigint() / 1000n);
  start = performance.now();
  const r = await core.backup({ lock, expiresAt: lock.retainUntil, onProgress: rec.onProgress });
  const ms = performance.now() - start;
  const us1 = Number(process.hrtime.bigint() / 1000n);
  const threads = threadCpuSince(threads0);
  const cpu = process.cpuUsage(cpu0);
  const elu = performance.eventLoopUtilization(elu0);
  return {
    r,
    out: {
      seconds: ms / 1000,
      cpuSeconds: (cpu.user + cpu.system) / 1e6,
      threads,
      eventLoopUtilization: Number(elu.utilization.toFixed(3)),
      phasesMs: { ...rec.phases, returned: Math.round(ms) },
      /** CLOCK_MONOTONIC µs at the call and the return (the clock of V8 CPU profiles). */
      monotonicUs: [us0, us1],
      s3: counting.snapshot(),
      stats: r.manifest.stats,
      modes: Object.values(r.modes),
      skipped: r.skipped.length,
      snapshotId: r.snapshotId,
    },
  };
}

async function main(): Promise<void> {
  const [op, json] = process.argv.slice(2);
  if (!op || !json) throw new Error('usage: backup-agent.ts full|watched|restore <json args>');
  const a = JSON.parse(json) as Args;
  const tOpen = performance.now();
  const counting = new CountingStore(
    new S3Store({
      endpoint: env('BULWARK_S3_ENDPOINT'),
      region: process.env.BULWARK_S3_REGION ?? 'us-east-1',
      bucket: a.bucket,
      prefix: a.prefix,
      accessKeyId: env('BULWARK_S3_ACCESS_KEY'),
      secretAccessKey: env('BULWARK_S3_SECRET_KEY'),
      // as openS3Store does it
      maxSockets: Math.max(32, (a.concurrency ?? 8) * 2),
    }),
  );
  const store = wrapStore(counting, a.concurrency !== undefined ? { concurrency: a.concurrency } : {});
  const repo = await Repository.open(store, { masterKey: Buffer.from(env('BENCH_MASTER_KEY'), 'hex') });
  const host = repo.host(a.hostId);

  if (op === 'full' || op === 'watched') {
    const watch = op === 'watched';
    const core = await AgentCore.open({ dataDir: a.dataDir, hostname: 'bench', host, roots: [a.root!], watch });
    const openSeconds = (performance.now() - tOpen) / 1000;
    const afterOpen = memory();
    try {
      const full = await timedBackup(core, counting, a.lock!);
      if (a.snapshotFile) writeFileSync(a.snapshotFile, full.r.snapshotId);
      const afterFull = memory();
      if (!watch) {
        result({ op, openSeconds, memAfterOpen: afterOpen, full: full.out, memAfterFull: afterFull });
        return;
      }
      // hand over to the parent, which changes files while the watcher runs
      process.stdout.write('READY\n');
      const rl = createInterface({ input: process.stdin });
      await new Promise<void>((resolve) => rl.once('line', () => resolve()));
      rl.close();
      await sleep(a.waitMs ?? 1000); // chokidar's events, then the watcher's 150 ms flush
      const beforeReset = memory(); // the reset also clears the maximum RSS that /usr/bin/time reports
      const peakReset = resetPeak();
      const before = memory();
      const incr = await timedBackup(core, counting, a.lock!);
      const afterIncr = memory();
      result({ op, openSeconds, memAfterOpen: afterOpen, full: full.out, memAfterFull: afterFull, incr: incr.out, memBeforeReset: beforeReset, memBeforeIncr: before, memAfterIncr: afterIncr, incrPeakIsPhaseOnly: peakReset });
    } finally {
      await core.close();
    }
    return;
  }

  if (op === 'restore') {
    const manifest: SnapshotManifest = await host.loadSnapshot(a.snapshotId!);
    const core = await AgentCore.open({ dataDir: a.dataDir, hostname: 'bench', host, roots: manifest.roots.map((r) => r.path), watch: false });
    const openSeconds = (performance.now() - tOpen) / 1000;
    try {
      counting.reset();
      const cpu0 = process.cpuUsage();
      const faults0 = process.resourceUsage().minorPageFault;
      const threads0 = threadCpu();
      const elu0 = performance.eventLoopUtilization();
      const t0 = performance.now();
      const r = await core.restore({ manifest, target: a.target!, ...(a.paths ? { paths: a.paths } : {}) });
      const ms = performance.now() - t0;
      const threads = threadCpuSince(threads0);
      const cpu = process.cpuUsage(cpu0);
      const elu = performance.eventLoopUtilization(elu0);
      result({
        op,
        openSeconds,
        restore: {
          seconds: ms / 1000,
          cpuSeconds: (cpu.user + cpu.system) / 1e6,
          pageFaults: process.resourceUsage().minorPageFault - faults0,
          threads,
          eventLoopUtilization: Number(elu.utilization.toFixed(3)),
          s3: counting.snapshot(),
          files: r.files,
          dirs: r.dirs,
          bytes: r.bytes,
          errors: r.errors.length,
          firstErrors: r.errors.slice(0, 3),
          ranges: r.ranges,
        },
        mem: memory(),
      });
    } finally {
      await core.close();
    }
    return;
  }
  throw new Error(`unknown op ${op}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error('backup-agent failed:', err);
    process.exit(1);
  },
);
