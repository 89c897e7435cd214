import { S3Store } from '../../common/storage/s3-store.js';
import { repoTamperSuite } from '../conformance/repo-tamper-suite.js';
import { createLockedBucket, rawClient, s3Config } from '../helpers/s3.js';

const cfg = s3Config();
const raw = rawClient(cfg);

repoTamperSuite('S3Store on the real server', {
  lockedStore: async () =>
    new S3Store({
      endpoint: cfg.endpoint,
      region: cfg.region,
      bucket: await createLockedBucket(raw, 'tamper'),
      prefix: 'fleet',
      accessKeyId: cfg.accessKeyId,
      secretAccessKey: cfg.secretAccessKey,
    }),
});
