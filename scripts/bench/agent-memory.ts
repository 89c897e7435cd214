/**
 * Agent memory on tree T (issue #4: peak RSS < 250 MB on 100,000 files): the part (b) of
 * scripts/bench/backup.ts without restic, with memory figures per phase. Prints figures and
 * asserts nothing.
 *
 * ONE agent process (this file, compiled to JS like backup.ts does it, run as `child`) on a tree T of
 * 100,000 files × 1 KiB in 1,000 directories, against a fresh Object Lock bucket:
 *   open     Repository + AgentCore with its chokidar watcher, until the watcher is ready
 *   full     the first (full) backup of T
 *   incr     this script changes 10 files, the agent waits BENCH_WAIT_MS, then the watcher-driven
 *            incremental (mode 'journal'; the number of files it read is printed)
 * After each phase: RSS and peak RSS (VmRSS, VmHWM from /proc/self/status), V8 heap used/total,
 * external memory. The whole process's peak RSS is /usr/bin/time's maximum resident set size (the
 * figure backup.ts reports); the incremental's own peak is read after resetting VmHWM before it. A
 * sampler (every 100 ms) also prints, per phase, the highest RSS seen and the heap and external memory
 * at that moment.
 *
 * Run:  set -a; . /tmp/bench-s3.env; set +a; npx tsx scripts/bench/agent-memory.ts
 * Env:  BENCH_SCALE (default 1: 100,000 files; 0.1 = 10,000), BENCH_DIR (default
 *       /tmp/bulwark-agent-mem; T is generated once in BENCH_DIR/t-<files> and reused by later runs,
 *       the agent state is created afresh), BENCH_WAIT_MS (default 1000), BENCH_WATCH=0 (no
 *       watcher: the agent without chokidar, for comparison; the incremental is then a reconcile),
 *       BENCH_AGENT_FLAGS (more node flags for the agent process, after bin/bulwark's, e.g.
 *       --max-semi-space-size=16 for Node's default young generation),
 *       BENCH_LOW_MEMORY=1 (the agent in low-memory mode, as bin/bulwark starts it with
 *       BULWARK_LOW_MEMORY=1: agent/process-tuning.ts),
 *       BENCH_RUNNER (compiled, the default, or tsx: `node --import tsx`, ~35 MB more RSS),
 *       BENCH_HEAP_SNAPSHOT=FILE (write a V8 heap snapshot after the full backup; with BENCH_HEAP_AT=N
 *       also one when the full backup has done N files, to FILE.at-N.heapsnapshot), BENCH_SMAPS=1
 *       (print resident memory by kind of mapping after the full backup, on stderr), BENCH_ALLOC_PROF=1
 *       (V8's sampling heap profiler over the full backup, garbage included: the top allocating functions),
 *       BENCH_TRACE=1 (every 100 ms sample of RSS, heap, external memory and array buffers, on stderr),
 *       BULWARK_S3_* (the endpoint; when unset, `scripts/s3-local.sh up` is run).
 * Needs /usr/bin/time. S3 space: ~110 MB per run (T once, locked for BENCH_LOCK_SECONDS, default 600).
 * MB = 10^6 bytes.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes, randomFillSync } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import { AgentCore } from '../../agent/agent-core.js';
import { agentProcess } from '../../agent/process-tuning.js';
import { Repository } from '../../common/repo/repository.js';
import type { ObjectLock } from '../../common/storage/blob-store.js';
import { openS3Store } from '../../common/storage/open-store.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(HERE, '../..');
const SELF = fileURLToPath(import.meta.url);

const SCALE = Number(process.env.BENCH_SCALE ?? 1);
const BASE = path.resolve(process.env.BENCH_DIR ?? '/tmp/bulwark-agent-mem');
const WAIT_MS = Number(process.env.BENCH_WAIT_MS ?? 1000);
const LOCK_SECONDS = Number(process.env.BENCH_LOCK_SECONDS ?? 600);
const WATCH = process.env.BENCH_WATCH !== '0';
const RUNNER = process.env.BENCH_RUNNER ?? 'compiled';
const TRACE = process.env.BENCH_TRACE === '1';
const AGENT_FLAGS = (process.env.BENCH_AGENT_FLAGS ?? '').split(' ').filter((f) => f !== '');
/** The agent in low-memory mode (as bin/bulwark starts it with BULWARK_LOW_MEMORY=1); in the child, from that variable. Either way, bin/bulwark's flags for agents. */
const LOW_MEMORY = process.env.BENCH_LOW_MEMORY === '1' || process.env.BULWARK_LOW_MEMORY === '1';
const TUNING = agentProcess(process.env, LOW_MEMORY);
const FILES = Math.max(20, Math.round(100_000 * SCALE));
const PER_DIR = 100;
const FILE_SIZE = 1024;
const CHANGED = 10;

interface Mem {
  rssMB: number;
  peakMB: number;
  heapUsedMB: number;
  heapTotalMB: number;
  externalMB: number;
}

const mb = (bytes: number): number => Math.round(bytes / 1e5) / 10;

/** VmRSS / VmHWM of this process and V8's heap, in MB. */
function memory(): Mem {
  const status = readFileSync('/proc/self/status', 'utf8');
  const kb = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  const m = process.memoryUsage();
  return { rssMB: mb(kb('VmRSS') * 1024), peakMB: mb(kb('VmHWM') * 1024), heapUsedMB: mb(m.heapUsed), heapTotalMB: mb(m.heapTotal), externalMB: mb(m.external) };
}

/**
 * Resident memory by kind of mapping (/proc/self/smaps): the brk heap, anonymous mappings (V8's
 * pages, malloc arenas of other threads, thread stacks) by size, and files (code, LevelDB tables).
 */
function smapsSummary(): string {
  const sums = new Map<string, number>();
  let kind = '';
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      const [lo, hi] = line.split(' ')[0]!.split('-').map((x) => parseInt(x, 16));
      const sizeMB = (hi! - lo!) / 1048576;
      const name = head[1]!;
      kind = name === '' ? (sizeMB >= 60 && sizeMB <= 64 ? 'anon 64 MB (malloc arena)' : sizeMB < 1 ? 'anon < 1 MB' : 'anon other') : name.startsWith('/') ? (name.includes('node_modules') ? 'file node_modules' : name.endsWith('.ldb') || name.endsWith('.log') ? 'file leveldb' : 'file other') : name;
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) sums.set(kind, (sums.get(kind) ?? 0) + Number(rss[1]) / 1000);
  }
  return [...sums].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ');
}

// ---------------------------------------------------------------------------------------------
// The agent process

interface ChildArgs {
  bucket: string;
  dataDir: string;
  root: string;
  lock: ObjectLock;
  waitMs: number;
  watch: boolean;
}

/**
 * Samples memory every 100 ms and keeps, per phase, the sample with the highest RSS: what the heap,
 * external memory and array buffers were at the moment of the peak.
 */
class Sampler {
  phase = 'open';
  readonly peaks: Record<string, { rssMB: number; heapUsedMB: number; heapTotalMB: number; externalMB: number; arrayBuffersMB: number }> = {};
  private readonly timer = setInterval(() => this.sample(), 100).unref();

  private readonly t0 = performance.now();

  sample(): void {
    const m = process.memoryUsage();
    if (TRACE) console.error(`trace ${this.phase} ${((performance.now() - this.t0) / 1000).toFixed(1)} s: rss ${mb(m.rss)} heap ${mb(m.heapUsed)}/${mb(m.heapTotal)} external ${mb(m.external)} array buffers ${mb(m.arrayBuffers)}`);
    const p = this.peaks[this.phase];
    if (!p || m.rss / 1e6 > p.rssMB) {
      this.peaks[this.phase] = { rssMB: mb(m.rss), heapUsedMB: mb(m.heapUsed), heapTotalMB: mb(m.heapTotal), externalMB: mb(m.external), arrayBuffersMB: mb(m.arrayBuffers) };
    }
  }

  next(phase: string): void {
    this.sample();
    this.phase = phase;
  }

  stop(): void {
    this.sample();
    clearInterval(this.timer);
  }
}

/**
 * V8's sampling heap profiler, counting objects collected since (BENCH_ALLOC_PROF=1): where the
 * garbage comes from. Returns a function that stops it and gives the top allocating functions.
 */
async function startAllocationSampling(): Promise<() => Promise<string>> {
  const { Session } = await import('node:inspector');
  const session = new Session();
  session.connect();
  const post = <T,>(method: string, params?: object): Promise<T> =>
    new Promise((resolve, reject) => session.post(method, params, (err, r) => (err ? reject(err) : resolve(r as T))));
  await post('HeapProfiler.startSampling', { samplingInterval: 16384, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
  return async () => {
    interface Node { callFrame: { functionName: string; url: string; lineNumber: number }; selfSize: number; children: Node[] }
    const { profile } = await post<{ profile: { head: Node } }>('HeapProfiler.stopSampling');
    session.disconnect();
    const by = new Map<string, number>();
    let total = 0;
    const walk = (n: Node): void => {
      const f = n.callFrame;
      const key = `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*\/(build|node_modules)\//, '')}:${f.lineNumber + 1}`;
      by.set(key, (by.get(key) ?? 0) + n.selfSize);
      total += n.selfSize;
      n.children.forEach(walk);
    };
    walk(profile.head);
    return [`  total ${mb(total)} MB`, ...[...by].sort((x, y) => y[1] - x[1]).slice(0, 25).map(([k, v]) => `  ${mb(v).toFixed(1).padStart(8)} MB  ${k}`)].join('\n');
  };
}

async function child(a: ChildArgs): Promise<void> {
  const sampler = new Sampler();
  const env = (name: string): string => process.env[name] ?? (() => { throw new Error(`${name} is not set`); })();
  const store = openS3Store({
    endpoint: env('BULWARK_S3_ENDPOINT'),
    region: process.env.BULWARK_S3_REGION ?? 'us-east-1',
    bucket: a.bucket,
    prefix: 'repo',
    accessKeyId: env('BULWARK_S3_ACCESS_KEY'),
    secretAccessKey: env('BULWARK_S3_SECRET_KEY'),
  });
  const repo = await Repository.open(store, { masterKey: Buffer.from(env('BENCH_MASTER_KEY'), 'hex') });
  const t0 = performance.now();
  const core = await AgentCore.open({ dataDir: a.dataDir, hostname: 'bench', host: repo.host('bench'), roots: [a.root], watch: a.watch });
  const openSeconds = (performance.now() - t0) / 1000;
  const afterOpen = memory();
  try {
    sampler.next('full');
    const t1 = performance.now();
    // only figures are kept from the result (it holds every file's new state until dropped)
    const heapAt = Number(process.env.BENCH_HEAP_AT ?? NaN);
    let snapped = false;
    const onProgress = (p: { filesDone: number }): void => {
      if (snapped || !(p.filesDone >= heapAt)) return;
      snapped = true;
      console.error(`heap snapshot at ${p.filesDone} files: ${v8.writeHeapSnapshot(`${process.env.BENCH_HEAP_SNAPSHOT ?? 'agent'}.at-${heapAt}.heapsnapshot`)}`);
    };
    const allocations = process.env.BENCH_ALLOC_PROF ? await startAllocationSampling() : undefined;
    const full = await core.backup({ lock: a.lock, expiresAt: a.lock.retainUntil, onProgress }).then((r) => ({ files: r.manifest.stats.files, mode: Object.values(r.modes)[0] }));
    const fullSeconds = (performance.now() - t1) / 1000;
    if (allocations) console.error(`allocations during the full backup (sampled, garbage included), by function:\n${await allocations()}`);
    const afterFull = memory();
    if (process.env.BENCH_SMAPS === '1') console.error(`smaps after the full backup: ${smapsSummary()}`);
    if (process.env.BENCH_HEAP_SNAPSHOT) v8.writeHeapSnapshot(process.env.BENCH_HEAP_SNAPSHOT);
    sampler.next('wait');
    process.stdout.write('READY\n');
    const rl = createInterface({ input: process.stdin });
    await new Promise<void>((resolve) => rl.once('line', () => resolve()));
    rl.close();
    await new Promise((r) => setTimeout(r, a.waitMs));
    // resetting VmHWM also resets the kernel's maximum RSS that /usr/bin/time reports: keep the peak so far
    const peakBeforeReset = memory().peakMB;
    let peakReset = true;
    try {
      writeFileSync('/proc/self/clear_refs', '5'); // VmHWM := VmRSS, so the incremental's own peak can be read
    } catch {
      peakReset = false;
    }
    const beforeIncr = memory();
    sampler.next('incr');
    const t2 = performance.now();
    const incr = await core.backup({ lock: a.lock, expiresAt: a.lock.retainUntil }).then((r) => ({ filesRead: r.manifest.stats.filesRead, mode: Object.values(r.modes)[0] }));
    const incrSeconds = (performance.now() - t2) / 1000;
    const afterIncr = memory();
    sampler.stop();
    const heap = v8.getHeapStatistics();
    process.stdout.write(
      `@@RESULT ${JSON.stringify({
        openSeconds,
        fullSeconds,
        incrSeconds,
        files: full.files,
        fullMode: full.mode,
        incrMode: incr.mode,
        incrFilesRead: incr.filesRead,
        afterOpen,
        afterFull,
        beforeIncr,
        afterIncr,
        peakReset,
        peakBeforeReset,
        sampledPeaks: sampler.peaks,
        heapLimitMB: mb(heap.heap_size_limit),
      })}\n`,
    );
  } finally {
    await core.close();
  }
}

// ---------------------------------------------------------------------------------------------
// The driver

/** T: FILES files of 1 KiB (random), 100 per directory, 100 directories per group. */
function makeTree(root: string): string[] {
  const files: string[] = [];
  for (let i = 0; i < FILES; i++) {
    const d = Math.floor(i / PER_DIR);
    files.push(path.join(root, `g${String(Math.floor(d / 100)).padStart(2, '0')}/d${String(d).padStart(4, '0')}/t${String(i).padStart(6, '0')}.txt`));
  }
  const done = `${root}.complete`;
  if (existsSync(done)) return files;
  rmSync(root, { recursive: true, force: true });
  const pool = randomFillSync(Buffer.allocUnsafe(FILES * FILE_SIZE));
  files.forEach((f, i) => {
    if (i % PER_DIR === 0) mkdirSync(path.dirname(f), { recursive: true });
    writeFileSync(f, pool.subarray(i * FILE_SIZE, (i + 1) * FILE_SIZE));
  });
  writeFileSync(done, '');
  return files;
}

/** Compile this script and its imports to JS (tsc, no type check), as backup.ts runs its agent. */
function compile(build: string): string {
  const tsc = path.join(REPO_ROOT, 'node_modules/typescript/bin/tsc');
  const opts = ['--noCheck', '--target', 'ES2022', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--esModuleInterop', '--skipLibCheck', '--types', 'node'];
  rmSync(build, { recursive: true, force: true });
  execFileSync(process.execPath, [tsc, ...opts, '--rootDir', REPO_ROOT, '--outDir', build, SELF], { cwd: REPO_ROOT, stdio: 'inherit' });
  writeFileSync(path.join(build, 'package.json'), '{"type":"module"}\n');
  symlinkSync(path.join(REPO_ROOT, 'node_modules'), path.join(build, 'node_modules'));
  return path.join(build, path.relative(REPO_ROOT, SELF).replace(/\.ts$/, '.js'));
}

async function driver(): Promise<void> {
  const { rawS3Client, s3Env } = await import('./s3-env.js');
  const { CreateBucketCommand } = await import('@aws-sdk/client-s3');
  if (!existsSync('/usr/bin/time')) throw new Error('/usr/bin/time missing: apt-get install -y time');
  const s3 = s3Env();
  mkdirSync(BASE, { recursive: true });
  const t0 = performance.now();
  const root = path.join(BASE, `t-${FILES}`);
  const files = makeTree(root);
  console.log(`agent memory: T = ${FILES} files × 1 KiB in ${FILES / PER_DIR} dirs (${root}, ready in ${((performance.now() - t0) / 1000).toFixed(1)} s), S3 ${s3.endpoint}, watcher ${WATCH ? 'on' : 'off'}, node ${process.version} ${TUNING.flags.join(' ')}${LOW_MEMORY ? ' + low-memory mode (GLIBC_TUNABLES)' : ''} ${AGENT_FLAGS.join(' ')}`);

  const client = rawS3Client(s3);
  const bucket = `bench-mem-${Date.now().toString(36)}-${randomBytes(2).toString('hex')}`;
  await client.send(new CreateBucketCommand({ Bucket: bucket, ObjectLockEnabledForBucket: true }));
  const store = openS3Store({ endpoint: s3.endpoint, region: s3.region, bucket, prefix: 'repo', accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey });
  const lock = { mode: 'COMPLIANCE' as const, retainUntil: (await store.serverTime()) + LOCK_SECONDS * 1000 };
  const repo = await Repository.init(store, { passphrase: 'bulwark bench passphrase', lock });

  const script = RUNNER === 'tsx' ? ['--import', 'tsx', SELF] : [compile(path.join(BASE, 'build'))];
  const dataDir = path.join(BASE, 'state');
  rmSync(dataDir, { recursive: true, force: true });
  const args: ChildArgs = { bucket, dataDir, root, lock, waitMs: WAIT_MS, watch: WATCH };
  const env = {
    ...TUNING.env,
    BULWARK_S3_ENDPOINT: s3.endpoint,
    BULWARK_S3_ACCESS_KEY: s3.accessKeyId,
    BULWARK_S3_SECRET_KEY: s3.secretAccessKey,
    BULWARK_S3_REGION: s3.region,
    BENCH_MASTER_KEY: repo.masterKey.toString('hex'),
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
  };
  const timeFile = path.join(BASE, 'time.out');
  const out: string[] = [];
  const wall0 = performance.now();
  const code = await new Promise<number | null>((resolve, reject) => {
    const c: ChildProcess = spawn('/usr/bin/time', ['-f', '%M %U %S', '-o', timeFile, process.execPath, ...TUNING.flags, ...AGENT_FLAGS, ...script, 'child', JSON.stringify(args)], {
      cwd: REPO_ROOT,
      env,
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    createInterface({ input: c.stdout! }).on('line', (line) => {
      out.push(line);
      if (line !== 'READY' && !line.startsWith('@@RESULT ')) process.stderr.write(`  agent: ${line}\n`); // e.g. --trace-gc
      if (line === 'READY') {
        // 10 files get new content of the same size while the watcher runs
        for (let k = 0; k < CHANGED; k++) writeFileSync(files[Math.floor(((k + 0.5) * files.length) / CHANGED)]!, randomBytes(FILE_SIZE));
        c.stdin!.write('go\n');
      }
    });
    c.on('error', reject);
    c.on('close', resolve);
  });
  const wall = (performance.now() - wall0) / 1000;
  if (code !== 0) throw new Error(`the agent process exited with ${code}`);
  const [kib, user, sys] = readFileSync(timeFile, 'utf8').trim().split('\n').at(-1)!.split(' ').map(Number);
  const line = out.find((l) => l.startsWith('@@RESULT '));
  if (!line) throw new Error('the agent printed no result');
  const r = JSON.parse(line.slice('@@RESULT '.length)) as {
    openSeconds: number;
    fullSeconds: number;
    incrSeconds: number;
    files: number;
    fullMode: string;
    incrMode: string;
    incrFilesRead: number;
    afterOpen: Mem;
    afterFull: Mem;
    beforeIncr: Mem;
    afterIncr: Mem;
    peakReset: boolean;
    peakBeforeReset: number;
    sampledPeaks: Record<string, { rssMB: number; heapUsedMB: number; heapTotalMB: number; externalMB: number; arrayBuffersMB: number }>;
    heapLimitMB: number;
  };
  const m = (x: Mem): string => `RSS ${x.rssMB} MB (peak so far ${x.peakMB}), heap ${x.heapUsedMB}/${x.heapTotalMB} MB, external ${x.externalMB} MB`;
  console.log(`  open (incl. watcher ready): ${r.openSeconds.toFixed(2)} s; ${m(r.afterOpen)}`);
  console.log(`  full backup (${r.files} files, mode ${r.fullMode}): ${r.fullSeconds.toFixed(2)} s; ${m(r.afterFull)}`);
  console.log(`  incremental (mode ${r.incrMode}, ${r.incrFilesRead} files read): ${r.incrSeconds.toFixed(2)} s; before: ${m(r.beforeIncr)}; after: ${m(r.afterIncr)}${r.peakReset ? ' (peak of the incremental alone)' : ''}`);
  for (const [phase, p] of Object.entries(r.sampledPeaks)) {
    console.log(`    sampled every 100 ms, highest RSS during ${phase}: ${p.rssMB} MB with heap ${p.heapUsedMB}/${p.heapTotalMB} MB, external ${p.externalMB} MB (array buffers ${p.arrayBuffersMB} MB)`);
  }
  // /usr/bin/time's figure only covers the time after the VmHWM reset: the whole peak is the larger of the two
  const peakMB = Math.max(mb(kib! * 1024), r.peakBeforeReset);
  console.log(`  whole agent process: peak RSS ${peakMB} MB (VmHWM before the incremental's reset, /usr/bin/time after it), CPU ${(user! + sys!).toFixed(1)} s, wall ${wall.toFixed(1)} s; V8 heap limit ${r.heapLimitMB} MB`);
  console.log(JSON.stringify({ treeFiles: FILES, watch: WATCH, lowMemory: LOW_MEMORY, flags: AGENT_FLAGS, peakMB, ...r }));
}

if (process.argv[2] === 'child') {
  child(JSON.parse(process.argv[3]!) as ChildArgs).then(
    () => process.exit(0),
    (err: unknown) => {
      console.error('agent failed:', err);
      process.exit(1);
    },
  );
} else {
  driver().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
