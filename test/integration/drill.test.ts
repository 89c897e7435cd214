/**
 * The ransomware drill against RGW: the bucket owner's credential, every destructive S3 call,
 * wiped local state — and every snapshot inside retention restores byte-identical from the bucket.
 */
import { describe, expect, it } from 'vitest';
import { runDrill } from '../../controller/drill.js';
import { createLockedBucket, rawClient, s3Config } from '../helpers/s3.js';

describe('ransomware drill', () => {
  it('survives the owner credential trying everything, and restores every snapshot byte-identical', async () => {
    const s3 = s3Config();
    const bucket = await createLockedBucket(rawClient(s3), 'drill');
    const lines: string[] = [];
    const r = await runDrill({ endpoint: s3.endpoint, bucket, prefix: 'scratch', accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, log: (l) => lines.push(l) });
    const by = Object.fromEntries(r.attacks.map((a) => [a.attack, a]));
    // the destructive attacks were all refused...
    for (const name of ['delete every object version', 'delete every version with governance bypass', 'shorten every retention to 1 s from now', 'turn every COMPLIANCE lock into GOVERNANCE', 'delete the bucket']) {
      expect(by[name]!.tried, name).toBeGreaterThan(0);
      expect(by[name]!.succeeded, `${name}: ${lines.join('\n')}`).toBe(0);
    }
    // ...the cheap ones succeeded (and cost nothing)
    expect(by['overwrite every key with garbage']!.succeeded).toBeGreaterThan(10);
    expect(by['put a delete marker on every key']!.succeeded).toBeGreaterThan(10);
    expect(r.snapshots).toBe(6);
    expect(r.restored).toBe(6);
    expect(r.differences).toEqual([]);
    expect(r.identical).toBe(6);
  });
});
