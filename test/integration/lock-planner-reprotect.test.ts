/**
 * The look-ahead's liveness decision end to end, against the real S3: a controller and an agent
 * (gRPC over mTLS, in process), a repository with small packs. Most files of the first backup's
 * pack are replaced; once that pack's lock generation runs out, the look-ahead before the next
 * backup measures it mostly dead, does not extend it, and has the backup re-protect it. The new
 * snapshot no longer needs the pack, its lock was not extended, every restore point stays fully
 * covered by the audit, the new snapshot restores byte-identical, and `bulwark protection` shows
 * what was done.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { enroll } from '../../agent/identity.js';
import { AgentSession } from '../../agent/session.js';
import { layout } from '../../common/repo/layout.js';
import { Repository } from '../../common/repo/repository.js';
import type { JobRecord } from '../../controller/catalog.js';
import { Controller, isTerminal } from '../../controller/controller.js';
import { lockGeneration } from '../../controller/lock-planner.js';
import { compilePolicy } from '../../controller/policy.js';
import { createOrOpenTarget, maintainerStore } from '../../controller/targets.js';
import { compareTrees } from '../helpers/fs-tree.js';
import { SMALL_REPO } from '../helpers/repo.js';
import { createLockedBucket, rawClient, s3Config, sleep } from '../helpers/s3.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-reprotect-'));
afterAll(() => fs.rm(tmp, { recursive: true, force: true }));

const H = 3_600_000;
const R = H;
const G = lockGeneration(R);

async function waitJob(c: Controller, id: string): Promise<JobRecord> {
  for (let i = 0; i < 1200; i++) {
    const j = await c.catalog.get(c.catalog.jobs, id);
    if (j && isTerminal(j.state)) return j;
    await sleep(100);
  }
  throw new Error(`job ${id} did not finish`);
}

function cli(admin: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [path.join(root, 'bin/bulwark.js'), '--admin', admin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('exit', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

describe('look-ahead: mostly dead packs are re-protected, not extended', () => {
  it('the next snapshot drops the mostly dead pack, its lock is not extended, and audit coverage stays 100 %', async () => {
    const s3 = s3Config();
    const bucket = await createLockedBucket(rawClient(s3), 'reprotect');
    const spec = { name: 'main', endpoint: s3.endpoint, bucket, prefix: 'p', agentAccessKeyId: s3.accessKeyId, agentSecretAccessKey: s3.secretAccessKey };
    // a repository with small packs, so that a handful of files fill one
    await Repository.init(maintainerStore({ ...spec, region: 'us-east-1', maintainerAccessKeyId: s3.accessKeyId, maintainerSecretAccessKey: s3.secretAccessKey }), {
      passphrase: 'recovery words',
      lock: { mode: 'COMPLIANCE', retainUntil: Date.now() + 2 * H },
      config: SMALL_REPO,
    });
    const { record: target } = await createOrOpenTarget(spec, 'recovery words', Date.now() + 2 * H);
    expect(target.canExtend).toBe(true);

    // the controller's clock can be moved ahead (lock dates stay in the bucket's future)
    let offset = 0;
    const clock = { now: () => Date.now() + offset };
    const dataDir = path.join(tmp, 'controller');
    const c = await Controller.start({ dataDir, listen: '127.0.0.1:0', tickMs: 3_600_000, maintenanceMs: 3_600_000, clock });
    let session: AgentSession | undefined;
    try {
      const data = path.join(tmp, 'data');
      await fs.mkdir(path.join(data, 'd'), { recursive: true });
      // 12 one-chunk files (below the chunker's minimum), all in the first backup's one pack
      for (let i = 0; i < 12; i++) await fs.writeFile(path.join(data, 'd', `f${String(i).padStart(2, '0')}`), randomBytes(50_000));
      await c.catalog.targets.put(target.name, target);
      await c.catalog.policies.put('keep', compilePolicy({ name: 'keep', target: 'main', paths: [data], schedule: 'every 1d', retention: '1h' }));
      const tok = await c.createToken(600_000);
      const id = await enroll(path.join(tmp, 'agent'), tok.token, 'box');
      session = new AgentSession({ dataDir: path.join(tmp, 'agent'), identity: id, hostname: 'box', watch: false });
      session.start();
      for (let i = 0; i < 100 && !c.sessions.has(id.hostId); i++) await sleep(50);
      await c.pushConfigs();
      const hostId = id.hostId;
      const backup = async () => {
        const j = await waitJob(c, (await c.queueBackup(hostId)).id);
        expect(j.state, JSON.stringify(j.error)).toBe('succeeded');
        return { job: j, snap: (await c.catalog.snapshotsOf(hostId)).find((s) => s.id === j.snapshotId)! };
      };

      const b1 = await backup();
      expect(b1.snap.packs).toHaveLength(1);
      const p1 = b1.snap.packs[0]!;
      const p1Key = layout.pack(hostId, p1);

      // 10 of the 12 files replaced: p1 is mostly dead, but the 2 others still live there
      for (let i = 0; i < 10; i++) await fs.writeFile(path.join(data, 'd', `f${String(i).padStart(2, '0')}`), randomBytes(50_000));
      const b2 = await backup();
      expect(b2.snap.packs).toContain(p1);
      // p1 was uploaded locked a generation past b1's expiry, and the catalog read that real lock
      // when b1 was recorded: it already covers b2, so nothing is extended for nothing
      const run2 = (await c.catalog.get(c.catalog.protection, hostId))!;
      expect(run2.last).toMatchObject({ trigger: 'backup', jobId: b2.job.id, packsExtended: 0, packsReprotect: 0 });
      const store = maintainerStore(target);
      const lockAfter2 = (await store.head(p1Key)).lock!.retainUntil;
      expect(lockAfter2).toBeGreaterThanOrEqual(b1.snap.expiresAt + G - 1000);
      expect(lockAfter2).toBeGreaterThanOrEqual(b2.snap.expiresAt);
      expect(await c.catalog.locks.get(p1Key)).toBe(lockAfter2);

      // past that generation: p1 lapses for the next backup again, now mostly dead
      offset = G + 10 * 60_000;
      const b3 = await backup();
      const run3 = (await c.catalog.get(c.catalog.protection, hostId))!;
      expect(run3.last).toMatchObject({ trigger: 'backup', jobId: b3.job.id, packsReprotect: 1, packsMeasured: 2, failed: 0 });
      expect(run3.last.packsExtended).toBeGreaterThanOrEqual(1); // b2's fresh pack, all live
      // what is still live in p1 (2 of 12 files) is uploaded again; the rest is no longer kept locked
      expect(run3.last.bytesReupload).toBeGreaterThan(90_000);
      expect(run3.last.bytesReleased).toBeGreaterThan(4 * run3.last.bytesReupload);
      expect(run3.reprotect).toMatchObject({ jobId: b3.job.id, state: 'succeeded', snapshotId: b3.snap.id, packsDropped: 1, packs: [{ id: p1 }] });
      expect(run3.reprotect!.packs[0]!.live).toBeLessThan(0.25);

      // the new snapshot does not reference the mostly dead pack — in the bucket's own manifest too
      expect(b3.snap.packs).not.toContain(p1);
      const repo = await c.repo(target);
      expect((await repo.host(hostId).loadSnapshot(b3.snap.id)).packs).not.toContain(p1);
      expect(b3.snap.bytesUploaded).toBeGreaterThan(90_000); // the two live files, written afresh
      // p1 was not extended for b3: its lock is still the one it was uploaded with, which covers b1 and b2
      const p1Lock = (await store.head(p1Key)).lock!.retainUntil;
      expect(p1Lock).toBe(lockAfter2);
      expect(p1Lock).toBeLessThan(b3.snap.expiresAt);
      expect(p1Lock).toBeGreaterThanOrEqual(b2.snap.expiresAt);

      // every restore point stays covered, checked against the bucket itself
      const [audit] = await c.audit();
      expect(audit!.snapshots).toBe(3);
      expect(audit!.coverage, JSON.stringify(audit!.uncovered)).toBe(1);

      // and the re-protected snapshot restores byte-identical
      const out = path.join(tmp, 'restored');
      const r = await waitJob(c, (await c.queueRestore(hostId, { sourceHostId: hostId, snapshotId: b3.snap.id, paths: [], targetDir: out, overwrite: false })).id);
      expect(r.state, JSON.stringify(r.error)).toBe('succeeded');
      expect(await compareTrees(data, path.join(out, data), { mtimeOfDirs: false })).toEqual([]);

      // the console shows it
      const admin = path.join(dataDir, 'admin.json');
      const json = await cli(admin, ['protection', hostId, '--json']);
      expect(json.code, json.stderr).toBe(0);
      const [row] = JSON.parse(json.stdout);
      expect(row).toMatchObject({ hostId, last: { trigger: 'backup', packsReprotect: 1, jobId: b3.job.id }, reprotect: { state: 'succeeded', packsDropped: 1 } });
      expect(row.last.horizonMs).toBeGreaterThanOrEqual(b2.snap.expiresAt);
      const human = await cli(admin, ['protection']);
      expect(human.stdout).toContain(hostId);
      expect(human.stdout).toMatch(/re-protection asked .* 1 pack, .* succeeded: snapshot [0-9a-f]{12} no longer needs 1 of them/);
      const missing = await cli(admin, ['protection', 'no-such-host']);
      expect(missing.code).toBe(1);
      expect(missing.stderr.trim().split('\n')).toEqual(['bulwark protection: no host no-such-host: see bulwark hosts']);

      // a periodic run records itself and keeps the re-protection's outcome until the next request
      await c.maintain();
      const periodic = (await c.catalog.get(c.catalog.protection, hostId))!;
      expect(periodic.last).toMatchObject({ trigger: 'periodic', failed: 0 });
      expect(periodic.reprotect).toEqual(run3.reprotect);
      expect(periodic.last.horizon).toBeGreaterThanOrEqual(b3.snap.expiresAt);
      expect((await c.catalog.get(c.catalog.hosts, hostId))!.horizon).toBe(periodic.last.horizon);
    } finally {
      await session?.stop();
      await c.stop();
    }
  });
});
