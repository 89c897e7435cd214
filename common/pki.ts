/**
 * The controller's small PKI and the enrollment token, used by both sides.
 *
 * Trust, in order:
 *   1. the controller creates a CA on first start (`createCA`) and a server certificate signed by it
 *      (`issueServerCert`); its gRPC port serves the chain `server cert + CA cert` (`serverCredentials`);
 *   2. an admin creates an enrollment token (`encodeToken`): controller address, the CA certificate's
 *      SHA-256 fingerprint and a one-time secret, of which the controller keeps only `hashSecret`;
 *   3. the agent decodes it (`decodeToken`), fetches the CA from the chain the server presents and
 *      pins it by the fingerprint (`fetchPinnedCa`), makes a key pair and a CSR (`createKeyAndCsr`)
 *      and sends the CSR with the secret over TLS verified against that CA;
 *   4. the controller signs it (`signCsr`), ignoring whatever subject the CSR asked for: the
 *      certificate names its holder by a SAN URI `bulwark:host:<id>` or `bulwark:admin:<name>`;
 *   5. every later call is mTLS, and the server reads the caller's role and id back with
 *      `peerIdentity(call.getAuthContext().sslPeerCertificate)`.
 *
 * Keys are ECDSA P-256 (PKCS#8 PEM), signatures ECDSA-SHA256. Node 20 cannot build X.509 itself;
 * @peculiar/x509 does it over WebCrypto. It resolves its internals through tsyringe, which throws
 * at load time unless a Reflect metadata polyfill is there first: hence `import 'reflect-metadata'`
 * above it (ES modules evaluate in import order). Parsing and fingerprints use node:crypto.
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import * as grpc from '@grpc/grpc-js';
import { createHash, createPrivateKey, createPublicKey, randomBytes, webcrypto, X509Certificate, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import tls from 'node:tls';
import { BulwarkError } from './errors.js';

/** A certificate and its private key, both PEM (the key PKCS#8). */
export interface CertBundle {
  certPem: string;
  keyPem: string;
}

export type PeerRole = 'host' | 'admin';

/** Who is calling, as the certificate's `bulwark:<role>:<id>` SAN URI says. */
export interface PeerIdentity {
  role: PeerRole;
  id: string;
}

/** What an enrollment token carries. */
export interface EnrollmentToken {
  /** `host:port` (or `[v6]:port`) of the controller's gRPC port. */
  address: string;
  /** SHA-256 of the CA certificate's DER, lowercase hex, as `fingerprint()` gives it. */
  caFingerprint: string;
  /** The one-time secret; the controller stores only `hashSecret(secret)`. */
  secret: string;
}

const crypto = webcrypto;
type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
const EC_KEY = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING = { name: 'ECDSA', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;
// Clocks of a fleet disagree by a little; a certificate valid from "now" could be refused by a
// host whose clock runs behind for its first minutes.
const BACKDATE_MS = 5 * 60_000;
// 825 days is the longest lifetime browsers accept for a leaf; nothing here needs more, and a
// shorter one bounds how long a stolen key that nobody revoked stays useful.
const DEFAULT_LEAF_DAYS = 825;
const MAX_LEAF_DAYS = 3650;
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$/;
const URI_PATTERN = /^bulwark:(host|admin):([A-Za-z0-9][A-Za-z0-9._@-]{0,127})$/;
const MAX_CSR_CHARS = 16_384;

// ---------------------------------------------------------------------------------------------
// Certificates

/** A self-signed CA, valid 10 years: basicConstraints CA (path length 0), keyCertSign + cRLSign. */
export async function createCA(commonName: string): Promise<CertBundle> {
  const keys = await newKeyPair();
  const notBefore = new Date(Date.now() - BACKDATE_MS);
  const notAfter = new Date(notBefore);
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + 10);
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: randomSerial(),
      name: [{ O: ['Bulwark'] }, { CN: [shortCN(commonName, 'Bulwark CA')] }],
      notBefore,
      notAfter,
      keys,
      signingAlgorithm: SIGNING,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
      ],
    },
    crypto,
  );
  return { certPem: pem(cert), keyPem: await exportPrivateKey(keys.privateKey) };
}

/**
 * A server certificate for the controller: serverAuth, with the names clients dial as SANs.
 * grpc-js checks the SAN against the target's host, so dialing `127.0.0.1:port` needs
 * `ips: ['127.0.0.1']`. Its validity never outlasts the CA's.
 */
export async function issueServerCert(ca: CertBundle, names: { dns?: string[]; ips?: string[] }, days = DEFAULT_LEAF_DAYS): Promise<CertBundle> {
  const dns = [...new Set(names.dns ?? [])];
  const ips = [...new Set(names.ips ?? [])];
  for (const d of dns) {
    if (!/^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$/.test(d) || d.length > 253) {
      throw new BulwarkError('INVALID_ARGUMENT', `"${d}" is not a DNS name for the server certificate`);
    }
  }
  for (const ip of ips) {
    if (isIP(ip) === 0) throw new BulwarkError('INVALID_ARGUMENT', `"${ip}" is not an IP address for the server certificate`);
  }
  const first = dns[0] ?? ips[0];
  if (first === undefined) throw new BulwarkError('INVALID_ARGUMENT', 'a server certificate needs at least one DNS name or IP address');
  const keys = await newKeyPair();
  const cert = await signLeaf(ca, {
    subject: [{ O: ['Bulwark'] }, { CN: [shortCN(first, 'bulwark-controller')] }],
    publicKey: keys.publicKey,
    days,
    extendedKeyUsage: x509.ExtendedKeyUsage.serverAuth,
    san: [...dns.map((value) => ({ type: 'dns' as const, value })), ...ips.map((value) => ({ type: 'ip' as const, value }))],
  });
  return { certPem: cert, keyPem: await exportPrivateKey(keys.privateKey) };
}

/**
 * The agent's (or admin's) side of enrollment: a fresh P-256 key and a CSR signed with it. The
 * CSR's subject is informative only (signCsr sets its own); a name longer than the 64 characters
 * X.509 allows is cut.
 */
export async function createKeyAndCsr(commonName: string): Promise<{ keyPem: string; csrPem: string }> {
  const keys = await newKeyPair();
  const csr = await x509.Pkcs10CertificateRequestGenerator.create(
    { name: [{ CN: [shortCN(commonName, 'bulwark')] }], keys, signingAlgorithm: SIGNING },
    crypto,
  );
  return { keyPem: await exportPrivateKey(keys.privateKey), csrPem: withNewline(csr.toString('pem')) };
}

/**
 * Sign a CSR as a client certificate for `subject`. The CSR must carry a valid self-signature
 * (proof that its sender holds the key); its requested subject and extensions are ignored. The
 * certificate gets CN `<id>` (hosts) or `admin:<id>` (admins), OU `<role>`, the SAN URI
 * `bulwark:<role>:<id>` that `peerIdentity` reads, clientAuth only, and a random serial.
 * Throws INVALID_ARGUMENT for a malformed CSR, a bad signature, an unsupported key or a bad id.
 */
export async function signCsr(ca: CertBundle, csrPem: string, subject: PeerIdentity, days = DEFAULT_LEAF_DAYS): Promise<string> {
  if (subject.role !== 'host' && subject.role !== 'admin') throw new BulwarkError('INVALID_ARGUMENT', `unknown certificate role "${String(subject.role)}": use host or admin`);
  if (!ID_PATTERN.test(subject.id)) {
    throw new BulwarkError('INVALID_ARGUMENT', `"${subject.id}" cannot name a certificate holder: use 1–128 letters, digits, ".", "_", "@" or "-", starting with a letter or digit`);
  }
  if (typeof csrPem !== 'string' || csrPem.length > MAX_CSR_CHARS || !csrPem.includes('-----BEGIN CERTIFICATE REQUEST-----')) {
    throw new BulwarkError('INVALID_ARGUMENT', 'the certificate request is not a PEM "CERTIFICATE REQUEST": send the csrPem that createKeyAndCsr made');
  }
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(csrPem);
  } catch (err) {
    throw new BulwarkError('INVALID_ARGUMENT', 'the certificate request cannot be parsed: send the csrPem that createKeyAndCsr made', { cause: err });
  }
  let valid = false;
  try {
    valid = await csr.verify(crypto);
  } catch (err) {
    throw new BulwarkError('INVALID_ARGUMENT', 'the certificate request\'s signature cannot be checked (unsupported algorithm or damaged request)', { cause: err });
  }
  if (!valid) throw new BulwarkError('INVALID_ARGUMENT', 'the certificate request\'s signature does not verify: it was damaged or not signed by its own key');
  const spki = Buffer.from(csr.publicKey.rawData);
  checkLeafKey(createPublicKey({ key: spki, format: 'der', type: 'spki' }));
  return signLeaf(ca, {
    subject: [{ O: ['Bulwark'] }, { OU: [subject.role] }, { CN: [subject.role === 'admin' ? `admin:${subject.id}` : subject.id] }],
    publicKey: spki,
    days,
    extendedKeyUsage: x509.ExtendedKeyUsage.clientAuth,
    san: [{ type: 'url', value: `bulwark:${subject.role}:${subject.id}` }],
  });
}

/** SHA-256 of the certificate's DER (the first one in `certPem`), lowercase hex without colons. */
export function fingerprint(certPem: string): string {
  return sha256Hex(parseCert(certPem).raw);
}

/**
 * The caller's identity from its certificate: the one SAN URI `bulwark:host:<id>` or
 * `bulwark:admin:<id>`; undefined when there is none, more than one, or no certificate.
 *
 * Accepts what grpc-js 1.14 gives a server handler, `call.getAuthContext().sslPeerCertificate`
 * (a tls.PeerCertificate; present only when the TLS layer verified the chain against the CA the
 * server trusts), a node:crypto X509Certificate, or a PEM. It does NOT check signatures or dates:
 * only pass a certificate that TLS verified, or check it first.
 */
export function peerIdentity(cert: { subjectaltname?: string | undefined; raw?: Buffer | undefined } | X509Certificate | string | null | undefined): PeerIdentity | undefined {
  if (cert === null || cert === undefined) return undefined;
  let san: string | undefined;
  if (typeof cert === 'string') {
    try {
      san = parseCert(cert).subjectAltName;
    } catch {
      return undefined;
    }
  } else if (cert instanceof X509Certificate) {
    san = cert.subjectAltName;
  } else if (typeof cert.subjectaltname === 'string') {
    san = cert.subjectaltname;
  } else if (Buffer.isBuffer(cert.raw) && cert.raw.length > 0) {
    try {
      san = new X509Certificate(cert.raw).subjectAltName;
    } catch {
      return undefined;
    }
  }
  if (!san) return undefined;
  const found: PeerIdentity[] = [];
  for (const entry of splitAltNames(san)) {
    if (!entry.startsWith('URI:')) continue;
    const m = URI_PATTERN.exec(entry.slice(4));
    if (m) found.push({ role: m[1] as PeerRole, id: m[2]! });
  }
  return found.length === 1 ? found[0] : undefined;
}

// ---------------------------------------------------------------------------------------------
// gRPC credentials

/**
 * Server credentials for the controller's port. The chain sent is `server cert + CA cert`, so
 * that an agent holding only the CA's fingerprint can find and pin the CA (`fetchPinnedCa`).
 *
 * - `'require'`: a client certificate signed by the CA is needed for the TLS handshake itself;
 * - `'optional'`: one is asked for but not needed, so one port serves both Enroll (an agent with
 *   no certificate yet) and mTLS calls. A handler then sees `sslPeerCertificate` only for a
 *   certificate that verified against the CA; an absent or foreign one leaves it undefined, and
 *   the handler must refuse every call but Enroll without it (`peerIdentity` gives undefined).
 *   grpc-js's `createSsl` cannot express this (its `checkClientCertificate: false` does not even
 *   ask for a certificate, so the auth context stays empty); its experimental certificate-provider
 *   credentials can, fed here by a provider that never changes;
 * - `'none'`: no client certificate is asked for.
 */
export function serverCredentials(ca: Pick<CertBundle, 'certPem'>, server: CertBundle, clientCerts: 'require' | 'optional' | 'none'): grpc.ServerCredentials {
  const caPem = Buffer.from(withNewline(ca.certPem));
  const chain = Buffer.concat([Buffer.from(withNewline(server.certPem)), caPem]);
  const key = Buffer.from(server.keyPem);
  if (clientCerts !== 'optional') return grpc.ServerCredentials.createSsl(caPem, [{ cert_chain: chain, private_key: key }], clientCerts === 'require');
  // One provider serves both the CA and the identity, so the call does not depend on the order of
  // the first two parameters (their names in grpc-js's typings and implementation disagree). It
  // answers on a microtask: grpc-js subscribes to the provider before it registers the server as a
  // watcher, so an answer given synchronously reaches nobody and the port drops every connection.
  const provider: grpc.experimental.CertificateProvider = {
    addCaCertificateListener: (listener) => queueMicrotask(() => listener({ caCertificate: caPem })),
    removeCaCertificateListener: () => undefined,
    addIdentityCertificateListener: (listener) => queueMicrotask(() => listener({ certificate: chain, privateKey: key })),
    removeIdentityCertificateListener: () => undefined,
  };
  return grpc.experimental.createCertificateProviderServerCredentials(provider, provider, false);
}

/**
 * The agent's first connection, before it trusts anything but the token: open TLS to `address`
 * without verifying, find among the certificates the server presents the one whose SHA-256 is
 * `caFingerprint`, check that it is a CA, that it issued the server's certificate and that the
 * certificate names the host dialed, and return it as PEM, to be the only root of
 * `grpc.credentials.createSsl(caPem, …)` from then on.
 *
 * The server must send its chain, `server cert + CA cert` (see `serverCredentials`); a server
 * that sends only its own certificate cannot be pinned this way. Throws ACCESS_DENIED when no
 * presented certificate has the fingerprint (a wrong token, another controller, or someone in
 * the middle), TRANSIENT when the server cannot be reached, ABORTED through `signal`.
 */
export async function fetchPinnedCa(address: string, caFingerprint: string, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<string> {
  const { host, port } = parseAddress(address);
  const pin = normalizeFingerprint(caFingerprint);
  // 10 s: enough for a TLS handshake across the world, short enough for a person to wait on.
  const timeoutMs = options.timeoutMs ?? 10_000;
  const chain = await new Promise<X509Certificate[]>((resolve, reject) => {
    if (options.signal?.aborted) return reject(new BulwarkError('ABORTED', 'operation cancelled', { cause: options.signal.reason }));
    const socket = tls.connect({
      host,
      port,
      ...(isIP(host) === 0 ? { servername: host } : {}),
      rejectUnauthorized: false,
      ALPNProtocols: ['h2'],
    });
    const finish = (err: Error | undefined, certs?: X509Certificate[]) => {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      if (err) reject(err);
      else resolve(certs ?? []);
    };
    const onAbort = () => finish(new BulwarkError('ABORTED', 'operation cancelled', { cause: options.signal?.reason }));
    const timer = setTimeout(() => finish(new BulwarkError('TRANSIENT', `no TLS answer from the controller at ${address} within ${timeoutMs} ms: check the address and that the controller runs`)), timeoutMs);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    socket.once('error', (err) => finish(new BulwarkError('TRANSIENT', `cannot reach the controller at ${address}: ${err.message}`, { cause: err })));
    socket.once('secureConnect', () => {
      try {
        finish(undefined, presentedChain(socket.getPeerCertificate(true)));
      } catch (err) {
        finish(err instanceof Error ? err : new Error(String(err)));
      }
    });
  });
  const leaf = chain[0];
  if (!leaf) throw new BulwarkError('ACCESS_DENIED', `the server at ${address} presented no certificate`);
  const ca = chain.find((c) => sha256Hex(c.raw) === pin);
  if (!ca) {
    const seen = chain.map((c) => sha256Hex(c.raw)).join(', ');
    throw new BulwarkError(
      'ACCESS_DENIED',
      `the server at ${address} did not present the CA certificate this token pins (${pin}); it presented ${seen}. ` +
        'The token is for another controller, is damaged, or someone is intercepting the connection: get a new token from the admin and check the address. ' +
        '(A controller must serve its certificate chain, server certificate + CA certificate.)',
    );
  }
  if (!ca.ca) throw new BulwarkError('ACCESS_DENIED', `the certificate pinned by the token (${pin}) is not a CA certificate: the token is wrong; get a new one`);
  if (leaf !== ca && !(leaf.checkIssued(ca) && leaf.verify(ca.publicKey))) {
    throw new BulwarkError('ACCESS_DENIED', `the server at ${address} presented the pinned CA but a certificate it did not issue: someone may be intercepting the connection`);
  }
  const mismatch = tls.checkServerIdentity(host, toPeerCert(leaf));
  if (mismatch) throw new BulwarkError('ACCESS_DENIED', `the controller's certificate does not name ${host}: ${mismatch.message}. Use the address in the token exactly`, { cause: mismatch });
  return withNewline(ca.toString());
}

// ---------------------------------------------------------------------------------------------
// Enrollment tokens

const TOKEN_PREFIX = 'bwk1_';
const TOKEN_HELP = 'copy the whole token that `bulwark token create` printed, or ask the admin for a new one';

/** A new one-time secret: 256 random bits, base64url. */
export function newTokenSecret(): string {
  return randomBytes(32).toString('base64url');
}

/** What the controller stores instead of a secret: its SHA-256, lowercase hex. */
export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** One copy-pasteable string: `bwk1_` + base64url(JSON). Throws INVALID_ARGUMENT for bad fields. */
export function encodeToken(token: EnrollmentToken): string {
  const t = checkToken(token, 'cannot make an enrollment token');
  return TOKEN_PREFIX + Buffer.from(JSON.stringify(t), 'utf8').toString('base64url');
}

/** Parse and check a token. Throws INVALID_ARGUMENT saying what is wrong and what to do. */
export function decodeToken(text: string): EnrollmentToken {
  if (typeof text !== 'string') throw new BulwarkError('INVALID_ARGUMENT', `an enrollment token is a string: ${TOKEN_HELP}`);
  const s = text.trim();
  if (!s.startsWith(TOKEN_PREFIX)) {
    throw new BulwarkError('INVALID_ARGUMENT', `this is not a Bulwark enrollment token (it should start with "${TOKEN_PREFIX}"): ${TOKEN_HELP}`);
  }
  const body = s.slice(TOKEN_PREFIX.length);
  if (body.length === 0 || body.length > 4096 || !/^[A-Za-z0-9_-]+$/.test(body)) {
    throw new BulwarkError('INVALID_ARGUMENT', `the enrollment token is damaged (unexpected characters or length): ${TOKEN_HELP}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(body, 'base64url').toString('utf8'));
  } catch (err) {
    throw new BulwarkError('INVALID_ARGUMENT', `the enrollment token is damaged or cut short: ${TOKEN_HELP}`, { cause: err });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new BulwarkError('INVALID_ARGUMENT', `the enrollment token is damaged: ${TOKEN_HELP}`);
  }
  return checkToken(parsed as Partial<Record<keyof EnrollmentToken, unknown>>, 'the enrollment token is damaged');
}

function checkToken(t: Partial<Record<keyof EnrollmentToken, unknown>>, what: string): EnrollmentToken {
  const { address, caFingerprint, secret } = t;
  if (typeof address !== 'string') throw new BulwarkError('INVALID_ARGUMENT', `${what}: it has no controller address; ${TOKEN_HELP}`);
  parseAddress(address, `${what}: `);
  if (typeof caFingerprint !== 'string' || !/^[0-9a-fA-F]{64}$/.test(caFingerprint.replace(/:/g, ''))) {
    throw new BulwarkError('INVALID_ARGUMENT', `${what}: its CA fingerprint is not a SHA-256 in hex; ${TOKEN_HELP}`);
  }
  if (typeof secret !== 'string' || !/^[A-Za-z0-9_-]{22,256}$/.test(secret)) {
    throw new BulwarkError('INVALID_ARGUMENT', `${what}: its secret is missing or too short (at least 128 bits, base64url); ${TOKEN_HELP}`);
  }
  return { address, caFingerprint: normalizeFingerprint(caFingerprint), secret };
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** `host:port`, `[v6]:port`; the host a DNS name or an IP. */
function parseAddress(address: string, prefix = ''): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(address);
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (!m || host === undefined || !(port >= 1 && port <= 65535) || (m[1] !== undefined && isIP(m[1]) !== 6)) {
    throw new BulwarkError('INVALID_ARGUMENT', `${prefix}"${address}" is not a controller address: write host:port, e.g. 10.0.0.5:7443 or controller.example.com:7443`);
  }
  return { host, port };
}

function normalizeFingerprint(fp: string): string {
  const hex = fp.replace(/:/g, '').toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new BulwarkError('INVALID_ARGUMENT', `"${fp}" is not a SHA-256 certificate fingerprint (64 hex digits)`);
  return hex;
}

function sha256Hex(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function parseCert(certPem: string): X509Certificate {
  try {
    return new X509Certificate(certPem);
  } catch (err) {
    throw new BulwarkError('INVALID_ARGUMENT', 'not a PEM certificate', { cause: err });
  }
}

function pem(cert: x509.X509Certificate): string {
  return withNewline(cert.toString('pem'));
}

function withNewline(s: string): string {
  return s.endsWith('\n') ? s : `${s}\n`;
}

/** X.509 caps a common name at 64 characters; an empty one gets `fallback`. */
function shortCN(name: string, fallback: string): string {
  const s = name.trim();
  return s === '' ? fallback : s.slice(0, 64);
}

/** A positive 127-bit serial whose first byte is never 0 (so its DER length is stable). */
function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x40;
  return b.toString('hex');
}

async function newKeyPair(): Promise<CryptoKeyPair> {
  return (await crypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify'])) as CryptoKeyPair;
}

async function exportPrivateKey(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await crypto.subtle.exportKey('pkcs8', key));
  return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }).toString();
}

/** Keys a client certificate may certify: ECDSA P-256/P-384, or RSA of at least 2048 bits. */
function checkLeafKey(key: KeyObject): void {
  const d = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === 'ec' && (d?.namedCurve === 'prime256v1' || d?.namedCurve === 'secp384r1')) return;
  if (key.asymmetricKeyType === 'rsa' && (d?.modulusLength ?? 0) >= 2048) return;
  throw new BulwarkError('INVALID_ARGUMENT', `the certificate request's key (${key.asymmetricKeyType ?? 'unknown'}) is not accepted: use ECDSA P-256 (createKeyAndCsr does)`);
}

interface LoadedCa {
  cert: x509.X509Certificate;
  notAfter: Date;
  signingKey: CryptoKey;
}

async function loadCa(ca: CertBundle): Promise<LoadedCa> {
  const node = parseCert(ca.certPem);
  if (!node.ca) throw new BulwarkError('INVALID_ARGUMENT', 'the CA certificate is not a CA (basicConstraints CA:FALSE)');
  let key: KeyObject;
  try {
    key = createPrivateKey(ca.keyPem);
  } catch (err) {
    throw new BulwarkError('INVALID_ARGUMENT', 'the CA private key is not a PEM private key', { cause: err });
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new BulwarkError('INVALID_ARGUMENT', 'the CA private key is not ECDSA P-256');
  }
  const spki = (k: KeyObject) => k.export({ type: 'spki', format: 'der' });
  if (!spki(createPublicKey(key)).equals(spki(node.publicKey))) {
    throw new BulwarkError('INVALID_ARGUMENT', 'the CA private key does not belong to the CA certificate');
  }
  const signingKey = await crypto.subtle.importKey('pkcs8', key.export({ type: 'pkcs8', format: 'der' }), EC_KEY, false, ['sign']);
  return { cert: new x509.X509Certificate(node.raw), notAfter: new Date(node.validTo), signingKey };
}

async function signLeaf(
  ca: CertBundle,
  leaf: { subject: x509.JsonName; publicKey: CryptoKey | Buffer; days: number; extendedKeyUsage: x509.ExtendedKeyUsage; san: x509.JsonGeneralNames },
): Promise<string> {
  if (!Number.isInteger(leaf.days) || leaf.days < 1 || leaf.days > MAX_LEAF_DAYS) {
    throw new BulwarkError('INVALID_ARGUMENT', `a certificate lifetime of ${leaf.days} days is out of range: use 1 to ${MAX_LEAF_DAYS}`);
  }
  const issuer = await loadCa(ca);
  const notBefore = new Date(Date.now() - BACKDATE_MS);
  // a certificate outliving its CA would be refused after the CA expires anyway; say so in its dates
  const notAfter = new Date(Math.min(notBefore.getTime() + leaf.days * DAY_MS, issuer.notAfter.getTime()));
  const publicKey = Buffer.isBuffer(leaf.publicKey) ? new x509.PublicKey(leaf.publicKey) : leaf.publicKey;
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: randomSerial(),
      subject: leaf.subject,
      issuer: issuer.cert.subjectName,
      notBefore,
      notAfter,
      publicKey,
      signingKey: issuer.signingKey,
      signingAlgorithm: SIGNING,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([leaf.extendedKeyUsage], false),
        new x509.SubjectAlternativeNameExtension(leaf.san, false),
        await x509.SubjectKeyIdentifierExtension.create(publicKey, false, crypto),
        await x509.AuthorityKeyIdentifierExtension.create(issuer.cert, false, crypto),
      ],
    },
    crypto,
  );
  return pem(cert);
}

/**
 * The server's chain as Node links it, leaf first: each next certificate is one the server sent
 * that issued the previous one (Node drops sent certificates that issued nothing in the chain, and
 * stops at a self-signed one).
 */
function presentedChain(peer: tls.DetailedPeerCertificate): X509Certificate[] {
  const out: X509Certificate[] = [];
  const seen = new Set<string>();
  for (let c: tls.DetailedPeerCertificate | undefined = peer; c?.raw && c.raw.length > 0; c = c.issuerCertificate) {
    const fp = sha256Hex(c.raw);
    if (seen.has(fp)) break;
    seen.add(fp);
    out.push(new X509Certificate(c.raw));
  }
  return out;
}

/** Enough of a tls.PeerCertificate for tls.checkServerIdentity. */
function toPeerCert(cert: X509Certificate): tls.PeerCertificate {
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1];
  return { subject: cn === undefined ? {} : { CN: cn }, subjectaltname: cert.subjectAltName ?? '' } as unknown as tls.PeerCertificate;
}

/** Split Node's `subjectaltname` ("DNS:a, URI:b, …"; a value with special characters is JSON-quoted). */
function splitAltNames(san: string): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < san.length) {
    const colon = san.indexOf(':', i);
    if (colon < 0) break;
    const kind = san.slice(i, colon);
    let j = colon + 1;
    let value: string;
    if (san[j] === '"') {
      let k = j + 1;
      while (k < san.length && san[k] !== '"') k += san[k] === '\\' ? 2 : 1;
      try {
        value = JSON.parse(san.slice(j, k + 1)) as string;
      } catch {
        return out; // unparseable: trust nothing after it
      }
      j = k + 1;
    } else {
      const comma = san.indexOf(', ', j);
      value = san.slice(j, comma < 0 ? san.length : comma);
      j = comma < 0 ? san.length : comma;
    }
    out.push(`${kind}:${value}`);
    i = san.startsWith(', ', j) ? j + 2 : san.length;
  }
  return out;
}
