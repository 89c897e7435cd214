/**
 * The controller process of scripts/bench/controller.ts: starts one Controller (data dir and options
 * from argv), so that the benchmark can read the controller's RSS alone from /proc/<pid>/status.
 *
 *   argv: DATA_DIR OPTIONS_JSON   ({ tickMs, maintenanceMs })
 *   stdout: one JSON object per line, prefixed "@@": first { event: 'ready', address, pid },
 *           then one { id, ok, ... } per command
 *   stdin:  one JSON command per line, { id, cmd, ... }:
 *     stats { gc }             sessions, jobs by state, catalog sizes, process.memoryUsage(); with gc,
 *                              also the V8 heap in use after a full GC (needs --expose-gc)
 *     tick                     run the scheduler once (Controller.tick), answer its duration
 *     seedJobs { perHost, intervalMs }
 *                              write `perHost` past, succeeded backup jobs per enrolled host, the
 *                              newest one interval + 1 min ago (a fleet's job history)
 *     seedSnapshots { perHost, packs, retentionMs }
 *                              write `perHost` live snapshots per enrolled host into the catalog, each
 *                              needing `packs` packs of its own, and their lock ends (a day past the
 *                              expiry, so that the look-ahead has nothing to do but read them): the
 *                              catalog of a fleet with history. Nothing is written to S3.
 *     profStart / profStop { file }
 *                              V8 CPU profile of this process (node:inspector), written as JSON
 *     stop                     Controller.stop(), then exit
 *   stderr: the controller's log (the parent sends it to a file)
 *
 * Prints figures for nobody: it is a fixture of the benchmark.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { Session as InspectorSession } from 'node:inspector/promises';
import { createInterface } from 'node:readline';
import { Controller } from '../../controller/controller.js';
import { Catalog, type JobRecord, type SnapshotRecord } from '../../controller/catalog.js';
import { layout } from '../../common/repo/layout.js';

interface Command {
  id: number;
  cmd: string;
  perHost?: number;
  intervalMs?: number;
  file?: string;
  gc?: boolean;
  packs?: number;
  retentionMs?: number;
}

const [dataDir, optionsJson] = process.argv.slice(2);
if (!dataDir) {
  process.stderr.write('usage: controller-child.ts DATA_DIR [OPTIONS_JSON]\n');
  process.exit(2);
}
const options = JSON.parse(optionsJson ?? '{}') as { tickMs?: number; maintenanceMs?: number };

const out = (o: Record<string, unknown>): void => {
  process.stdout.write(`@@${JSON.stringify(o)}\n`);
};

const c = await Controller.start({
  dataDir,
  listen: '127.0.0.1:0',
  tickMs: options.tickMs ?? 3_600_000,
  maintenanceMs: options.maintenanceMs ?? 3_600_000,
  log: (l) => process.stderr.write(`${new Date().toISOString()} ${l}\n`),
});
out({ event: 'ready', address: c.address, pid: process.pid });

let inspector: InspectorSession | undefined;
let stopping: Promise<void> | undefined;
const stop = (): Promise<void> => (stopping ??= c.stop());

/** V8 heap in use after a full GC (the child runs with --expose-gc; NaN without it). */
function liveHeap(): number {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) return NaN;
  gc();
  return process.memoryUsage().heapUsed;
}

async function count(sub: AsyncIterable<unknown> & object): Promise<number> {
  let n = 0;
  for await (const _ of sub) n++;
  return n;
}

async function handle(m: Command): Promise<Record<string, unknown>> {
  switch (m.cmd) {
    case 'stats': {
      const byState: Record<string, number> = {};
      const errors: Record<string, number> = {};
      let jobs = 0;
      for await (const j of c.catalog.jobs.values()) {
        jobs++;
        byState[j.state] = (byState[j.state] ?? 0) + 1;
        if (j.error) {
          const k = `${j.error.code}: ${j.error.message.slice(0, 160)}`;
          errors[k] = (errors[k] ?? 0) + 1;
        }
      }
      return {
        sessions: c.sessions.size,
        jobs,
        byState,
        errors,
        hosts: await count(c.catalog.hosts.keys()),
        snapshots: await count(c.catalog.snapshots.keys()),
        locks: await count(c.catalog.locks.keys()),
        memory: process.memoryUsage(),
        ...(m.gc ? { liveHeap: liveHeap() } : {}),
      };
    }
    case 'tick': {
      const t0 = performance.now();
      await c.tick();
      return { ms: performance.now() - t0 };
    }
    case 'seedJobs': {
      const perHost = m.perHost ?? 0;
      const interval = m.intervalMs ?? 3_600_000;
      const now = Date.now();
      let written = 0;
      const hosts = await c.catalog.all(c.catalog.hosts);
      let batch = c.catalog.jobs.batch();
      for (const h of hosts) {
        for (let k = 0; k < perHost; k++) {
          const created = now - (k + 1) * interval - 60_000;
          const job: JobRecord = {
            id: `j-${created.toString(36)}-${randomBytes(6).toString('hex')}`,
            hostId: h.id,
            kind: 'backup',
            state: 'succeeded',
            created,
            updated: created + 120_000,
            policy: 'all',
            expiresAt: created + interval,
            lockUntil: created + interval * 1.1,
            progress: { filesDone: 12_345, bytesDone: 987_654_321, filesTotal: 12_345, bytesTotal: 987_654_321, bytesUploaded: 1_234_567, currentPath: '', phase: 'done' },
            snapshotId: randomBytes(16).toString('hex'),
            issues: [],
          };
          batch.put(job.id, job);
          if (++written % 5000 === 0) {
            await batch.write();
            batch = c.catalog.jobs.batch();
          }
        }
      }
      await batch.write();
      return { written };
    }
    case 'seedSnapshots': {
      const perHost = m.perHost ?? 0;
      const retention = m.retentionMs ?? 30 * 86_400_000;
      const interval = m.intervalMs ?? 3_600_000;
      const now = Date.now();
      const hosts = await c.catalog.all(c.catalog.hosts);
      const target = (await c.catalog.all(c.catalog.targets))[0]!;
      let snapshots = 0;
      let locks = 0;
      let batch = c.catalog.db.batch();
      let pending = 0;
      const flush = async (force = false) => {
        if (!force && pending < 5000) return;
        await batch.write();
        batch = c.catalog.db.batch();
        pending = 0;
      };
      const hex = (n: number) => randomBytes(n).toString('hex');
      for (const h of hosts) {
        // consecutive snapshots share most packs, as incremental backups do: each adds a tenth
        const lockKeys = new Set<string>();
        let packs = Array.from({ length: m.packs ?? 20 }, () => hex(32));
        for (let k = perHost - 1; k >= 0; k--) {
          const time = now - (k + 1) * interval;
          packs = [...packs.slice(Math.ceil(packs.length / 10)), ...Array.from({ length: Math.ceil(packs.length / 10) }, () => hex(32))];
          const s: SnapshotRecord = {
            id: hex(32),
            hostId: h.id,
            target: target.name,
            policy: 'all',
            time,
            expiresAt: time + retention,
            lockUntil: time + retention * 1.1,
            roots: ['/data'],
            packs,
            indexes: [hex(32)],
            files: 12_345,
            bytes: 987_654_321,
            bytesUploaded: 1_234_567,
          };
          batch.put(Catalog.snapshotKey(s), s, { sublevel: c.catalog.snapshots });
          snapshots++;
          const lockEnd = s.expiresAt + 86_400_000;
          for (const key of [layout.snapshot(h.id, s.id), ...packs.map((p) => layout.pack(h.id, p))]) {
            batch.put(key, lockEnd, { sublevel: c.catalog.locks });
            lockKeys.add(key);
          }
          pending += 1 + packs.length;
          await flush();
        }
        locks += lockKeys.size;
      }
      await flush(true);
      return { snapshots, locks };
    }
    case 'profStart': {
      inspector = new InspectorSession();
      inspector.connect();
      await inspector.post('Profiler.enable');
      await inspector.post('Profiler.setSamplingInterval', { interval: 500 });
      await inspector.post('Profiler.start');
      return {};
    }
    case 'profStop': {
      if (!inspector) throw new Error('no profile running');
      const { profile } = await inspector.post('Profiler.stop');
      inspector.disconnect();
      inspector = undefined;
      writeFileSync(m.file!, JSON.stringify(profile));
      return { file: m.file };
    }
    case 'stop': {
      await stop();
      return {};
    }
    default:
      throw new Error(`unknown command ${m.cmd}`);
  }
}

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (!line.trim()) return;
  const m = JSON.parse(line) as Command;
  void handle(m).then(
    (r) => {
      out({ id: m.id, ok: true, ...r });
      if (m.cmd === 'stop') setImmediate(() => process.exit(0));
    },
    (err: unknown) => out({ id: m.id, ok: false, error: err instanceof Error ? err.message : String(err) }),
  );
});
// the benchmark went away: do not outlive it
rl.on('close', () => {
  void stop().finally(() => process.exit(0));
});
