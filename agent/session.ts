/**
 * The agent's session with its controller: one outbound, long-lived, bidirectional gRPC stream
 * over mTLS (hosts behind NAT need no inbound port).
 *
 *   connect → hello → receive config (target, this host's keys, paths) → open AgentCore
 *   → run the jobs pushed on the stream, one at a time, streaming progress and a result
 *   → heartbeat every 15 s
 *   a dropped stream is retried with exponential backoff and full jitter (1 s … 60 s)
 *
 * Lifecycle: 'starting' | 'connected' | 'backoff' | 'stopping' | 'stopped'.
 */
import * as grpc from '@grpc/grpc-js';
import { BulwarkError, asBulwarkError } from '../common/errors.js';
import { AgentServiceClient, type AgentConfig, type AgentMessage, type ControllerMessage, type Job } from '../common/gen/bulwark/v1/agent.js';
import { deriveHostKeysFromParts } from './host-keys.js';
import { HostRepository } from '../common/repo/repository.js';
import type { RepoConfig } from '../common/repo/config.js';
import { openS3Store } from '../common/storage/open-store.js';
import { AgentCore } from './agent-core.js';
import { type AgentIdentity, mtlsCredentials } from './identity.js';

export type SessionState = 'starting' | 'connected' | 'backoff' | 'stopping' | 'stopped';

export interface AgentSessionOptions {
  dataDir: string;
  identity: AgentIdentity;
  hostname: string;
  log?: (line: string) => void;
  /** Start watchers (default true). */
  watch?: boolean;
}

export class AgentSession {
  state: SessionState = 'starting';
  private client: AgentServiceClient;
  private call: grpc.ClientDuplexStream<AgentMessage, ControllerMessage> | undefined;
  private core: AgentCore | undefined;
  private configKey = '';
  private running: { jobId: string; abort: AbortController } | undefined;
  private queue: Promise<void> = Promise.resolve();
  private attempt = 0;
  private heartbeat: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  lastSnapshotId = '';

  constructor(private readonly o: AgentSessionOptions) {
    this.client = new AgentServiceClient(o.identity.address, mtlsCredentials(o.identity), { 'grpc.keepalive_time_ms': 30_000 });
  }

  private log(line: string): void {
    this.o.log?.(`[agent ${this.o.identity.hostId}] ${line}`);
  }

  start(): void {
    this.connect();
  }

  private connect(): void {
    if (this.stopped) return;
    const call = this.client.session();
    this.call = call;
    call.on('data', (m: ControllerMessage) => {
      this.attempt = 0;
      this.state = 'connected';
      this.queue = this.queue.then(() => this.onMessage(m)).catch((err) => this.log(`error: ${asBulwarkError(err).message}`));
    });
    const retry = (why: string) => {
      if (this.call !== call) return;
      this.call = undefined;
      clearInterval(this.heartbeat);
      if (this.stopped) return;
      this.state = 'backoff';
      const cap = Math.min(60_000, 1000 * 2 ** this.attempt++);
      const delay = Math.round(cap / 2 + Math.random() * (cap / 2));
      this.log(`session lost (${why}); retrying in ${delay} ms`);
      this.retryTimer = setTimeout(() => this.connect(), delay);
    };
    call.on('error', (err: grpc.ServiceError) => retry(err.details || err.message));
    call.on('end', () => retry('stream ended'));
    call.write({ body: { $case: 'hello', value: { agentVersion: '0.1.0', hostname: this.o.hostname, lastSnapshotId: this.lastSnapshotId } } });
    this.heartbeat = setInterval(() => call.write({ body: { $case: 'heartbeat', value: { timeMs: BigInt(Date.now()) } } }), 15_000);
  }

  private send(m: AgentMessage): void {
    this.call?.write(m);
  }

  private async onMessage(m: ControllerMessage): Promise<void> {
    const b = m.body;
    if (!b) return;
    if (b.$case === 'config') await this.configure(b.value);
    else if (b.$case === 'cancel') {
      if (this.running?.jobId === b.value.jobId) this.running.abort.abort();
    } else if (b.$case === 'job') {
      // run outside the message queue so a cancel can arrive while it runs
      void this.runJob(b.value);
    }
  }

  private async configure(c: AgentConfig): Promise<void> {
    const key = JSON.stringify({ t: c.target, p: c.paths, e: c.excludes, r: c.repoConfigJson });
    if (key === this.configKey && this.core) return;
    if (this.running) await new Promise((r) => setTimeout(r, 100));
    await this.core?.close();
    const store = openS3Store({
      ...(c.target?.endpoint ? { endpoint: c.target.endpoint } : {}),
      region: c.target?.region || 'us-east-1',
      bucket: c.target!.bucket,
      prefix: c.target!.prefix,
      accessKeyId: c.target!.accessKeyId,
      secretAccessKey: c.target!.secretAccessKey,
    });
    const host = new HostRepository(store, JSON.parse(c.repoConfigJson) as RepoConfig, deriveHostKeysFromParts(c.hostId, c.keyEnc, c.keyId, c.keyChunk));
    this.core = await AgentCore.open({ dataDir: this.o.dataDir, hostname: this.o.hostname, host, roots: c.paths, exclude: c.excludes, watch: this.o.watch ?? true, onWatcherError: (root, err) => this.log(`watcher ${root}: ${err.message}`) });
    this.configKey = key;
    this.log(`configured: ${c.paths.join(', ')}`);
  }

  private async runJob(job: Job): Promise<void> {
    const abort = new AbortController();
    this.running = { jobId: job.jobId, abort };
    let lastSent = 0;
    const progress = (p: { filesDone: number; bytesDone: number; filesTotal?: number; bytesTotal?: number; bytesUploaded?: number; currentPath: string; phase?: string }) => {
      const now = Date.now();
      if (now - lastSent < 250) return;
      lastSent = now;
      this.send({ body: { $case: 'progress', value: { jobId: job.jobId, progress: { filesDone: BigInt(p.filesDone), bytesDone: BigInt(p.bytesDone), filesTotal: BigInt(p.filesTotal ?? 0), bytesTotal: BigInt(p.bytesTotal ?? 0), bytesUploaded: BigInt(p.bytesUploaded ?? 0), currentPath: p.currentPath, phase: p.phase ?? '' } } } });
    };
    const fail = (err: unknown) => {
      const e = asBulwarkError(err);
      this.send({ body: { $case: 'result', value: { jobId: job.jobId, ok: false, error: { code: e.code, message: e.message }, snapshotId: '', issues: [], files: 0n, bytes: 0n } } });
    };
    try {
      if (!this.core) throw new BulwarkError('INVALID_ARGUMENT', 'the agent has no configuration yet (no policy covers this host)');
      const k = job.kind;
      if (k?.$case === 'backup') {
        const b = k.value;
        const r = await this.core.backup({
          lock: { mode: b.lockMode === 'GOVERNANCE' ? 'GOVERNANCE' : 'COMPLIANCE', retainUntil: Number(b.retainUntilMs) },
          expiresAt: Number(b.expiresAtMs),
          ...(b.reprotectPacks.length ? { reprotectPacks: new Set(b.reprotectPacks) } : {}),
          jobId: job.jobId,
          policy: b.policy,
          signal: abort.signal,
          onProgress: (p) => progress({ ...p, phase: p.phase }),
        });
        this.lastSnapshotId = r.snapshotId;
        this.send({ body: { $case: 'result', value: { jobId: job.jobId, ok: true, snapshotId: r.snapshotId, issues: r.skipped.map((s) => ({ path: s.path, reason: s.reason })), files: BigInt(r.manifest.stats.files), bytes: BigInt(r.manifest.stats.bytes), error: undefined } } });
      } else if (k?.$case === 'restore') {
        const r = k.value;
        const own = this.core.host;
        const source = r.sourceHostId === own.hostId ? own : new HostRepository(own.store, own.config, deriveHostKeysFromParts(r.sourceHostId, r.sourceKeyEnc, r.sourceKeyId, r.sourceKeyChunk));
        const manifest = await source.loadSnapshot(r.snapshotId, abort.signal);
        const res = await this.core.restore({ manifest, host: source, target: r.targetDir, ...(r.paths.length ? { paths: r.paths } : {}), overwrite: r.overwrite, signal: abort.signal, onProgress: (p) => progress({ ...p, phase: 'restoring' }), onNotice: (m) => this.log(`restore: ${m}`) });
        this.send({ body: { $case: 'result', value: { jobId: job.jobId, ok: true, snapshotId: r.snapshotId, issues: res.errors, files: BigInt(res.files + res.hardlinks), bytes: BigInt(res.bytes), error: undefined } } });
      } else {
        throw new BulwarkError('INVALID_ARGUMENT', 'unknown job kind');
      }
    } catch (err) {
      fail(err);
    } finally {
      this.running = undefined;
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.state = 'stopping';
    clearTimeout(this.retryTimer);
    clearInterval(this.heartbeat);
    this.running?.abort.abort();
    this.call?.end();
    this.call?.cancel();
    await this.queue.catch(() => undefined);
    await this.core?.close();
    this.client.close();
    this.state = 'stopped';
  }
}
