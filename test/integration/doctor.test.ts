import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../common/clock.js';
import { checkBucket, doctorPassed } from '../../common/storage/doctor.js';
import { S3Store } from '../../common/storage/s3-store.js';
import { createLockedBucket, createPlainBucket, rawClient, s3Config } from '../helpers/s3.js';

const cfg = s3Config();
const raw = rawClient(cfg);
const storeFor = (bucket: string) => new S3Store({ endpoint: cfg.endpoint, bucket, accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey });
const byName = (rs: Awaited<ReturnType<typeof checkBucket>>) => Object.fromEntries(rs.map((r) => [r.name, r]));

describe('doctor against the real server', () => {
  it('passes a bucket with Object Lock, and cleans up its probe', async () => {
    const store = storeFor(await createLockedBucket(raw, 'doctor'));
    const rs = await checkBucket(store, { cleanup: true });
    const r = byName(rs);
    expect(doctorPassed(rs)).toBe(true);
    expect(r['object-lock']!.status).toBe('ok');
    expect(r['probe-delete']!.status).toBe('ok');
    expect(r['probe-extend']!.status).toBe('ok');
    // scripts/s3-local.sh runs beast with tcp_nodelay=1: small GETs do not wait for a delayed ACK
    expect(r['small-reads']!.status, r['small-reads']!.detail).toBe('ok');
    const left = [];
    for await (const v of store.listVersions('doctor/')) left.push(v);
    expect(left).toEqual([]);
  });

  it('fails a bucket without Object Lock and says how to fix it', async () => {
    const rs = await checkBucket(storeFor(await createPlainBucket(raw, 'doctorplain')));
    const r = byName(rs);
    expect(doctorPassed(rs)).toBe(false);
    expect(r['object-lock']!.status).toBe('fail');
    expect(r['object-lock']!.fix).toMatch(/Object Lock enabled/);
    expect(r['probe-put']).toBeUndefined();
  });

  it('fails a missing bucket', async () => {
    const rs = await checkBucket(storeFor('no-such-bucket-' + Date.now()));
    expect(rs[0]!.status).toBe('fail');
    expect(rs[0]!.fix).toMatch(/create the bucket/);
  });

  it('reports clock skew against the server Date header', async () => {
    const store = storeFor(await createLockedBucket(raw, 'doctorskew'));
    const rs = await checkBucket(store, { clock: new ManualClock(Date.now() + 10 * 60_000) });
    expect(byName(rs)['clock-skew']!.status).toBe('fail');
    expect(byName(rs)['clock-skew']!.detail).toMatch(/^(59\d|60\d) s/);
  });
});
