/**
 * Backup, incremental and restore, Bulwark side by side with restic, on the same data and the
 * same S3 endpoint (the local Ceph RGW by default), in one run:
 *
 *   (a) full backup of dataset A: 2,000 files of mixed sizes (10 of 32 MiB, the rest log-uniform
 *       from ~1 KiB to ~3 MiB) totalling 1 GiB, plus 20,000 files of 4 KiB; all unique random data.
 *   (b) tree T of 100,000 files of 1 KiB (random) in 1,000 directories: a full backup (timed), then
 *       10 files changed, then the incremental (timed). Bulwark's incremental is watcher-driven:
 *       ONE agent process runs the full backup with its chokidar watcher on, says READY, this
 *       script changes 10 files, the agent waits BENCH_WAIT_MS and runs the incremental (mode
 *       'journal'). restic's incremental is `restic backup` again (parent snapshot).
 *   (c) full restore of A into an empty directory; sizes of all files and the SHA-256 of 50
 *       random files are compared with the source. BENCH_RESTORE_ROUNDS rounds (default 2) in
 *       alternating order (Bulwark then restic, restic then Bulwark); the means are reported.
 *   Every timed operation starts on a settled disk (sync, 2 s): otherwise the second of two
 *   restores writes while the kernel flushes the first one's gigabyte. Each restore also starts
 *   with the page cache dropped, writes into a directory of its own, and nothing is deleted until
 *   the run ends (see settle and cleanup: both made later restores slower on this VM).
 *   and rclone copying A's 2,000 large files as plain objects (4 transfers): the endpoint's rate.
 *
 * Every Bulwark operation runs in its own process (scripts/bench/backup-agent.ts, compiled to JS
 * or under `node --import tsx`, see BENCH_RUNNER); restic and rclone are their own processes.
 * Each is run under `/usr/bin/time`, whose max RSS is the peak RSS reported. Bulwark's seconds are of the operation
 * itself, measured inside the agent process (repository/agent open excluded and shown apart);
 * restic's and rclone's are the wall time of their process. For (b) Bulwark's peak RSS is that of
 * the whole agent process (full backup + watcher + incremental); the incremental's own peak
 * (VmHWM reset before it) is shown apart.
 *
 * A backup agent that dies of "Maximum call stack size exceeded" (encodeIndex spreads two
 * arguments per new blob into one call: a backup adding more than ~60,000 blobs overflows V8's
 * default stack, after every pack is uploaded) is reported loudly, and the operation re-run from
 * scratch with `node --stack-size=4000` so the rest can be measured; the JSON line lists it.
 *
 * MB = 10^6 bytes. Prints figures and asserts nothing; the last line is one JSON object.
 *
 * Run: npx tsx scripts/bench/backup.ts
 * Env: BENCH_RUNNER (compiled, the default: the agent script and its imports are compiled to JS
 *      with tsc first; tsx: run it with `node --import tsx`, which adds ~35 MB to its RSS),
 *      BENCH_SCALE (default 1; 0.1 = a tenth of every file count and of A's size, for a smoke
 *      test), BENCH_DIR (data dir, default /tmp/bulwark-bench; created afresh, removed at the end
 *      unless BENCH_KEEP=1), BENCH_WAIT_MS (wait before the watched incremental, default 1000),
 *      BENCH_LOCK_SECONDS (Object Lock of Bulwark's objects, default 3600), BENCH_CONCURRENCY
 *      (Bulwark's S3 requests in flight; default: openS3Store's), BENCH_PROF=1 (write V8 CPU
 *      profiles of the agent processes to BENCH_PROF_DIR, default /tmp/bulwark-bench-prof),
 *      BENCH_AGENT_FLAGS (extra node flags for the agent processes, for experiments),
 *      BENCH_LOW_MEMORY=1 (agent processes in low-memory mode, as bin/bulwark starts them with
 *      BULWARK_LOW_MEMORY=1: agent/process-tuning.ts),
 *      BULWARK_S3_* (the endpoint; when unset, `scripts/s3-local.sh up` is run and its output used).
 * Needs /usr/bin/time (apt-get install time), restic, rclone.
 * S3 space: about 3 × A (Bulwark, restic, rclone) + 2 × T (+ 1 × T when the crash above forces
 * a re-run): ~3.5 GB at scale 1. The buckets are left in place (Bulwark's
 * objects are locked); the rclone objects are deleted.
 */
import { execFileSync } from 'node:child_process';
import { agentProcess } from '../../agent/process-tuning.js';
import { createHash, randomBytes, randomFillSync } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { Repository } from '../../common/repo/repository.js';
import { openS3Store } from '../../common/storage/open-store.js';
import { rawS3Client, s3Env } from './s3-env.js';
import { type Timed, runTimed as runTimedIn } from './timed.js';

const MiB = 1024 * 1024;
const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(HERE, '../..');
const AGENT = path.join(HERE, 'backup-agent.ts');

const SCALE = Number(process.env.BENCH_SCALE ?? 1);
const BASE = path.resolve(process.env.BENCH_DIR ?? '/tmp/bulwark-bench');
const KEEP = process.env.BENCH_KEEP === '1';
const WAIT_MS = Number(process.env.BENCH_WAIT_MS ?? 1000);
const LOCK_SECONDS = Number(process.env.BENCH_LOCK_SECONDS ?? 3600);
const CONCURRENCY = process.env.BENCH_CONCURRENCY ? Number(process.env.BENCH_CONCURRENCY) : undefined;
const PROF = process.env.BENCH_PROF === '1';
const PROF_DIR = process.env.BENCH_PROF_DIR ?? '/tmp/bulwark-bench-prof';
const RUNNER = process.env.BENCH_RUNNER ?? 'compiled';
if (RUNNER !== 'compiled' && RUNNER !== 'tsx') throw new Error(`BENCH_RUNNER must be compiled or tsx, got ${RUNNER}`);
const BUILD = path.join(BASE, 'build');
const AGENT_FLAGS = (process.env.BENCH_AGENT_FLAGS ?? '').split(' ').filter((f) => f !== '');
/** Agent processes in low-memory mode (as bin/bulwark starts them with BULWARK_LOW_MEMORY=1). */
const LOW_MEMORY = process.env.BENCH_LOW_MEMORY === '1';
/** Restore comparisons, in alternating order (BENCH_RESTORE_ROUNDS, default 2). */
const RESTORE_ROUNDS = Math.max(1, Number(process.env.BENCH_RESTORE_ROUNDS ?? 2));

/**
 * Before each timed operation: no dirty pages of an earlier one left to flush (sync), the page
 * cache dropped (when allowed: root), and a short rest. On this VM, writing into the page cache
 * cost ~3 s of CPU per GB once it had filled free memory, and 0.3 s after a drop: without the
 * drop, whichever restore ran first in a run was the fast one. (Before restores only: the backups
 * read their data from a warm cache, as in every earlier run.)
 */
let cacheDropped: boolean | undefined;
async function settle(dropCaches = false): Promise<void> {
  execFileSync('sync');
  if (dropCaches) {
    try {
      writeFileSync('/proc/sys/vm/drop_caches', '3');
      cacheDropped = true;
    } catch {
      cacheDropped = false;
    }
  }
  await new Promise((r) => setTimeout(r, 2000));
}

/**
 * Mass deletions wait until the end of a run, and a run starts only some minutes after the last
 * one's: on ext4 without a journal (this VM's root file system), creating files in block groups
 * where many inodes were deleted in the last minutes scans past each of them (the kernel's
 * `recently_deleted`, 60 s, 5 min while the inode table is dirty): 20,000 creates took 6-7 s of
 * CPU instead of 0.5 s. Deleting each restore's output before the next restore made the later
 * restores of a run slow for both tools.
 */
const CLEANUP_MARK = path.join(path.dirname(path.resolve(process.env.BENCH_DIR ?? '/tmp/bulwark-bench')), '.bulwark-bench-cleanup');
const CLEANUP_QUIET_MS = 6 * 60_000;
async function waitAfterLastCleanup(): Promise<void> {
  let at = 0;
  try {
    at = Number(readFileSync(CLEANUP_MARK, 'utf8'));
  } catch {
    return;
  }
  const wait = at + CLEANUP_QUIET_MS - Date.now();
  if (wait <= 0 || process.env.BENCH_NO_WAIT === '1') return;
  log(`waiting ${Math.ceil(wait / 1000)} s: the last run deleted its files ${Math.round((Date.now() - at) / 1000)} s ago, and file creation stays slow for minutes after mass deletions on ext4 without a journal (BENCH_NO_WAIT=1 skips this)`);
  await new Promise((r) => setTimeout(r, wait));
}
function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  writeFileSync(CLEANUP_MARK, String(Date.now()));
}
const RESTIC_PASSWORD = 'bulwark bench restic password';
const CHANGED = 10;
const SAMPLE = 50;

if (!(SCALE > 0)) throw new Error(`BENCH_SCALE must be > 0, got ${process.env.BENCH_SCALE}`);
const LARGE_FILES = Math.max(2, Math.round(2000 * SCALE));
const LARGE_BYTES = Math.round(1024 * MiB * SCALE);
const BIG_FILES = Math.max(1, Math.round(10 * SCALE));
const BIG_SIZE = 32 * MiB;
const SMALL_FILES = Math.max(1, Math.round(20000 * SCALE));
const SMALL_SIZE = 4096;
const TREE_FILES = Math.max(CHANGED * 2, Math.round(100000 * SCALE));
const TREE_SIZE = 1024;
const PER_DIR = 100;

// ---------------------------------------------------------------------------------------------
// Small helpers

/** mulberry32: deterministic choices (sizes, sampled files); the contents come from crypto. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const fmt = (n: number, d = 1): string => (Number.isFinite(n) ? n.toFixed(d) : 'n/a');
const round3 = (n: number): number | null => (Number.isFinite(n) ? Math.round(n * 1000) / 1000 : null);
const log = (s: string): void => console.log(s);


// ---------------------------------------------------------------------------------------------
// Data

interface FileList {
  files: string[];
  bytes: number;
}

function writeRandomFiles(dir: string, sizes: number[], name: (i: number) => string): FileList {
  const files: string[] = [];
  let bytes = 0;
  let pool = Buffer.allocUnsafe(0);
  let poolOff = 0;
  for (let i = 0; i < sizes.length; i++) {
    const size = sizes[i]!;
    const file = path.join(dir, name(i));
    mkdirSync(path.dirname(file), { recursive: true });
    let body: Buffer;
    if (size <= 64 * 1024) {
      // small files: slices of a random pool, never reused, so every file is unique
      if (poolOff + size > pool.length) {
        pool = randomFillSync(Buffer.allocUnsafe(8 * MiB));
        poolOff = 0;
      }
      body = pool.subarray(poolOff, poolOff + size);
      poolOff += size;
    } else {
      body = randomFillSync(Buffer.allocUnsafe(size));
    }
    writeFileSync(file, body);
    files.push(file);
    bytes += size;
  }
  return { files, bytes };
}

/** Dataset A: large (mixed sizes) + small (4 KiB). */
function makeDatasetA(root: string): FileList {
  const r = rng(1);
  const rest = LARGE_FILES - BIG_FILES;
  const restBytes = Math.max(rest * 1024, LARGE_BYTES - BIG_FILES * BIG_SIZE);
  const w = Array.from({ length: rest }, () => Math.exp(r() * Math.log(4096)));
  const sum = w.reduce((a, b) => a + b, 0);
  const sizes = w.map((x) => Math.max(1, Math.floor((x / sum) * restBytes)));
  sizes[0]! += restBytes - sizes.reduce((a, b) => a + b, 0);
  // the big files spread among the others
  for (let k = 0; k < BIG_FILES; k++) sizes.splice(Math.floor(r() * sizes.length), 0, BIG_SIZE);
  const large = writeRandomFiles(path.join(root, 'large'), sizes, (i) => `d${String(Math.floor(i / PER_DIR)).padStart(2, '0')}/f${String(i).padStart(5, '0')}.bin`);
  const small = writeRandomFiles(path.join(root, 'small'), new Array<number>(SMALL_FILES).fill(SMALL_SIZE), (i) => `d${String(Math.floor(i / PER_DIR)).padStart(3, '0')}/s${String(i).padStart(6, '0')}.dat`);
  return { files: [...large.files, ...small.files], bytes: large.bytes + small.bytes };
}

/** Tree T: 1 KiB files, 100 per directory, 100 directories per group. */
function makeTree(root: string): FileList {
  return writeRandomFiles(root, new Array<number>(TREE_FILES).fill(TREE_SIZE), (i) => {
    const d = Math.floor(i / PER_DIR);
    return `g${String(Math.floor(d / 100)).padStart(2, '0')}/d${String(d).padStart(4, '0')}/t${String(i).padStart(6, '0')}.txt`;
  });
}

/** Overwrite `n` files of the list (chosen with `seed`) with new random content of the same size. */
function changeFiles(list: FileList, n: number, seed: number): string[] {
  const r = rng(seed);
  const chosen = new Set<string>();
  while (chosen.size < n) chosen.add(list.files[Math.floor(r() * list.files.length)]!);
  for (const f of chosen) writeFileSync(f, randomBytes(statSync(f).size));
  return [...chosen];
}

function sha256(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

/** Compare a restore (at target + absolute source path) with the source: all sizes, SHA-256 of a sample. */
function verifyRestore(list: FileList, root: string, target: string): { ok: boolean; detail: string } {
  let missing = 0;
  let wrongSize = 0;
  let restoredFiles = 0;
  for (const f of list.files) {
    const st = statSync(path.join(target, f), { throwIfNoEntry: false });
    if (!st) missing++;
    else if (st.size !== statSync(f).size) wrongSize++;
    else restoredFiles++;
  }
  const r = rng(99);
  let hashMismatch = 0;
  const sample = Math.min(SAMPLE, list.files.length);
  const picked = new Set<string>();
  while (picked.size < sample) picked.add(list.files[Math.floor(r() * list.files.length)]!);
  for (const f of picked) {
    const dst = path.join(target, f);
    if (!existsSync(dst) || sha256(dst) !== sha256(f)) hashMismatch++;
  }
  // nothing extra: every regular file under the restored root is one of the source's
  const extra = countFiles(path.join(target, root)) - restoredFiles - wrongSize;
  const ok = missing === 0 && wrongSize === 0 && hashMismatch === 0 && extra === 0;
  return { ok, detail: `${restoredFiles}/${list.files.length} sizes match, ${missing} missing, ${wrongSize} wrong size, ${extra} extra; sha256 ${sample - hashMismatch}/${sample} sampled match` };
}

function countFiles(dir: string): number {
  let n = 0;
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(d, e.name));
      else if (e.isFile()) n++;
    }
  };
  if (existsSync(dir)) walk(dir);
  return n;
}

// ---------------------------------------------------------------------------------------------
// Processes

/** Run a command under /usr/bin/time (timed.ts), its figures' file in BASE. */
const runTimed = (cmd: string, args: string[], env: NodeJS.ProcessEnv, onLine?: Parameters<typeof runTimedIn>[4]): Promise<Timed> => runTimedIn(BASE, cmd, args, env, onLine);

// Shapes of backup-agent.ts's result lines (only what is printed here).
interface ThreadCpu {
  mainUser: number;
  mainSys: number;
  otherUser: number;
  otherSys: number;
}
const threadLine = (t: ThreadCpu): string => `main thread ${fmt(t.mainUser, 2)} user + ${fmt(t.mainSys, 2)} sys, other threads ${fmt(t.otherUser, 2)} user + ${fmt(t.otherSys, 2)} sys`;
interface AgentBackup {
  seconds: number;
  cpuSeconds: number;
  threads: ThreadCpu;
  eventLoopUtilization: number;
  monotonicUs: [number, number];
  phasesMs: Record<string, number>;
  s3: { busyMs: number; ops: Record<string, { n: number; bytes: number; sumMs: number }> };
  stats: { files: number; bytes: number; filesRead: number; bytesUploaded: number; packsWritten: number };
  modes: string[];
  skipped: number;
  snapshotId: string;
}
interface Mem {
  peakMB: number;
  rssMB: number;
}
interface AgentResult {
  op: string;
  openSeconds: number;
  memAfterOpen?: Mem;
  full?: AgentBackup;
  memAfterFull?: Mem;
  /** Peak before the incremental's VmHWM reset (the reset also clears what /usr/bin/time reports). */
  memBeforeReset?: Mem;
  incr?: AgentBackup;
  memBeforeIncr?: Mem;
  memAfterIncr?: Mem;
  incrPeakIsPhaseOnly?: boolean;
  restore?: { seconds: number; cpuSeconds: number; pageFaults: number; threads: ThreadCpu; eventLoopUtilization: number; s3: AgentBackup['s3']; files: number; bytes: number; errors: number; firstErrors: unknown[]; ranges?: { direct: number; directFailed: number; directResent: number; viaStore: number } };
  mem?: Mem;
}

/**
 * Compile the agent script and everything it imports to plain JS in BUILD (tsc, no type check), so
 * the agent processes run as the shipped agent would: without tsx's loader (~35 MB of RSS).
 */
function compileAgent(): void {
  const tsc = path.join(REPO_ROOT, 'node_modules/typescript/bin/tsc');
  const opts = ['--noCheck', '--target', 'ES2022', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--esModuleInterop', '--skipLibCheck', '--types', 'node'];
  execFileSync(process.execPath, [tsc, ...opts, '--rootDir', REPO_ROOT, '--outDir', BUILD, AGENT], { cwd: REPO_ROOT, stdio: 'inherit' });
  writeFileSync(path.join(BUILD, 'package.json'), '{"type":"module"}\n');
  symlinkSync(path.join(REPO_ROOT, 'node_modules'), path.join(BUILD, 'node_modules'));
}

async function runAgent(op: string, args: Record<string, unknown>, env: NodeJS.ProcessEnv, onReady?: () => void, nodeFlags: string[] = []): Promise<{ t: Timed; r: AgentResult }> {
  const script = RUNNER === 'compiled' ? [path.join(BUILD, path.relative(REPO_ROOT, AGENT).replace(/\.ts$/, '.js'))] : ['--import', 'tsx', AGENT];
  const node = [...nodeFlags, ...(PROF ? ['--cpu-prof', '--cpu-prof-dir', PROF_DIR, '--cpu-prof-name', `${op}-${Date.now()}.cpuprofile`] : []), ...script, op, JSON.stringify(args)];
  const agent = agentProcess(env, LOW_MEMORY);
  const t = await runTimed(process.execPath, [...agent.flags, ...node], agent.env, (line, child) => {
    if (line === 'READY') {
      onReady?.();
      child.stdin!.write('go\n');
    }
  });
  const line = t.stdout.split('\n').find((l) => l.startsWith('@@RESULT '));
  if (!line) throw new Error(`agent ${op} printed no result`);
  return { t, r: JSON.parse(line.slice('@@RESULT '.length)) as AgentResult };
}

/** Agent crashes met (and worked around) in this run, for the report and the JSON line. */
const crashes: Array<{ op: string; error: string; workaround: string }> = [];
/**
 * V8's default stack (~1 MB) holds about 120,000 call arguments; a backup that adds more than
 * ~60,000 blobs overflows it in encodeIndex (`parts.push(c, ...entryParts)`, two arguments per
 * blob) after every pack is uploaded. When a backup agent dies of that, it is said loudly and the
 * operation is run again, from scratch (fresh bucket and agent state from `fresh`), with a bigger
 * V8 stack, so the other figures can still be measured.
 */
const STACK_WORKAROUND = ['--stack-size=4000'];
async function runBackupAgent(
  op: string,
  fresh: () => Promise<{ args: Record<string, unknown>; env: NodeJS.ProcessEnv }>,
  onReady?: () => void,
): Promise<{ t: Timed; r: AgentResult }> {
  const first = await fresh();
  try {
    return await runAgent(op, first.args, first.env, onReady, AGENT_FLAGS);
  } catch (err) {
    const msg = (err as Error).message;
    if (!/Maximum call stack size exceeded/.test(msg)) throw err;
    const where = /^\s+at .*$/m.exec(msg.slice(msg.indexOf('Maximum call stack size exceeded')))?.[0]?.trim() ?? '';
    const error = `RangeError: Maximum call stack size exceeded ${where}`;
    crashes.push({ op, error, workaround: `node ${STACK_WORKAROUND.join(' ')}` });
    log(`  !! Bulwark agent CRASHED (${op}): ${error}`);
    log(`  !! re-running the operation from scratch (fresh bucket and agent state) with node ${STACK_WORKAROUND.join(' ')} (workaround, not the shipped configuration)`);
    const again = await fresh();
    return runAgent(op, again.args, again.env, onReady, [...AGENT_FLAGS.filter((f) => !f.startsWith('--stack-size')), ...STACK_WORKAROUND]);
  }
}

function describeBackup(label: string, b: AgentBackup): void {
  const ops = Object.entries(b.s3.ops)
    .map(([k, v]) => `${k} ${v.n}${v.bytes ? ` (${fmt(v.bytes / 1e6)} MB)` : ''}${v.sumMs ? ` Σ${fmt(v.sumMs / 1000, 2)}s` : ''}`)
    .join(', ');
  const p = b.phasesMs;
  const phase = (k: string): string => (p[k] !== undefined ? `${fmt(p[k]! / 1000, 2)}s` : '-');
  log(`    ${label}: ${fmt(b.seconds, 2)} s, CPU ${fmt(b.cpuSeconds, 2)} s (${fmt((b.cpuSeconds / b.seconds) * 100, 0)}% of one core), event loop busy ${fmt(b.eventLoopUtilization * 100, 0)}%, mode ${b.modes.join(',')}, skipped ${b.skipped}`);
  log(`      CPU s by thread: ${threadLine(b.threads)}`);
  log(`      phases from call: first progress ${phase('first_scanning')}, walk done (finishing) ${phase('first_finishing')}, snapshot saved (done) ${phase('first_done')}, returned ${phase('returned')} (after done: journal commit, pack log)`);
  log(`      files ${b.stats.files}, read ${b.stats.filesRead}, ${fmt(b.stats.bytes / 1e6)} MB, uploaded ${fmt(b.stats.bytesUploaded / 1e6, 2)} MB in ${b.stats.packsWritten} packs`);
  log(`      S3: busy (≥1 request in flight) ${fmt(b.s3.busyMs / 1000, 2)} s; ${ops}`);
  if (PROF) log(`      CPU profile window (CLOCK_MONOTONIC µs): ${b.monotonicUs.join(' ')}`);
}

// ---------------------------------------------------------------------------------------------

interface Row {
  op: string;
  tool: string;
  seconds: number;
  bytes: number;
  files: number;
  peakMB: number;
  cpu: number;
  note?: string;
}

async function main(): Promise<void> {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  for (const bin of ['/usr/bin/time']) if (!existsSync(bin)) throw new Error(`${bin} missing: apt-get install -y time`);
  const s3 = s3Env();
  if (existsSync(BASE)) cleanup(BASE); // a kept or crashed run's
  await waitAfterLastCleanup();
  mkdirSync(BASE, { recursive: true });
  if (PROF) mkdirSync(PROF_DIR, { recursive: true });
  try {
    await run(s3);
  } finally {
    if (!KEEP) cleanup(BASE);
  }
}

async function run(s3: ReturnType<typeof s3Env>): Promise<void> {
  log(`backup bench: scale ${SCALE}, data in ${BASE}, S3 ${s3.endpoint}, ${(await import('node:os')).cpus().length} CPUs, node ${process.version}, restic ${execFileSync('restic', ['version'], { encoding: 'utf8' }).split(' ')[1]}`);
  if (RUNNER === 'compiled') compileAgent();
  log(`agent processes: ${RUNNER === 'compiled' ? `compiled JS (${path.relative(BASE, BUILD)}/, tsc --noCheck)` : 'node --import tsx'}`);
  const dirA = path.join(BASE, 'a');
  const dirT = path.join(BASE, 't');
  const t0 = performance.now();
  const A = makeDatasetA(dirA);
  const T = makeTree(dirT);
  const largeBytes = A.bytes - SMALL_FILES * SMALL_SIZE;
  log(`data: A = ${A.files.length} files, ${fmt(A.bytes / 1e6)} MB (${LARGE_FILES} mixed, ${fmt(largeBytes / 1e6)} MB, incl. ${BIG_FILES} × 32 MiB; ${SMALL_FILES} × 4 KiB); ` +
    `T = ${T.files.length} files × 1 KiB in ${Math.ceil(TREE_FILES / PER_DIR)} dirs; generated in ${fmt((performance.now() - t0) / 1000)} s`);

  // buckets: locked ones for Bulwark, plain ones for restic and rclone
  const client = rawS3Client(s3);
  const stamp = `${Date.now().toString(36)}-${randomBytes(2).toString('hex')}`;
  let buckets = 0;
  const bucket = async (name: string, locked: boolean): Promise<string> => {
    const b = `bench-${name}-${stamp}-${buckets++}`;
    await client.send(new CreateBucketCommand({ Bucket: b, ...(locked ? { ObjectLockEnabledForBucket: true } : {}) }));
    return b;
  };
  const [rsA, rsT, rc] = [await bucket('restic-a', false), await bucket('restic-t', false), await bucket('rclone', false)];

  const initRepo = async (b: string) => {
    const store = openS3Store({ endpoint: s3.endpoint, region: s3.region, bucket: b, prefix: 'repo', accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey });
    const lock = { mode: 'COMPLIANCE' as const, retainUntil: (await store.serverTime()) + LOCK_SECONDS * 1000 };
    const repo = await Repository.init(store, { passphrase: 'bulwark bench passphrase', lock });
    return { lock, masterKey: repo.masterKey.toString('hex') };
  };
  const s3Vars = { BULWARK_S3_ENDPOINT: s3.endpoint, BULWARK_S3_ACCESS_KEY: s3.accessKeyId, BULWARK_S3_SECRET_KEY: s3.secretAccessKey, BULWARK_S3_REGION: s3.region };
  const agentEnv = (masterKey: string): NodeJS.ProcessEnv => ({ ...process.env, ...s3Vars, BENCH_MASTER_KEY: masterKey, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' });
  const common = { prefix: 'repo', hostId: 'bench', ...(CONCURRENCY !== undefined ? { concurrency: CONCURRENCY } : {}) };

  const toolEnv: NodeJS.ProcessEnv = { ...process.env, RESTIC_PASSWORD, AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_DEFAULT_REGION: s3.region, RESTIC_CACHE_DIR: path.join(BASE, 'restic-cache') };
  delete toolEnv.AWS_CA_BUNDLE; // rclone (and restic) fail with it set in this environment
  const restic = (repo: string, args: string[]) => runTimed('restic', ['-r', `s3:${s3.endpoint}/${repo}`, ...args], toolEnv);
  const resticSummary = (out: string): { files_new?: number; files_changed?: number; files_unmodified?: number; data_added?: number; total_duration?: number } => {
    const line = out.split('\n').reverse().find((l) => l.includes('"message_type":"summary"'));
    return line ? JSON.parse(line) : {};
  };

  const rows: Row[] = [];

  // (a) full backup of A ------------------------------------------------------------------------
  log('\n(a) full backup of A');
  let bwA = '';
  let repoA = { lock: { mode: 'COMPLIANCE' as const, retainUntil: 0 }, masterKey: '' };
  let attempt = 0;
  await settle();
  const fullA = await runBackupAgent('full', async () => {
    bwA = await bucket('bw-a', true);
    repoA = await initRepo(bwA);
    const dataDir = path.join(BASE, `state-a-${attempt++}`);
    return { args: { ...common, bucket: bwA, dataDir, root: dirA, lock: repoA.lock, snapshotFile: path.join(BASE, 'snap-a') }, env: agentEnv(repoA.masterKey) };
  });
  const fA = fullA.r.full!;
  log(`  Bulwark: agent process ${fmt(fullA.t.wall, 2)} s wall (open repo + agent ${fmt(fullA.r.openSeconds, 2)} s), peak RSS ${fmt(fullA.t.peakMB, 0)} MB, CPU ${fmt(fullA.t.cpu, 1)} s`);
  describeBackup('backup', fA);
  rows.push({ op: '(a) full backup A', tool: 'Bulwark', seconds: fA.seconds, bytes: A.bytes, files: A.files.length, peakMB: fullA.t.peakMB, cpu: fullA.t.cpu });

  await restic(rsA, ['init']);
  await settle();
  const rFullA = await restic(rsA, ['backup', '--json', dirA]);
  const rsumA = resticSummary(rFullA.stdout);
  log(`  restic: ${fmt(rFullA.wall, 2)} s wall, peak RSS ${fmt(rFullA.peakMB, 0)} MB, CPU ${fmt(rFullA.cpu, 1)} s, files new ${rsumA.files_new}, data added ${fmt((rsumA.data_added ?? NaN) / 1e6)} MB`);
  rows.push({ op: '(a) full backup A', tool: 'restic', seconds: rFullA.wall, bytes: A.bytes, files: A.files.length, peakMB: rFullA.peakMB, cpu: rFullA.cpu });

  // rclone: the large files as plain objects ------------------------------------------------------
  const rcloneArgs = ['--s3-provider', 'Ceph', '--s3-endpoint', s3.endpoint, '--s3-access-key-id', s3.accessKeyId, '--s3-secret-access-key', s3.secretAccessKey, '--s3-region', s3.region, '--s3-force-path-style=true'];
  await settle();
  const rcl = await runTimed('rclone', ['copy', '-q', path.join(dirA, 'large'), `:s3:${rc}/x`, ...rcloneArgs, '--transfers', '4'], toolEnv);
  const rcloneMBps = largeBytes / 1e6 / rcl.wall;
  log(`  rclone copy of the ${LARGE_FILES} large files (${fmt(largeBytes / 1e6)} MB), 4 transfers: ${fmt(rcl.wall, 2)} s = ${fmt(rcloneMBps)} MB/s, peak RSS ${fmt(rcl.peakMB, 0)} MB, CPU ${fmt(rcl.cpu, 1)} s`);
  rows.push({ op: 'rclone copy A/large', tool: 'rclone', seconds: rcl.wall, bytes: largeBytes, files: LARGE_FILES, peakMB: rcl.peakMB, cpu: rcl.cpu });
  await runTimed('rclone', ['purge', '-q', `:s3:${rc}`, ...rcloneArgs], toolEnv).catch((e: Error) => log(`  (rclone purge failed: ${e.message.split('\n')[0]})`));

  // (b) tree T: full, then 10 changes, then the incremental ---------------------------------------
  log(`\n(b) tree T (${T.files.length} files): full backup, change ${CHANGED} files, incremental`);
  await settle();
  const watched = await runBackupAgent(
    'watched',
    async () => {
      const bwT = await bucket('bw-t', true);
      const repoT = await initRepo(bwT);
      const dataDir = path.join(BASE, `state-t-${attempt++}`);
      return { args: { ...common, bucket: bwT, dataDir, root: dirT, lock: repoT.lock, waitMs: WAIT_MS }, env: agentEnv(repoT.masterKey) };
    },
    () => void changeFiles(T, CHANGED, 7),
  );
  const w = watched.r;
  watched.t.peakMB = Math.max(watched.t.peakMB, w.memBeforeReset?.peakMB ?? 0);
  const wf = w.full!;
  const wi = w.incr!;
  log(`  Bulwark: agent process ${fmt(watched.t.wall, 2)} s wall; open repo + agent incl. chokidar ready on T ${fmt(w.openSeconds, 2)} s (RSS after open ${w.memAfterOpen?.rssMB} MB)`);
  describeBackup('full backup', wf);
  log(`      RSS after full backup ${w.memAfterFull?.rssMB} MB (peak so far ${w.memAfterFull?.peakMB} MB)`);
  describeBackup(`incremental (${WAIT_MS} ms after the changes)`, wi);
  log(`      RSS before incremental ${w.memBeforeIncr?.rssMB} MB, peak during incremental ${w.incrPeakIsPhaseOnly ? `${w.memAfterIncr?.peakMB} MB` : 'n/a (clear_refs not writable)'}, RSS after ${w.memAfterIncr?.rssMB} MB`);
  log(`    peak RSS of the whole agent process (chokidar + full + incremental): ${fmt(watched.t.peakMB, 0)} MB, CPU ${fmt(watched.t.cpu, 1)} s`);
  rows.push({ op: '(b) full backup T', tool: 'Bulwark', seconds: wf.seconds, bytes: T.bytes, files: T.files.length, peakMB: watched.t.peakMB, cpu: wf.cpuSeconds, note: 'RSS: whole process; CPU: in backup' });
  rows.push({ op: '(b) incremental T', tool: 'Bulwark', seconds: wi.seconds, bytes: T.bytes, files: T.files.length, peakMB: watched.t.peakMB, cpu: wi.cpuSeconds, note: `mode ${wi.modes.join(',')}; RSS: whole process` });

  await restic(rsT, ['init']);
  await settle();
  const rFullT = await restic(rsT, ['backup', '--json', dirT]);
  changeFiles(T, CHANGED, 8);
  const rIncT = await restic(rsT, ['backup', '--json', dirT]);
  const rsI = resticSummary(rIncT.stdout);
  log(`  restic: full ${fmt(rFullT.wall, 2)} s (peak RSS ${fmt(rFullT.peakMB, 0)} MB, CPU ${fmt(rFullT.cpu, 1)} s); incremental ${fmt(rIncT.wall, 2)} s (peak RSS ${fmt(rIncT.peakMB, 0)} MB, CPU ${fmt(rIncT.cpu, 1)} s): files changed ${rsI.files_changed}, new ${rsI.files_new}, unmodified ${rsI.files_unmodified}, data added ${rsI.data_added} B`);
  rows.push({ op: '(b) full backup T', tool: 'restic', seconds: rFullT.wall, bytes: T.bytes, files: T.files.length, peakMB: rFullT.peakMB, cpu: rFullT.cpu });
  rows.push({ op: '(b) incremental T', tool: 'restic', seconds: rIncT.wall, bytes: T.bytes, files: T.files.length, peakMB: rIncT.peakMB, cpu: rIncT.cpu });

  // (c) full restore of A (last: it drops the page cache, which would make (b) read T cold) -----
  // Two rounds in alternating order (Bulwark, restic; then restic, Bulwark), each restore started on
  // a settled disk (sync, page cache dropped) into a fresh directory, with every earlier output left
  // in place until the run ends: in one fixed order without that, the second tool wrote while the
  // kernel flushed the first one's gigabyte, which favoured whoever went first (Bulwark, up to
  // session 2); and deleting each output before the next restore slowed every later restore.
  log(`\n(c) full restore of A into an empty directory: ${RESTORE_ROUNDS} rounds in alternating order, each on a settled disk`);
  // each restore into a directory of its own, all kept until the end of the run (see cleanup)
  const tgtB = (): string => path.join(BASE, `restore-bulwark-${bwRestores.length}`);
  const tgtR = (): string => path.join(BASE, `restore-restic-${rsRestores.length}`);
  const bwRestores: Array<{ rr: NonNullable<AgentResult['restore']>; t: Timed; ok: boolean }> = [];
  const rsRestores: Array<{ t: Timed; ok: boolean }> = [];
  const bulwarkRestore = async (): Promise<void> => {
    await settle(true);
    const target = tgtB();
    const rest = await runAgent('restore', { ...common, bucket: bwA, dataDir: path.join(BASE, `state-restore-${bwRestores.length}`), snapshotId: readFileSync(path.join(BASE, 'snap-a'), 'utf8'), target }, agentEnv(repoA.masterKey), undefined, AGENT_FLAGS);
    const rr = rest.r.restore!;
    const vB = verifyRestore(A, dirA, target);
    log(`  Bulwark: restore ${fmt(rr.seconds, 2)} s (agent process ${fmt(rest.t.wall, 2)} s wall, open ${fmt(rest.r.openSeconds, 2)} s), CPU in restore ${fmt(rr.cpuSeconds, 1)} s (${fmt((rr.cpuSeconds / rr.seconds) * 100, 0)}% of one core), ${rr.pageFaults} page faults, event loop busy ${fmt(rr.eventLoopUtilization * 100, 0)}%, peak RSS ${fmt(rest.t.peakMB, 0)} MB`);
    log(`    CPU s by thread (threads alive at the end): ${threadLine(rr.threads)}`);
    log(`    page cache dropped before: ${cacheDropped ? 'yes' : 'NO (not root?)'}; ranges fetched by the workers ${rr.ranges?.direct ?? 0} (failed ${rr.ranges?.directFailed ?? 0}, sent again on a new connection ${rr.ranges?.directResent ?? 0}), through the store ${rr.ranges?.viaStore ?? 0}`);
    log(`    ${rr.files} files, ${fmt(rr.bytes / 1e6)} MB, ${rr.errors} errors${rr.errors ? ` ${JSON.stringify(rr.firstErrors)}` : ''}; S3 busy ${fmt(rr.s3.busyMs / 1000, 2)} s; ${Object.entries(rr.s3.ops).map(([k, v]) => `${k} ${v.n}${v.bytes ? ` (${fmt(v.bytes / 1e6)} MB)` : ''}`).join(', ')}`);
    log(`    verify: ${vB.ok ? 'MATCH' : 'MISMATCH'} — ${vB.detail}`);
    bwRestores.push({ rr, t: rest.t, ok: vB.ok });
  };
  const resticRestore = async (): Promise<void> => {
    await settle(true);
    const target = tgtR();
    const t = await restic(rsA, ['restore', 'latest', '--target', target]);
    const vR = verifyRestore(A, dirA, target);
    log(`  restic: ${fmt(t.wall, 2)} s wall, peak RSS ${fmt(t.peakMB, 0)} MB, CPU ${fmt(t.cpu, 1)} s`);
    log(`    verify: ${vR.ok ? 'MATCH' : 'MISMATCH'} — ${vR.detail}`);
    rsRestores.push({ t, ok: vR.ok });
  };
  for (let round = 0; round < RESTORE_ROUNDS; round++) {
    if (round % 2 === 0) {
      await bulwarkRestore();
      await resticRestore();
    } else {
      await resticRestore();
      await bulwarkRestore();
    }
  }
  const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
  // Bulwark: the restore's own seconds (inside the agent, repository open excluded); restic: its process
  const rr = { ...bwRestores[0]!.rr, seconds: mean(bwRestores.map((b) => b.rr.seconds)), cpuSeconds: mean(bwRestores.map((b) => b.rr.cpuSeconds)) };
  const rest = { t: { ...bwRestores[0]!.t, peakMB: Math.max(...bwRestores.map((b) => b.t.peakMB)), cpu: mean(bwRestores.map((b) => b.t.cpu)) } };
  const rRest = { ...rsRestores[0]!.t, wall: mean(rsRestores.map((r) => r.t.wall)), peakMB: Math.max(...rsRestores.map((r) => r.t.peakMB)), cpu: mean(rsRestores.map((r) => r.t.cpu)) };
  const vB = { ok: bwRestores.every((b) => b.ok) };
  const vR = { ok: rsRestores.every((r) => r.ok) };
  log(`  mean of ${RESTORE_ROUNDS}: Bulwark ${fmt(rr.seconds, 2)} s (${bwRestores.map((b) => fmt(b.rr.seconds, 2)).join(', ')}), restic ${fmt(rRest.wall, 2)} s (${rsRestores.map((r) => fmt(r.t.wall, 2)).join(', ')})`);
  rows.push({ op: '(c) restore A', tool: 'Bulwark', seconds: rr.seconds, bytes: A.bytes, files: A.files.length, peakMB: rest.t.peakMB, cpu: rest.t.cpu, note: `${vB.ok ? 'verified' : 'MISMATCH'}; mean of ${RESTORE_ROUNDS}` });
  rows.push({ op: '(c) restore A', tool: 'restic', seconds: rRest.wall, bytes: A.bytes, files: A.files.length, peakMB: rRest.peakMB, cpu: rRest.cpu, note: `${vR.ok ? 'verified' : 'MISMATCH'}; mean of ${RESTORE_ROUNDS}` });

  // summary ----------------------------------------------------------------------------------------
  log('\nsummary (MB = 10^6 B; MB/s and files/s = dataset size / seconds; for incrementals that is the size of the whole tree T)');
  log(`  ${'operation'.padEnd(20)} ${'tool'.padEnd(8)} ${'seconds'.padStart(8)} ${'MB/s'.padStart(8)} ${'files/s'.padStart(9)} ${'peak RSS MB'.padStart(11)} ${'CPU s'.padStart(7)}  note`);
  for (const r of rows) {
    log(`  ${r.op.padEnd(20)} ${r.tool.padEnd(8)} ${fmt(r.seconds, 2).padStart(8)} ${fmt(r.bytes / 1e6 / r.seconds).padStart(8)} ${fmt(r.files / r.seconds, 0).padStart(9)} ${fmt(r.peakMB, 0).padStart(11)} ${fmt(r.cpu, 1).padStart(7)}  ${r.note ?? ''}`);
  }
  const fullMBps = A.bytes / 1e6 / fA.seconds;
  log('\nratios (time Bulwark / time restic: < 1 means Bulwark is faster)');
  log(`  (a) full backup A    ${fmt(fA.seconds / rFullA.wall, 2)}`);
  log(`  (b) full backup T    ${fmt(wf.seconds / rFullT.wall, 2)}`);
  log(`  (b) incremental T    ${fmt(wi.seconds / rIncT.wall, 3)}`);
  log(`  (c) restore A        ${fmt(rr.seconds / rRest.wall, 2)}`);
  log(`  Bulwark full MB/s / rclone large MB/s: ${fmt(fullMBps, 1)} / ${fmt(rcloneMBps, 1)} = ${fmt(fullMBps / rcloneMBps, 2)}`);
  log(`  peak RSS Bulwark / restic: full A ${fmt(fullA.t.peakMB / rFullA.peakMB, 2)}, tree T ${fmt(watched.t.peakMB / Math.max(rFullT.peakMB, rIncT.peakMB), 2)}, restore ${fmt(rest.t.peakMB / rRest.peakMB, 2)}`);

  if (crashes.length > 0) {
    log('\n!! Bulwark agent crashes in this run (the figures above are from the re-run with the workaround):');
    for (const c of crashes) log(`  ${c.op}: ${c.error}; re-run with ${c.workaround}`);
  }

  const json = {
    bench: 'backup',
    full_s: round3(fA.seconds),
    restic_full_s: round3(rFullA.wall),
    incr_s: round3(wi.seconds),
    restic_incr_s: round3(rIncT.wall),
    restore_s: round3(rr.seconds),
    restic_restore_s: round3(rRest.wall),
    agent_peak_rss_MB: round3(watched.t.peakMB),
    rclone_large_MBps: round3(rcloneMBps),
    full_MBps: round3(fullMBps),
    restic_full_MBps: round3(A.bytes / 1e6 / rFullA.wall),
    restore_MBps: round3(A.bytes / 1e6 / rr.seconds),
    restic_restore_MBps: round3(A.bytes / 1e6 / rRest.wall),
    tree_full_s: round3(wf.seconds),
    restic_tree_full_s: round3(rFullT.wall),
    incr_mode: wi.modes.join(','),
    incr_phase_peak_rss_MB: w.incrPeakIsPhaseOnly ? (w.memAfterIncr?.peakMB ?? null) : null,
    restic_tree_peak_rss_MB: round3(Math.max(rFullT.peakMB, rIncT.peakMB)),
    full_peak_rss_MB: round3(fullA.t.peakMB),
    restic_full_peak_rss_MB: round3(rFullA.peakMB),
    restore_peak_rss_MB: round3(rest.t.peakMB),
    restic_restore_peak_rss_MB: round3(rRest.peakMB),
    restore_verified: vB.ok,
    restic_restore_verified: vR.ok,
    scale: SCALE,
    agent_crashes: crashes.map((c) => `${c.op}: ${c.error}; re-run with ${c.workaround}`),
  };
  log(JSON.stringify(json));
}

await main();
