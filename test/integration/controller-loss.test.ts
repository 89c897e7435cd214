/**
 * Losing the controller: its data dir is deleted. A new controller with the recovery passphrase
 * re-adds the target, rebuilds hosts, policies and snapshots from the bucket, the agent
 * re-enrolls (the old CA is gone), and the old host's snapshots restore onto it byte-identical.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { enroll } from '../../agent/identity.js';
import { AgentSession } from '../../agent/session.js';
import type { JobRecord } from '../../controller/catalog.js';
import { Controller, isTerminal } from '../../controller/controller.js';
import { compilePolicy } from '../../controller/policy.js';
import { rebuildCatalog } from '../../controller/maintenance.js';
import { createOrOpenTarget } from '../../controller/targets.js';
import { compareTrees } from '../helpers/fs-tree.js';
import { createLockedBucket, rawClient, s3Config, sleep } from '../helpers/s3.js';

const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-loss-'));
afterAll(() => fs.rm(tmp, { recursive: true, force: true }));

async function waitJob(c: Controller, id: string): Promise<JobRecord> {
  for (let i = 0; i < 600; i++) {
    const j = await c.catalog.get(c.catalog.jobs, id);
    if (j && isTerminal(j.state)) return j;
    await sleep(100);
  }
  throw new Error(`job ${id} did not finish`);
}

async function connect(c: Controller, dir: string, name: string) {
  const t = await c.createToken(600_000);
  const id = await enroll(path.join(tmp, dir), t.token, name);
  const session = new AgentSession({ dataDir: path.join(tmp, dir), identity: id, hostname: name, watch: false });
  session.start();
  for (let i = 0; i < 100 && !c.sessions.has(id.hostId); i++) await sleep(50);
  return { id, session };
}

describe('controller loss', () => {
  it('catalog rebuild from the bucket brings hosts, policies and snapshots back; old snapshots restore after re-enrollment', async () => {
    const s3 = s3Config();
    const bucket = await createLockedBucket(rawClient(s3), 'loss');
    const spec = { name: 'main', endpoint: s3.endpoint, bucket, prefix: 'p', agentAccessKeyId: s3.accessKeyId, agentSecretAccessKey: s3.secretAccessKey };
    const data = path.join(tmp, 'data');
    await fs.mkdir(path.join(data, 'd'), { recursive: true });
    await fs.writeFile(path.join(data, 'd', 'one.bin'), randomBytes(200_000));
    // a whole-millisecond mtime, so the reference copy (fs.cp keeps milliseconds) matches exactly
    await fs.utimes(path.join(data, 'd', 'one.bin'), new Date(1_700_000_000_000), new Date(1_700_000_000_000));

    // the first controller, a host, two backups
    const c1 = await Controller.start({ dataDir: path.join(tmp, 'c1'), listen: '127.0.0.1:0', tickMs: 3_600_000, maintenanceMs: 3_600_000 });
    const { record } = await createOrOpenTarget(spec, 'recovery words', Date.now() + 86_400_000);
    await c1.catalog.targets.put(record.name, record);
    await c1.catalog.policies.put('keep', compilePolicy({ name: 'keep', target: 'main', paths: [data], schedule: 'every 1h', retention: '1h' }));
    const a1 = await connect(c1, 'agent1', 'box');
    await c1.pushConfigs();
    const j1 = await waitJob(c1, (await c1.queueBackup(a1.id.hostId)).id);
    expect(j1.state).toBe('succeeded');
    const ref = path.join(tmp, 'ref');
    await fs.cp(data, ref, { recursive: true, preserveTimestamps: true });
    await fs.writeFile(path.join(data, 'd', 'two.txt'), 'second');
    const j2 = await waitJob(c1, (await c1.queueBackup(a1.id.hostId)).id);
    expect(j2.state).toBe('succeeded');
    await a1.session.stop();
    await c1.stop();

    // disaster: the controller's data dir is gone
    await fs.rm(path.join(tmp, 'c1'), { recursive: true, force: true });

    const c2 = await Controller.start({ dataDir: path.join(tmp, 'c2'), listen: '127.0.0.1:0', tickMs: 3_600_000, maintenanceMs: 3_600_000 });
    try {
      await expect(createOrOpenTarget(spec, 'wrong words', Date.now() + 86_400_000)).rejects.toMatchObject({ code: 'WRONG_KEY' });
      const again = await createOrOpenTarget(spec, 'recovery words', Date.now() + 86_400_000);
      expect(again.record.repoId).toBe(record.repoId);
      await c2.catalog.targets.put(again.record.name, again.record);
      const rebuilt = await rebuildCatalog(c2.catalog, again.record, await c2.repo(again.record));
      expect(rebuilt).toEqual({ hosts: 1, snapshots: 2, policies: 1 });
      const snaps = await c2.catalog.snapshotsOf(a1.id.hostId);
      expect(snaps.map((s) => s.id)).toEqual([j1.snapshotId, j2.snapshotId]);
      expect((await c2.catalog.get(c2.catalog.policies, 'keep'))!.paths).toEqual([data]);

      // the old certificate is from a CA that no longer exists: the agent re-enrolls
      const a2 = await connect(c2, 'agent2', 'box');
      expect(a2.id.hostId).not.toBe(a1.id.hostId);
      const out = path.join(tmp, 'restored');
      const r = await waitJob(c2, (await c2.queueRestore(a2.id.hostId, { sourceHostId: a1.id.hostId, snapshotId: j1.snapshotId!, paths: [], targetDir: out, overwrite: false })).id);
      expect(r.state, JSON.stringify(r.error)).toBe('succeeded');
      expect(await compareTrees(ref, path.join(out, data), { mtimeOfDirs: false })).toEqual([]);
      // and the rebuilt controller backs the re-enrolled host up again
      const j3 = await waitJob(c2, (await c2.queueBackup(a2.id.hostId)).id);
      expect(j3.state).toBe('succeeded');
      await a2.session.stop();
    } finally {
      await c2.stop();
    }
  });
});
