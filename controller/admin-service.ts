/**
 * AdminService handlers: what the console can do. Every call first checks for an admin client
 * certificate; wire types are converted to and from domain records here and nowhere else.
 */
import type * as grpc from '@grpc/grpc-js';
import { parseDuration } from '../common/duration.js';
import { BulwarkError } from '../common/errors.js';
import type { AdminServiceServer, HostProtection, JobInfo } from '../common/gen/bulwark/v1/admin.js';
import type { HostRecord, JobRecord, ProtectionRecord, SnapshotRecord } from './catalog.js';
import type { Controller } from './controller.js';
import { isTerminal, toGrpcError } from './controller.js';
import { rebuildCatalog } from './maintenance.js';
import { compilePolicy } from './policy.js';
import { nextRun, parseSchedule } from './schedule.js';
import { createOrOpenTarget } from './targets.js';
import { checkBucket } from '../common/storage/doctor.js';
import { maintainerStore } from './targets.js';
import type { TreeNode } from '../common/repo/tree.js';

type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void;

export function jobToWire(j: JobRecord): JobInfo {
  return {
    jobId: j.id,
    hostId: j.hostId,
    kind: j.kind,
    state: j.state,
    createdMs: BigInt(j.created),
    updatedMs: BigInt(j.updated),
    progress: j.progress
      ? { filesDone: BigInt(j.progress.filesDone), bytesDone: BigInt(j.progress.bytesDone), filesTotal: BigInt(j.progress.filesTotal), bytesTotal: BigInt(j.progress.bytesTotal), bytesUploaded: BigInt(j.progress.bytesUploaded), currentPath: j.progress.currentPath, phase: j.progress.phase }
      : undefined,
    error: j.error ? { code: j.error.code, message: j.error.message } : undefined,
    snapshotId: j.snapshotId ?? '',
    issues: j.issues ?? [],
  };
}

const snapToWire = (s: SnapshotRecord) => ({
  id: s.id,
  hostId: s.hostId,
  timeMs: BigInt(s.time),
  expiresMs: BigInt(s.expiresAt),
  files: BigInt(s.files),
  bytes: BigInt(s.bytes),
  bytesUploaded: BigInt(s.bytesUploaded),
  packs: s.packs.length,
  policy: s.policy,
  roots: s.roots,
});

export function protectionToWire(h: Pick<HostRecord, 'id' | 'hostname'>, p: ProtectionRecord | undefined): HostProtection {
  const l = p?.last;
  const r = p?.reprotect;
  return {
    hostId: h.id,
    hostname: h.hostname,
    last: l
      ? {
          atMs: BigInt(l.at),
          trigger: l.trigger,
          target: l.target,
          jobId: l.jobId ?? '',
          packsExtended: l.packsExtended,
          bytesExtended: BigInt(l.bytesExtended),
          manifestsExtended: l.manifestsExtended,
          alreadyLonger: l.alreadyLonger,
          failed: l.failed,
          packsReprotect: l.packsReprotect,
          bytesReupload: BigInt(l.bytesReupload),
          bytesReleased: BigInt(l.bytesReleased),
          reprotectBelow: l.reprotectBelow,
          horizonMs: BigInt(l.horizon),
          packsMeasured: l.packsMeasured,
          livenessError: l.livenessError ?? '',
        }
      : undefined,
    reprotect: r
      ? {
          atMs: BigInt(r.at),
          jobId: r.jobId,
          packs: r.packs.map((x) => ({ id: x.id, size: BigInt(x.size), live: x.live })),
          bytesReupload: BigInt(r.bytesReupload),
          bytesReleased: BigInt(r.bytesReleased),
          state: r.state,
          snapshotId: r.snapshotId ?? '',
          packsDropped: r.packsDropped ?? 0,
          bytesUploaded: BigInt(r.bytesUploaded ?? 0),
        }
      : undefined,
  };
}

export function buildAdminService(c: Controller): AdminServiceServer {
  // Each handler: check the admin credential, run, map errors in one place.
  const unary = <Req, Res>(fn: (req: Req) => Promise<Res>): Unary<Req, Res> => (call, cb) => {
    void (async () => {
      c.requireIdentity(call, 'admin');
      return fn(call.request);
    })().then((r) => cb(null, r), (err) => cb(toGrpcError(err)));
  };
  const cat = c.catalog;

  return {
    createToken: unary(async (req) => {
      const t = await c.createToken(parseDuration(req.validFor || '1h'));
      return { token: t.token, expiresMs: BigInt(t.expiresAt) };
    }),
    addTarget: unary(async (req) => {
      const spec = req.spec;
      if (!spec?.bucket) throw new BulwarkError('INVALID_ARGUMENT', 'a target needs a bucket (--bucket)');
      if (await cat.get(cat.targets, req.name)) throw new BulwarkError('INVALID_ARGUMENT', `target ${req.name} exists already`);
      const { record, checks } = await createOrOpenTarget(
        {
          name: req.name,
          ...(spec.endpoint ? { endpoint: spec.endpoint } : {}),
          region: spec.region || 'us-east-1',
          bucket: spec.bucket,
          prefix: spec.prefix,
          agentAccessKeyId: spec.agentAccessKeyId,
          agentSecretAccessKey: spec.agentSecretAccessKey,
          ...(spec.maintainerAccessKeyId ? { maintainerAccessKeyId: spec.maintainerAccessKeyId, maintainerSecretAccessKey: spec.maintainerSecretAccessKey } : {}),
        },
        req.passphrase,
        c.clock.now() + 86_400_000,
      );
      await cat.targets.put(record.name, record);
      return { name: record.name, endpoint: record.endpoint ?? '', bucket: record.bucket, prefix: record.prefix, repoId: record.repoId, checks: checks.map((x) => ({ name: x.name, status: x.status, detail: x.detail, fix: x.fix ?? '' })) };
    }),
    listTargets: unary(async () => ({
      targets: (await cat.all(cat.targets)).map((t) => ({ name: t.name, endpoint: t.endpoint ?? '', bucket: t.bucket, prefix: t.prefix, repoId: t.repoId, checks: [] })),
    })),
    checkTarget: unary(async (req) => {
      const t = await cat.get(cat.targets, req.name);
      if (!t) throw new BulwarkError('NOT_FOUND', `no target ${req.name}: see bulwark target list`);
      const checks = await checkBucket(maintainerStore(t));
      return { checks: checks.map((x) => ({ name: x.name, status: x.status, detail: x.detail, fix: x.fix ?? '' })) };
    }),
    createPolicy: unary(async (req) => {
      if (!(await cat.get(cat.targets, req.target))) throw new BulwarkError('NOT_FOUND', `no target ${JSON.stringify(req.target)}: add one first (bulwark target add)`);
      const p = compilePolicy({ name: req.name, target: req.target, hosts: req.hosts, paths: req.paths, excludes: req.excludes, schedule: req.schedule, retention: req.retention, lockMode: req.lockMode || 'COMPLIANCE' });
      await cat.policies.put(p.name, p);
      await c.pushConfigs();
      return { ...req, lockMode: p.lockMode };
    }),
    listPolicies: unary(async () => ({
      policies: (await cat.all(cat.policies)).map((p) => ({ name: p.name, target: p.target, hosts: p.hosts, paths: p.paths, excludes: p.excludes, schedule: p.schedule, retention: p.retention, lockMode: p.lockMode })),
    })),
    deletePolicy: unary(async (req) => {
      if (!(await cat.get(cat.policies, req.name))) throw new BulwarkError('NOT_FOUND', `no policy ${req.name}`);
      await cat.policies.del(req.name);
      return {};
    }),
    listHosts: unary(async () => {
      const policies = await cat.all(cat.policies);
      return {
        hosts: (await cat.all(cat.hosts)).map((h) => {
          const p = policies.find((x) => x.hosts.length === 0 || x.hosts.includes(h.id) || x.hosts.includes(h.hostname));
          return {
            hostId: h.id,
            hostname: h.hostname,
            status: h.revoked ? 'revoked' : c.sessions.has(h.id) ? 'online' : 'offline',
            lastSeenMs: BigInt(h.lastSeen),
            lastBackupMs: BigInt(h.lastBackup ?? 0),
            protectionHorizonMs: BigInt(h.horizon ?? 0),
            lastSnapshotId: h.lastSnapshotId ?? '',
            nextBackupMs: BigInt(p ? Math.min(nextRun(parseSchedule(p.schedule), h.lastBackup ?? 0), 8.64e15) : 0),
          };
        }),
      };
    }),
    listSnapshots: unary(async (req) => ({ snapshots: (await cat.snapshotsOf(req.hostId || undefined)).map(snapToWire) })),
    listFiles: unary(async (req) => {
      const snap = (await cat.snapshotsOf(req.hostId)).find((s) => s.id === req.snapshotId || s.id.startsWith(req.snapshotId));
      if (!snap) throw new BulwarkError('NOT_FOUND', `no snapshot ${req.snapshotId} of host ${req.hostId}: see bulwark snapshots ${req.hostId}`);
      const target = (await cat.get(cat.targets, snap.target))!;
      const host = (await c.repo(target)).host(snap.hostId);
      const manifest = await host.loadSnapshot(snap.id);
      const { index } = await host.loadIndex();
      await host.completeIndex(index, manifest.packs);
      const want = (req.path || '/').replace(/\/+$/, '') || '/';
      const root = manifest.roots.find((r) => want === r.path || want.startsWith(r.path + '/'));
      const toEntry = (n: TreeNode) => ({ name: n.name, type: n.type, mode: n.mode, size: BigInt(n.size ?? 0), mtimeMs: BigInt(BigInt(n.mtimeNs) / 1_000_000n), target: n.target ?? '' });
      if (!root) {
        // above the roots: list the roots themselves
        return { path: want, entries: manifest.roots.map((r) => ({ name: r.path, type: 'dir', mode: r.meta?.mode ?? 0, size: 0n, mtimeMs: 0n, target: '' })) };
      }
      let tree = await host.loadTree(root.tree, index);
      const rest = want.slice(root.path.length).split('/').filter(Boolean);
      for (const name of rest) {
        const n = tree.nodes.find((x) => x.name === name);
        if (!n) throw new BulwarkError('NOT_FOUND', `${want} is not in snapshot ${snap.id}`);
        if (n.type !== 'dir') return { path: want, entries: [toEntry(n)] };
        tree = await host.loadTree(n.subtree!, index);
      }
      return { path: want, entries: tree.nodes.map(toEntry) };
    }),
    startBackup: unary(async (req) => jobToWire(await c.queueBackup(req.hostId))),
    startRestore: unary(async (req) => {
      const snaps = await cat.snapshotsOf(req.hostId);
      if (snaps.length === 0) throw new BulwarkError('NOT_FOUND', `host ${req.hostId} has no snapshots: see bulwark snapshots`);
      let snap: SnapshotRecord | undefined;
      if (req.snapshotId) {
        const matches = snaps.filter((s) => s.id.startsWith(req.snapshotId));
        if (matches.length > 1) throw new BulwarkError('INVALID_ARGUMENT', `snapshot id ${req.snapshotId} is ambiguous: give more digits`);
        snap = matches[0];
        if (!snap) throw new BulwarkError('NOT_FOUND', `no snapshot ${req.snapshotId} of host ${req.hostId}`);
      } else {
        const at = Number(req.atMs);
        snap = snaps.filter((s) => s.time <= at).at(-1);
        if (!snap) throw new BulwarkError('NOT_FOUND', `host ${req.hostId} has no snapshot at or before ${new Date(at).toISOString()} (the oldest is from ${new Date(snaps[0]!.time).toISOString()})`);
      }
      if (!req.targetDir?.startsWith('/')) throw new BulwarkError('INVALID_ARGUMENT', 'the restore target must be an absolute directory (--target /restore)');
      const job = await c.queueRestore(req.toHostId || req.hostId, { sourceHostId: req.hostId, snapshotId: snap.id, paths: req.paths, targetDir: req.targetDir, overwrite: req.overwrite });
      return jobToWire(job);
    }),
    listJobs: unary(async () => ({ jobs: (await cat.all(cat.jobs)).sort((a, b) => a.created - b.created).map(jobToWire) })),
    watchJob: (call) => {
      try {
        c.requireIdentity(call, 'admin');
      } catch (err) {
        call.emit('error', toGrpcError(err));
        return;
      }
      const id = call.request.jobId;
      const onJob = (j: JobRecord) => {
        if (j.id !== id) return;
        call.write(jobToWire(j));
        if (isTerminal(j.state)) finish();
      };
      const finish = () => {
        c.events.off('job', onJob);
        call.end();
      };
      c.events.on('job', onJob);
      call.on('cancelled', () => c.events.off('job', onJob));
      void cat.get(cat.jobs, id).then((j) => {
        if (!j) {
          c.events.off('job', onJob);
          call.emit('error', toGrpcError(new BulwarkError('NOT_FOUND', `no job ${id}`)));
          return;
        }
        call.write(jobToWire(j));
        if (isTerminal(j.state)) finish();
      });
    },
    cancelJob: unary(async (req) => jobToWire(await c.cancelJob(req.jobId))),
    groom: unary(async (req) => {
      const results = await c.maintain({ dryRun: req.dryRun });
      return {
        expiredSnapshots: results.flatMap((r) => r.details.filter((d) => d.path.startsWith('snapshot ')).map((d) => d.path)),
        deleted: results.reduce((a, r) => a + r.deleted, 0),
        retained: results.reduce((a, r) => a + r.retained, 0),
        failed: results.reduce((a, r) => a + r.failed, 0),
        details: results.flatMap((r) => r.details),
        dryRun: req.dryRun,
      };
    }),
    audit: unary(async () => {
      const reports = await c.audit();
      const pairs = reports.reduce((a, r) => a + r.pairs, 0);
      const covered = reports.reduce((a, r) => a + r.covered, 0);
      return {
        snapshots: reports.reduce((a, r) => a + r.snapshots, 0),
        pairs: BigInt(pairs),
        covered: BigInt(covered),
        coverage: pairs === 0 ? 1 : covered / pairs,
        uncovered: reports.flatMap((r) => r.uncovered.map((u) => ({ path: `${u.hostId} ${u.snapshot.slice(0, 12)} ${u.key}`, reason: u.reason }))),
        tampered: reports.flatMap((r) => r.tampered.map((t) => ({ path: t.key, reason: t.detail }))),
      };
    }),
    listProtection: unary(async (req) => {
      const hosts = req.hostId ? [await cat.get(cat.hosts, req.hostId)] : await cat.all(cat.hosts);
      if (req.hostId && !hosts[0]) throw new BulwarkError('NOT_FOUND', `no host ${req.hostId}: see bulwark hosts`);
      const out = [];
      for (const h of hosts) out.push(protectionToWire(h!, await cat.get(cat.protection, h!.id)));
      return { hosts: out };
    }),
    rebuildCatalog: unary(async () => {
      let hosts = 0;
      let snapshots = 0;
      for (const t of await cat.all(cat.targets)) {
        const r = await rebuildCatalog(cat, t, await c.repo(t));
        hosts += r.hosts;
        snapshots += r.snapshots;
      }
      return { hosts, snapshots };
    }),
  };
}
