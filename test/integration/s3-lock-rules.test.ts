/**
 * The Object Lock rules Bulwark relies on, proven against the real server with the raw SDK
 * (no Bulwark code in the way). If a server breaks one of these, Bulwark's promise breaks too.
 * The negative control shows the same calls succeed on a bucket without a lock, so each
 * refusal really comes from the lock.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  GetObjectRetentionCommand,
  HeadObjectCommand,
  PutObjectCommand,
  PutObjectRetentionCommand,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { createLockedBucket, createPlainBucket, rawClient, sleep } from '../helpers/s3.js';

const md5 = (b: Buffer) => createHash('md5').update(b).digest('base64');

async function errorOf(p: Promise<unknown>): Promise<S3ServiceException> {
  try {
    await p;
  } catch (err) {
    if (err instanceof S3ServiceException) return err;
    throw err;
  }
  throw new Error('expected the request to be refused, but it succeeded');
}

describe('Object Lock rules on the real server', () => {
  const s3 = rawClient();

  it('refuses delete and shortening before retain-until, allows extension, then deletion after expiry', async () => {
    const bucket = await createLockedBucket(s3, 'lockrules');
    const body = randomBytes(4096);
    const retainUntil = new Date(Date.now() + 6_000);
    const put = await s3.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: 'obj',
        Body: body,
        ContentMD5: md5(body),
        ObjectLockMode: 'COMPLIANCE',
        ObjectLockRetainUntilDate: retainUntil,
      }),
    );
    const versionId = put.VersionId;
    expect(versionId).toBeTruthy();

    const head = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: 'obj', VersionId: versionId }));
    expect(head.ObjectLockMode).toBe('COMPLIANCE');
    expect(head.ObjectLockRetainUntilDate!.getTime()).toBeGreaterThanOrEqual(retainUntil.getTime() - 1000);

    const del = await errorOf(s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: 'obj', VersionId: versionId })));
    expect(del.$metadata.httpStatusCode).toBe(403);

    const shorten = await errorOf(
      s3.send(
        new PutObjectRetentionCommand({
          Bucket: bucket,
          Key: 'obj',
          VersionId: versionId,
          Retention: { Mode: 'COMPLIANCE', RetainUntilDate: new Date(retainUntil.getTime() - 3_000) },
        }),
      ),
    );
    expect(shorten.$metadata.httpStatusCode).toBe(403);

    const toGovernance = await errorOf(
      s3.send(
        new PutObjectRetentionCommand({
          Bucket: bucket,
          Key: 'obj',
          VersionId: versionId,
          Retention: { Mode: 'GOVERNANCE', RetainUntilDate: new Date(retainUntil.getTime() + 1_000) },
        }),
      ),
    );
    expect(toGovernance.$metadata.httpStatusCode).toBe(403);

    const extended = new Date(retainUntil.getTime() + 2_000);
    await s3.send(
      new PutObjectRetentionCommand({
        Bucket: bucket,
        Key: 'obj',
        VersionId: versionId,
        Retention: { Mode: 'COMPLIANCE', RetainUntilDate: extended },
      }),
    );
    const ret = await s3.send(new GetObjectRetentionCommand({ Bucket: bucket, Key: 'obj', VersionId: versionId }));
    expect(ret.Retention?.RetainUntilDate?.getTime()).toBeGreaterThanOrEqual(extended.getTime() - 1000);

    // still refused after the original date has passed, because the extension holds
    await sleep(Math.max(0, retainUntil.getTime() - Date.now()) + 500);
    const stillLocked = await errorOf(
      s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: 'obj', VersionId: versionId })),
    );
    expect(stillLocked.$metadata.httpStatusCode).toBe(403);

    await sleep(Math.max(0, extended.getTime() - Date.now()) + 1_500);
    await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: 'obj', VersionId: versionId }));
    const gone = await errorOf(s3.send(new HeadObjectCommand({ Bucket: bucket, Key: 'obj', VersionId: versionId })));
    expect([404, 400]).toContain(gone.$metadata.httpStatusCode);
  });

  it('a plain delete only adds a delete marker; the locked version still reads back', async () => {
    const bucket = await createLockedBucket(s3, 'lockmarker');
    const body = randomBytes(1024);
    const put = await s3.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: 'obj',
        Body: body,
        ContentMD5: md5(body),
        ObjectLockMode: 'COMPLIANCE',
        ObjectLockRetainUntilDate: new Date(Date.now() + 60_000),
      }),
    );
    const marker = await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: 'obj' }));
    expect(marker.DeleteMarker).toBe(true);
    const current = await errorOf(s3.send(new GetObjectCommand({ Bucket: bucket, Key: 'obj' })));
    expect(current.$metadata.httpStatusCode).toBe(404);
    const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: 'obj', VersionId: put.VersionId }));
    expect(Buffer.from(await got.Body!.transformToByteArray()).equals(body)).toBe(true);
  });

  it('verifies Content-MD5: a wrong digest is refused (BadDigest)', async () => {
    const bucket = await createLockedBucket(s3, 'lockmd5');
    const body = randomBytes(512);
    const err = await errorOf(
      s3.send(
        new PutObjectCommand({
          Bucket: bucket,
          Key: 'obj',
          Body: body,
          ContentMD5: md5(randomBytes(512)),
          ObjectLockMode: 'COMPLIANCE',
          ObjectLockRetainUntilDate: new Date(Date.now() + 60_000),
        }),
      ),
    );
    expect(err.name).toBe('BadDigest');
  });

  it('verifies the SigV4 payload hash of a locked PUT (XAmzContentSHA256Mismatch), the check S3Store relies on', async () => {
    const bucket = await createLockedBucket(s3, 'locksha');
    const body = randomBytes(512);
    const wrong = createHash('sha256').update(randomBytes(512)).digest('hex');
    const setPayloadHash = (hex: string) => (next: (a: unknown) => Promise<unknown>) => async (args: unknown) => {
      (args as { request: { headers: Record<string, string> } }).request.headers['x-amz-content-sha256'] = hex;
      return next(args);
    };
    const put = (hex: string) => {
      const c = rawClient();
      c.middlewareStack.add(setPayloadHash(hex) as never, { step: 'build', name: 'payloadHash' });
      return c.send(new PutObjectCommand({ Bucket: bucket, Key: 'obj', Body: body, ObjectLockMode: 'COMPLIANCE', ObjectLockRetainUntilDate: new Date(Date.now() + 60_000) }));
    };
    expect((await errorOf(put(wrong))).name).toBe('XAmzContentSHA256Mismatch');
    const ok = await put(createHash('sha256').update(body).digest('hex'));
    expect(ok.VersionId).toBeTruthy();
  });

  it('negative control: without Object Lock the same delete succeeds at once', async () => {
    const bucket = await createPlainBucket(s3, 'nolock');
    const body = randomBytes(1024);
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: 'obj', Body: body, ContentMD5: md5(body) }));
    await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: 'obj' }));
    const gone = await errorOf(s3.send(new GetObjectCommand({ Bucket: bucket, Key: 'obj' })));
    expect(gone.$metadata.httpStatusCode).toBe(404);
    // and a lock header on a bucket without Object Lock is refused rather than silently ignored
    const refused = await errorOf(
      s3.send(
        new PutObjectCommand({
          Bucket: bucket,
          Key: 'locked',
          Body: body,
          ContentMD5: md5(body),
          ObjectLockMode: 'COMPLIANCE',
          ObjectLockRetainUntilDate: new Date(Date.now() + 60_000),
        }),
      ),
    );
    expect(refused.$metadata.httpStatusCode).toBe(400);
  });
});
