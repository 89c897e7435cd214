/**
 * Hostile input at the controller, over real gRPC + TLS on loopback: wrong, reused and expired
 * enrollment tokens, unenrolled and foreign clients, a host reporting another host's job, a host
 * calling the admin API, a revoked host, and a garbage CSR. Each gets a clear error and the
 * controller keeps serving. Also: one agent's messages are handled in the order they came.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { enroll, mtlsCredentials } from '../../agent/identity.js';
import { AdminServiceClient } from '../../common/gen/bulwark/v1/admin.js';
import { AgentServiceClient, type ControllerMessage } from '../../common/gen/bulwark/v1/agent.js';
import { createCA, createKeyAndCsr, decodeToken, encodeToken, signCsr } from '../../common/pki.js';
import { Controller } from '../../controller/controller.js';

const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-hostile-'));
let c: Controller;
let admin: AdminServiceClient;

const unary = <T>(fn: (cb: (err: grpc.ServiceError | null, r: T) => void) => void) =>
  new Promise<T>((resolve, reject) => fn((err, r) => (err ? reject(err) : resolve(r))));
const codeOf = async (p: Promise<unknown>) => p.then(() => 'OK', (e: grpc.ServiceError) => grpc.status[e.code]);

beforeAll(async () => {
  c = await Controller.start({ dataDir: path.join(tmp, 'c'), listen: '127.0.0.1:0', tickMs: 60_000, maintenanceMs: 3_600_000 });
  const cred = JSON.parse(await fs.readFile(path.join(tmp, 'c/admin.json'), 'utf8'));
  admin = new AdminServiceClient(c.address, grpc.credentials.createSsl(Buffer.from(cred.caPem), Buffer.from(cred.keyPem), Buffer.from(cred.certPem)));
});
afterAll(async () => {
  admin.close();
  await c.stop();
  await fs.rm(tmp, { recursive: true, force: true });
});

async function token(validFor = '1h'): Promise<string> {
  return (await unary<{ token: string }>((cb) => admin.createToken({ validFor }, cb))).token;
}

async function health(): Promise<void> {
  const r = await unary<{ hosts: unknown[] }>((cb) => admin.listHosts({}, cb));
  expect(Array.isArray(r.hosts)).toBe(true);
}

describe('hostile input at the controller', () => {
  it('enrollment: a made-up secret, a reused token and an expired token are refused', async () => {
    const good = await token();
    const forged = encodeToken({ ...decodeToken(good), secret: 'A'.repeat(43) });
    await expect(enroll(path.join(tmp, 'a1'), forged, 'a1')).rejects.toMatchObject({ code: 'ACCESS_DENIED' });
    await enroll(path.join(tmp, 'a2'), good, 'a2');
    await expect(enroll(path.join(tmp, 'a3'), good, 'a3')).rejects.toMatchObject({ message: expect.stringMatching(/unknown, used or expired/) });
    const short = await token('1ms');
    await new Promise((r) => setTimeout(r, 20));
    await expect(enroll(path.join(tmp, 'a4'), short, 'a4')).rejects.toMatchObject({ code: 'ACCESS_DENIED' });
    await health();
  });

  it('a garbage CSR with a valid token is refused and the token is spent', async () => {
    const t = decodeToken(await token());
    const client = new AgentServiceClient(c.address, grpc.credentials.createSsl(Buffer.from(c.ca.certPem)));
    const code = await codeOf(unary((cb) => client.enroll({ tokenSecret: t.secret, hostname: 'x', csrPem: '-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----' }, cb)));
    expect(code).toBe('INVALID_ARGUMENT');
    const { csrPem } = await createKeyAndCsr('x');
    expect(await codeOf(unary((cb) => client.enroll({ tokenSecret: t.secret, hostname: 'x', csrPem }, cb)))).toBe('PERMISSION_DENIED');
    client.close();
    await health();
  });

  it('an unenrolled client (no certificate) and a foreign CA\'s client cannot open a session or call the admin API', async () => {
    const anon = new AgentServiceClient(c.address, grpc.credentials.createSsl(Buffer.from(c.ca.certPem)));
    const s = anon.session();
    const err = await new Promise<grpc.ServiceError>((resolve) => s.on('error', resolve));
    expect(grpc.status[err.code]).toBe('UNAUTHENTICATED');
    anon.close();

    const foreignCa = await createCA('evil');
    const { keyPem, csrPem } = await createKeyAndCsr('evil');
    const certPem = await signCsr(foreignCa, csrPem, { role: 'admin', id: 'admin' });
    const evil = new AdminServiceClient(c.address, grpc.credentials.createSsl(Buffer.from(c.ca.certPem), Buffer.from(keyPem), Buffer.from(certPem)));
    expect(await codeOf(unary((cb) => evil.listHosts({}, cb)))).toBe('UNAUTHENTICATED');
    evil.close();
    await health();
  });

  it('a host certificate cannot call the admin API; a revoked host cannot open a session', async () => {
    const id = await enroll(path.join(tmp, 'h1'), await token(), 'h1');
    const asHost = new AdminServiceClient(id.address, mtlsCredentials(id));
    expect(await codeOf(unary((cb) => asHost.listHosts({}, cb)))).toBe('PERMISSION_DENIED');
    asHost.close();

    const rec = (await c.catalog.get(c.catalog.hosts, id.hostId))!;
    await c.catalog.hosts.put(id.hostId, { ...rec, revoked: true });
    const agent = new AgentServiceClient(id.address, mtlsCredentials(id));
    const s = agent.session();
    s.write({ body: { $case: 'hello', value: { agentVersion: 't', hostname: 'h1', lastSnapshotId: '' } } });
    const err = await new Promise<grpc.ServiceError>((resolve) => s.on('error', resolve));
    expect(grpc.status[err.code]).toBe('PERMISSION_DENIED');
    agent.close();
    await health();
  });

  it('a host cannot complete another host\'s job', async () => {
    const a = await enroll(path.join(tmp, 'ja'), await token(), 'ja');
    const b = await enroll(path.join(tmp, 'jb'), await token(), 'jb');
    const now = Date.now();
    await c.catalog.jobs.put('victim-job', { id: 'victim-job', hostId: a.hostId, kind: 'backup', state: 'dispatched', created: now, updated: now });
    const client = new AgentServiceClient(b.address, mtlsCredentials(b));
    const s = client.session();
    s.on('data', (_m: ControllerMessage) => undefined);
    s.on('error', () => undefined);
    s.write({ body: { $case: 'hello', value: { agentVersion: 't', hostname: 'jb', lastSnapshotId: '' } } });
    s.write({ body: { $case: 'result', value: { jobId: 'victim-job', ok: true, snapshotId: 'ff'.repeat(32), issues: [], files: 0n, bytes: 0n, error: undefined } } });
    s.write({ body: { $case: 'progress', value: { jobId: 'victim-job', progress: undefined } } });
    await new Promise((r) => setTimeout(r, 300));
    expect((await c.catalog.get(c.catalog.jobs, 'victim-job'))!.state).toBe('dispatched');
    s.end();
    client.close();
    await health();
  });

  it('progress reports sent just before a result do not turn the finished job back to running', async () => {
    // found by the fleet e2e test: a one-file restore sends its progress and its result within
    // milliseconds; handled concurrently, the progress handler wrote 'running' over 'succeeded'
    const a = await enroll(path.join(tmp, 'ord'), await token(), 'ord');
    const client = new AgentServiceClient(a.address, mtlsCredentials(a));
    const s = client.session();
    s.on('data', (_m: ControllerMessage) => undefined);
    s.on('error', () => undefined);
    s.write({ body: { $case: 'hello', value: { agentVersion: 't', hostname: 'ord', lastSnapshotId: '' } } });
    const ids = Array.from({ length: 10 }, (_, i) => `restore-job-${i}`);
    for (const id of ids) {
      const now = Date.now();
      await c.catalog.jobs.put(id, { id, hostId: a.hostId, kind: 'restore', state: 'dispatched', created: now, updated: now });
    }
    // reads of jobs take a random 0-20 ms (a busy disk or thread pool), so that handlers running
    // side by side would interleave
    const get = c.catalog.get.bind(c.catalog);
    c.catalog.get = (async (sub: unknown, key: string) => {
      if (key.startsWith('restore-job-')) await new Promise((r) => setTimeout(r, Math.random() * 20));
      return get(sub as never, key);
    }) as typeof c.catalog.get;
    onTestFinished(() => {
      c.catalog.get = get;
    });
    const progress = { filesDone: 1n, bytesDone: 6n, filesTotal: 1n, bytesTotal: 6n, bytesUploaded: 0n, currentPath: 'hello.txt', phase: 'restoring' };
    for (const jobId of ids) {
      for (let k = 0; k < 5; k++) s.write({ body: { $case: 'progress', value: { jobId, progress } } });
      s.write({ body: { $case: 'result', value: { jobId, ok: true, snapshotId: 'ee'.repeat(32), issues: [], files: 1n, bytes: 6n, error: undefined } } });
    }
    const states = async () => Promise.all(ids.map(async (id) => (await c.catalog.get(c.catalog.jobs, id))!.state));
    const end = Date.now() + 5_000;
    while (Date.now() < end && (await states()).some((st) => st !== 'succeeded')) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 300)); // and they stay so
    expect(await states()).toEqual(ids.map(() => 'succeeded'));
    s.end();
    client.close();
  });

  it('malformed protobuf bytes are refused and the controller keeps serving', async () => {
    const Raw = grpc.makeGenericClientConstructor(
      {
        enroll: {
          path: '/bulwark.v1.AgentService/Enroll',
          requestStream: false,
          responseStream: false,
          requestSerialize: (b: Buffer) => b,
          requestDeserialize: (b: Buffer) => b,
          responseSerialize: (b: Buffer) => b,
          responseDeserialize: (b: Buffer) => b,
        },
      },
      'Raw',
    );
    const raw = new Raw(c.address, grpc.credentials.createSsl(Buffer.from(c.ca.certPem))) as unknown as { enroll(b: Buffer, cb: (e: grpc.ServiceError | null, r: Buffer) => void): void; close(): void };
    // a length-delimited field whose length runs past the end, and a wire type that does not exist
    for (const garbage of [Buffer.from([0x0a, 0xff, 0xff, 0x03, 0x41]), Buffer.from([0x0f, 0x01]), Buffer.from('not protobuf at all')]) {
      const code = await codeOf(unary((cb) => raw.enroll(garbage, cb)));
      expect(['INTERNAL', 'INVALID_ARGUMENT', 'PERMISSION_DENIED']).toContain(code);
      expect(code).not.toBe('OK');
    }
    raw.close();
    await health();
  });

  it('an oversized message is refused and the controller keeps serving', async () => {
    const client = new AgentServiceClient(c.address, grpc.credentials.createSsl(Buffer.from(c.ca.certPem)));
    const code = await codeOf(unary((cb) => client.enroll({ tokenSecret: 'x', hostname: 'x'.repeat(5 * 1024 * 1024), csrPem: '' }, cb)));
    expect(code).toBe('RESOURCE_EXHAUSTED');
    client.close();
    await health();
  });
});
