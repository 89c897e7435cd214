/**
 * The agent's identity on disk (identity.json in its data dir, mode 0600): the controller address,
 * the CA certificate pinned at enrollment, the host id, and the client certificate and key used
 * for mTLS. `enroll` creates it from a one-time token.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { BulwarkError } from '../common/errors.js';
import { AgentServiceClient } from '../common/gen/bulwark/v1/agent.js';
import { createKeyAndCsr, decodeToken, fetchPinnedCa } from '../common/pki.js';

export interface AgentIdentity {
  address: string;
  hostId: string;
  caPem: string;
  certPem: string;
  keyPem: string;
}

export function identityFile(dataDir: string): string {
  return path.join(dataDir, 'identity.json');
}

export async function loadIdentity(dataDir: string): Promise<AgentIdentity> {
  try {
    return JSON.parse(await fs.readFile(identityFile(dataDir), 'utf8')) as AgentIdentity;
  } catch {
    throw new BulwarkError('INVALID_ARGUMENT', `this agent is not enrolled (no ${identityFile(dataDir)}): run bulwark agent enroll --token TOKEN --data-dir ${dataDir}`);
  }
}

/** Enroll with a one-time token: pin the CA by its fingerprint, send a CSR, keep the certificate. */
export async function enroll(dataDir: string, token: string, hostname = os.hostname()): Promise<AgentIdentity> {
  const t = decodeToken(token);
  const caPem = await fetchPinnedCa(t.address, t.caFingerprint);
  const { keyPem, csrPem } = await createKeyAndCsr(hostname);
  const client = new AgentServiceClient(t.address, grpc.credentials.createSsl(Buffer.from(caPem)));
  try {
    const res = await new Promise<{ hostId: string; clientCertPem: string; caCertPem: string }>((resolve, reject) =>
      client.enroll({ tokenSecret: t.secret, hostname, csrPem }, (err, r) => (err ? reject(new BulwarkError('ACCESS_DENIED', `enrollment refused: ${err.details || err.message}`)) : resolve(r))),
    );
    const id: AgentIdentity = { address: t.address, hostId: res.hostId, caPem, certPem: res.clientCertPem, keyPem };
    await fs.mkdir(dataDir, { recursive: true, mode: 0o700 });
    await fs.writeFile(identityFile(dataDir), JSON.stringify(id, null, 2), { mode: 0o600 });
    return id;
  } finally {
    client.close();
  }
}

export function mtlsCredentials(id: Pick<AgentIdentity, 'caPem' | 'certPem' | 'keyPem'>): grpc.ChannelCredentials {
  return grpc.credentials.createSsl(Buffer.from(id.caPem), Buffer.from(id.keyPem), Buffer.from(id.certPem));
}
