import { S3Store } from '../../common/storage/s3-store.js';
import { blobStoreConformance } from '../conformance/blob-store-suite.js';
import { createLockedBucket, createPlainBucket, rawClient, s3Config, sleep } from '../helpers/s3.js';

const cfg = s3Config();
const raw = rawClient(cfg);
const storeFor = (bucket: string) =>
  new S3Store({ endpoint: cfg.endpoint, region: cfg.region, bucket, prefix: 'repo', accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey });

blobStoreConformance('S3Store on the real server', {
  lockedStore: async () => storeFor(await createLockedBucket(raw, 'conf')),
  plainStore: async () => storeFor(await createPlainBucket(raw, 'confplain')),
  pass: (ms) => sleep(ms),
  lockMs: 3_000,
});
