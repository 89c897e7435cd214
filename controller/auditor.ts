/**
 * The audit: checks the immutability invariant against the bucket itself, not the catalog.
 * For every snapshot still inside its retention window and every object it needs (manifest,
 * packs, config, key files), some version of the object must carry a lock lasting at least until
 * the snapshot's expiry. Coverage = covered (snapshot, object) pairs / all pairs; the target is 100 %.
 *
 * Each object is asked once (HEAD of the current version). When the current version is missing,
 * hidden behind a delete marker or not locked long enough (an attacker's overwrite), the object's
 * versions are listed and the longest lock among real versions counts — the genuine version is
 * still there — and the finding is reported as tampering.
 */
import { hasCode } from '../common/errors.js';
import type { BlobStore } from '../common/storage/blob-store.js';
import { Semaphore } from '../common/storage/wrappers.js';

export interface AuditSnapshot {
  id: string;
  hostId: string;
  expiresAt: number;
  keys: string[];
}

export interface AuditReport {
  at: number;
  snapshots: number;
  pairs: number;
  covered: number;
  /** covered / pairs (1 when there is nothing to check). */
  coverage: number;
  uncovered: Array<{ snapshot: string; hostId: string; key: string; expiresAt: number; lockUntil?: number; reason: string }>;
  tampered: Array<{ key: string; detail: string }>;
}

export async function audit(store: BlobStore, snapshots: readonly AuditSnapshot[], o: { foundationKeys?: string[]; concurrency?: number; signal?: AbortSignal } = {}): Promise<AuditReport> {
  const now = await store.serverTime();
  const inWindow = snapshots.filter((s) => s.expiresAt > now);
  const keys = new Set<string>(o.foundationKeys ?? []);
  for (const s of inWindow) for (const k of s.keys) keys.add(k);
  const lockOf = new Map<string, { until: number; reason?: string }>();
  const tampered: AuditReport['tampered'] = [];
  const sem = new Semaphore(o.concurrency ?? 16);
  const need = new Map<string, number>();
  for (const s of inWindow) for (const k of [...s.keys, ...(o.foundationKeys ?? [])]) need.set(k, Math.max(need.get(k) ?? 0, s.expiresAt));

  await Promise.all(
    [...keys].map((key) =>
      sem.run(async () => {
        let current: number | undefined;
        let problem: string | undefined;
        try {
          const h = await store.head(key, o.signal ? { signal: o.signal } : {});
          current = h.lock?.retainUntil;
          if (current === undefined) problem = 'current version is not locked';
        } catch (err) {
          if (!hasCode(err, 'NOT_FOUND')) throw err;
          problem = 'current version missing or behind a delete marker';
        }
        if (current !== undefined && current >= (need.get(key) ?? 0)) {
          lockOf.set(key, { until: current });
          return;
        }
        // look among the versions for the genuine, locked one
        let best = current ?? 0;
        for await (const v of store.listVersions(key, o.signal ? { signal: o.signal } : {})) {
          if (v.key !== key || v.isDeleteMarker) continue;
          const h = await store.head(key, { versionId: v.versionId }).catch(() => undefined);
          if (h?.lock && h.lock.retainUntil > best) best = h.lock.retainUntil;
        }
        if (problem && best > 0) tampered.push({ key, detail: problem });
        lockOf.set(key, best > 0 ? { until: best } : { until: 0, reason: problem ?? 'no locked version' });
      }),
    ),
  );

  const report: AuditReport = { at: now, snapshots: inWindow.length, pairs: 0, covered: 0, coverage: 1, uncovered: [], tampered };
  for (const s of inWindow) {
    for (const key of [...s.keys, ...(o.foundationKeys ?? [])]) {
      report.pairs++;
      const l = lockOf.get(key)!;
      if (l.until >= s.expiresAt) report.covered++;
      else report.uncovered.push({ snapshot: s.id, hostId: s.hostId, key, expiresAt: s.expiresAt, ...(l.until > 0 ? { lockUntil: l.until } : {}), reason: l.reason ?? `lock ends ${new Date(l.until).toISOString()}, before the snapshot expires` });
    }
  }
  report.coverage = report.pairs === 0 ? 1 : report.covered / report.pairs;
  return report;
}
