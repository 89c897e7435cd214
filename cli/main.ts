/**
 * `bulwark`: the console. Each command is a small function below; all talk to the controller's
 * AdminService except `controller start`, `agent enroll|start` and `iam-policy`. A user mistake is
 * one line on stderr and exit code 2; a failed operation is one line and exit code 1 — never a
 * stack trace (BULWARK_DEBUG=1 shows it).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { parseDuration } from '../common/duration.js';
import { BulwarkError, asBulwarkError } from '../common/errors.js';
import type { AdminServiceClient } from '../common/gen/bulwark/v1/admin.js';
import type { HostProtection, JobInfo } from '../common/gen/bulwark/v1/admin.js';
import { adminClient, call, fromGrpc, loadAdminCredential } from './client.js';
import { ago, bytes, progressLine, table, time } from './format.js';

const USAGE = `usage: bulwark <command> [options]

  controller start [--data-dir D] [--listen HOST:PORT] [--reprotect-below 0.5]
                                                             run the controller
  token create [--valid-for 1h]                              one-time enrollment token for an agent
  agent enroll --token T [--data-dir D]                      enroll this host
  agent start [--data-dir D] [--token T]                     run the agent (enrolls first if given a token)
  target add NAME --bucket B [--endpoint URL] [--region R] [--prefix P]
             --agent-key K --agent-secret S [--maintainer-key K --maintainer-secret S]
             --passphrase-file F                             add an S3 target (checks it, creates the repository)
  target check NAME | target list
  policy create NAME --target T --path P [--path P2] [--exclude GLOB] [--host H]
             --schedule "every 1d"|"0 2 * * *" --retention 30d [--lock-mode compliance|governance]
  policy list | policy show NAME | policy delete NAME
  hosts                                                      hosts, status, protection horizon
  protection [HOST]                                          what the lock planner did per host on its last run
  backup HOST [--wait]                                       back a host up now
  snapshots [HOST]                                           restore points
  ls HOST SNAPSHOT [PATH]                                    browse a snapshot
  restore HOST (--snapshot ID | --at TIME) [--path P]... [--to-host H2] --target DIR [--overwrite] [--wait]
  jobs                                                       jobs and their state
  groom [--dry-run]                                          delete what retention no longer needs
  audit                                                      check every restore point's locks in the bucket
  catalog rebuild                                            recreate the catalog from the bucket
  iam-policy --bucket B [--prefix P] [--retention 400d]     least-privilege IAM policies (agent, maintainer)
  drill --bucket B [--endpoint URL] [--prefix P] --access-key K --secret-key S
                                                             ransomware drill against a scratch bucket/prefix

Common options: --admin FILE (admin credential; default $BULWARK_ADMIN or .bulwark/controller/admin.json), --json`;

class UsageError extends Error {}

type Opts = Record<string, string | boolean | string[] | undefined>;

const OPTIONS = {
  admin: { type: 'string' },
  json: { type: 'boolean' },
  'data-dir': { type: 'string' },
  listen: { type: 'string' },
  advertise: { type: 'string' },
  'valid-for': { type: 'string' },
  token: { type: 'string' },
  bucket: { type: 'string' },
  endpoint: { type: 'string' },
  region: { type: 'string' },
  prefix: { type: 'string' },
  'agent-key': { type: 'string' },
  'agent-secret': { type: 'string' },
  'maintainer-key': { type: 'string' },
  'maintainer-secret': { type: 'string' },
  'passphrase-file': { type: 'string' },
  target: { type: 'string' },
  path: { type: 'string', multiple: true },
  exclude: { type: 'string', multiple: true },
  host: { type: 'string', multiple: true },
  schedule: { type: 'string' },
  retention: { type: 'string' },
  'lock-mode': { type: 'string' },
  wait: { type: 'boolean' },
  snapshot: { type: 'string' },
  at: { type: 'string' },
  'to-host': { type: 'string' },
  overwrite: { type: 'boolean' },
  'dry-run': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  'maintenance-every': { type: 'string' },
  'reprotect-below': { type: 'string' },
  'access-key': { type: 'string' },
  'secret-key': { type: 'string' },
} as const;

function need(o: Opts, name: string, example: string): string {
  const v = o[name];
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${name} is required (e.g. --${name} ${example})`);
  return v;
}

function out(o: Opts, value: unknown, human: () => string): void {
  process.stdout.write((o.json ? JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? Number(v) : v), 2) : human()) + '\n');
}

function client(o: Opts): AdminServiceClient {
  return adminClient(loadAdminCredential(o.admin as string | undefined));
}

const packs = (n: number) => `${n} pack${n === 1 ? '' : 's'}`;

/** A fraction from 0 to 1 given on the command line. */
function fraction(v: string, name: string): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) throw new UsageError(`--${name} must be a fraction from 0 to 1 (e.g. --${name} 0.5), not ${JSON.stringify(v)}`);
  return n;
}

/** The name this host enrolls and reports under: $BULWARK_HOSTNAME, else the system's. */
function hostname(): string {
  return process.env.BULWARK_HOSTNAME || os.hostname();
}

function parseTime(s: string): number {
  if (/^\d+$/.test(s)) return Number(s);
  const rel = /^(\S+)\s+ago$/.exec(s);
  if (rel) return Date.now() - parseDuration(rel[1]!);
  const t = Date.parse(s);
  if (Number.isNaN(t)) throw new UsageError(`--at ${JSON.stringify(s)} is not a time: use an ISO time (2026-11-27T10:00:00Z) or "2h ago"`);
  return t;
}

async function waitJob(o: Opts, c: AdminServiceClient, job: JobInfo): Promise<JobInfo> {
  const tty = process.stderr.isTTY && !o.json;
  const start = Date.now();
  let last = job;
  let lastPrint = 0;
  await new Promise<void>((resolve, reject) => {
    const stream = c.watchJob({ jobId: job.jobId });
    stream.on('data', (j: JobInfo) => {
      last = j;
      const p = j.progress;
      if (p && !o.json) {
        const line = progressLine({ filesDone: Number(p.filesDone), filesTotal: Number(p.filesTotal), bytesDone: Number(p.bytesDone), bytesTotal: Number(p.bytesTotal), bytesUploaded: Number(p.bytesUploaded), phase: p.phase || j.state, currentPath: p.currentPath }, Date.now() - start);
        if (tty) process.stderr.write(`\r\x1b[K${line}`);
        else if (Date.now() - lastPrint > 2000) {
          process.stderr.write(`${line}\n`);
          lastPrint = Date.now();
        }
      }
    });
    stream.on('error', (e) => reject(fromGrpc(e as never)));
    stream.on('end', () => resolve());
  });
  if (tty) process.stderr.write('\n');
  return last;
}

function jobSummary(j: JobInfo): string {
  const err = j.error ? ` — ${j.error.message}` : '';
  const snap = j.snapshotId ? ` snapshot ${j.snapshotId.slice(0, 12)}` : '';
  const issues = j.issues.length ? `\n${j.issues.map((i) => `  skipped ${i.path}: ${i.reason}`).join('\n')}` : '';
  return `job ${j.jobId} (${j.kind} of ${j.hostId}): ${j.state}${snap}${err}${issues}`;
}

async function finishJob(o: Opts, c: AdminServiceClient, j: JobInfo): Promise<void> {
  const done = o.wait ? await waitJob(o, c, j) : j;
  out(o, done, () => jobSummary(done));
  if (o.wait && done.state !== 'succeeded') process.exitCode = 1;
}

const commands: Record<string, (args: string[], o: Opts) => Promise<void>> = {
  async 'controller start'(_a, o) {
    const { Controller } = await import('../controller/controller.js');
    const dataDir = (o['data-dir'] as string) ?? '.bulwark/controller';
    const c = await Controller.start({
      dataDir,
      ...(o.listen ? { listen: o.listen as string } : {}),
      ...(o.advertise ? { advertise: o.advertise as string } : {}),
      ...(o['maintenance-every'] ? { maintenanceMs: parseDuration(o['maintenance-every'] as string) } : {}),
      ...(o['reprotect-below'] !== undefined ? { reprotectBelow: fraction(o['reprotect-below'] as string, 'reprotect-below') } : {}),
      log: (l) => process.stderr.write(`${new Date().toISOString()} ${l}\n`),
    });
    process.stderr.write(`controller running at ${c.address}; admin credential: ${path.join(path.resolve(dataDir), 'admin.json')}\n`);
    await new Promise<void>((resolve) => {
      const stop = () => resolve();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
    await c.stop();
  },
  async 'token create'(_a, o) {
    const r = await call<{ validFor: string }, { token: string; expiresMs: bigint }>(client(o), 'createToken', { validFor: (o['valid-for'] as string) ?? '1h' });
    out(o, r, () => `${r.token}\n(valid until ${time(Number(r.expiresMs))}, once)`);
  },
  async 'agent enroll'(_a, o) {
    const { enroll } = await import('../agent/identity.js');
    const dataDir = (o['data-dir'] as string) ?? '.bulwark/agent';
    const id = await enroll(dataDir, need(o, 'token', 'bwk1_…'), hostname());
    out(o, { hostId: id.hostId, address: id.address }, () => `enrolled as ${id.hostId} with ${id.address}`);
  },
  async 'agent start'(_a, o) {
    const tuning = await import('../agent/process-tuning.js');
    const lowMemory = process.env.BULWARK_LOW_MEMORY === '1';
    if (!tuning.startedAsAgent(lowMemory)) process.stderr.write(`note: started without bin/bulwark's start-up settings for agents${lowMemory ? ' and for BULWARK_LOW_MEMORY=1' : ''}: expect a higher memory peak (see the README, "Agent memory")\n`);
    const { enroll, loadIdentity, identityFile } = await import('../agent/identity.js');
    const { AgentSession } = await import('../agent/session.js');
    const dataDir = (o['data-dir'] as string) ?? '.bulwark/agent';
    if (o.token && !fs.existsSync(identityFile(dataDir))) await enroll(dataDir, o.token as string, hostname());
    const identity = await loadIdentity(dataDir);
    const s = new AgentSession({ dataDir, identity, hostname: hostname(), log: (l) => process.stderr.write(`${new Date().toISOString()} ${l}\n`) });
    s.start();
    process.stderr.write(`agent ${identity.hostId} connecting to ${identity.address}\n`);
    await new Promise<void>((resolve) => {
      process.once('SIGINT', () => resolve());
      process.once('SIGTERM', () => resolve());
    });
    await s.stop();
  },
  async 'target add'(a, o) {
    const name = a[0];
    if (!name) throw new UsageError('target add needs a NAME');
    const pf = need(o, 'passphrase-file', 'recovery.txt');
    let passphrase: string;
    try {
      passphrase = fs.readFileSync(pf, 'utf8').trim();
    } catch {
      throw new UsageError(`cannot read the passphrase file ${pf}`);
    }
    const r = await call<unknown, { name: string; bucket: string; repoId: string; checks: Array<{ name: string; status: string; detail: string }> }>(client(o), 'addTarget', {
      name,
      passphrase,
      spec: {
        endpoint: (o.endpoint as string) ?? '',
        region: (o.region as string) ?? 'us-east-1',
        bucket: need(o, 'bucket', 'backups'),
        prefix: (o.prefix as string) ?? '',
        agentAccessKeyId: need(o, 'agent-key', 'AKIA…'),
        agentSecretAccessKey: need(o, 'agent-secret', '…'),
        maintainerAccessKeyId: (o['maintainer-key'] as string) ?? '',
        maintainerSecretAccessKey: (o['maintainer-secret'] as string) ?? '',
      },
    });
    out(o, r, () => `target ${r.name} ready (bucket ${r.bucket}, repository ${r.repoId})\n${r.checks.map((c) => `  ${c.status.padEnd(4)} ${c.name}: ${c.detail}`).join('\n')}`);
  },
  async 'target list'(_a, o) {
    const r = await call<unknown, { targets: Array<{ name: string; endpoint: string; bucket: string; prefix: string; repoId: string }> }>(client(o), 'listTargets', {});
    out(o, r.targets, () => table(['NAME', 'ENDPOINT', 'BUCKET', 'PREFIX', 'REPOSITORY'], r.targets.map((t) => [t.name, t.endpoint || 'AWS', t.bucket, t.prefix || '-', t.repoId])));
  },
  async 'target check'(a, o) {
    if (!a[0]) throw new UsageError('target check needs a NAME');
    const r = await call<unknown, { checks: Array<{ name: string; status: string; detail: string; fix: string }> }>(client(o), 'checkTarget', { name: a[0] });
    out(o, r.checks, () => r.checks.map((c) => `${c.status.padEnd(4)} ${c.name}: ${c.detail}${c.fix && c.status !== 'ok' ? `\n     fix: ${c.fix}` : ''}`).join('\n'));
    if (r.checks.some((c) => c.status === 'fail')) process.exitCode = 1;
  },
  async 'policy create'(a, o) {
    if (!a[0]) throw new UsageError('policy create needs a NAME');
    const p = {
      name: a[0],
      target: need(o, 'target', 'main'),
      hosts: (o.host as string[]) ?? [],
      paths: (o.path as string[]) ?? [],
      excludes: (o.exclude as string[]) ?? [],
      schedule: need(o, 'schedule', '"every 1d"'),
      retention: need(o, 'retention', '30d'),
      lockMode: ((o['lock-mode'] as string) ?? 'compliance').toUpperCase(),
    };
    if (p.paths.length === 0) throw new UsageError('--path is required (e.g. --path /home)');
    const r = await call<typeof p, typeof p>(client(o), 'createPolicy', p);
    out(o, r, () => `policy ${r.name}: ${r.paths.join(', ')} on ${r.hosts.length ? r.hosts.join(', ') : 'all hosts'}, ${r.schedule}, kept ${r.retention} (${r.lockMode})`);
  },
  async 'policy list'(_a, o) {
    const r = await call<unknown, { policies: Array<{ name: string; target: string; hosts: string[]; paths: string[]; schedule: string; retention: string; lockMode: string }> }>(client(o), 'listPolicies', {});
    out(o, r.policies, () => table(['NAME', 'TARGET', 'HOSTS', 'PATHS', 'SCHEDULE', 'RETENTION', 'LOCK'], r.policies.map((p) => [p.name, p.target, p.hosts.join(',') || 'all', p.paths.join(','), p.schedule, p.retention, p.lockMode])));
  },
  async 'policy show'(a, o) {
    const r = await call<unknown, { policies: Array<Record<string, unknown>> }>(client(o), 'listPolicies', {});
    const p = r.policies.find((x) => x.name === a[0]);
    if (!p) throw new BulwarkError('NOT_FOUND', `no policy ${a[0]}: see bulwark policy list`);
    out(o, p, () => Object.entries(p).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(', ') || '-' : v}`).join('\n'));
  },
  async 'policy delete'(a, o) {
    if (!a[0]) throw new UsageError('policy delete needs a NAME');
    await call(client(o), 'deletePolicy', { name: a[0] });
    out(o, { deleted: a[0] }, () => `policy ${a[0]} deleted (its snapshots stay until their retention ends)`);
  },
  async hosts(_a, o) {
    const r = await call<unknown, { hosts: Array<{ hostId: string; hostname: string; status: string; lastSeenMs: bigint; lastBackupMs: bigint; protectionHorizonMs: bigint; nextBackupMs: bigint }> }>(client(o), 'listHosts', {});
    const now = Date.now();
    out(o, r.hosts, () =>
      table(
        ['HOST', 'NAME', 'STATUS', 'LAST SEEN', 'LAST BACKUP', 'IMMUTABLE UNTIL', 'WARNING'],
        r.hosts.map((h) => {
          const horizon = Number(h.protectionHorizonMs);
          const next = Number(h.nextBackupMs);
          const warn = horizon === 0 ? 'no backup yet' : next > 0 && horizon < next ? 'horizon before next backup' : '';
          return [h.hostId, h.hostname, h.status, ago(Number(h.lastSeenMs), now), ago(Number(h.lastBackupMs), now), time(horizon), warn];
        }),
      ),
    );
  },
  async protection(a, o) {
    const r = await call<{ hostId: string }, { hosts: HostProtection[] }>(client(o), 'listProtection', { hostId: a[0] ?? '' });
    const now = Date.now();
    out(o, r.hosts, () => {
      const rows = r.hosts.map((h) => {
        const l = h.last;
        if (!l) return [h.hostId, 'never', '-', '-', '-', '-', ''];
        const note = [l.failed ? `${l.failed} extensions failed` : '', l.livenessError ? `liveness not measured: ${l.livenessError}` : '', l.alreadyLonger ? `${l.alreadyLonger} already longer` : ''].filter(Boolean).join('; ');
        return [
          h.hostId,
          ago(Number(l.atMs), now),
          l.trigger,
          `${packs(l.packsExtended)} (${bytes(Number(l.bytesExtended))})`,
          l.packsReprotect ? `${packs(l.packsReprotect)} (${bytes(Number(l.bytesReupload))} live, ${bytes(Number(l.bytesReleased))} dead)` : '0',
          time(Number(l.horizonMs)),
          note,
        ];
      });
      const lines = [table(['HOST', 'LAST RUN', 'BY', 'EXTENDED', 'RE-PROTECT (< ' + Math.round((r.hosts.find((h) => h.last)?.last?.reprotectBelow ?? 0.5) * 100) + ' % live)', 'IMMUTABLE UNTIL', 'NOTE'], rows)];
      for (const h of r.hosts) {
        const x = h.reprotect;
        if (!x) continue;
        const outcome =
          x.state === 'succeeded'
            ? `succeeded: snapshot ${x.snapshotId.slice(0, 12)} no longer needs ${x.packsDropped} of them (${bytes(Number(x.bytesUploaded))} uploaded in all)`
            : x.state === 'failed'
              ? 'the backup failed: the next backup is asked again'
              : 'backup running';
        lines.push(`${h.hostId}: re-protection asked ${ago(Number(x.atMs), now)} (job ${x.jobId}): ${packs(x.packs.length)}, ${bytes(Number(x.bytesReupload))} to upload again, ${bytes(Number(x.bytesReleased))} dead no longer kept locked; ${outcome}`);
      }
      return lines.join('\n');
    });
  },
  async backup(a, o) {
    if (!a[0]) throw new UsageError('backup needs a HOST (see bulwark hosts)');
    const c = client(o);
    await finishJob(o, c, await call(c, 'startBackup', { hostId: a[0] }));
  },
  async snapshots(a, o) {
    const r = await call<unknown, { snapshots: Array<{ id: string; hostId: string; timeMs: bigint; expiresMs: bigint; files: bigint; bytes: bigint; bytesUploaded: bigint; roots: string[] }> }>(client(o), 'listSnapshots', { hostId: a[0] ?? '' });
    out(o, r.snapshots, () => table(['ID', 'HOST', 'TIME', 'EXPIRES', 'FILES', 'SIZE', 'ADDED', 'PATHS'], r.snapshots.map((s) => [s.id.slice(0, 12), s.hostId, time(Number(s.timeMs)), time(Number(s.expiresMs)), String(s.files), bytes(Number(s.bytes)), bytes(Number(s.bytesUploaded)), s.roots.join(',')])));
  },
  async ls(a, o) {
    if (!a[0] || !a[1]) throw new UsageError('ls needs HOST and SNAPSHOT (see bulwark snapshots HOST)');
    const r = await call<unknown, { path: string; entries: Array<{ name: string; type: string; mode: number; size: bigint; mtimeMs: bigint; target: string }> }>(client(o), 'listFiles', { hostId: a[0], snapshotId: a[1], path: a[2] ?? '/' });
    out(o, r, () => r.entries.map((e) => `${e.type === 'dir' ? 'd' : e.type === 'symlink' ? 'l' : '-'}${(e.mode & 0o777).toString(8).padStart(4, '0')} ${bytes(Number(e.size)).padStart(10)} ${time(Number(e.mtimeMs))} ${e.name}${e.target ? ` -> ${e.target}` : ''}`).join('\n'));
  },
  async restore(a, o) {
    if (!a[0]) throw new UsageError('restore needs a HOST');
    if (!o.snapshot && !o.at) throw new UsageError('give --snapshot ID or --at TIME');
    const target = need(o, 'target', '/restore');
    if (!path.isAbsolute(target)) throw new UsageError('--target must be an absolute directory on the destination host');
    const c = client(o);
    const j = await call<unknown, JobInfo>(c, 'startRestore', {
      hostId: a[0],
      snapshotId: (o.snapshot as string) ?? '',
      atMs: BigInt(o.at ? parseTime(o.at as string) : 0),
      paths: (o.path as string[]) ?? [],
      toHostId: (o['to-host'] as string) ?? '',
      targetDir: target,
      overwrite: Boolean(o.overwrite),
    });
    await finishJob(o, c, j);
  },
  async jobs(_a, o) {
    const r = await call<unknown, { jobs: JobInfo[] }>(client(o), 'listJobs', {});
    out(o, r.jobs, () => table(['JOB', 'HOST', 'KIND', 'STATE', 'CREATED', 'DETAIL'], r.jobs.map((j) => [j.jobId, j.hostId, j.kind, j.state, time(Number(j.createdMs)), j.error?.message ?? (j.snapshotId ? `snapshot ${j.snapshotId.slice(0, 12)}` : '')])));
  },
  async groom(_a, o) {
    const r = await call<unknown, { expiredSnapshots: string[]; deleted: number; retained: number; failed: number; details: Array<{ path: string; reason: string }>; dryRun: boolean }>(client(o), 'groom', { dryRun: Boolean(o['dry-run']) });
    out(o, r, () => `${r.dryRun ? '(dry run) would delete' : 'deleted'} ${r.deleted} object versions; ${r.retained} retained by their locks; ${r.failed} failed; ${r.expiredSnapshots.length} snapshots expired\n${r.details.map((d) => `  ${d.path}: ${d.reason}`).join('\n')}`);
    if (r.failed > 0) process.exitCode = 1;
  },
  async audit(_a, o) {
    const r = await call<unknown, { snapshots: number; pairs: bigint; covered: bigint; coverage: number; uncovered: Array<{ path: string; reason: string }>; tampered: Array<{ path: string; reason: string }> }>(client(o), 'audit', {});
    out(o, r, () => `lock coverage ${(r.coverage * 100).toFixed(2)} % (${r.covered}/${r.pairs} snapshot-object pairs, ${r.snapshots} restore points)\n${r.uncovered.map((u) => `  UNCOVERED ${u.path}: ${u.reason}`).join('\n')}${r.tampered.map((t) => `\n  TAMPERED ${t.path}: ${t.reason}`).join('')}`);
    if (r.coverage < 1) process.exitCode = 1;
  },
  async 'iam-policy'(_a, o) {
    const { iamPolicies } = await import('../controller/iam.js');
    const maxDays = Math.ceil(parseDuration((o.retention as string) ?? '400d') / 86_400_000);
    const r = iamPolicies({ bucket: need(o, 'bucket', 'backups'), prefix: (o.prefix as string) ?? '', maxRetentionDays: maxDays });
    out({ ...o, json: true }, r, () => '');
  },
  async drill(_a, o) {
    const { runDrill } = await import('../controller/drill.js');
    const r = await runDrill({
      ...(o.endpoint ? { endpoint: o.endpoint as string } : {}),
      region: (o.region as string) ?? 'us-east-1',
      bucket: need(o, 'bucket', 'scratch-bucket'),
      prefix: (o.prefix as string) ?? `drill-${Date.now()}`,
      accessKeyId: need(o, 'access-key', 'AKIA…'),
      secretAccessKey: need(o, 'secret-key', '…'),
      log: (l) => process.stderr.write(`${l}\n`),
    });
    out(o, r, () =>
      [
        'what the attacker (bucket owner credential) tried:',
        ...r.attacks.map((a) => `  ${a.attack}: ${a.tried} tried, ${a.refused} refused by the bucket, ${a.succeeded} succeeded`),
        `recovery: catalog rebuilt from the bucket with ${r.snapshots} snapshots; ${r.restored} restored, ${r.identical} byte-identical`,
        ...r.differences.map((d) => `  DIFFERENT ${d}`),
      ].join('\n'),
    );
    if (r.identical !== r.restored || r.differences.length) process.exitCode = 1;
  },
  async 'catalog rebuild'(_a, o) {
    const r = await call<unknown, { hosts: number; snapshots: number }>(client(o), 'rebuildCatalog', {});
    out(o, r, () => `catalog rebuilt from the bucket: ${r.hosts} hosts, ${r.snapshots} snapshots`);
  },
};

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    process.stderr.write(`bulwark: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const pos = parsed.positionals;
  const o = parsed.values as Opts;
  if (o.help || pos.length === 0) {
    process.stdout.write(`${USAGE}\n`);
    return pos.length === 0 && !o.help ? 2 : 0;
  }
  const two = `${pos[0]} ${pos[1] ?? ''}`.trim();
  const [name, rest] = commands[two] ? [two, pos.slice(2)] : [pos[0]!, pos.slice(1)];
  const cmd = commands[name];
  if (!cmd) {
    process.stderr.write(`bulwark: unknown command ${JSON.stringify(pos.join(' '))}\n${USAGE}\n`);
    return 2;
  }
  try {
    await cmd(rest, o);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`bulwark ${name}: ${err.message}\n`);
      return 2;
    }
    const e = asBulwarkError(err);
    process.stderr.write(`bulwark ${name}: ${e.message}\n`);
    if (process.env.BULWARK_DEBUG) process.stderr.write(`${(err as Error).stack}\n`);
    return e.code === 'INVALID_ARGUMENT' ? 2 : 1;
  }
}
