/**
 * Policies: what to protect on which hosts, how often, and for how long — parsed and checked here
 * so that a user's mistake is one clear sentence, not a stack trace.
 */
import { parseDuration } from '../common/duration.js';
import { BulwarkError } from '../common/errors.js';
import type { PolicyRecord } from './catalog.js';
import { parseSchedule } from './schedule.js';

export interface PolicyInput {
  name: string;
  target: string;
  hosts?: string[];
  paths: string[];
  excludes?: string[];
  schedule: string;
  retention: string;
  lockMode?: string;
}

export function compilePolicy(p: PolicyInput): PolicyRecord {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(p.name)) throw new BulwarkError('INVALID_ARGUMENT', `policy name ${JSON.stringify(p.name)}: use letters, digits, . _ -`);
  if (p.paths.length === 0) throw new BulwarkError('INVALID_ARGUMENT', 'a policy needs at least one path to protect (--path /data)');
  for (const path of p.paths) if (!path.startsWith('/')) throw new BulwarkError('INVALID_ARGUMENT', `path ${JSON.stringify(path)} must be absolute`);
  const lockMode = (p.lockMode ?? 'COMPLIANCE').toUpperCase();
  if (lockMode !== 'COMPLIANCE' && lockMode !== 'GOVERNANCE') throw new BulwarkError('INVALID_ARGUMENT', `lock mode ${JSON.stringify(p.lockMode)}: use compliance or governance`);
  return {
    name: p.name,
    target: p.target,
    hosts: p.hosts ?? [],
    paths: p.paths,
    excludes: p.excludes ?? [],
    schedule: (parseSchedule(p.schedule), p.schedule.trim()),
    retention: p.retention,
    retentionMs: parseDuration(p.retention),
    lockMode,
  };
}

export function policyCovers(p: PolicyRecord, hostId: string, hostname: string): boolean {
  return p.hosts.length === 0 || p.hosts.includes(hostId) || p.hosts.includes(hostname);
}
