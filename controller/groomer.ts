/**
 * Grooming matches retention: a snapshot past its expiry leaves the catalog, and an object that
 * no live snapshot needs is deleted — every version, by version id — once its lock has ended.
 * A delete refused because a lock still holds is reported as "retained until D", never as a
 * failure. Expiry is judged from times the controller recorded, never from times a client claims
 * (restic's docs warn of the garbage-snapshot attack: a forged manifest with old times).
 *
 *   selectExpired   pure: which snapshots have expired at `now`
 *   planGroom       pure: which stored keys are garbage, given the live snapshots' needs
 *   groom           executes against the bucket (maintainer credential), with a dry run
 */
import { BulwarkError, hasCode } from '../common/errors.js';
import { layout } from '../common/repo/layout.js';
import type { BlobStore } from '../common/storage/blob-store.js';

export interface GroomSnapshot {
  id: string;
  hostId: string;
  expiresAt: number;
  manifestKey: string;
  packKeys: string[];
  /** Index objects written with it (a cache; kept while any live snapshot needs one of their packs). */
  indexKeys: string[];
}

export function selectExpired<T extends { expiresAt: number }>(snapshots: readonly T[], now: number): { expired: T[]; live: T[] } {
  const expired: T[] = [];
  const live: T[] = [];
  for (const s of snapshots) (s.expiresAt <= now ? expired : live).push(s);
  return { expired, live };
}

/**
 * Keys under hosts/ that no live snapshot needs, in the order to delete them: manifests, then
 * indexes, then packs. So a groom killed midway never leaves in the bucket a manifest whose packs
 * are gone (a snapshot that `catalog rebuild` would bring back and that could not be restored),
 * only packs and indexes that the next groom finds still unreferenced. Config, keys and catalog
 * checkpoints are never garbage here.
 * An index object is kept while any of the packs listed with its snapshot is live.
 */
export function planGroom(live: readonly GroomSnapshot[], storedKeys: Iterable<string>, protectedHosts: ReadonlySet<string> = new Set()): string[] {
  const needed = new Set<string>();
  for (const s of live) {
    needed.add(s.manifestKey);
    for (const k of s.packKeys) needed.add(k);
    for (const k of s.indexKeys) needed.add(k);
  }
  const garbage: string[] = [];
  for (const key of storedKeys) {
    if (!key.startsWith(layout.hostsPrefix)) continue;
    const host = key.slice(layout.hostsPrefix.length).split('/')[0] ?? '';
    // a host with a backup in flight may have uploaded packs no snapshot lists yet
    if (protectedHosts.has(host)) continue;
    if (!needed.has(key)) garbage.push(key);
  }
  return garbage.sort((a, b) => deleteRank(a) - deleteRank(b) || (a < b ? -1 : a > b ? 1 : 0));
}

/** hosts/<host>/snapshots/… first, then …/index/…, then packs (…/data/…) and anything else. */
function deleteRank(key: string): number {
  const kind = key.split('/')[2];
  return kind === 'snapshots' ? 0 : kind === 'index' ? 1 : 2;
}

export interface GroomReport {
  deleted: Array<{ key: string; versionId: string }>;
  retained: Array<{ key: string; versionId: string; until?: number }>;
  failed: Array<{ key: string; versionId: string; reason: string }>;
  /** Only listed, nothing deleted. */
  dryRun: boolean;
}

export async function groom(
  store: BlobStore,
  live: readonly GroomSnapshot[],
  o: { dryRun?: boolean; protectedHosts?: ReadonlySet<string>; signal?: AbortSignal } = {},
): Promise<GroomReport> {
  const versions = new Map<string, Array<{ versionId: string; isDeleteMarker: boolean }>>();
  for await (const v of store.listVersions(layout.hostsPrefix, o.signal ? { signal: o.signal } : {})) {
    let list = versions.get(v.key);
    if (!list) versions.set(v.key, (list = []));
    list.push({ versionId: v.versionId, isDeleteMarker: v.isDeleteMarker });
  }
  const garbage = planGroom(live, versions.keys(), o.protectedHosts);
  const report: GroomReport = { deleted: [], retained: [], failed: [], dryRun: o.dryRun ?? false };
  const now = await store.serverTime();
  for (const key of garbage) {
    for (const v of versions.get(key) ?? []) {
      if (o.dryRun) {
        const info = v.isDeleteMarker ? undefined : await store.head(key, { versionId: v.versionId }).catch(() => undefined);
        if (info?.lock && info.lock.retainUntil > now) report.retained.push({ key, versionId: v.versionId, until: info.lock.retainUntil });
        else report.deleted.push({ key, versionId: v.versionId });
        continue;
      }
      try {
        await store.delete(key, { versionId: v.versionId, ...(o.signal ? { signal: o.signal } : {}) });
        report.deleted.push({ key, versionId: v.versionId });
      } catch (err) {
        if (hasCode(err, 'OBJECT_LOCKED')) {
          const until = await store.head(key, { versionId: v.versionId }).then((h) => h.lock?.retainUntil, () => undefined);
          report.retained.push({ key, versionId: v.versionId, ...(until !== undefined ? { until } : {}) });
        } else {
          report.failed.push({ key, versionId: v.versionId, reason: err instanceof BulwarkError ? err.message : String(err) });
        }
      }
    }
  }
  return report;
}
