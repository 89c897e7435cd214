import { describe, expect, it } from 'vitest';
import { iamPolicies } from '../../controller/iam.js';

const actionsOf = (stmts: Array<Record<string, unknown>>, effect: 'Allow' | 'Deny') =>
  new Set(stmts.filter((s) => s.Effect === effect && !s.Condition?.toString().includes('retention')).flatMap((s) => s.Action as string[]));

describe('IAM policies', () => {
  const { agent, maintainer } = iamPolicies({ bucket: 'b', prefix: '/fleet/', maxRetentionDays: 120 });

  it('agents can write locked objects and read, never delete, bypass or unlock', () => {
    const allow = actionsOf(agent.Statement, 'Allow');
    const deny = actionsOf(agent.Statement, 'Deny');
    for (const a of ['s3:PutObject', 's3:PutObjectRetention', 's3:GetObject', 's3:GetObjectVersion', 's3:ListBucketVersions']) expect(allow.has(a), a).toBe(true);
    for (const a of ['s3:DeleteObject', 's3:DeleteObjectVersion', 's3:BypassGovernanceRetention', 's3:PutBucketObjectLockConfiguration', 's3:DeleteBucket', 's3:PutBucketPolicy']) {
      expect(deny.has(a), a).toBe(true);
      expect(allow.has(a), a).toBe(false);
    }
  });

  it('caps how far out an agent may lock anything', () => {
    const cap = agent.Statement.find((s) => s.Sid === 'NoCenturyLocks')!;
    expect(cap.Effect).toBe('Deny');
    expect(cap.Condition).toEqual({ NumericGreaterThan: { 's3:object-lock-remaining-retention-days': '120' } });
  });

  it('the maintainer extends and deletes, but never bypasses governance or changes the lock configuration', () => {
    const allow = actionsOf(maintainer.Statement, 'Allow');
    const deny = actionsOf(maintainer.Statement, 'Deny');
    for (const a of ['s3:PutObjectRetention', 's3:DeleteObjectVersion']) expect(allow.has(a), a).toBe(true);
    for (const a of ['s3:BypassGovernanceRetention', 's3:PutBucketObjectLockConfiguration', 's3:DeleteBucket']) expect(deny.has(a), a).toBe(true);
  });

  it('confines both to the repository prefix', () => {
    const write = agent.Statement.find((s) => s.Sid === 'WriteLockedReadVerify')!;
    expect(write.Resource).toBe('arn:aws:s3:::b/fleet/*');
    expect(agent.Statement[0]!.Condition).toEqual({ StringLike: { 's3:prefix': ['fleet/*', 'fleet'] } });
  });
});
