/**
 * The ransomware drill: proves, against a real bucket, that backups survive an attacker who holds
 * the strongest credential there is — the bucket owner — and wipes every machine's local state.
 *
 *   1. Two hosts back up a generated tree three times each (mutating it in between); a copy of the
 *      tree at each backup is kept locally as the reference.
 *   2. The attacker, with raw S3 calls: deletes every version of every object, puts delete markers
 *      everywhere, overwrites every key with garbage, shortens every retention, tries to turn
 *      COMPLIANCE into GOVERNANCE and bypass it, tries to remove the bucket's Object Lock
 *      configuration, tries to delete the bucket; then wipes the controller's data dir and the
 *      agents' journals.
 *   3. A fresh controller catalog is rebuilt from the bucket alone with the recovery passphrase, and
 *      every snapshot still inside its retention is restored and compared byte for byte.
 * Prints what the attacker tried, what the bucket refused, and what was restored. Run it against a
 * scratch bucket or prefix: it leaves garbage versions and delete markers behind.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  DeleteBucketCommand,
  DeleteObjectCommand,
  ListObjectVersionsCommand,
  PutObjectCommand,
  PutObjectLockConfigurationCommand,
  PutObjectRetentionCommand,
} from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import { AgentCore } from '../agent/agent-core.js';
import { Repository } from '../common/repo/repository.js';
import { openS3Store } from '../common/storage/open-store.js';
import { rawS3Client } from '../common/storage/s3-store.js';
import { Catalog } from './catalog.js';
import { rebuildCatalog } from './maintenance.js';

export interface DrillOptions {
  endpoint?: string;
  region?: string;
  bucket: string;
  prefix: string;
  accessKeyId: string;
  secretAccessKey: string;
  workDir?: string;
  log?: (line: string) => void;
}

export interface AttackResult {
  attack: string;
  tried: number;
  refused: number;
  succeeded: number;
}

export interface DrillReport {
  attacks: AttackResult[];
  snapshots: number;
  restored: number;
  identical: number;
  differences: string[];
}

async function copyTree(src: string, dst: string): Promise<void> {
  await fs.cp(src, dst, { recursive: true, preserveTimestamps: true, verbatimSymlinks: true });
}

async function digestTree(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  async function walk(rel: string): Promise<void> {
    for (const d of await fs.readdir(path.join(dir, rel), { withFileTypes: true })) {
      const r = path.join(rel, d.name);
      if (d.isDirectory()) {
        out.set(r, 'dir');
        await walk(r);
      } else if (d.isSymbolicLink()) out.set(r, `link:${await fs.readlink(path.join(dir, r))}`);
      else out.set(r, createHash('sha256').update(await fs.readFile(path.join(dir, r))).digest('hex'));
    }
  }
  await walk('');
  return out;
}

export async function runDrill(o: DrillOptions): Promise<DrillReport> {
  const log = o.log ?? (() => undefined);
  const work = o.workDir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-drill-')));
  const passphrase = randomBytes(18).toString('base64');
  const store = openS3Store({ ...(o.endpoint ? { endpoint: o.endpoint } : {}), region: o.region ?? 'us-east-1', bucket: o.bucket, prefix: o.prefix, accessKeyId: o.accessKeyId, secretAccessKey: o.secretAccessKey });
  const retentionMs = 3_600_000;
  const lockUntil = (await store.serverTime()) + retentionMs + 360_000;
  const repo = await Repository.init(store, { passphrase, lock: { mode: 'COMPLIANCE', retainUntil: lockUntil } });
  log(`repository ${repo.config.repoId} created in s3://${o.bucket}/${o.prefix}`);

  // 1. backups
  const references: Array<{ hostId: string; snapshotId: string; ref: string; root: string }> = [];
  for (const hostId of ['drill-a', 'drill-b']) {
    const root = path.join(work, hostId, 'data');
    await fs.mkdir(path.join(root, 'docs'), { recursive: true });
    const core = await AgentCore.open({ dataDir: path.join(work, hostId, 'agent'), hostname: hostId, host: repo.host(hostId), roots: [root], watch: false });
    try {
      for (let round = 0; round < 3; round++) {
        await fs.writeFile(path.join(root, 'docs', `report-${round}.txt`), `quarterly report ${round} of ${hostId}\n`.repeat(1000));
        await fs.writeFile(path.join(root, `data-${round}.bin`), randomBytes(300_000 + round * 1000));
        await fs.writeFile(path.join(root, 'ledger.csv'), `round,${round}\n`);
        const now = await store.serverTime();
        const r = await core.backup({ lock: { mode: 'COMPLIANCE', retainUntil: lockUntil }, expiresAt: now + retentionMs });
        const ref = path.join(work, hostId, `ref-${round}`);
        await copyTree(root, ref);
        references.push({ hostId, snapshotId: r.snapshotId, ref, root });
        log(`backup ${hostId} #${round + 1}: snapshot ${r.snapshotId.slice(0, 12)}, ${r.manifest.stats.files} files`);
      }
    } finally {
      await core.close();
    }
  }

  // 2. the attack, with raw S3 calls and the owner's credential
  const s3 = rawS3Client(o);
  const prefix = o.prefix ? `${o.prefix}/` : '';
  const versions = async () => {
    const out: Array<{ Key: string; VersionId: string; marker: boolean }> = [];
    let km: string | undefined;
    let vm: string | undefined;
    for (;;) {
      const r = await s3.send(new ListObjectVersionsCommand({ Bucket: o.bucket, Prefix: prefix, ...(km ? { KeyMarker: km } : {}), ...(vm ? { VersionIdMarker: vm } : {}) }));
      for (const v of r.Versions ?? []) out.push({ Key: v.Key!, VersionId: v.VersionId!, marker: false });
      for (const d of r.DeleteMarkers ?? []) out.push({ Key: d.Key!, VersionId: d.VersionId!, marker: true });
      if (!r.IsTruncated) return out;
      km = r.NextKeyMarker;
      vm = r.NextVersionIdMarker;
    }
  };
  const attacks: AttackResult[] = [];
  const attack = async (name: string, items: readonly unknown[], fn: (x: never) => Promise<unknown>) => {
    const r: AttackResult = { attack: name, tried: 0, refused: 0, succeeded: 0 };
    for (const x of items) {
      r.tried++;
      try {
        await fn(x as never);
        r.succeeded++;
      } catch {
        r.refused++;
      }
    }
    attacks.push(r);
    log(`attack: ${name}: tried ${r.tried}, refused ${r.refused}, succeeded ${r.succeeded}`);
  };
  const genuine = (await versions()).filter((v) => !v.marker);
  const keys = [...new Set(genuine.map((v) => v.Key))];
  await attack('delete every object version', genuine, (v: { Key: string; VersionId: string }) => s3.send(new DeleteObjectCommand({ Bucket: o.bucket, Key: v.Key, VersionId: v.VersionId })));
  await attack('delete every version with governance bypass', genuine, (v: { Key: string; VersionId: string }) => s3.send(new DeleteObjectCommand({ Bucket: o.bucket, Key: v.Key, VersionId: v.VersionId, BypassGovernanceRetention: true })));
  await attack('shorten every retention to 1 s from now', genuine, (v: { Key: string; VersionId: string }) =>
    s3.send(new PutObjectRetentionCommand({ Bucket: o.bucket, Key: v.Key, VersionId: v.VersionId, Retention: { Mode: 'COMPLIANCE', RetainUntilDate: new Date(Date.now() + 1000) } })),
  );
  await attack('turn every COMPLIANCE lock into GOVERNANCE', genuine, (v: { Key: string; VersionId: string }) =>
    s3.send(new PutObjectRetentionCommand({ Bucket: o.bucket, Key: v.Key, VersionId: v.VersionId, Retention: { Mode: 'GOVERNANCE', RetainUntilDate: new Date(Date.now() + 1000) }, BypassGovernanceRetention: true })),
  );
  await attack('overwrite every key with garbage', keys, (k: string) => {
    const body = randomBytes(512);
    return s3.send(new PutObjectCommand({ Bucket: o.bucket, Key: k, Body: body, ContentMD5: createHash('md5').update(body).digest('base64') }));
  });
  await attack('put a delete marker on every key', keys, (k: string) => s3.send(new DeleteObjectCommand({ Bucket: o.bucket, Key: k })));
  await attack('remove the bucket\'s Object Lock configuration', [0], () =>
    s3.send(new PutObjectLockConfigurationCommand({ Bucket: o.bucket, ObjectLockConfiguration: { ObjectLockEnabled: undefined as never } })),
  );
  await attack('delete the bucket', [0], () => s3.send(new DeleteBucketCommand({ Bucket: o.bucket })));
  await fs.rm(path.join(work, 'drill-a', 'agent'), { recursive: true, force: true });
  await fs.rm(path.join(work, 'drill-b', 'agent'), { recursive: true, force: true });
  attacks.push({ attack: 'wipe every agent journal and cache; recover with a new, empty controller', tried: 1, refused: 0, succeeded: 1 });
  log('attack: wiped the agents\' journals and caches; recovery starts from a new controller catalog');

  // 3. recovery from the bucket alone
  const fresh = await Repository.open(store, { passphrase });
  const catalog = await Catalog.open(path.join(work, 'new-controller', 'catalog'));
  const report: DrillReport = { attacks, snapshots: 0, restored: 0, identical: 0, differences: [] };
  try {
    const target = { name: 'drill', region: 'us-east-1', bucket: o.bucket, prefix: o.prefix, agentAccessKeyId: '', agentSecretAccessKey: '', maintainerAccessKeyId: '', maintainerSecretAccessKey: '', masterKey: fresh.masterKey.toString('base64'), repoId: fresh.config.repoId, canExtend: true };
    const rebuilt = await rebuildCatalog(catalog, target, fresh);
    report.snapshots = rebuilt.snapshots;
    log(`rebuilt the catalog from the bucket: ${rebuilt.hosts} hosts, ${rebuilt.snapshots} snapshots`);
    const now = await store.serverTime();
    for (const ref of references) {
      const rec = (await catalog.snapshotsOf(ref.hostId)).find((s) => s.id === ref.snapshotId);
      if (!rec) {
        report.differences.push(`${ref.hostId} ${ref.snapshotId}: missing from the rebuilt catalog`);
        continue;
      }
      if (rec.expiresAt <= now) continue;
      const host = fresh.host(ref.hostId);
      const manifest = await host.loadSnapshot(ref.snapshotId);
      const core = await AgentCore.open({ dataDir: path.join(work, 'restore-agent', ref.hostId), hostname: 'restorer', host, roots: [path.join(work, 'restore-agent')], watch: false });
      const out = path.join(work, 'restored', ref.snapshotId);
      try {
        const res = await core.restore({ manifest, target: out });
        report.restored++;
        const [want, got] = await Promise.all([digestTree(ref.ref), digestTree(path.join(out, ref.root))]);
        const diffs = [...want].filter(([k, v]) => got.get(k) !== v).map(([k]) => k);
        if (got.size !== want.size) diffs.push(`(${got.size} entries restored, ${want.size} expected)`);
        if (res.errors.length) diffs.push(...res.errors.map((e) => `${e.path}: ${e.reason}`));
        if (diffs.length === 0) report.identical++;
        else report.differences.push(`${ref.hostId} ${ref.snapshotId.slice(0, 12)}: ${diffs.join(', ')}`);
        log(`restored ${ref.hostId} ${ref.snapshotId.slice(0, 12)}: ${diffs.length === 0 ? 'byte-identical' : `DIFFERENT (${diffs.length})`}`);
      } finally {
        await core.close();
      }
    }
  } finally {
    await catalog.close();
    if (!o.workDir) await fs.rm(work, { recursive: true, force: true });
  }
  return report;
}
