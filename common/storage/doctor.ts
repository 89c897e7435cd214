/**
 * doctor: checks that a bucket can keep Bulwark's promise, and says exactly how to fix what it
 * cannot. Run when a target is added (`bulwark target add|check`).
 *
 *   versioning      must be Enabled (Object Lock needs it)
 *   object-lock     must be enabled on the bucket
 *   default-retention  reported; Bulwark sets its own lock on every object, but a bucket default
 *                      also locks the objects Bulwark writes without one (none today) — a warning
 *   probe-put       a PUT with a COMPLIANCE lock and a SHA-256 checksum succeeds, and the lock reads back
 *   probe-delete    deleting the locked probe version is refused
 *   probe-extend    extending the probe's lock works (the maintainer's job)
 *   clock-skew      local clock vs the server's Date header: locks end by the server's clock
 *   small-reads     GETs of the small probe against HEADs of it: a server whose small answers wait
 *                   for a delayed ACK (RGW's beast without tcp_nodelay: +~45 ms each) — a warning
 *
 * The probe object lives under `doctor/` with a lock of a few seconds; it is removed when the
 * check waits for the lock to end (`cleanup: true`), else left for the groomer.
 */
import { randomBytes } from 'node:crypto';
import { type Clock, systemClock } from '../clock.js';
import { asBulwarkError, hasCode } from '../errors.js';
import type { BlobStore } from './blob-store.js';

export type CheckStatus = 'ok' | 'warn' | 'fail';

export interface CheckResult {
  name: string;
  status: CheckStatus;
  detail: string;
  /** What to do about it, for a person. */
  fix?: string;
}

export interface DoctorOptions {
  clock?: Clock;
  /** Skew beyond this is a failure: locks would end earlier or later than planned. */
  maxSkewMs?: number;
  /** Probe lock length. */
  probeLockMs?: number;
  /** Wait for the probe's lock to end and delete it. */
  cleanup?: boolean;
}

export async function checkBucket(store: BlobStore, o: DoctorOptions = {}): Promise<CheckResult[]> {
  const clock = o.clock ?? systemClock;
  // 30 s of skew is harmless next to a lock generation of days; more means a broken clock
  const maxSkew = o.maxSkewMs ?? 30_000;
  const probeMs = o.probeLockMs ?? 3_000;
  const out: CheckResult[] = [];

  let cfg;
  try {
    cfg = await store.bucketConfig();
  } catch (err) {
    const e = asBulwarkError(err);
    out.push({ name: 'bucket', status: 'fail', detail: e.message, fix: e.code === 'NO_SUCH_BUCKET' ? 'create the bucket with Object Lock enabled (aws s3api create-bucket --object-lock-enabled-for-bucket)' : 'check endpoint, credentials and bucket name' });
    return out;
  }
  out.push(
    cfg.versioning === 'Enabled'
      ? { name: 'versioning', status: 'ok', detail: 'enabled' }
      : { name: 'versioning', status: 'fail', detail: cfg.versioning.toLowerCase(), fix: 'versioning must be enabled; a bucket created with Object Lock has it on — create a new bucket with Object Lock enabled' },
  );
  out.push(
    cfg.objectLock
      ? { name: 'object-lock', status: 'ok', detail: 'enabled' }
      : { name: 'object-lock', status: 'fail', detail: 'not enabled', fix: 'create a new bucket with Object Lock enabled (--object-lock-enabled-for-bucket); most servers cannot add it to an existing bucket' },
  );
  if (cfg.defaultRetention) {
    const d = cfg.defaultRetention;
    out.push({
      name: 'default-retention',
      status: 'warn',
      detail: `${d.mode} ${d.days ? `${d.days} days` : `${d.years} years`}`,
      fix: 'not needed: Bulwark locks every object itself; a default also locks probe and scratch objects, which then cannot be cleaned up before it ends',
    });
  } else {
    out.push({ name: 'default-retention', status: 'ok', detail: 'none (Bulwark sets a lock on every object it writes)' });
  }

  try {
    const server = await store.serverTime();
    const skew = clock.now() - server;
    out.push(
      Math.abs(skew) <= maxSkew
        ? { name: 'clock-skew', status: 'ok', detail: `${Math.round(skew / 1000)} s (local − server)` }
        : { name: 'clock-skew', status: 'fail', detail: `${Math.round(skew / 1000)} s (local − server)`, fix: 'synchronise this machine\'s clock (NTP); Bulwark plans locks by the server clock but reports times by the local one' },
    );
  } catch (err) {
    out.push({ name: 'clock-skew', status: 'fail', detail: asBulwarkError(err).message, fix: 'the server did not answer HeadBucket; check permissions' });
  }

  if (!cfg.objectLock) return out;

  const key = `doctor/probe-${Date.now()}-${randomBytes(4).toString('hex')}`;
  let versionId: string;
  let retainUntil: number;
  try {
    retainUntil = (await store.serverTime()) + probeMs;
    versionId = (await store.put(key, randomBytes(64), { lock: { mode: 'COMPLIANCE', retainUntil } })).versionId;
    const head = await store.head(key, { versionId });
    if (head.lock?.mode === 'COMPLIANCE' && head.lock.retainUntil >= retainUntil) {
      out.push({ name: 'probe-put', status: 'ok', detail: 'a PUT with a COMPLIANCE lock and a SHA-256 checksum is stored locked' });
    } else {
      out.push({ name: 'probe-put', status: 'fail', detail: 'the object was stored but its lock did not read back', fix: 'the server ignores lock headers; use a server with S3 Object Lock support' });
      return out;
    }
  } catch (err) {
    const e = asBulwarkError(err);
    out.push({ name: 'probe-put', status: 'fail', detail: e.message, fix: e.code === 'ACCESS_DENIED' ? 'grant s3:PutObject and s3:PutObjectRetention to this credential' : 'see the error' });
    return out;
  }
  out.push(await smallReads(store, key, versionId));
  try {
    await store.delete(key, { versionId });
    out.push({ name: 'probe-delete', status: 'fail', detail: 'a locked version was deleted', fix: 'the server does not enforce Object Lock; do not use it for Bulwark' });
  } catch (err) {
    out.push(
      hasCode(err, 'OBJECT_LOCKED')
        ? { name: 'probe-delete', status: 'ok', detail: 'deleting the locked version was refused' }
        : { name: 'probe-delete', status: 'warn', detail: `refused, but not as a lock: ${asBulwarkError(err).message}`, fix: 'the credential may lack s3:DeleteObjectVersion (fine for an agent)' },
    );
  }
  try {
    retainUntil += 2_000;
    await store.extendRetention(key, versionId, { mode: 'COMPLIANCE', retainUntil });
    out.push({ name: 'probe-extend', status: 'ok', detail: 'extending a lock works' });
  } catch (err) {
    out.push({ name: 'probe-extend', status: 'warn', detail: asBulwarkError(err).message, fix: 'the maintainer credential needs s3:PutObjectRetention to extend locks; agents do not' });
  }
  if (o.cleanup) {
    const wait = retainUntil - (await store.serverTime()) + 1_500;
    await new Promise((r) => setTimeout(r, Math.max(0, wait)));
    await store.delete(key, { versionId }).catch(() => undefined);
  }
  return out;
}

/** Reads of each kind the small-reads check times. */
const SMALL_READS = 5;

async function smallReads(store: BlobStore, key: string, versionId: string): Promise<CheckResult> {
  const get: number[] = [];
  const head: number[] = [];
  try {
    for (let i = 0; i < SMALL_READS; i++) {
      let t = performance.now();
      await store.get(key, { versionId });
      get.push(performance.now() - t);
      t = performance.now();
      await store.head(key, { versionId });
      head.push(performance.now() - t);
    }
  } catch (err) {
    return { name: 'small-reads', status: 'warn', detail: `reading the probe failed: ${asBulwarkError(err).message}`, fix: 'the credential needs s3:GetObject and s3:GetObjectVersion' };
  }
  return judgeSmallReads(get, head);
}

/**
 * The small-reads verdict from timed GETs and HEADs of one small object. Both cross the same
 * network, so a distance shows in both; a GET that takes ≥ 25 ms more than a HEAD (medians) is a
 * server that sends a small body in a second write and waits for the client's delayed ACK before
 * it (Nagle). Measured on RGW 16.2's beast: GET 48 ms, HEAD 5–8 ms; with tcp_nodelay=1 GET 3 ms.
 */
export function judgeSmallReads(getMs: readonly number[], headMs: readonly number[]): CheckResult {
  const get = median(getMs);
  const head = median(headMs);
  const detail = `GET of a 64-byte object ${get.toFixed(1)} ms, HEAD ${head.toFixed(1)} ms (medians of ${getMs.length})`;
  if (get - head >= 25) {
    return {
      name: 'small-reads',
      status: 'warn',
      detail,
      fix: 'the server delays small answers (Nagle with the client\'s delayed ACK): every tree, snapshot and index read waits that long; on Ceph RGW add tcp_nodelay=1 to "rgw frontends = beast …"',
    };
  }
  return { name: 'small-reads', status: 'ok', detail };
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

export function doctorPassed(results: readonly CheckResult[]): boolean {
  return results.every((r) => r.status !== 'fail');
}
