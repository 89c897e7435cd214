/**
 * make-bucket.ts NAME — create a bucket with Object Lock (and so versioning) on the S3 named by
 * BULWARK_S3_ENDPOINT / _ACCESS_KEY / _SECRET_KEY / _REGION (the local RGW by default). Exists
 * already → says so and succeeds. For the quick start and for trying Bulwark out; production
 * buckets are made by whoever owns the account.
 */
import { BucketAlreadyOwnedByYou, CreateBucketCommand } from '@aws-sdk/client-s3';
import { rawS3Client } from '../common/storage/s3-store.js';

const name = process.argv[2];
const e = process.env;
if (!name || !e.BULWARK_S3_ENDPOINT || !e.BULWARK_S3_ACCESS_KEY || !e.BULWARK_S3_SECRET_KEY) {
  process.stderr.write('usage: BULWARK_S3_ENDPOINT=… BULWARK_S3_ACCESS_KEY=… BULWARK_S3_SECRET_KEY=… tsx scripts/make-bucket.ts NAME\n');
  process.exit(2);
}
const s3 = rawS3Client({ endpoint: e.BULWARK_S3_ENDPOINT, region: e.BULWARK_S3_REGION, accessKeyId: e.BULWARK_S3_ACCESS_KEY, secretAccessKey: e.BULWARK_S3_SECRET_KEY });
try {
  await s3.send(new CreateBucketCommand({ Bucket: name, ObjectLockEnabledForBucket: true }));
  process.stdout.write(`bucket ${name} created with Object Lock\n`);
} catch (err) {
  if (err instanceof BucketAlreadyOwnedByYou || (err as Error).name === 'BucketAlreadyOwnedByYou' || (err as Error).name === 'BucketAlreadyExists') {
    process.stdout.write(`bucket ${name} exists\n`);
  } else {
    process.stderr.write(`cannot create bucket ${name}: ${(err as Error).message}\n`);
    process.exit(1);
  }
}
