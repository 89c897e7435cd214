/**
 * Tamper-proof reads. Every object is written once and locked, so the genuine bytes are always
 * in some version of its key until the lock ends. An attacker with a credential can still hide
 * them behind a delete marker or a newer garbage version (an overwrite), or a server can return a
 * truncated body. So a read:
 *   1. gets the current version (or a byte range of it) and verifies it;
 *   2. when that is missing, hidden or fails verification, lists the key's versions and tries each
 *      real version, newest first, until one verifies;
 *   3. fails with CHECKSUM_MISMATCH when versions exist but none is genuine, NOT_FOUND when none
 *      exists at all.
 * Whatever was found wrong is reported through `onTamper`, so audits and restores can say so.
 */
import { BulwarkError, hasCode } from '../errors.js';
import type { BlobStore, ByteRange } from '../storage/blob-store.js';

export interface TamperReport {
  key: string;
  versionId?: string;
  problem: 'missing' | 'hidden-by-delete-marker' | 'failed-verification';
  detail: string;
}

export interface VerifiedReadOptions {
  range?: ByteRange;
  signal?: AbortSignal;
  onTamper?: (r: TamperReport) => void;
}

/**
 * Read `key` and return `verify(bytes)`. `verify` must throw (any error) for bytes that are not
 * genuine. Returns the verified value and the version it came from.
 */
export async function readVerified<T>(
  store: BlobStore,
  key: string,
  verify: (bytes: Uint8Array) => T,
  opts: VerifiedReadOptions = {},
): Promise<{ value: T; versionId?: string }> {
  const getOpts = { ...(opts.range ? { range: opts.range } : {}), ...(opts.signal ? { signal: opts.signal } : {}) };
  let firstProblem: TamperReport;
  try {
    const bytes = await store.get(key, getOpts);
    try {
      return { value: verify(bytes) };
    } catch (err) {
      firstProblem = { key, problem: 'failed-verification', detail: errMessage(err) };
    }
  } catch (err) {
    if (!hasCode(err, 'NOT_FOUND', 'CHECKSUM_MISMATCH')) throw err;
    firstProblem = { key, problem: 'missing', detail: errMessage(err) };
  }

  let sawVersion = false;
  let hiddenByMarker = false;
  for await (const v of store.listVersions(key, opts.signal ? { signal: opts.signal } : {})) {
    if (v.key !== key) continue;
    if (v.isDeleteMarker) {
      if (v.isLatest) hiddenByMarker = true;
      continue;
    }
    sawVersion = true;
    let bytes: Uint8Array;
    try {
      bytes = await store.get(key, { ...getOpts, versionId: v.versionId });
    } catch (err) {
      if (hasCode(err, 'NOT_FOUND', 'CHECKSUM_MISMATCH')) continue;
      throw err;
    }
    try {
      const value = verify(bytes);
      if (hiddenByMarker && firstProblem.problem === 'missing') firstProblem = { ...firstProblem, problem: 'hidden-by-delete-marker' };
      opts.onTamper?.(firstProblem);
      return { value, versionId: v.versionId };
    } catch (err) {
      opts.onTamper?.({ key, versionId: v.versionId, problem: 'failed-verification', detail: errMessage(err) });
    }
  }
  opts.onTamper?.(firstProblem);
  if (sawVersion || firstProblem.problem === 'failed-verification') {
    throw new BulwarkError('CHECKSUM_MISMATCH', `${key}: no version of this object is genuine (${firstProblem.detail})`);
  }
  throw new BulwarkError('NOT_FOUND', `${key} does not exist in any version`);
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
