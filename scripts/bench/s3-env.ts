/**
 * The S3 the benchmarks use: BULWARK_S3_* when set, else the local RGW (`scripts/s3-local.sh up`,
 * whose printed settings are also put into process.env for child processes).
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export interface S3Env {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
}

function read(): S3Env | undefined {
  const e = process.env;
  return e.BULWARK_S3_ENDPOINT && e.BULWARK_S3_ACCESS_KEY && e.BULWARK_S3_SECRET_KEY
    ? { endpoint: e.BULWARK_S3_ENDPOINT, accessKeyId: e.BULWARK_S3_ACCESS_KEY, secretAccessKey: e.BULWARK_S3_SECRET_KEY, region: e.BULWARK_S3_REGION ?? 'us-east-1' }
    : undefined;
}

export function s3Env(): S3Env {
  const fromEnv = read();
  if (fromEnv) return fromEnv;
  const script = fileURLToPath(new URL('../s3-local.sh', import.meta.url));
  const r = spawnSync('bash', [script, 'up'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status !== 0) throw new Error(`scripts/s3-local.sh up failed (exit ${r.status})`);
  for (const m of r.stdout.matchAll(/^export (BULWARK_S3_[A-Z_]+)=(.*)$/gm)) process.env[m[1]!] = m[2]!;
  const got = read();
  if (!got) throw new Error('scripts/s3-local.sh up printed no BULWARK_S3_* settings');
  return got;
}

/** A plain SDK client for the benchmarks' own bucket housekeeping (create, list, delete buckets). */
export { rawS3Client } from '../../common/storage/s3-store.js';
