/**
 * The controller under a fleet: BENCH_AGENTS (default 1,000) simulated agents — light gRPC clients
 * speaking the AgentService protocol (enroll, Session: hello → config → job → result), not
 * AgentCore — connected to one controller, which runs in its own process
 * (scripts/bench/controller-child.ts) so that its RSS is read alone from /proc/<pid>/status.
 *
 *   1. setup      the local RGW when BULWARK_S3_* is unset (scripts/s3-local.sh up), a bucket with
 *                 Object Lock, the controller child; through the admin API (admin.json, mTLS): a
 *                 target and one policy covering every host ("every 1h", retention "1h")
 *   2. enroll     per agent: admin CreateToken, a P-256 key + CSR (createKeyAndCsr),
 *                 AgentService.Enroll (BENCH_ENROLL_CONCURRENCY in flight, default 16)
 *   3. connect    every agent opens its Session at once (mTLS with its own certificate, one
 *                 channel each), sends hello and waits for its config; heartbeats every 15 s as
 *                 the real agent (BENCH_HEARTBEAT_MS, 0 = none)
 *   4. dispatch   admin StartBackup for every agent, BENCH_CONCURRENCY (default 50) in flight; the
 *                 dispatch latency is from the StartBackup call to the agent receiving the job
 *                 message. Agents answer each job at once with a result: failed (ok: false,
 *                 INTERNAL "simulated agent") by default; BENCH_RESULT=ok sends ok: true with an
 *                 empty snapshot id (the controller then fails the job itself: "recording the
 *                 snapshot failed")
 *   5. scheduler  (BENCH_TICK_ROUND=0 skips it) one scheduler tick (Controller.tick, run in the
 *                 child on command) while every host is due: the latency is from the tick's start
 *                 to each agent receiving its job. The controller's own timer is set to
 *                 BENCH_TICK_MS (default 1 h) so that it does not queue jobs behind the
 *                 benchmark's back: hosts whose last backup failed are due again at every tick.
 *
 * Prints the controller's VmRSS and VmHWM after each phase (and its peak, VmHWM or the highest VmRSS
 * sampled every 100 ms), its V8 heap (after each reading a full GC is forced in the controller to
 * report the live heap), its CPU seconds per phase, the benchmark process's event-loop delay (the
 * agents' clock: a late reading inflates latencies); asserts nothing. Native functions in the CPU
 * profiles may carry a wrong name (classic-level's LevelDB binding shows as getDictIDFromFrame).
 * MB = 10^6 bytes. The last line is one JSON object:
 *   {"bench":"controller","agents":…,"dispatch_p99_ms":…,"rss_MB":… (peak controller RSS), …}
 *
 * Run: npx tsx scripts/bench/controller.ts
 * Env: BENCH_AGENTS (1000), BENCH_CONCURRENCY (50), BENCH_ENROLL_CONCURRENCY (16),
 *      BENCH_RESULT (fail | ok), BENCH_TICK_ROUND (1), BENCH_TICK_MS (3600000),
 *      BENCH_HEARTBEAT_MS (15000),
 *      BENCH_SEED_JOBS (0): past succeeded backup jobs written per host, a fleet's job history
 *        (the catalog keeps every job),
 *      BENCH_SEED_SNAPSHOTS (0): live snapshots per host written into the catalog with
 *        BENCH_SEED_PACKS (20) packs each and their lock ends; nothing in S3 (what the look-ahead
 *        reads),
 *      BENCH_SEED_AT (before-connect, the default: a controller restarted with that history, its
 *        fleet reconnecting; after-connect: seeded once the sessions are up),
 *      BENCH_RUNNER (compiled, the default: the controller child and its imports are compiled to
 *        JS with tsc --noCheck first; tsx: `node --import tsx`, ~35 MB more RSS),
 *      BENCH_PROF=1 (CPU profiles of the controller during the connect, dispatch and scheduler
 *        phases, top functions printed, files kept in BENCH_PROF_DIR, default
 *        /tmp/bulwark-ctlbench-prof),
 *      BENCH_KEEP=1 (keep the temp dir: data dir, controller log),
 *      BULWARK_S3_* (the endpoint). The bucket is left in place (its objects are locked).
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { mtlsCredentials } from '../../agent/identity.js';
import type { AdminBundle } from '../../controller/controller.js';
import { AdminServiceClient, type JobInfo } from '../../common/gen/bulwark/v1/admin.js';
import { AgentServiceClient, type AgentMessage, type ControllerMessage, type EnrollResponse } from '../../common/gen/bulwark/v1/agent.js';
import { createKeyAndCsr, decodeToken, fetchPinnedCa, fingerprint } from '../../common/pki.js';
import { rawS3Client, s3Env } from './s3-env.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(HERE, '../..');
const CHILD = path.join(HERE, 'controller-child.ts');

const env = process.env;
const num = (k: string, d: number): number => {
  const v = env[k] === undefined || env[k] === '' ? d : Number(env[k]);
  if (!Number.isFinite(v) || v < 0) throw new Error(`${k} must be a number >= 0, got ${env[k]}`);
  return v;
};
const AGENTS = num('BENCH_AGENTS', 1000);
const CONCURRENCY = Math.max(1, num('BENCH_CONCURRENCY', 50));
const ENROLL_CONCURRENCY = Math.max(1, num('BENCH_ENROLL_CONCURRENCY', 16));
const RESULT = env.BENCH_RESULT ?? 'fail';
const TICK_ROUND = env.BENCH_TICK_ROUND !== '0';
const TICK_MS = num('BENCH_TICK_MS', 3_600_000);
const HEARTBEAT_MS = num('BENCH_HEARTBEAT_MS', 15_000);
const SEED_JOBS = num('BENCH_SEED_JOBS', 0);
const SEED_SNAPSHOTS = num('BENCH_SEED_SNAPSHOTS', 0);
const SEED_PACKS = num('BENCH_SEED_PACKS', 20);
const SEED_AFTER_CONNECT = env.BENCH_SEED_AT === 'after-connect';
const RUNNER = env.BENCH_RUNNER ?? 'compiled';
const PROF = env.BENCH_PROF === '1';
const PROF_DIR = env.BENCH_PROF_DIR ?? '/tmp/bulwark-ctlbench-prof';
const KEEP = env.BENCH_KEEP === '1';
if (RESULT !== 'fail' && RESULT !== 'ok') throw new Error(`BENCH_RESULT must be fail or ok, got ${RESULT}`);
if (RUNNER !== 'compiled' && RUNNER !== 'tsx') throw new Error(`BENCH_RUNNER must be compiled or tsx, got ${RUNNER}`);
if (!(AGENTS >= 1)) throw new Error('BENCH_AGENTS must be at least 1');

const POLICY = { name: 'all', schedule: 'every 1h', retention: '1h' };
const STEP_TIMEOUT_MS = 600_000;

const log = (s: string): void => console.log(s);
const fmt = (n: number, d = 1): string => (Number.isFinite(n) ? n.toFixed(d) : 'n/a');
const r1 = (n: number): number | null => (Number.isFinite(n) ? Math.round(n * 10) / 10 : null);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Helpers


/** Nearest-rank percentile of an ascending array. */
function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

function dist(values: number[]): { n: number; p50: number; p90: number; p99: number; max: number; mean: number } {
  const s = [...values].sort((a, b) => a - b);
  return { n: s.length, p50: pct(s, 50), p90: pct(s, 90), p99: pct(s, 99), max: s.at(-1) ?? NaN, mean: s.reduce((a, b) => a + b, 0) / (s.length || 1) };
}

const distLine = (d: ReturnType<typeof dist>): string => `p50 ${fmt(d.p50)} ms, p90 ${fmt(d.p90)} ms, p99 ${fmt(d.p99)} ms, max ${fmt(d.max)} ms (n=${d.n})`;

interface ProcMem {
  rssKiB: number;
  hwmKiB: number;
}

/** The highest VmRSS or VmHWM read so far (Linux updates VmHWM lazily: a reading can miss a peak). */
let peakKiB = 0;

function procMem(pid: number): ProcMem {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN);
  const m = { rssKiB: kib('VmRSS'), hwmKiB: kib('VmHWM') };
  peakKiB = Math.max(peakKiB, m.rssKiB || 0, m.hwmKiB || 0);
  return { rssKiB: m.rssKiB, hwmKiB: Math.max(m.hwmKiB, peakKiB) };
}

const MB = (kib: number): number => (kib * 1024) / 1e6;

/** The child's process.memoryUsage() in MB: where the RSS is (V8 heap vs native). */
function heapLine(st: ChildReply): string {
  const m = st.memory as NodeJS.MemoryUsage;
  return `V8 heap ${fmt(m.heapTotal / 1e6)} MB of which used ${fmt(m.heapUsed / 1e6)} MB, live after a full GC ${fmt((st.liveHeap as number) / 1e6)} MB; external ${fmt(m.external / 1e6)} MB`;
}

/** This process's CPU seconds (user + system). */
const selfCpu = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

/** utime + stime of a process, seconds (USER_HZ is 100 on Linux). */
function procCpu(pid: number): number {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)))]).finally(() => clearTimeout(timer));
}

function rpc<Res>(f: (cb: (err: grpc.ServiceError | null, r: Res) => void) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => {
    f((err, r) => (err ? reject(new Error(`${grpc.status[err.code] ?? err.code}: ${err.details || err.message}`)) : resolve(r)));
  });
}

const opts = (): [grpc.Metadata, Partial<grpc.CallOptions>] => [new grpc.Metadata(), { deadline: Date.now() + STEP_TIMEOUT_MS }];

/** Run `fn` over items with `limit` in flight. */
async function pool<T>(items: T[], limit: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

// ---------------------------------------------------------------------------------------------
// The controller child

/** Compile the child and everything it imports to plain JS (tsc, no type check): no tsx loader in its RSS. */
function compileChild(build: string): string {
  const tsc = path.join(REPO_ROOT, 'node_modules/typescript/bin/tsc');
  const flags = ['--noCheck', '--target', 'ES2022', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--esModuleInterop', '--skipLibCheck', '--types', 'node'];
  execFileSync(process.execPath, [tsc, ...flags, '--rootDir', REPO_ROOT, '--outDir', build, CHILD], { cwd: REPO_ROOT, stdio: 'inherit' });
  writeFileSync(path.join(build, 'package.json'), '{"type":"module"}\n');
  symlinkSync(path.join(REPO_ROOT, 'node_modules'), path.join(build, 'node_modules'));
  return path.join(build, path.relative(REPO_ROOT, CHILD).replace(/\.ts$/, '.js'));
}

type ChildReply = Record<string, unknown> & { id?: number; ok?: boolean; error?: string };

class ControllerChild {
  readonly proc: ChildProcess;
  readonly ready: Promise<{ address: string; pid: number }>;
  private pending = new Map<number, { resolve: (r: ChildReply) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  exited = false;

  constructor(script: string[], dataDir: string, options: Record<string, unknown>, logFile: string) {
    const fd = openSync(logFile, 'a');
    this.proc = spawn(process.execPath, ['--expose-gc', ...script, dataDir, JSON.stringify(options)], { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', fd] });
    closeSync(fd);
    let onReady!: (r: { address: string; pid: number }) => void;
    let onFail!: (e: Error) => void;
    this.ready = new Promise((resolve, reject) => {
      onReady = resolve;
      onFail = reject;
    });
    createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      if (!line.startsWith('@@')) return;
      const m = JSON.parse(line.slice(2)) as ChildReply;
      if (m.event === 'ready') onReady({ address: m.address as string, pid: m.pid as number });
      else if (typeof m.id === 'number') {
        const p = this.pending.get(m.id);
        this.pending.delete(m.id);
        if (m.ok) p?.resolve(m);
        else p?.reject(new Error(`controller child: ${m.error}`));
      }
    });
    this.proc.on('exit', (code, signal) => {
      this.exited = true;
      const err = new Error(`the controller process exited (${signal ?? code}); its log: ${logFile}`);
      onFail(err);
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    });
  }

  cmd(cmd: string, args: Record<string, unknown> = {}, timeoutMs = STEP_TIMEOUT_MS): Promise<ChildReply> {
    if (this.exited) return Promise.reject(new Error('the controller process has exited'));
    const id = this.nextId++;
    const p = new Promise<ChildReply>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    this.proc.stdin!.write(`${JSON.stringify({ id, cmd, ...args })}\n`);
    return withTimeout(p, timeoutMs, `controller command ${cmd}`);
  }

  async stop(): Promise<void> {
    if (this.exited) return;
    const exited = new Promise<void>((r) => this.proc.once('exit', () => r()));
    try {
      await this.cmd('stop', {}, 30_000);
      await withTimeout(exited, 10_000, 'controller exit');
    } catch (err) {
      log(`controller stop: ${(err as Error).message}; killing pid ${this.proc.pid}`);
      this.proc.kill('SIGKILL');
      await withTimeout(exited, 10_000, 'controller exit').catch(() => undefined);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The simulated agent

class SimAgent {
  hostId = '';
  certPem = '';
  keyPem = '';
  private client: AgentServiceClient | undefined;
  private call: grpc.ClientDuplexStream<AgentMessage, ControllerMessage> | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private jobWaiters: Array<(t: number) => void> = [];
  private onConfig: ((t: number) => void) | undefined;
  configs = 0;
  jobs = 0;
  errors: string[] = [];
  closing = false;

  constructor(readonly hostname: string) {}

  /** Open the Session and say hello; resolves at the first config (its receipt time). */
  connect(address: string, caPem: string): Promise<number> {
    const configured = new Promise<number>((resolve) => (this.onConfig = resolve));
    // one channel per agent: its own client certificate, so nothing could be shared anyway
    this.client = new AgentServiceClient(address, mtlsCredentials({ caPem, certPem: this.certPem, keyPem: this.keyPem }), { 'grpc.keepalive_time_ms': 30_000 });
    const call = this.client.session();
    this.call = call;
    call.on('data', (m: ControllerMessage) => this.onMessage(m));
    call.on('error', (err: grpc.ServiceError) => {
      if (!this.closing) this.errors.push(`session error: ${err.details || err.message}`);
    });
    call.on('end', () => {
      if (!this.closing) this.errors.push('session ended by the controller');
    });
    call.write({ body: { $case: 'hello', value: { agentVersion: '0.1.0-bench', hostname: this.hostname, lastSnapshotId: '' } } });
    if (HEARTBEAT_MS > 0) {
      // spread over the period as a fleet's would be
      const first = setTimeout(() => {
        this.beat();
        this.heartbeat = setInterval(() => this.beat(), HEARTBEAT_MS);
      }, Math.random() * HEARTBEAT_MS);
      this.heartbeat = first;
    }
    return configured;
  }

  private beat(): void {
    this.call?.write({ body: { $case: 'heartbeat', value: { timeMs: BigInt(Date.now()) } } });
  }

  /** The receipt time of the next job message. */
  nextJob(): Promise<number> {
    return new Promise((resolve) => this.jobWaiters.push(resolve));
  }

  private onMessage(m: ControllerMessage): void {
    const t = performance.now();
    const b = m.body;
    if (!b) return;
    if (b.$case === 'config') {
      this.configs++;
      this.onConfig?.(t);
      this.onConfig = undefined;
    } else if (b.$case === 'job') {
      this.jobs++;
      const waiters = this.jobWaiters;
      this.jobWaiters = [];
      for (const w of waiters) w(t);
      const jobId = b.value.jobId;
      this.call?.write({
        body: {
          $case: 'result',
          value:
            RESULT === 'ok'
              ? { jobId, ok: true, error: undefined, snapshotId: '', issues: [], files: 0n, bytes: 0n }
              : { jobId, ok: false, error: { code: 'INTERNAL', message: 'simulated agent' }, snapshotId: '', issues: [], files: 0n, bytes: 0n },
        },
      });
    }
  }

  close(): void {
    this.closing = true;
    clearTimeout(this.heartbeat);
    clearInterval(this.heartbeat);
    this.call?.end();
    this.call?.cancel();
    this.client?.close();
  }
}

// ---------------------------------------------------------------------------------------------
// CPU profile summary

interface ProfNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}

function summarizeProfile(file: string, top = 15): string[] {
  const p = JSON.parse(readFileSync(file, 'utf8')) as { nodes: ProfNode[]; startTime: number; endTime: number; samples: number[] };
  const totalMs = (p.endTime - p.startTime) / 1000;
  const perSample = totalMs / Math.max(1, p.samples.length);
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const key = (n: ProfNode): string => {
    const u = n.callFrame.url.replace(/^file:\/\//, '');
    const rel = u.includes('/node_modules/') ? u.slice(u.lastIndexOf('/node_modules/') + 14) : u.replace(/^.*\/build\//, '').replace(`${REPO_ROOT}/`, '');
    return `${n.callFrame.functionName || '(anonymous)'}${rel ? ` ${rel}:${n.callFrame.lineNumber + 1}` : ''}`;
  };
  const self = new Map<string, number>();
  const incl = new Map<string, number>();
  let idle = 0;
  // inclusive time per function, a recursive function counted once per stack
  const walk = (n: ProfNode, onStack: Set<string>): number => {
    const k = key(n);
    const s = (n.hitCount ?? 0) * perSample;
    if (n.callFrame.functionName === '(idle)') idle += s;
    self.set(k, (self.get(k) ?? 0) + s);
    const had = onStack.has(k);
    onStack.add(k);
    let total = s;
    for (const c of n.children ?? []) total += walk(byId.get(c)!, onStack);
    if (!had) {
      onStack.delete(k);
      incl.set(k, (incl.get(k) ?? 0) + total);
    }
    return total;
  };
  walk(p.nodes[0]!, new Set());
  const busy = totalMs - idle;
  const skip = new Set(['(root)', '(idle)']);
  const fmtRow = ([k, ms]: [string, number]) => `      ${fmt(ms, 0).padStart(7)} ms ${fmt((100 * ms) / Math.max(1, busy), 1).padStart(5)} %  ${k}`;
  return [
    `    profile ${file}: ${fmt(totalMs / 1000, 2)} s, busy ${fmt(busy / 1000, 2)} s (not idle)`,
    '    top self time (% of busy):',
    ...[...self].filter(([k]) => !skip.has(k)).sort((a, b) => b[1] - a[1]).slice(0, top).map(fmtRow),
    '    top inclusive time of the project\'s functions (synchronous stacks only: an async function\'s awaited work counts where it resumes):',
    ...[...incl].filter(([k]) => /(controller|common|agent)\//.test(k) && !k.includes('node_modules')).sort((a, b) => b[1] - a[1]).slice(0, top).map(fmtRow),
  ];
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<void> {
  const base = mkdtempSync(path.join(os.tmpdir(), 'bulwark-ctlbench-'));
  const dataDir = path.join(base, 'controller');
  const logFile = path.join(base, 'controller.log');
  let child: ControllerChild | undefined;
  let admin: AdminServiceClient | undefined;
  let enrollClient: AgentServiceClient | undefined;
  const agents: SimAgent[] = [];
  let sampler: NodeJS.Timeout | undefined;
  const cleanup = async () => {
    clearInterval(sampler);
    for (const a of agents) a.close();
    enrollClient?.close();
    admin?.close();
    await child?.stop();
    if (KEEP) log(`kept ${base}`);
    else rmSync(base, { recursive: true, force: true });
  };
  const onSignal = () => {
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    log(`controller benchmark: ${AGENTS} simulated agents, StartBackup ${CONCURRENCY} in flight, agents answer ${RESULT === 'ok' ? 'ok (empty snapshot id)' : 'failed'}; ${os.cpus().length} CPUs, node ${process.version}`);
    const s3 = s3Env();
    const bucket = `bulwark-ctlbench-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
    const raw = rawS3Client(s3);
    await raw.send(new CreateBucketCommand({ Bucket: bucket, ObjectLockEnabledForBucket: true }));
    raw.destroy();

    // -- 1. controller, target, policy
    let script: string[];
    if (RUNNER === 'compiled') {
      const t = performance.now();
      script = [compileChild(path.join(base, 'build'))];
      log(`compiled the controller child (tsc --noCheck) in ${fmt((performance.now() - t) / 1000, 1)} s`);
    } else {
      script = ['--import', 'tsx', CHILD];
    }
    const tStart = performance.now();
    child = new ControllerChild(script, dataDir, { tickMs: TICK_MS }, logFile);
    const { address, pid } = await withTimeout(child.ready, 60_000, 'controller start');
    const cpu0 = procCpu(pid);
    const mem0 = procMem(pid);
    // the peak between readings
    sampler = setInterval(() => {
      try {
        procMem(pid);
      } catch {
        // the process is gone
      }
    }, 100);
    log(`controller pid ${pid} listening on ${address} (started in ${fmt(performance.now() - tStart, 0)} ms; log ${KEEP ? logFile : 'in the temp dir'}); RSS ${fmt(MB(mem0.rssKiB))} MB`);
    const bundle = JSON.parse(readFileSync(path.join(dataDir, 'admin.json'), 'utf8')) as AdminBundle;
    admin = new AdminServiceClient(bundle.address, grpc.credentials.createSsl(Buffer.from(bundle.caPem), Buffer.from(bundle.keyPem), Buffer.from(bundle.certPem)));
    const a0 = admin;
    const tTarget = performance.now();
    const target = await rpc<{ repoId: string }>((cb) =>
      a0.addTarget(
        {
          name: 'bench',
          spec: { endpoint: s3.endpoint, region: s3.region, bucket, prefix: 'fleet', agentAccessKeyId: s3.accessKeyId, agentSecretAccessKey: s3.secretAccessKey, maintainerAccessKeyId: '', maintainerSecretAccessKey: '' },
          passphrase: 'bulwark controller bench passphrase',
        },
        ...opts(),
        cb,
      ),
    );
    await rpc((cb) => a0.createPolicy({ name: POLICY.name, target: 'bench', hosts: [], paths: ['/data'], excludes: [], schedule: POLICY.schedule, retention: POLICY.retention, lockMode: 'COMPLIANCE' }, ...opts(), cb));
    log(`target bench (bucket ${bucket}, repo ${target.repoId}) and policy "${POLICY.name}" (all hosts, ${POLICY.schedule}, retention ${POLICY.retention}) added in ${fmt(performance.now() - tTarget, 0)} ms`);

    // -- 2. enroll
    const caPem = await fetchPinnedCa(address, fingerprint(bundle.caPem));
    enrollClient = new AgentServiceClient(address, grpc.credentials.createSsl(Buffer.from(caPem)));
    const ec = enrollClient;
    for (let i = 0; i < AGENTS; i++) agents.push(new SimAgent(`bench-${String(i).padStart(5, '0')}`));
    let tokenMs = 0;
    let keyMs = 0;
    let enrollMs = 0;
    const tEnroll = performance.now();
    await pool(agents, ENROLL_CONCURRENCY, async (a) => {
      let t = performance.now();
      const tok = await rpc<{ token: string }>((cb) => a0.createToken({ validFor: '1h' }, ...opts(), cb));
      const secret = decodeToken(tok.token).secret;
      tokenMs += performance.now() - t;
      t = performance.now();
      const { keyPem, csrPem } = await createKeyAndCsr(a.hostname);
      keyMs += performance.now() - t;
      t = performance.now();
      const res = await rpc<EnrollResponse>((cb) => ec.enroll({ tokenSecret: secret, hostname: a.hostname, csrPem }, ...opts(), cb));
      enrollMs += performance.now() - t;
      a.hostId = res.hostId;
      a.keyPem = keyPem;
      a.certPem = res.clientCertPem;
    });
    const enrollWall = performance.now() - tEnroll;
    enrollClient.close();
    enrollClient = undefined;
    const cpuEnroll = procCpu(pid);
    const memEnroll = procMem(pid);
    log(
      `enrolled ${AGENTS} agents in ${fmt(enrollWall / 1000, 2)} s (${ENROLL_CONCURRENCY} in flight; summed over agents: CreateToken ${fmt(tokenMs / 1000, 1)} s, key + CSR ${fmt(keyMs / 1000, 1)} s, Enroll ${fmt(enrollMs / 1000, 1)} s); ` +
        `controller CPU ${fmt(cpuEnroll - cpu0, 1)} s, RSS ${fmt(MB(memEnroll.rssKiB))} MB`,
    );
    const seed = async () => {
      if (SEED_JOBS > 0) {
        const t = performance.now();
        const r = await child!.cmd('seedJobs', { perHost: SEED_JOBS, intervalMs: 3_600_000 });
        log(`seeded ${r.written as number} past succeeded backup jobs (${SEED_JOBS} per host) in ${fmt((performance.now() - t) / 1000, 1)} s`);
      }
      if (SEED_SNAPSHOTS > 0) {
        const t = performance.now();
        const r = await child!.cmd('seedSnapshots', { perHost: SEED_SNAPSHOTS, packs: SEED_PACKS, intervalMs: 3_600_000, retentionMs: (SEED_SNAPSHOTS + 1) * 3_600_000 });
        log(`seeded ${r.snapshots as number} live snapshots (${SEED_SNAPSHOTS} per host, hourly, all still live; ${SEED_PACKS} packs each) and ${r.locks as number} lock ends in the catalog in ${fmt((performance.now() - t) / 1000, 1)} s`);
      }
    };
    if (!SEED_AFTER_CONNECT) await seed();

    // -- 3. connect
    if (PROF) {
      mkdirSync(PROF_DIR, { recursive: true });
      await child.cmd('profStart');
    }
    const selfConnect0 = selfCpu();
    const tConnect = performance.now();
    const configured = agents.map((a) => a.connect(address, caPem));
    const configTimes = await withTimeout(Promise.all(configured), STEP_TIMEOUT_MS, `${AGENTS} sessions`);
    const connectWall = performance.now() - tConnect;
    const connectDist = dist(configTimes.map((t) => t - tConnect));
    await sleep(500); // let the controller finish what hello started (dispatchQueued)
    const cpuConnect = procCpu(pid);
    const memConnect = procMem(pid);
    const profConnect = PROF ? path.join(PROF_DIR, `connect-${Date.now()}.cpuprofile`) : '';
    if (PROF) await child.cmd('profStop', { file: profConnect });
    const stConnect = await child.cmd('stats', { gc: true });
    const selfConnect = selfCpu() - selfConnect0;
    log(`connected ${stConnect.sessions as number} sessions (hello → config) in ${fmt(connectWall / 1000, 2)} s: per agent min ${fmt(Math.min(...configTimes) - tConnect)} ms, ${distLine(connectDist)}`);
    log(`  CPU during connect: controller ${fmt(cpuConnect - cpuEnroll, 1)} s, this process (the agents' side of ${AGENTS} TLS handshakes) ${fmt(selfConnect, 1)} s`);
    log(`  controller after connect: VmRSS ${fmt(MB(memConnect.rssKiB))} MB, VmHWM ${fmt(MB(memConnect.hwmKiB))} MB (${heapLine(stConnect)}); this process RSS ${fmt(process.memoryUsage().rss / 1e6)} MB`);
    if (PROF) for (const l of summarizeProfile(profConnect)) log(l);

    if (SEED_AFTER_CONNECT) await seed();

    const waitTerminal = async (what: string): Promise<ChildReply> => {
      const t0 = performance.now();
      for (;;) {
        const st = await child!.cmd('stats');
        const by = st.byState as Record<string, number>;
        const open = (by.queued ?? 0) + (by.dispatched ?? 0) + (by.running ?? 0);
        if (open === 0) return st;
        if (performance.now() - t0 > STEP_TIMEOUT_MS) throw new Error(`${what}: ${open} jobs still open after ${STEP_TIMEOUT_MS} ms`);
        await sleep(200);
      }
    };

    // -- 4. dispatch round (admin StartBackup)
    const eld = monitorEventLoopDelay({ resolution: 10 });
    if (PROF) await child.cmd('profStart');
    eld.enable();
    const dispatch: number[] = [];
    const byOrder: number[] = [];
    const rpcMs: number[] = [];
    const states = new Map<string, number>();
    const tRound = performance.now();
    await pool(agents, CONCURRENCY, async (a, i) => {
      const job = a.nextJob();
      const t0 = performance.now();
      const info = await rpc<JobInfo>((cb) => a0.startBackup({ hostId: a.hostId }, ...opts(), cb));
      rpcMs.push(performance.now() - t0);
      states.set(info.state, (states.get(info.state) ?? 0) + 1);
      const t1 = await withTimeout(job, STEP_TIMEOUT_MS, `job for ${a.hostId}`);
      dispatch.push(t1 - t0);
      byOrder[i] = t1 - t0;
    });
    const roundMs = performance.now() - tRound;
    eld.disable();
    const stRound = await waitTerminal('dispatch round');
    const settledMs = performance.now() - tRound;
    const profDispatch = PROF ? path.join(PROF_DIR, `dispatch-${Date.now()}.cpuprofile`) : '';
    if (PROF) await child.cmd('profStop', { file: profDispatch });
    const cpuRound = procCpu(pid);
    const memRound = procMem(pid);
    const heapRound = await child.cmd('stats', { gc: true });
    const dd = dist(dispatch);
    const rd = dist(rpcMs);
    log(`dispatch round: ${AGENTS} StartBackup, ${CONCURRENCY} in flight, all jobs received in ${fmt(roundMs / 1000, 2)} s (${fmt((AGENTS * 1000) / roundMs, 0)}/s), all results recorded after ${fmt(settledMs / 1000, 2)} s; controller CPU ${fmt(cpuRound - cpuConnect, 1)} s`);
    log(`  dispatch latency (StartBackup call → job message at the agent): ${distLine(dd)}`);
    log(`  StartBackup RPC latency: ${distLine(rd)}; states returned: ${[...states].map(([k, v]) => `${k} ${v}`).join(', ')}`);
    const tenths = Array.from({ length: Math.min(10, AGENTS) }, (_, k) => {
      const part = byOrder.slice(Math.floor((k * AGENTS) / 10), Math.floor(((k + 1) * AGENTS) / 10));
      return part.length ? part.reduce((x, y) => x + y, 0) / part.length : NaN;
    });
    log(`  mean dispatch latency by tenth of the round (the catalog holds ~${AGENTS / 10} more jobs each tenth): ${tenths.map((m) => fmt(m, 0)).join(', ')} ms`);
    log(`  jobs in the catalog: ${stRound.jobs as number} (${Object.entries(stRound.byState as Record<string, number>).map(([k, v]) => `${k} ${v}`).join(', ')}); errors recorded: ${Object.entries(stRound.errors as Record<string, number>).map(([k, v]) => `${v} × "${k}"`).join('; ')}`);
    log(`  this process's event-loop delay (the agents' clock): p99 ${fmt(eld.percentile(99) / 1e6)} ms, max ${fmt(eld.max / 1e6)} ms`);
    log(`  controller after the dispatch round: VmRSS ${fmt(MB(memRound.rssKiB))} MB, VmHWM ${fmt(MB(memRound.hwmKiB))} MB (${heapLine(heapRound)})`);
    if (PROF) for (const l of summarizeProfile(profDispatch)) log(l);

    // -- 5. scheduler round (one tick while every host is due)
    let tick: { d: ReturnType<typeof dist>; tickMs: number; lastMs: number; settledMs: number; missing: number } | undefined;
    let memTick: ProcMem | undefined;
    if (TICK_ROUND) {
      if (PROF) await child.cmd('profStart');
      const before = agents.map((a) => a.jobs);
      const waits = agents.map((a) => a.nextJob());
      const t0 = performance.now();
      const tk = await child.cmd('tick');
      // every host was due: each should now have a job; wait for the stragglers
      const got = await withTimeout(
        Promise.all(waits.map((w) => Promise.race([w, sleep(30_000).then(() => NaN)]))),
        STEP_TIMEOUT_MS,
        'scheduler round',
      );
      const lat = got.map((t) => t - t0).filter((x) => Number.isFinite(x));
      const st = await waitTerminal('scheduler round');
      const settled = performance.now() - t0;
      const profTick = PROF ? path.join(PROF_DIR, `tick-${Date.now()}.cpuprofile`) : '';
      if (PROF) await child.cmd('profStop', { file: profTick });
      const cpuTick = procCpu(pid);
      memTick = procMem(pid);
      const heapTick = await child.cmd('stats', { gc: true });
      tick = { d: dist(lat), tickMs: tk.ms as number, lastMs: Math.max(...lat), settledMs: settled, missing: agents.filter((a, i) => a.jobs === before[i]).length };
      log(`scheduler round: one tick queued and dispatched ${lat.length} due backups in ${fmt(tick.tickMs / 1000, 2)} s (tick duration), all results recorded after ${fmt(settled / 1000, 2)} s; controller CPU ${fmt(cpuTick - cpuRound, 1)} s${tick.missing ? `; ${tick.missing} agents got no job` : ''}`);
      log(`  latency (tick start → job message at the agent): ${distLine(tick.d)}`);
      log(`  jobs in the catalog: ${st.jobs as number}`);
      log(`  controller after the scheduler round: VmRSS ${fmt(MB(memTick.rssKiB))} MB, VmHWM ${fmt(MB(memTick.hwmKiB))} MB (${heapLine(heapTick)})`);
      if (PROF) for (const l of summarizeProfile(profTick)) log(l);
    }

    const errors = agents.flatMap((a) => a.errors);
    if (errors.length) log(`agent errors: ${errors.length}, first: ${errors.slice(0, 3).join(' | ')}`);
    const memEnd = procMem(pid);
    clearInterval(sampler);
    const tStop = performance.now();
    await child.stop();
    const stopMs = performance.now() - tStop;
    log(`controller peak RSS (VmHWM, or the highest VmRSS read every 100 ms) ${fmt(MB(memEnd.hwmKiB))} MB; stopped in ${fmt(stopMs, 0)} ms with ${AGENTS} sessions open`);
    const result = {
      bench: 'controller',
      agents: AGENTS,
      dispatch_p99_ms: r1(dd.p99),
      rss_MB: r1(MB(memEnd.hwmKiB)),
      dispatch_p50_ms: r1(dd.p50),
      dispatch_p90_ms: r1(dd.p90),
      dispatch_max_ms: r1(dd.max),
      concurrency: CONCURRENCY,
      result: RESULT,
      enroll_s: r1(enrollWall / 1000),
      connect_all_ms: r1(connectWall),
      rss_connected_MB: r1(MB(memConnect.rssKiB)),
      rss_after_dispatch_MB: r1(MB(memRound.rssKiB)),
      ...(tick && memTick ? { tick_p99_ms: r1(tick.d.p99), tick_max_ms: r1(tick.d.max), tick_duration_ms: r1(tick.tickMs), rss_after_tick_MB: r1(MB(memTick.rssKiB)) } : {}),
      ...(SEED_JOBS ? { seed_jobs_per_host: SEED_JOBS } : {}),
      ...(SEED_SNAPSHOTS ? { seed_snapshots_per_host: SEED_SNAPSHOTS, seed_packs: SEED_PACKS } : {}),
      agent_errors: errors.length,
    };
    await cleanup();
    child = undefined;
    log(JSON.stringify(result));
  } catch (err) {
    try {
      const tail = readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-25);
      log(`the controller's log, last lines:\n  ${tail.join('\n  ')}`);
    } catch {
      // no log
    }
    await cleanup().catch(() => undefined);
    throw err;
  }
}

await main();
// grpc-js may keep a timer or two alive after the channels close
process.exit(0);
