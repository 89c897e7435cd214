/**
 * Vitest global setup for the projects that need a real S3 with Object Lock.
 *
 * With BULWARK_S3_ENDPOINT (and _ACCESS_KEY, _SECRET_KEY, optional _REGION) set, the tests use
 * that server (AWS, MinIO, another RGW). Otherwise scripts/s3-local.sh brings up a throwaway Ceph
 * RGW on 127.0.0.1 (installing its packages when missing) and, if this run started it, stops it
 * afterwards. Failure to get an S3 fails the run: integration tests are never skipped.
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';

export interface S3TestConfig {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    s3: S3TestConfig;
  }
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const script = path.join(root, 'scripts/s3-local.sh');

function parseEnv(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^export (\w+)=(.*)$/.exec(line.trim());
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

export default function setup(project: TestProject): (() => void) | undefined {
  const e = process.env;
  if (e.BULWARK_S3_ENDPOINT) {
    if (!e.BULWARK_S3_ACCESS_KEY || !e.BULWARK_S3_SECRET_KEY) {
      throw new Error('BULWARK_S3_ENDPOINT is set but BULWARK_S3_ACCESS_KEY / BULWARK_S3_SECRET_KEY are not');
    }
    project.provide('s3', {
      endpoint: e.BULWARK_S3_ENDPOINT,
      accessKeyId: e.BULWARK_S3_ACCESS_KEY,
      secretAccessKey: e.BULWARK_S3_SECRET_KEY,
      region: e.BULWARK_S3_REGION ?? 'us-east-1',
    });
    return undefined;
  }
  const wasRunning = (() => {
    try {
      execFileSync('bash', [script, 'status'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  })();
  const out = execFileSync('bash', [script, 'up'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const env = parseEnv(out);
  project.provide('s3', {
    endpoint: env.BULWARK_S3_ENDPOINT!,
    accessKeyId: env.BULWARK_S3_ACCESS_KEY!,
    secretAccessKey: env.BULWARK_S3_SECRET_KEY!,
    region: env.BULWARK_S3_REGION ?? 'us-east-1',
  });
  if (wasRunning) return undefined;
  return () => {
    execFileSync('bash', [script, 'down'], { stdio: 'inherit' });
  };
}
