/**
 * The console's connection to the controller: the admin credential (admin.json, written by the
 * controller in its data dir), an AdminService client over mTLS, and promise wrappers that turn
 * gRPC errors into one-line messages.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { BulwarkError } from '../common/errors.js';
import { AdminServiceClient } from '../common/gen/bulwark/v1/admin.js';

export interface AdminCredential {
  address: string;
  caPem: string;
  certPem: string;
  keyPem: string;
}

/** --admin FILE, else $BULWARK_ADMIN, else the default controller data dir's admin.json. */
export function loadAdminCredential(file?: string): AdminCredential {
  const f = file ?? process.env.BULWARK_ADMIN ?? path.resolve('.bulwark/controller/admin.json');
  try {
    return JSON.parse(fs.readFileSync(f, 'utf8')) as AdminCredential;
  } catch {
    throw new BulwarkError('INVALID_ARGUMENT', `no admin credential at ${f}: start a controller (bulwark controller start), then pass --admin <data-dir>/admin.json or set BULWARK_ADMIN`);
  }
}

export function adminClient(cred: AdminCredential): AdminServiceClient {
  return new AdminServiceClient(cred.address, grpc.credentials.createSsl(Buffer.from(cred.caPem), Buffer.from(cred.keyPem), Buffer.from(cred.certPem)));
}

/** Call a unary method and translate its error. */
export function call<Req, Res>(client: AdminServiceClient, method: string, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => {
    const fn = (client as unknown as Record<string, (r: Req, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: Res) => void) => void>)[method]!;
    fn.call(client, req, new grpc.Metadata(), { deadline: Date.now() + 600_000 }, (err, res) => (err ? reject(fromGrpc(err)) : resolve(res)));
  });
}

export function fromGrpc(err: grpc.ServiceError): BulwarkError {
  const code = err.metadata?.get('bulwark-code')[0];
  if (err.code === grpc.status.UNAVAILABLE && !code) {
    return new BulwarkError('TRANSIENT', `cannot reach the controller: ${err.details || err.message} (is it running? bulwark controller start)`);
  }
  return new BulwarkError(((code as string) || (err.code === grpc.status.NOT_FOUND ? 'NOT_FOUND' : err.code === grpc.status.INVALID_ARGUMENT ? 'INVALID_ARGUMENT' : 'INTERNAL')) as never, err.details || err.message);
}
