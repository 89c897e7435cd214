/**
 * Helpers for tests that talk to the real S3 (RGW by default): a raw client, and a fresh bucket
 * with versioning and Object Lock per suite so suites never see each other's objects.
 */
import { randomBytes } from 'node:crypto';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { inject } from 'vitest';
import { rawS3Client } from '../../common/storage/s3-store.js';
import type { S3TestConfig } from './s3-global-setup.js';

export function s3Config(): S3TestConfig {
  const cfg = inject('s3');
  if (!cfg) throw new Error('no S3 provided: is test/helpers/s3-global-setup.ts the global setup of this project?');
  return cfg;
}

/** A raw SDK client with the settings that work on RGW, AWS and MinIO (docs/s3-local.md). */
export function rawClient(cfg: S3TestConfig = s3Config()): S3Client {
  return rawS3Client(cfg);
}

export function uniqueBucketName(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`.toLowerCase();
}

/** Create a bucket with Object Lock enabled (which turns versioning on). */
export async function createLockedBucket(client: S3Client, prefix: string): Promise<string> {
  const bucket = uniqueBucketName(prefix);
  await client.send(new CreateBucketCommand({ Bucket: bucket, ObjectLockEnabledForBucket: true }));
  return bucket;
}

/** Create a plain bucket: no versioning, no Object Lock (the negative control). */
export async function createPlainBucket(client: S3Client, prefix: string): Promise<string> {
  const bucket = uniqueBucketName(prefix);
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  return bucket;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
