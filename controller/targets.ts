/**
 * Storage targets: an S3 bucket (+ prefix) holding one repository, with two credentials — the
 * agents' (put, get, list, head; never delete or extend) and the maintainer's, used by the
 * controller to extend locks, groom and audit. Adding a target runs the bucket check (doctor) and
 * creates the repository when the bucket holds none (or opens it with the recovery passphrase).
 */
import { BulwarkError } from '../common/errors.js';
import { Repository } from '../common/repo/repository.js';
import type { BlobStore } from '../common/storage/blob-store.js';
import { type CheckResult, checkBucket, doctorPassed } from '../common/storage/doctor.js';
import { openS3Store } from '../common/storage/open-store.js';
import type { TargetRecord } from './catalog.js';

export interface TargetSpec {
  name: string;
  endpoint?: string;
  region?: string;
  bucket: string;
  prefix?: string;
  agentAccessKeyId: string;
  agentSecretAccessKey: string;
  maintainerAccessKeyId?: string;
  maintainerSecretAccessKey?: string;
}

export function maintainerStore(t: Pick<TargetRecord, 'endpoint' | 'region' | 'bucket' | 'prefix' | 'maintainerAccessKeyId' | 'maintainerSecretAccessKey'>): BlobStore {
  return openS3Store({
    ...(t.endpoint ? { endpoint: t.endpoint } : {}),
    region: t.region,
    bucket: t.bucket,
    prefix: t.prefix,
    accessKeyId: t.maintainerAccessKeyId,
    secretAccessKey: t.maintainerSecretAccessKey,
  });
}

export async function createOrOpenTarget(spec: TargetSpec, passphrase: string, initialLockUntil: number): Promise<{ record: TargetRecord; checks: CheckResult[] }> {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(spec.name)) throw new BulwarkError('INVALID_ARGUMENT', `target name ${JSON.stringify(spec.name)}: use letters, digits, . _ -`);
  if (!passphrase) throw new BulwarkError('INVALID_ARGUMENT', 'a recovery passphrase is needed (--passphrase-file FILE): it opens the repository if this controller is lost');
  const base = {
    name: spec.name,
    ...(spec.endpoint ? { endpoint: spec.endpoint } : {}),
    region: spec.region ?? 'us-east-1',
    bucket: spec.bucket,
    prefix: (spec.prefix ?? '').replace(/^\/+|\/+$/g, ''),
    agentAccessKeyId: spec.agentAccessKeyId,
    agentSecretAccessKey: spec.agentSecretAccessKey,
    maintainerAccessKeyId: spec.maintainerAccessKeyId ?? spec.agentAccessKeyId,
    maintainerSecretAccessKey: spec.maintainerSecretAccessKey ?? spec.agentSecretAccessKey,
  };
  const store = maintainerStore(base);
  const checks = await checkBucket(store);
  if (!doctorPassed(checks)) {
    const bad = checks.filter((c) => c.status === 'fail').map((c) => `${c.name}: ${c.detail}${c.fix ? ` — ${c.fix}` : ''}`);
    throw new BulwarkError('BUCKET_NOT_LOCKED', `target ${spec.name} cannot keep backups immutable:\n  ${bad.join('\n  ')}`);
  }
  let repo: Repository;
  try {
    repo = await Repository.open(store, { passphrase });
  } catch (err) {
    if (!(err instanceof BulwarkError) || err.code !== 'BAD_REPOSITORY') throw err;
    repo = await Repository.init(store, { passphrase, lock: { mode: 'COMPLIANCE', retainUntil: initialLockUntil } });
  }
  const canExtend = checks.find((c) => c.name === 'probe-extend')?.status === 'ok';
  return { record: { ...base, masterKey: repo.masterKey.toString('base64'), repoId: repo.config.repoId, canExtend }, checks };
}

export async function openTargetRepo(t: TargetRecord): Promise<Repository> {
  return Repository.open(maintainerStore(t), { masterKey: Buffer.from(t.masterKey, 'base64') });
}
