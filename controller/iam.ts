/**
 * Least-privilege IAM policy documents for a target's two credentials (docs/threat-model.md).
 *
 *   agent       writes new objects with a lock and reads; can never delete, bypass governance,
 *               change bucket settings, or lock anything further out than `maxRetentionDays`
 *               (so a stolen agent key cannot run up a storage bill with century-long locks).
 *               It needs s3:PutObjectRetention because S3 checks it for PUTs that carry lock
 *               headers.
 *   maintainer  (the controller) extends locks, deletes versions whose locks have ended, reads for
 *               audits, writes catalog checkpoints; it can never bypass governance or change the
 *               bucket's lock configuration or policy.
 * Explicit Denies matter on RGW: it grants s3:BypassGovernanceRetention with DeleteObjectVersion
 * unless a policy denies it (docs/s3-local.md).
 */
export interface IamPolicyOptions {
  bucket: string;
  prefix?: string;
  /** Longest lock an agent may set (retention + generation + margin), in days. */
  maxRetentionDays: number;
}

type Statement = Record<string, unknown>;

export function iamPolicies(o: IamPolicyOptions): { agent: { Version: string; Statement: Statement[] }; maintainer: { Version: string; Statement: Statement[] } } {
  const bucketArn = `arn:aws:s3:::${o.bucket}`;
  const p = (o.prefix ?? '').replace(/^\/+|\/+$/g, '');
  const objects = `${bucketArn}/${p ? `${p}/` : ''}*`;
  const listCondition = p ? { StringLike: { 's3:prefix': [`${p}/*`, p] } } : undefined;
  const neverEither = ['s3:BypassGovernanceRetention', 's3:PutBucketObjectLockConfiguration', 's3:PutBucketVersioning', 's3:DeleteBucket', 's3:PutBucketPolicy', 's3:DeleteBucketPolicy', 's3:PutLifecycleConfiguration'];
  return {
    agent: {
      Version: '2012-10-17',
      Statement: [
        { Sid: 'ListRepository', Effect: 'Allow', Action: ['s3:ListBucket', 's3:ListBucketVersions'], Resource: bucketArn, ...(listCondition ? { Condition: listCondition } : {}) },
        { Sid: 'BucketChecks', Effect: 'Allow', Action: ['s3:GetBucketVersioning', 's3:GetBucketObjectLockConfiguration'], Resource: bucketArn },
        { Sid: 'WriteLockedReadVerify', Effect: 'Allow', Action: ['s3:PutObject', 's3:PutObjectRetention', 's3:GetObject', 's3:GetObjectVersion', 's3:GetObjectRetention'], Resource: objects },
        { Sid: 'NeverDelete', Effect: 'Deny', Action: ['s3:DeleteObject', 's3:DeleteObjectVersion', 's3:PutObjectLegalHold', ...neverEither], Resource: [bucketArn, `${bucketArn}/*`] },
        {
          Sid: 'NoCenturyLocks',
          Effect: 'Deny',
          Action: ['s3:PutObject', 's3:PutObjectRetention'],
          Resource: objects,
          Condition: { NumericGreaterThan: { 's3:object-lock-remaining-retention-days': String(o.maxRetentionDays) } },
        },
      ],
    },
    maintainer: {
      Version: '2012-10-17',
      Statement: [
        { Sid: 'ListRepository', Effect: 'Allow', Action: ['s3:ListBucket', 's3:ListBucketVersions'], Resource: bucketArn, ...(listCondition ? { Condition: listCondition } : {}) },
        { Sid: 'BucketChecks', Effect: 'Allow', Action: ['s3:GetBucketVersioning', 's3:GetBucketObjectLockConfiguration'], Resource: bucketArn },
        {
          Sid: 'ExtendGroomAuditCheckpoint',
          Effect: 'Allow',
          Action: ['s3:GetObject', 's3:GetObjectVersion', 's3:GetObjectRetention', 's3:PutObjectRetention', 's3:PutObject', 's3:DeleteObject', 's3:DeleteObjectVersion'],
          Resource: objects,
        },
        { Sid: 'NeverBypassOrUnlock', Effect: 'Deny', Action: neverEither, Resource: [bucketArn, `${bucketArn}/*`] },
      ],
    },
  };
}
