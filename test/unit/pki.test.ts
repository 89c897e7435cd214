/**
 * common/pki.ts against real grpc-js servers over TCP + TLS on 127.0.0.1: who gets in with which
 * certificate, how a handler reads the caller's identity, how an agent pins the CA from a token
 * and enrolls on a port that asks for no client certificate, and what signCsr and the token
 * decoder refuse.
 */
import 'reflect-metadata';
import * as grpc from '@grpc/grpc-js';
import * as x509 from '@peculiar/x509';
import { createHash, createPrivateKey, webcrypto, X509Certificate } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { BulwarkError, type ErrorCode } from '../../common/errors.js';
import {
  type CertBundle,
  createCA,
  createKeyAndCsr,
  decodeToken,
  encodeToken,
  fetchPinnedCa,
  fingerprint,
  hashSecret,
  issueServerCert,
  newTokenSecret,
  peerIdentity,
  serverCredentials,
  signCsr,
} from '../../common/pki.js';

// A tiny hand-made service with JSON on the wire: WhoAmI reports what the handler sees of the
// caller's certificate; Enroll signs a CSR, as the controller's Enroll does.
interface WhoAmIReply {
  identity: { role: string; id: string } | null;
  peerFingerprint: string | null;
}
interface EnrollRequest {
  csrPem: string;
  hostId: string;
}
interface EnrollReply {
  certPem: string;
}
const json = {
  serialize: (v: unknown) => Buffer.from(JSON.stringify(v)),
  deserialize: (b: Buffer) => JSON.parse(b.toString('utf8')) as unknown,
};
const definition = {
  whoAmI: {
    path: '/bulwark.test.Pki/WhoAmI',
    requestStream: false,
    responseStream: false,
    requestSerialize: json.serialize,
    requestDeserialize: json.deserialize,
    responseSerialize: json.serialize,
    responseDeserialize: json.deserialize,
  },
  enroll: {
    path: '/bulwark.test.Pki/Enroll',
    requestStream: false,
    responseStream: false,
    requestSerialize: json.serialize,
    requestDeserialize: json.deserialize,
    responseSerialize: json.serialize,
    responseDeserialize: json.deserialize,
  },
} satisfies grpc.ServiceDefinition;
const PkiClient = grpc.makeGenericClientConstructor(definition, 'Pki');

let ca: CertBundle;
let otherCa: CertBundle;
let serverCert: CertBundle;
let host: CertBundle;
let admin: CertBundle;
let foreign: CertBundle;

async function clientCert(issuer: CertBundle, role: 'host' | 'admin', id: string): Promise<CertBundle> {
  const { keyPem, csrPem } = await createKeyAndCsr(id);
  return { keyPem, certPem: await signCsr(issuer, csrPem, { role, id }) };
}

beforeAll(async () => {
  ca = await createCA('Bulwark test CA');
  otherCa = await createCA('Some other CA');
  serverCert = await issueServerCert(ca, { dns: ['localhost'], ips: ['127.0.0.1'] });
  host = await clientCert(ca, 'host', 'web-01-a1b2c3');
  admin = await clientCert(ca, 'admin', 'alice');
  foreign = await clientCert(otherCa, 'host', 'web-01-a1b2c3');
});

/** A server on 127.0.0.1:0 with the service; `close` forces it down. */
async function startServer(creds: grpc.ServerCredentials, signer: CertBundle = ca): Promise<{ port: number; close: () => void }> {
  const server = new grpc.Server();
  server.addService(definition, {
    whoAmI: (call: grpc.ServerUnaryCall<unknown, WhoAmIReply>, callback: grpc.sendUnaryData<WhoAmIReply>) => {
      const cert = call.getAuthContext()?.sslPeerCertificate;
      return callback(null, {
        identity: peerIdentity(cert) ?? null,
        peerFingerprint: cert?.raw ? createHash('sha256').update(cert.raw).digest('hex') : null,
      });
    },
    enroll: (call: grpc.ServerUnaryCall<EnrollRequest, EnrollReply>, callback: grpc.sendUnaryData<EnrollReply>) => {
      signCsr(signer, call.request.csrPem, { role: 'host', id: call.request.hostId }).then(
        (certPem) => callback(null, { certPem }),
        (err: unknown) => callback({ code: grpc.status.INVALID_ARGUMENT, details: err instanceof Error ? err.message : String(err) }),
      );
    },
  });
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', creds, (err, p) => (err ? reject(err) : resolve(p))));
  return { port, close: () => server.forceShutdown() };
}

function creds(caPem: string, cert?: CertBundle): grpc.ChannelCredentials {
  return cert ? grpc.credentials.createSsl(Buffer.from(caPem), Buffer.from(cert.keyPem), Buffer.from(cert.certPem)) : grpc.credentials.createSsl(Buffer.from(caPem));
}

/** One unary call on a fresh client (own subchannel pool), closed afterwards. */
async function call<Res>(port: number, channelCreds: grpc.ChannelCredentials, method: 'whoAmI' | 'enroll', request: unknown): Promise<Res> {
  const client = new PkiClient(`127.0.0.1:${port}`, channelCreds, { 'grpc.use_local_subchannel_pool': 1 });
  try {
    return await new Promise<Res>((resolve, reject) => {
      const fn = client[method] as (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: Res) => void) => void;
      fn.call(client, request, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (err, res) => (err ? reject(err) : resolve(res as Res)));
    });
  } finally {
    client.close();
  }
}

const whoAmI = (port: number, c: grpc.ChannelCredentials) => call<WhoAmIReply>(port, c, 'whoAmI', {});

async function expectCode(p: Promise<unknown>, code: ErrorCode, message?: RegExp): Promise<BulwarkError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BulwarkError);
  expect((err as BulwarkError).code).toBe(code);
  if (message) expect((err as BulwarkError).message).toMatch(message);
  return err as BulwarkError;
}

async function expectRefused(p: Promise<unknown>): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeDefined();
  expect((err as grpc.ServiceError).code).toBe(grpc.status.UNAVAILABLE);
}

describe('certificates', () => {
  it('makes a 10-year P-256 CA and leaves it signs and names', async () => {
    const c = new X509Certificate(ca.certPem);
    expect(c.ca).toBe(true);
    expect(c.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    const years = (Date.parse(c.validTo) - Date.parse(c.validFrom)) / (365.25 * 86_400_000);
    expect(years).toBeGreaterThan(9.99);
    expect(years).toBeLessThan(10.01);

    const leaf = new X509Certificate(host.certPem);
    expect(leaf.ca).toBe(false);
    expect(leaf.checkIssued(c) && leaf.verify(c.publicKey)).toBe(true);
    expect(leaf.subject).toContain('CN=web-01-a1b2c3');
    expect(leaf.subjectAltName).toBe('URI:bulwark:host:web-01-a1b2c3');
    expect(Date.parse(leaf.validTo)).toBeLessThanOrEqual(Date.parse(c.validTo));
    expect(new X509Certificate(admin.certPem).subject).toContain('CN=admin:alice');
    expect(new X509Certificate(serverCert.certPem).subjectAltName).toBe('DNS:localhost, IP Address:127.0.0.1');
    // two leaves for the same id still differ in serial
    const again = await clientCert(ca, 'host', 'web-01-a1b2c3');
    expect(new X509Certificate(again.certPem).serialNumber).not.toBe(leaf.serialNumber);
  });

  it('fingerprints the DER with SHA-256 in lowercase hex', () => {
    const c = new X509Certificate(ca.certPem);
    expect(fingerprint(ca.certPem)).toBe(createHash('sha256').update(c.raw).digest('hex'));
    expect(fingerprint(ca.certPem)).toBe(c.fingerprint256.replace(/:/g, '').toLowerCase());
    expect(fingerprint(ca.certPem)).not.toBe(fingerprint(otherCa.certPem));
    expect(() => fingerprint('not a certificate')).toThrow(BulwarkError);
  });

  it('signCsr sets its own subject, whatever the CSR asked for', async () => {
    const { csrPem } = await createKeyAndCsr('admin:root');
    const certPem = await signCsr(ca, csrPem, { role: 'host', id: 'db-7' });
    expect(new X509Certificate(certPem).subject).not.toContain('admin');
    expect(peerIdentity(certPem)).toEqual({ role: 'host', id: 'db-7' });
  });

  it('signCsr refuses garbage, a tampered CSR, a forged signature and a bad id', async () => {
    const { csrPem } = await createKeyAndCsr('my-host');
    await expectCode(signCsr(ca, 'hello', { role: 'host', id: 'h' }), 'INVALID_ARGUMENT');
    await expectCode(signCsr(ca, '-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n', { role: 'host', id: 'h' }), 'INVALID_ARGUMENT', /cannot be parsed/);

    const der = pemToDer(csrPem);
    // the last byte is inside the ECDSA signature's s: the request still parses, the signature fails
    const badSig = Buffer.from(der);
    badSig[badSig.length - 1]! ^= 0x01;
    await expectCode(signCsr(ca, derToPem(badSig), { role: 'host', id: 'h' }), 'INVALID_ARGUMENT', /does not verify/);

    // a different subject than the one signed: the signed bytes changed
    const at = der.indexOf(Buffer.from('my-host'));
    expect(at).toBeGreaterThan(0);
    const badSubject = Buffer.from(der);
    badSubject.write('my-hosx', at, 'latin1');
    await expectCode(signCsr(ca, derToPem(badSubject), { role: 'host', id: 'h' }), 'INVALID_ARGUMENT', /does not verify/);

    await expectCode(signCsr(ca, csrPem, { role: 'host', id: 'a b' }), 'INVALID_ARGUMENT');
    await expectCode(signCsr(ca, csrPem, { role: 'root' as 'host', id: 'h' }), 'INVALID_ARGUMENT');
    await expectCode(signCsr(ca, csrPem, { role: 'host', id: 'h' }, 0), 'INVALID_ARGUMENT');
    // a CA bundle whose key is not the CA certificate's
    await expectCode(signCsr({ certPem: ca.certPem, keyPem: otherCa.keyPem }, csrPem, { role: 'host', id: 'h' }), 'INVALID_ARGUMENT', /does not belong/);
    // and the untouched request is fine
    expect(peerIdentity(await signCsr(ca, csrPem, { role: 'host', id: 'h' }))).toEqual({ role: 'host', id: 'h' });
  });

  it('peerIdentity reads exactly one bulwark SAN URI', () => {
    expect(peerIdentity({ subjectaltname: 'DNS:x.example, URI:bulwark:admin:bob' })).toEqual({ role: 'admin', id: 'bob' });
    expect(peerIdentity({ subjectaltname: 'URI:bulwark:host:a, URI:bulwark:admin:b' })).toBeUndefined();
    expect(peerIdentity({ subjectaltname: 'URI:"bulwark:host:a, URI:bulwark:admin:b"' })).toBeUndefined();
    expect(peerIdentity({ subjectaltname: 'URI:bulwark:root:a' })).toBeUndefined();
    expect(peerIdentity({ subjectaltname: 'DNS:localhost' })).toBeUndefined();
    expect(peerIdentity({})).toBeUndefined();
    expect(peerIdentity(undefined)).toBeUndefined();
    expect(peerIdentity(serverCert.certPem)).toBeUndefined();
    expect(peerIdentity({ raw: new X509Certificate(admin.certPem).raw })).toEqual({ role: 'admin', id: 'alice' });
    expect(peerIdentity(new X509Certificate(host.certPem))).toEqual({ role: 'host', id: 'web-01-a1b2c3' });
  });
});

describe('mTLS with grpc-js', () => {
  it('lets in a host and an admin signed by the CA, and the handler sees who they are', async () => {
    const srv = await startServer(serverCredentials(ca, serverCert, 'require'));
    try {
      const h = await whoAmI(srv.port, creds(ca.certPem, host));
      expect(h.identity).toEqual({ role: 'host', id: 'web-01-a1b2c3' });
      expect(h.peerFingerprint).toBe(fingerprint(host.certPem));
      const a = await whoAmI(srv.port, creds(ca.certPem, admin));
      expect(a.identity).toEqual({ role: 'admin', id: 'alice' });
    } finally {
      srv.close();
    }
  });

  it('refuses no client certificate, one from another CA, and a server certificate used as a client one', async () => {
    const srv = await startServer(serverCredentials(ca, serverCert, 'require'));
    try {
      await expectRefused(whoAmI(srv.port, creds(ca.certPem)));
      await expectRefused(whoAmI(srv.port, creds(ca.certPem, foreign)));
      // same CA, but serverAuth only: OpenSSL refuses it for the client purpose
      await expectRefused(whoAmI(srv.port, creds(ca.certPem, serverCert)));
      // the same server still serves a good client afterwards
      expect((await whoAmI(srv.port, creds(ca.certPem, host))).identity?.role).toBe('host');
    } finally {
      srv.close();
    }
  });

  it('plain grpc createSsl(…, false) asks for no certificate: the handler sees none even when the client has one', async () => {
    const srv = await startServer(grpc.ServerCredentials.createSsl(Buffer.from(ca.certPem), [{ cert_chain: Buffer.from(serverCert.certPem + ca.certPem), private_key: Buffer.from(serverCert.keyPem) }], false));
    try {
      const r = await whoAmI(srv.port, creds(ca.certPem, host));
      expect(r).toEqual({ identity: null, peerFingerprint: null });
    } finally {
      srv.close();
    }
  });

  it("'optional' serves callers with and without a certificate on one port, and sees only verified ones", async () => {
    const srv = await startServer(serverCredentials(ca, serverCert, 'optional'));
    try {
      expect(await whoAmI(srv.port, creds(ca.certPem))).toEqual({ identity: null, peerFingerprint: null });
      expect((await whoAmI(srv.port, creds(ca.certPem, host))).identity).toEqual({ role: 'host', id: 'web-01-a1b2c3' });
      expect((await whoAmI(srv.port, creds(ca.certPem, admin))).identity).toEqual({ role: 'admin', id: 'alice' });
      // a certificate from another CA gets through TLS but is not reported: the handler must refuse it
      expect(await whoAmI(srv.port, creds(ca.certPem, foreign))).toEqual({ identity: null, peerFingerprint: null });
    } finally {
      srv.close();
    }
  });
});

describe('enrollment: pin the CA, then enroll, then mTLS', () => {
  it('fetches the pinned CA, enrolls on the no-client-cert port and then gets in over mTLS', async () => {
    const enrollPort = await startServer(serverCredentials(ca, serverCert, 'none'));
    const mtlsPort = await startServer(serverCredentials(ca, serverCert, 'require'));
    try {
      const token = decodeToken(encodeToken({ address: `127.0.0.1:${enrollPort.port}`, caFingerprint: fingerprint(ca.certPem), secret: newTokenSecret() }));
      const caPem = await fetchPinnedCa(token.address, token.caFingerprint);
      expect(fingerprint(caPem)).toBe(fingerprint(ca.certPem));
      // node's colon form is accepted too
      expect(fingerprint(await fetchPinnedCa(token.address, new X509Certificate(ca.certPem).fingerprint256))).toBe(token.caFingerprint);

      const { keyPem, csrPem } = await createKeyAndCsr('web-02');
      // a client with no certificate, trusting only the fetched CA
      const enrolled = await call<EnrollReply>(enrollPort.port, creds(caPem), 'enroll', { csrPem, hostId: 'web-02-ffffff' });
      expect(peerIdentity(enrolled.certPem)).toEqual({ role: 'host', id: 'web-02-ffffff' });
      // the enrollment port never sees a client identity
      expect((await whoAmI(enrollPort.port, creds(caPem))).identity).toBeNull();

      const me = await whoAmI(mtlsPort.port, creds(caPem, { certPem: enrolled.certPem, keyPem }));
      expect(me.identity).toEqual({ role: 'host', id: 'web-02-ffffff' });
      expect(me.peerFingerprint).toBe(fingerprint(enrolled.certPem));

      // trusting another CA, the client refuses the controller
      await expectRefused(whoAmI(enrollPort.port, creds(otherCa.certPem)));
    } finally {
      enrollPort.close();
      mtlsPort.close();
    }
  });

  it('refuses a wrong fingerprint, a server without its chain, a stranger holding the real CA cert, and a name mismatch', async () => {
    const good = await startServer(serverCredentials(ca, serverCert, 'none'));
    const noChain = await startServer(grpc.ServerCredentials.createSsl(null, [{ cert_chain: Buffer.from(serverCert.certPem), private_key: Buffer.from(serverCert.keyPem) }], false));
    // a man in the middle: its own certificate, and the real (public) CA certificate after it
    const mitmCert = await issueServerCert(otherCa, { ips: ['127.0.0.1'] });
    const mitm = await startServer(grpc.ServerCredentials.createSsl(null, [{ cert_chain: Buffer.from(mitmCert.certPem + ca.certPem), private_key: Buffer.from(mitmCert.keyPem) }], false));
    // worse: a certificate that claims the real CA as issuer (name and key id), signed by another key
    const forged = await forgeServerCert(ca, otherCa);
    const forger = await startServer(grpc.ServerCredentials.createSsl(null, [{ cert_chain: Buffer.from(forged.certPem + ca.certPem), private_key: Buffer.from(forged.keyPem) }], false));
    const localhostOnly = await startServer(serverCredentials(ca, await issueServerCert(ca, { dns: ['localhost'] }), 'none'));
    try {
      const pin = fingerprint(ca.certPem);
      await expectCode(fetchPinnedCa(`127.0.0.1:${good.port}`, fingerprint(otherCa.certPem)), 'ACCESS_DENIED', /intercepting/);
      await expectCode(fetchPinnedCa(`127.0.0.1:${noChain.port}`, pin), 'ACCESS_DENIED', /server certificate \+ CA certificate/);
      // Node links only certificates that issued the one before, so the real CA sent after a
      // stranger's certificate is not even seen: refused as "not presented"
      await expectCode(fetchPinnedCa(`127.0.0.1:${mitm.port}`, pin), 'ACCESS_DENIED', /intercepting/);
      await expectCode(fetchPinnedCa(`127.0.0.1:${forger.port}`, pin), 'ACCESS_DENIED', /did not issue/);
      await expectCode(fetchPinnedCa(`127.0.0.1:${localhostOnly.port}`, pin), 'ACCESS_DENIED', /does not name 127\.0\.0\.1/);
      // the same server by the name its certificate holds is fine
      expect(fingerprint(await fetchPinnedCa(`localhost:${localhostOnly.port}`, pin))).toBe(pin);
    } finally {
      good.close();
      noChain.close();
      mitm.close();
      forger.close();
      localhostOnly.close();
    }
  });

  it('reports an unreachable controller as TRANSIENT and honours an abort', async () => {
    const srv = await startServer(serverCredentials(ca, serverCert, 'none'));
    const port = srv.port;
    srv.close();
    await expectCode(fetchPinnedCa(`127.0.0.1:${port}`, fingerprint(ca.certPem)), 'TRANSIENT', /cannot reach/);
    await expectCode(fetchPinnedCa(`127.0.0.1:${port}`, fingerprint(ca.certPem), { signal: AbortSignal.abort() }), 'ABORTED');
  });
});

describe('enrollment tokens', () => {
  const sample = { address: '10.0.0.5:7443', caFingerprint: 'ab'.repeat(32), secret: newTokenSecret() };

  it('round-trips as one copy-pasteable string', () => {
    const text = encodeToken(sample);
    expect(text).toMatch(/^bwk1_[A-Za-z0-9_-]+$/);
    expect(decodeToken(text)).toEqual(sample);
    expect(decodeToken(`  ${text}\n`)).toEqual(sample);
    expect(decodeToken(encodeToken({ ...sample, address: '[::1]:7443', caFingerprint: 'AB:'.repeat(31) + 'AB' }))).toEqual({ ...sample, address: '[::1]:7443' });
  });

  it('makes 256-bit secrets and stores only their SHA-256', () => {
    const a = newTokenSecret();
    expect(Buffer.from(a, 'base64url')).toHaveLength(32);
    expect(a).not.toBe(newTokenSecret());
    expect(hashSecret('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(hashSecret(a)).not.toContain(a);
  });

  const b64 = (v: unknown) => `bwk1_${Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url')}`;
  it.each([
    ['empty', ''],
    ['no prefix', 'hello'],
    ['another prefix', `bwk2_${encodeToken(sample).slice(5)}`],
    ['prefix only', 'bwk1_'],
    ['bad characters', 'bwk1_abc$def'],
    ['cut short', encodeToken(sample).slice(0, -10)],
    ['not JSON', b64('not json')],
    ['an array', b64([1, 2])],
    ['no secret', b64({ address: sample.address, caFingerprint: sample.caFingerprint })],
    ['a short secret', b64({ ...sample, secret: 'abc' })],
    ['a bad fingerprint', b64({ ...sample, caFingerprint: 'xyz' })],
    ['an address without a port', b64({ ...sample, address: 'controller' })],
    ['port 0', b64({ ...sample, address: 'controller:0' })],
    ['port 99999', b64({ ...sample, address: 'controller:99999' })],
    ['a URL', b64({ ...sample, address: 'https://controller:7443' })],
  ])('rejects %s with INVALID_ARGUMENT', (_name, text) => {
    let err: unknown;
    try {
      decodeToken(text);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BulwarkError);
    expect((err as BulwarkError).code).toBe('INVALID_ARGUMENT');
    expect((err as BulwarkError).message).toMatch(/token/);
  });

  it('refuses to encode a bad token', () => {
    expect(() => encodeToken({ ...sample, secret: '' })).toThrow(/secret/);
    expect(() => encodeToken({ ...sample, address: 'nope' })).toThrow(/host:port/);
  });
});

/** A server certificate naming `claimed` as its issuer (subject and key id) but signed with `signer`'s key. */
async function forgeServerCert(claimed: CertBundle, signer: CertBundle): Promise<CertBundle> {
  const subtle = webcrypto.subtle;
  const keys = await subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);
  const signingKey = await subtle.importKey('pkcs8', createPrivateKey(signer.keyPem).export({ type: 'pkcs8', format: 'der' }), { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
  const issuer = new x509.X509Certificate(claimed.certPem);
  const cert = await x509.X509CertificateGenerator.create(
    {
      subject: 'CN=127.0.0.1',
      issuer: issuer.subjectName,
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 86_400_000),
      publicKey: keys.publicKey,
      signingKey,
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
      extensions: [
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        new x509.SubjectAlternativeNameExtension([{ type: 'ip', value: '127.0.0.1' }]),
        await x509.AuthorityKeyIdentifierExtension.create(issuer, false, webcrypto),
      ],
    },
    webcrypto,
  );
  const keyPem = createPrivateKey({ key: Buffer.from(await subtle.exportKey('pkcs8', keys.privateKey)), format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }).toString();
  return { certPem: `${cert.toString('pem')}\n`, keyPem };
}

function pemToDer(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
}

function derToPem(der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN CERTIFICATE REQUEST-----\n${lines.join('\n')}\n-----END CERTIFICATE REQUEST-----\n`;
}
