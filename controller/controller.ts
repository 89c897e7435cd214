/**
 * The controller: composition root and gRPC server (AgentService + AdminService + health) on one
 * TLS port. Clients present certificates signed by the controller's CA: agents (role host) for
 * the Session, the console (role admin) for AdminService; Enroll is the one call that needs only
 * a valid one-time token. Certificates are checked here against the CA, the catalog (revoked or
 * unknown hosts are refused) and their role.
 *
 * Lifecycle: 'starting' → 'running' → 'stopping' → 'stopped'. On start, jobs left 'dispatched' or
 * 'running' by a previous process are marked failed (never left running forever).
 *
 * Work it drives: the scheduler (due backups per policy and host; a host offline at its slot is
 * backed up when it reconnects), the dispatcher (one job per host at a time), the look-ahead
 * before each backup (maintenance.ts protectAhead), recording committed snapshots, periodic
 * grooming, audit and catalog checkpoints.
 */
import { EventEmitter } from 'node:events';
import { type KeyObject, X509Certificate, createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import type { PeerCertificate } from 'node:tls';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { type Clock, systemClock } from '../common/clock.js';
import { BulwarkError, asBulwarkError } from '../common/errors.js';
import { AdminServiceService, type AdminServiceServer } from '../common/gen/bulwark/v1/admin.js';
import { AgentServiceService, type AgentMessage, type AgentServiceServer, type ControllerMessage } from '../common/gen/bulwark/v1/agent.js';
import { type CertBundle, createCA, serverCredentials, encodeToken, fingerprint, hashSecret, issueServerCert, newTokenSecret, peerIdentity, signCsr } from '../common/pki.js';
import { layout } from '../common/repo/layout.js';
import type { Repository } from '../common/repo/repository.js';
import { buildAdminService } from './admin-service.js';
import { Catalog, type HostRecord, type JobRecord, type PolicyRecord, type SnapshotRecord, type TargetRecord } from './catalog.js';
import { DEFAULT_REPROTECT_BELOW, lapsingForNext, lockGeneration } from './lock-planner.js';
import { type PackUse, measureLiveness } from './liveness.js';
import { type ExtendReport, auditTarget, foundationKeys, groomTarget, protectAhead, recordSnapshot, writeCheckpoint } from './maintenance.js';
import { type LivenessProvider, hostRuns, saveOutcome, saveRuns, snapshotHorizon } from './protection.js';
import { policyCovers } from './policy.js';
import { nextRun, parseSchedule } from './schedule.js';
import { openTargetRepo } from './targets.js';

type AuthContextLike = { sslPeerCertificate?: PeerCertificate };

export type ControllerState = 'starting' | 'running' | 'stopping' | 'stopped';

export interface ControllerOptions {
  dataDir: string;
  /** host:port to listen on (port 0: any free port). */
  listen?: string;
  /** Address agents and the console dial (written into tokens and admin.json). */
  advertise?: string;
  /** How often due backups are looked for. */
  tickMs?: number;
  /** How often grooming and the look-ahead run on their own. */
  maintenanceMs?: number;
  /**
   * The look-ahead re-protects (has the next backup write afresh) instead of extending a pack that
   * only the next snapshot needs beyond its lock when less than this fraction of it is still used
   * by the host's newest snapshot; 0 turns it off. Default DEFAULT_REPROTECT_BELOW (0.5): below
   * one half the dead bytes an extension keeps locked outweigh the live bytes uploaded again.
   */
  reprotectBelow?: number;
  clock?: Clock;
  log?: (line: string) => void;
}

interface Session {
  hostId: string;
  call: grpc.ServerDuplexStream<AgentMessage, ControllerMessage>;
  send(msg: ControllerMessage): void;
}

export interface AdminBundle {
  address: string;
  caPem: string;
  certPem: string;
  keyPem: string;
}

export class Controller {
  state: ControllerState = 'starting';
  readonly events = new EventEmitter();
  readonly sessions = new Map<string, Session>();
  private server!: grpc.Server;
  private timers: NodeJS.Timeout[] = [];
  private repos = new Map<string, Repository>();
  private maintaining: Promise<void> | undefined;
  /** Open (queued, dispatched, running) jobs per host: the catalog's jobs, indexed, so that a
   * dispatch never reads the whole job history (measured: 2 s p99 at 1,000 hosts without it). */
  private readonly openJobs = new Map<string, Map<string, JobRecord>>();
  /** Per host: start of its newest succeeded backup, and the failed attempts since (for backoff). */
  private readonly backupHistory = new Map<string, { lastSuccess: number; lastFailure: number; failures: number }>();
  private ticking = false;
  private readonly lookAhead = new Map<string, Promise<unknown>>();
  address = '';
  private readonly caKey: KeyObject;

  private constructor(
    readonly o: Required<Omit<ControllerOptions, 'advertise' | 'log'>> & Pick<ControllerOptions, 'advertise' | 'log'>,
    readonly catalog: Catalog,
    readonly ca: CertBundle,
    private readonly server_: CertBundle,
  ) {
    this.caKey = new X509Certificate(ca.certPem).publicKey;
  }

  get clock(): Clock {
    return this.o.clock;
  }

  log(line: string): void {
    this.o.log?.(`[controller] ${line}`);
  }

  static async start(options: ControllerOptions): Promise<Controller> {
    const o = {
      dataDir: path.resolve(options.dataDir),
      listen: options.listen ?? '127.0.0.1:7443',
      tickMs: options.tickMs ?? 1000,
      // an hour: grooming and the look-ahead are cheap, and locks are planned generations ahead
      maintenanceMs: options.maintenanceMs ?? 3_600_000,
      reprotectBelow: options.reprotectBelow ?? DEFAULT_REPROTECT_BELOW,
      clock: options.clock ?? systemClock,
      ...(options.advertise ? { advertise: options.advertise } : {}),
      ...(options.log ? { log: options.log } : {}),
    };
    if (!(o.reprotectBelow >= 0 && o.reprotectBelow <= 1)) throw new BulwarkError('INVALID_ARGUMENT', `reprotect-below must be a fraction from 0 to 1 (e.g. 0.5), not ${o.reprotectBelow}`);
    await fs.mkdir(path.join(o.dataDir, 'pki'), { recursive: true, mode: 0o700 });
    await fs.chmod(o.dataDir, 0o700);
    const ca = await loadOrCreate(path.join(o.dataDir, 'pki/ca.json'), () => createCA('Bulwark controller CA'));
    const host = o.listen.replace(/:\d+$/, '');
    const server = await loadOrCreate(path.join(o.dataDir, 'pki/server.json'), () =>
      issueServerCert(ca, { dns: ['localhost', os.hostname()], ips: ['127.0.0.1', ...(/^\d+\.\d+\.\d+\.\d+$/.test(host) && host !== '127.0.0.1' ? [host] : [])] }),
    );
    const catalog = await Catalog.open(path.join(o.dataDir, 'catalog'));
    const c = new Controller(o, catalog, ca, server);
    await c.recoverJobs();
    await c.listen();
    await c.writeAdminBundle();
    c.timers.push(setInterval(() => void c.tick().catch((err) => c.log(`scheduler: ${asBulwarkError(err).message}`)), o.tickMs));
    c.timers.push(setInterval(() => void c.maintain().catch((err) => c.log(`maintenance: ${asBulwarkError(err).message}`)), o.maintenanceMs));
    c.state = 'running';
    c.log(`listening on ${c.address}`);
    return c;
  }

  async stop(): Promise<void> {
    this.state = 'stopping';
    for (const t of this.timers) clearInterval(t);
    for (const s of this.sessions.values()) s.call.end();
    await new Promise<void>((resolve) => this.server.tryShutdown(() => resolve()));
    this.server.forceShutdown();
    await this.maintaining?.catch(() => undefined);
    await this.catalog.close();
    this.state = 'stopped';
  }

  private async listen(): Promise<void> {
    this.server = new grpc.Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024 });
    this.server.addService(AgentServiceService, this.agentService());
    this.server.addService(AdminServiceService, buildAdminService(this) as AdminServiceServer);
    addHealth(this.server);
    // Client certificates are requested but checked here (requireIdentity), so that Enroll works
    // for an agent that has none yet; every other call is refused without a valid one.
    const creds = serverCredentials(this.ca, this.server_, 'optional');
    const port = await new Promise<number>((resolve, reject) => this.server.bindAsync(this.o.listen, creds, (err, p) => (err ? reject(err) : resolve(p))));
    this.address = this.o.advertise ?? `${this.o.listen.replace(/:\d+$/, '')}:${port}`;
  }

  private async writeAdminBundle(): Promise<void> {
    const file = path.join(this.o.dataDir, 'admin.json');
    let bundle: AdminBundle | undefined;
    try {
      bundle = JSON.parse(await fs.readFile(file, 'utf8')) as AdminBundle;
    } catch {
      bundle = undefined;
    }
    if (!bundle) {
      const { createKeyAndCsr } = await import('../common/pki.js');
      const { keyPem, csrPem } = await createKeyAndCsr('admin');
      const certPem = await signCsr(this.ca, csrPem, { role: 'admin', id: 'admin' }, 3650);
      bundle = { address: this.address, caPem: this.ca.certPem, certPem, keyPem };
    }
    bundle.address = this.address;
    await fs.writeFile(file, JSON.stringify(bundle, null, 2), { mode: 0o600 });
  }

  /** The verified identity of a caller, or a gRPC error. */
  requireIdentity(call: { getAuthContext(): AuthContextLike }, role: 'host' | 'admin'): { role: 'host' | 'admin'; id: string } {
    const cert = call.getAuthContext()?.sslPeerCertificate;
    if (!cert?.raw) throw grpcError(grpc.status.UNAUTHENTICATED, 'a client certificate is required (enroll the agent, or use the admin credential)');
    const x = new X509Certificate(cert.raw);
    const now = this.clock.now();
    if (!x.verify(this.caKey) || Date.parse(x.validFrom) > now || Date.parse(x.validTo) < now) {
      throw grpcError(grpc.status.UNAUTHENTICATED, 'the client certificate is not valid for this controller');
    }
    const id = peerIdentity(cert);
    if (!id || id.role !== role) throw grpcError(grpc.status.PERMISSION_DENIED, `this call needs a ${role} credential`);
    return id;
  }

  private async requireHost(call: { getAuthContext(): AuthContextLike }): Promise<HostRecord> {
    const id = this.requireIdentity(call, 'host');
    const host = await this.catalog.get(this.catalog.hosts, id.id);
    const fp = createHash('sha256').update(call.getAuthContext().sslPeerCertificate!.raw).digest('hex');
    if (!host || host.revoked || (host.certFingerprint !== '' && host.certFingerprint !== fp)) {
      throw grpcError(grpc.status.PERMISSION_DENIED, `host ${id.id} is unknown or revoked`);
    }
    return host;
  }

  private agentService(): AgentServiceServer {
    return {
      enroll: (call, callback) => {
        void (async () => {
          const req = call.request;
          const rec = await this.catalog.get(this.catalog.tokens, hashSecret(req.tokenSecret ?? ''));
          const now = this.clock.now();
          if (!rec || rec.used || rec.expiresAt < now) throw grpcError(grpc.status.PERMISSION_DENIED, 'enrollment token is unknown, used or expired: ask the admin for a new one (bulwark token create)');
          await this.catalog.tokens.put(hashSecret(req.tokenSecret), { ...rec, used: true });
          const base = (req.hostname || 'host').toLowerCase().replace(/[^a-z0-9._-]/g, '-').replace(/^[^a-z0-9]+/, '').slice(0, 40) || 'host';
          const hostId = `${base}-${randomBytes(3).toString('hex')}`;
          const certPem = await signCsr(this.ca, req.csrPem, { role: 'host', id: hostId }, 825);
          await this.catalog.hosts.put(hostId, { id: hostId, hostname: req.hostname, enrolledAt: now, certFingerprint: fingerprint(certPem), revoked: false, lastSeen: now });
          this.log(`enrolled ${hostId} (${req.hostname})`);
          return { hostId, clientCertPem: certPem, caCertPem: this.ca.certPem };
        })().then((r) => callback(null, r), (err) => callback(toGrpcError(err)));
      },
      session: (call) => {
        void this.runSession(call).catch((err) => {
          call.emit('error', toGrpcError(err));
        });
      },
    };
  }

  private async runSession(call: grpc.ServerDuplexStream<AgentMessage, ControllerMessage>): Promise<void> {
    const host = await this.requireHost(call);
    const session: Session = { hostId: host.id, call, send: (m) => call.write(m) };
    const previous = this.sessions.get(host.id);
    if (previous) previous.call.end(); // a reconnect replaces the old stream
    this.sessions.set(host.id, session);
    await this.touchHost(host.id);
    this.log(`session open: ${host.id}`);
    // one message at a time, in order: handled concurrently, a job's last progress report could read
    // the job before its result was written and then write it back as 'running' over 'succeeded'
    let handled: Promise<void> = Promise.resolve();
    call.on('data', (msg: AgentMessage) => {
      handled = handled.then(() => this.onAgentMessage(session, msg)).catch((err) => this.log(`${host.id}: ${asBulwarkError(err).message}`));
    });
    const closed = () => {
      if (this.sessions.get(host.id) !== session) return;
      this.sessions.delete(host.id);
      this.log(`session closed: ${host.id}`);
      if (this.state !== 'running') return; // shutting down: recoverJobs() handles them on the next start
      void this.failActiveJobs(host.id, 'the agent disconnected during the job').catch((err) => this.log(`${host.id}: ${asBulwarkError(err).message}`));
    };
    call.on('end', () => {
      closed();
      call.end();
    });
    call.on('error', closed);
    call.on('cancelled', closed);
  }

  private async onAgentMessage(s: Session, msg: AgentMessage): Promise<void> {
    const b = msg.body;
    if (!b) return;
    await this.touchHost(s.hostId);
    if (b.$case === 'hello') {
      const h = (await this.catalog.get(this.catalog.hosts, s.hostId))!;
      if (b.value.hostname && b.value.hostname !== h.hostname) await this.catalog.hosts.put(h.id, { ...h, hostname: b.value.hostname });
      await this.sendConfig(s);
      await this.dispatchQueued(s.hostId);
    } else if (b.$case === 'progress') {
      const job = await this.catalog.get(this.catalog.jobs, b.value.jobId);
      if (!job || job.hostId !== s.hostId || isTerminal(job.state)) return;
      const p = b.value.progress;
      await this.updateJob({
        ...job,
        state: 'running',
        ...(p ? { progress: { filesDone: Number(p.filesDone), bytesDone: Number(p.bytesDone), filesTotal: Number(p.filesTotal), bytesTotal: Number(p.bytesTotal), bytesUploaded: Number(p.bytesUploaded), currentPath: p.currentPath, phase: p.phase } } : {}),
      });
    } else if (b.$case === 'result') {
      await this.onResult(s.hostId, b.value);
    }
  }

  private async onResult(hostId: string, r: Extract<AgentMessage['body'], { $case: 'result' }>['value']): Promise<void> {
    const job = await this.catalog.get(this.catalog.jobs, r.jobId);
    if (!job || job.hostId !== hostId) return; // a host may only report its own jobs
    if (isTerminal(job.state)) return;
    const issues = r.issues.map((i) => ({ path: i.path, reason: i.reason }));
    if (!r.ok) {
      await this.updateJob({ ...job, state: 'failed', error: { code: r.error?.code ?? 'INTERNAL', message: r.error?.message ?? 'failed' }, issues });
      return;
    }
    if (job.kind === 'backup') {
      try {
        const policy = job.policy ? await this.catalog.get(this.catalog.policies, job.policy) : undefined;
        const target = policy ? await this.catalog.get(this.catalog.targets, policy.target) : undefined;
        if (!policy || !target) throw new BulwarkError('NOT_FOUND', 'the job\'s policy or target is gone');
        const repo = await this.repo(target);
        const now = this.clock.now();
        const rec = await recordSnapshot(this.catalog, target, repo, hostId, r.snapshotId, { policy: policy.name, expiresAt: job.expiresAt!, lockUntil: job.lockUntil! }, now);
        const h = (await this.catalog.get(this.catalog.hosts, hostId))!;
        // immutable until the earliest known lock among what the new snapshot needs (lower bounds)
        const horizon = (await snapshotHorizon(this.catalog, rec, foundationKeys(repo))) || job.expiresAt!;
        await this.catalog.hosts.put(hostId, { ...h, lastBackup: rec.time, lastSnapshotId: rec.id, horizon });
        await saveOutcome(this.catalog, job, rec);
        await writeCheckpoint(this.catalog, target, repo, now, now);
        await this.updateJob({ ...job, state: 'succeeded', snapshotId: rec.id, issues });
      } catch (err) {
        const e = asBulwarkError(err);
        await this.updateJob({ ...job, state: 'failed', error: { code: e.code, message: `recording the snapshot failed: ${e.message}` }, issues });
      }
    } else {
      await this.updateJob({ ...job, state: 'succeeded', issues, progress: { ...(job.progress ?? emptyProgress()), filesDone: Number(r.files), bytesDone: Number(r.bytes) } });
    }
  }

  private indexJob(j: JobRecord): void {
    let open = this.openJobs.get(j.hostId);
    if (!isTerminal(j.state)) {
      if (!open) this.openJobs.set(j.hostId, (open = new Map()));
      open.set(j.id, j);
      return;
    }
    open?.delete(j.id);
    if (open?.size === 0) this.openJobs.delete(j.hostId);
    if (j.kind !== 'backup' || j.state === 'cancelled') return;
    const h = this.backupHistory.get(j.hostId) ?? { lastSuccess: 0, lastFailure: 0, failures: 0 };
    if (j.state === 'succeeded') {
      if (j.created >= h.lastSuccess) this.backupHistory.set(j.hostId, { lastSuccess: j.created, lastFailure: 0, failures: 0 });
    } else if (j.created > h.lastSuccess) {
      this.backupHistory.set(j.hostId, { ...h, lastFailure: Math.max(h.lastFailure, j.created), failures: h.failures + 1 });
    }
  }

  private openJobsOf(hostId: string): JobRecord[] {
    return [...(this.openJobs.get(hostId)?.values() ?? [])];
  }

  async updateJob(job: JobRecord): Promise<void> {
    const j = { ...job, updated: this.clock.now() };
    await this.catalog.jobs.put(j.id, j);
    this.indexJob(j);
    this.events.emit('job', j);
    // a backup that was to re-protect packs and did not succeed: say so in its protection record
    if (j.kind === 'backup' && (j.state === 'failed' || j.state === 'cancelled')) await saveOutcome(this.catalog, j, undefined).catch(() => undefined);
    if (isTerminal(j.state)) void this.dispatchQueued(j.hostId).catch(() => undefined);
  }

  private async touchHost(hostId: string): Promise<void> {
    const h = await this.catalog.get(this.catalog.hosts, hostId);
    if (h) await this.catalog.hosts.put(hostId, { ...h, lastSeen: this.clock.now() });
  }

  async policyFor(host: HostRecord): Promise<PolicyRecord | undefined> {
    return (await this.catalog.all(this.catalog.policies)).find((p) => policyCovers(p, host.id, host.hostname));
  }

  async repo(target: TargetRecord): Promise<Repository> {
    let r = this.repos.get(target.name);
    if (!r) {
      r = await openTargetRepo(target);
      this.repos.set(target.name, r);
    }
    return r;
  }

  async sendConfig(s: Session): Promise<void> {
    const host = (await this.catalog.get(this.catalog.hosts, s.hostId))!;
    const policy = await this.policyFor(host);
    if (!policy) return; // nothing to protect yet; sent when a policy covers this host
    const target = (await this.catalog.get(this.catalog.targets, policy.target))!;
    const repo = await this.repo(target);
    const keys = repo.hostKeys(host.id);
    s.send({
      body: {
        $case: 'config',
        value: {
          hostId: host.id,
          target: { endpoint: target.endpoint ?? '', region: target.region, bucket: target.bucket, prefix: target.prefix, accessKeyId: target.agentAccessKeyId, secretAccessKey: target.agentSecretAccessKey },
          keyEnc: keys.enc,
          keyId: keys.id,
          keyChunk: keys.chunk,
          repoConfigJson: JSON.stringify(repo.config),
          paths: policy.paths,
          excludes: policy.excludes,
        },
      },
    });
  }

  /** Push the current config to every connected host (after a policy or target change). */
  async pushConfigs(): Promise<void> {
    for (const s of this.sessions.values()) await this.sendConfig(s).catch((err) => this.log(`config for ${s.hostId}: ${asBulwarkError(err).message}`));
  }

  async createToken(validForMs: number): Promise<{ token: string; expiresAt: number }> {
    const secret = newTokenSecret();
    const expiresAt = this.clock.now() + validForMs;
    await this.catalog.tokens.put(hashSecret(secret), { expiresAt, used: false });
    return { token: encodeToken({ address: this.address, caFingerprint: fingerprint(this.ca.certPem), secret }), expiresAt };
  }

  /** Queue a backup of a host; dispatched now when the host is connected and idle. */
  async queueBackup(hostId: string): Promise<JobRecord> {
    const host = await this.catalog.get(this.catalog.hosts, hostId);
    if (!host) throw new BulwarkError('NOT_FOUND', `no host ${hostId}: see bulwark hosts`);
    const policy = await this.policyFor(host);
    if (!policy) throw new BulwarkError('INVALID_ARGUMENT', `no policy covers host ${hostId}: create one (bulwark policy create)`);
    const open = this.openJobsOf(hostId).find((j) => j.kind === 'backup');
    if (open) return open; // queued or running already: never two backups of one host
    const now = this.clock.now();
    const job: JobRecord = { id: newJobId(), hostId, kind: 'backup', state: 'queued', created: now, updated: now, policy: policy.name };
    await this.updateJob(job);
    await this.dispatchQueued(hostId);
    return (await this.catalog.get(this.catalog.jobs, job.id))!;
  }

  async queueRestore(toHostId: string, restore: NonNullable<JobRecord['restore']>): Promise<JobRecord> {
    if (!(await this.catalog.get(this.catalog.hosts, toHostId))) throw new BulwarkError('NOT_FOUND', `no host ${toHostId}: see bulwark hosts`);
    const now = this.clock.now();
    const job: JobRecord = { id: newJobId(), hostId: toHostId, kind: 'restore', state: 'queued', created: now, updated: now, restore };
    await this.updateJob(job);
    await this.dispatchQueued(toHostId);
    return (await this.catalog.get(this.catalog.jobs, job.id))!;
  }

  async activeJob(hostId: string): Promise<JobRecord | undefined> {
    return this.openJobsOf(hostId).find((j) => j.state !== 'queued');
  }

  private dispatching = new Set<string>();

  /** One job per host at a time: send the oldest queued job if the host is connected and idle. */
  async dispatchQueued(hostId: string): Promise<void> {
    if (this.dispatching.has(hostId)) return;
    this.dispatching.add(hostId);
    try {
      const s = this.sessions.get(hostId);
      if (!s || (await this.activeJob(hostId))) return;
      const queued = this.openJobsOf(hostId).filter((j) => j.state === 'queued').sort((a, b) => a.created - b.created)[0];
      if (!queued) return;
      try {
        if (queued.kind === 'backup') await this.sendBackup(s, queued);
        else await this.sendRestore(s, queued);
      } catch (err) {
        const e = asBulwarkError(err);
        await this.updateJob({ ...queued, state: 'failed', error: { code: e.code, message: e.message } });
      }
    } finally {
      this.dispatching.delete(hostId);
    }
  }

  private async sendBackup(s: Session, job: JobRecord): Promise<void> {
    const policy = await this.catalog.get(this.catalog.policies, job.policy ?? '');
    if (!policy) throw new BulwarkError('NOT_FOUND', `policy ${job.policy} no longer exists`);
    const target = (await this.catalog.get(this.catalog.targets, policy.target))!;
    const repo = await this.repo(target);
    await this.sendConfig(s);
    const now = this.clock.now();
    const expiresAt = now + policy.retentionMs;
    const lockUntil = expiresAt + lockGeneration(policy.retentionMs);
    // the look-ahead: what this snapshot will reuse must stay locked until it expires
    // liveness first, outside the per-target queue below: it only reads (a host's first walk
    // fetches every tree), and the look-ahead then finds it measured
    await this.measureAhead(target, repo, s.hostId, expiresAt, now).catch((err) => this.log(`liveness of ${s.hostId}: ${asBulwarkError(err).message}`));
    // one look-ahead at a time per target: concurrent dispatches would all extend the same
    // foundation objects; the second finds them recorded and does nothing
    const prev = this.lookAhead.get(target.name) ?? Promise.resolve();
    const run = prev.catch(() => undefined).then(() => protectAhead(this.catalog, target, repo, new Map([[s.hostId, expiresAt]]), now, policy.retentionMs, s.hostId, this.protectOptions(repo)));
    this.lookAhead.set(target.name, run);
    const ahead = await run;
    // the report is for the console: failing to store it must not hold the backup back
    await this.saveProtection(ahead, [s.hostId], { at: now, trigger: 'backup', target: target.name, jobId: job.id }).catch((err) => this.log(`protection report for ${s.hostId}: ${asBulwarkError(err).message}`));
    const host = (await this.catalog.get(this.catalog.hosts, s.hostId))!;
    const parent = host.lastSnapshotId && (await this.catalog.snapshotsOf(s.hostId)).some((x) => x.id === host.lastSnapshotId) ? host.lastSnapshotId : '';
    await this.updateJob({ ...job, state: 'dispatched', expiresAt, lockUntil });
    s.send({
      body: {
        $case: 'job',
        value: {
          jobId: job.id,
          kind: { $case: 'backup', value: { lockMode: policy.lockMode, retainUntilMs: BigInt(lockUntil), expiresAtMs: BigInt(expiresAt), parentSnapshotId: parent, reprotectPacks: ahead.reprotect.get(s.hostId) ?? [], policy: policy.name } },
        },
      },
    });
  }

  private async sendRestore(s: Session, job: JobRecord): Promise<void> {
    const r = job.restore!;
    const snap = (await this.catalog.snapshotsOf(r.sourceHostId)).find((x) => x.id === r.snapshotId);
    if (!snap) throw new BulwarkError('NOT_FOUND', `snapshot ${r.snapshotId} of ${r.sourceHostId} is not in the catalog`);
    const target = (await this.catalog.get(this.catalog.targets, snap.target))!;
    const repo = await this.repo(target);
    const keys = repo.hostKeys(r.sourceHostId);
    await this.sendConfig(s);
    await this.updateJob({ ...job, state: 'dispatched' });
    s.send({
      body: {
        $case: 'job',
        value: {
          jobId: job.id,
          kind: { $case: 'restore', value: { snapshotId: r.snapshotId, sourceHostId: r.sourceHostId, sourceKeyEnc: keys.enc, sourceKeyId: keys.id, sourceKeyChunk: keys.chunk, paths: r.paths, targetDir: r.targetDir, overwrite: r.overwrite } },
        },
      },
    });
  }

  async cancelJob(jobId: string): Promise<JobRecord> {
    const job = await this.catalog.get(this.catalog.jobs, jobId);
    if (!job) throw new BulwarkError('NOT_FOUND', `no job ${jobId}`);
    if (isTerminal(job.state)) return job;
    this.sessions.get(job.hostId)?.send({ body: { $case: 'cancel', value: { jobId } } });
    const j = { ...job, state: 'cancelled' as const };
    await this.updateJob(j);
    return j;
  }

  private async failActiveJobs(hostId: string, why: string): Promise<void> {
    for (const j of this.openJobsOf(hostId)) {
      if (j.state === 'dispatched' || j.state === 'running') await this.updateJob({ ...j, state: 'failed', error: { code: 'TRANSIENT', message: why } });
    }
  }

  private async recoverJobs(): Promise<void> {
    // the one full read of the job history: it builds the in-memory index of open jobs
    for (const j of await this.catalog.all(this.catalog.jobs)) {
      if (j.state === 'dispatched' || j.state === 'running') {
        const failed = { ...j, state: 'failed' as const, updated: this.clock.now(), error: { code: 'TRANSIENT', message: 'the controller restarted while the job ran; it will be scheduled again' } };
        await this.catalog.jobs.put(j.id, failed);
        this.indexJob(failed);
        if (j.kind === 'backup') await saveOutcome(this.catalog, failed, undefined);
      } else this.indexJob(j);
    }
  }

  /**
   * The scheduler: queue backups that are due. A host is due at its schedule's next run after its
   * last succeeded backup; after failures it is retried with exponential backoff (30 s, 1 min, …,
   * at most an hour), never in a tight loop. One tick at a time; due hosts are dispatched 16 at once.
   */
  async tick(): Promise<void> {
    if (this.state !== 'running' || this.ticking) return;
    this.ticking = true;
    try {
      const now = this.clock.now();
      const hosts = await this.catalog.all(this.catalog.hosts);
      const policies = await this.catalog.all(this.catalog.policies);
      const due: string[] = [];
      for (const h of hosts) {
        if (h.revoked || !this.sessions.has(h.id) || this.openJobs.get(h.id)?.size) continue;
        const p = policies.find((x) => policyCovers(x, h.id, h.hostname));
        if (!p) continue;
        const hist = this.backupHistory.get(h.id) ?? { lastSuccess: 0, lastFailure: 0, failures: 0 };
        const backoff = hist.failures > 0 ? hist.lastFailure + Math.min(3_600_000, 30_000 * 2 ** (hist.failures - 1)) : 0;
        if (now >= Math.max(nextRun(parseSchedule(p.schedule), hist.lastSuccess), backoff)) due.push(h.id);
      }
      let next = 0;
      await Promise.all(
        Array.from({ length: Math.min(16, due.length) }, async () => {
          while (next < due.length) {
            const id = due[next++]!;
            await this.queueBackup(id).catch((err) => this.log(`scheduler: ${id}: ${asBulwarkError(err).message}`));
          }
        }),
      );
    } finally {
      this.ticking = false;
    }
  }

  /** Periodic look-ahead and grooming across targets. */
  async maintain(o: { dryRun?: boolean } = {}): Promise<Array<{ target: string; expired: number; deleted: number; retained: number; failed: number; details: Array<{ path: string; reason: string }> }>> {
    const run = async () => {
      const out = [];
      const now = this.clock.now();
      const busy = new Set([...this.openJobs.values()].flatMap((m) => [...m.values()]).filter((j) => j.kind === 'backup').map((j) => j.hostId));
      for (const target of await this.catalog.all(this.catalog.targets)) {
        const repo = await this.repo(target);
        const policies = (await this.catalog.all(this.catalog.policies)).filter((p) => p.target === target.name);
        const next = new Map<string, number>();
        for (const h of await this.catalog.all(this.catalog.hosts)) {
          const p = policies.find((x) => policyCovers(x, h.id, h.hostname));
          if (p) next.set(h.id, Math.min(Math.max(now, nextRun(parseSchedule(p.schedule), h.lastBackup ?? now)), now + 366 * 86_400_000) + p.retentionMs);
        }
        const retention = Math.max(60_000, ...policies.map((p) => p.retentionMs));
        if (!o.dryRun) {
          const ahead = await protectAhead(this.catalog, target, repo, next, now, retention, undefined, this.protectOptions(repo));
          await this.saveProtection(ahead, ahead.horizon.keys(), { at: now, trigger: 'periodic', target: target.name }).catch((err) => this.log(`protection report: ${asBulwarkError(err).message}`));
        }
        const { expired, report } = await groomTarget(this.catalog, target, repo, now, { dryRun: o.dryRun ?? false, busyHosts: busy });
        out.push({
          target: target.name,
          expired: expired.length,
          deleted: report.deleted.length,
          retained: report.retained.length,
          failed: report.failed.length,
          details: [
            ...expired.map((s) => ({ path: `snapshot ${s.id} (${s.hostId})`, reason: `expired ${new Date(s.expiresAt).toISOString()}` })),
            ...report.retained.map((r) => ({ path: r.key, reason: `retained until ${r.until ? new Date(r.until).toISOString() : 'unknown'}` })),
            ...report.failed.map((f) => ({ path: f.key, reason: f.reason })),
          ],
        });
      }
      return out;
    };
    const p = (this.maintaining ?? Promise.resolve()).then(run, run);
    this.maintaining = p.then(() => undefined, () => undefined);
    return p;
  }

  /** Per host, the liveness of its newest snapshot's packs (a few hosts' results kept: a periodic
   * run and the next backup's look-ahead of the same snapshot measure once). */
  private readonly livenessMemo = new Map<string, { snapshotId: string; packs: ReadonlyMap<string, PackUse> }>();

  private protectOptions(repo: Repository): { liveness?: LivenessProvider; reprotectBelow: number } {
    // re-protection off: nothing to measure
    return { reprotectBelow: this.o.reprotectBelow, ...(this.o.reprotectBelow > 0 ? { liveness: this.livenessProvider(repo) } : {}) };
  }

  private livenessProvider(repo: Repository): LivenessProvider {
    return async (hostId, newest) => {
      const memo = this.livenessMemo.get(hostId);
      if (memo?.snapshotId === newest.id) return memo.packs;
      const host = repo.host(hostId);
      const started = Date.now();
      const r = await measureLiveness(host, await host.loadSnapshot(newest.id), { cache: this.catalog.treeShapeCache() });
      this.log(`liveness of ${hostId} (snapshot ${newest.id.slice(0, 12)}): ${r.packs.size} packs, ${r.trees} trees (${r.fetched} read from the bucket), ${Date.now() - started} ms`);
      this.livenessMemo.delete(hostId);
      this.livenessMemo.set(hostId, { snapshotId: newest.id, packs: r.packs });
      if (this.livenessMemo.size > 64) this.livenessMemo.delete(this.livenessMemo.keys().next().value!);
      return r.packs;
    };
  }

  /** Measure (into the memo) the liveness the look-ahead for this host's next backup will ask for. */
  private async measureAhead(target: TargetRecord, repo: Repository, hostId: string, nextExpiry: number, now: number): Promise<void> {
    if (!target.canExtend || this.o.reprotectBelow <= 0) return;
    const live = (await this.catalog.snapshotsOf(hostId)).filter((x) => x.target === target.name && x.expiresAt > now);
    const newest = live.reduce<SnapshotRecord | undefined>((a, x) => (!a || x.expiresAt > a.expiresAt ? x : a), undefined);
    if (!newest) return;
    const planned = live.map((x) => ({ id: x.id, hostId, expiresAt: x.expiresAt, manifestKey: layout.snapshot(hostId, x.id), packKeys: x.packs.map((p) => layout.pack(hostId, p)) }));
    const keys = newest.packs.map((p) => layout.pack(hostId, p));
    const values = await this.catalog.locks.getMany(keys);
    const knownLocks = new Map<string, number>();
    keys.forEach((k, i) => {
      const v = values[i];
      if (v !== undefined) knownLocks.set(k, v);
    });
    if (lapsingForNext({ snapshots: planned, foundationKeys: [], knownLocks, nextExpiry: new Map([[hostId, nextExpiry]]), canExtend: true }).size === 0) return;
    await this.livenessProvider(repo)(hostId, newest);
  }

  /** What the look-ahead did, per host, into the catalog (bulwark protection) and the log. */
  private async saveProtection(ahead: ExtendReport, hosts: Iterable<string>, o: { at: number; trigger: 'backup' | 'periodic'; target: string; jobId?: string }): Promise<void> {
    const runs = hostRuns(ahead, hosts, { ...o, reprotectBelow: this.o.reprotectBelow });
    await saveRuns(this.catalog, runs);
    for (const [hostId, { run }] of runs) {
      if (run.packsExtended + run.manifestsExtended + run.packsReprotect + run.failed === 0 && !run.livenessError) continue;
      this.log(`look-ahead (${o.trigger}) for ${hostId}: ${run.packsExtended} packs extended (${run.bytesExtended} B), ${run.packsReprotect} to re-protect (${run.bytesReupload} B live, ${run.bytesReleased} B dead), ${run.failed} failed${run.livenessError ? `; liveness not measured: ${run.livenessError}` : ''}`);
    }
  }

  async audit() {
    const reports = [];
    for (const target of await this.catalog.all(this.catalog.targets)) reports.push(await auditTarget(this.catalog, target, await this.repo(target)));
    return reports;
  }
}

export function isTerminal(s: JobRecord['state']): boolean {
  return s === 'succeeded' || s === 'failed' || s === 'cancelled';
}

export function emptyProgress(): NonNullable<JobRecord['progress']> {
  return { filesDone: 0, bytesDone: 0, filesTotal: 0, bytesTotal: 0, bytesUploaded: 0, currentPath: '', phase: '' };
}

function newJobId(): string {
  return `j-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
}

export function grpcError(code: grpc.status, message: string): grpc.ServiceError {
  return Object.assign(new Error(message), { code, details: message, metadata: new grpc.Metadata() }) as grpc.ServiceError;
}

const STATUS_OF: Record<string, grpc.status> = {
  NOT_FOUND: grpc.status.NOT_FOUND,
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  ACCESS_DENIED: grpc.status.PERMISSION_DENIED,
  BUCKET_NOT_LOCKED: grpc.status.FAILED_PRECONDITION,
  OBJECT_LOCKED: grpc.status.FAILED_PRECONDITION,
  WRONG_KEY: grpc.status.PERMISSION_DENIED,
  BAD_REPOSITORY: grpc.status.FAILED_PRECONDITION,
  THROTTLED: grpc.status.UNAVAILABLE,
  TRANSIENT: grpc.status.UNAVAILABLE,
  ABORTED: grpc.status.CANCELLED,
};

/** The one place BulwarkError codes become gRPC statuses. */
export function toGrpcError(err: unknown): grpc.ServiceError {
  if (err && typeof err === 'object' && 'code' in err && typeof (err as grpc.ServiceError).code === 'number') return err as grpc.ServiceError;
  const e = asBulwarkError(err);
  const md = new grpc.Metadata();
  md.set('bulwark-code', e.code);
  return Object.assign(new Error(e.message), { code: STATUS_OF[e.code] ?? grpc.status.INTERNAL, details: e.message, metadata: md }) as grpc.ServiceError;
}

async function loadOrCreate(file: string, make: () => Promise<CertBundle>): Promise<CertBundle> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as CertBundle;
  } catch {
    const b = await make();
    await fs.writeFile(file, JSON.stringify(b), { mode: 0o600 });
    return b;
  }
}

/** grpc.health.v1 Check, hand-rolled (no extra package): SERVING while the controller runs. */
function addHealth(server: grpc.Server): void {
  const svc: grpc.ServiceDefinition = {
    Check: {
      path: '/grpc.health.v1.Health/Check',
      requestStream: false,
      responseStream: false,
      requestSerialize: (b: Buffer) => b,
      requestDeserialize: (b: Buffer) => b,
      // HealthCheckResponse { status = 1 (SERVING) }: field 1, varint 1
      responseSerialize: (b: Buffer) => b,
      responseDeserialize: (b: Buffer) => b,
    },
  };
  server.addService(svc, { Check: (_call: unknown, cb: grpc.sendUnaryData<Buffer>) => cb(null, Buffer.from([0x08, 0x01])) });
}

