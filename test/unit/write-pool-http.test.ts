/**
 * The restore workers' own HTTP/1.1 client for ranges (agent/restore/write-pool.ts), over plain TCP and
 * over TLS, against a raw server whose answers are scripted byte by byte: the cases Node's http client
 * used to handle for us. Each fetch asks for a range of a "pack" of three sealed blobs and has the worker
 * verify them (WritePool.fetchBlobs), so a wrong byte anywhere shows as an unverified blob, and a
 * refused fetch as `undefined` (the restore then reads that range through the store).
 */
import { randomBytes } from 'node:crypto';
import net, { type AddressInfo, type Socket } from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blobId } from '../../common/repo/crypto.js';
import { deriveHostKeys, newMasterKey } from '../../common/repo/keys.js';
import { sealBlob } from '../../common/repo/pack.js';
import { WritePool } from '../../agent/restore/write-pool.js';
import { createCA, issueServerCert } from '../../common/pki.js';

const keys = deriveHostKeys(newMasterKey(), 'h');
const plains = [randomBytes(3000), randomBytes(200_000), randomBytes(70_000)];
const blobs: Array<{ id: string; at: number; length: number; rawLength: number }> = [];
const parts: Buffer[] = [];
let at = 0;
for (const p of plains) {
  const id = blobId(keys.id, p);
  const sealed = sealBlob(keys, id, p);
  blobs.push({ id: id.toString('hex'), at, length: sealed.length, rawLength: p.length });
  parts.push(sealed);
  at += sealed.length;
}
const pack = Buffer.concat(parts);

type Script = (sock: Socket, range: { start: number; end: number }, n: number) => void;
let script: Script = () => undefined;
let requests = 0;
let connections = 0;
const sockets = new Set<Socket>();

/** Reads request heads and answers each with the current script. */
function onConnection(sock: Socket): void {
  connections++;
  sockets.add(sock);
  sock.on('close', () => sockets.delete(sock));
  let buf = '';
  sock.on('data', (d) => {
    buf += d.toString('latin1');
    for (let end = buf.indexOf('\r\n\r\n'); end >= 0; end = buf.indexOf('\r\n\r\n')) {
      const head = buf.slice(0, end);
      buf = buf.slice(end + 4);
      const m = /\r\nRange: bytes=(\d+)-(\d+)/i.exec(head)!;
      script(sock, { start: Number(m[1]), end: Number(m[2]) }, ++requests);
    }
  });
  sock.on('error', () => undefined);
}

/** The right answer: a 206 with the range, head and body in one write. */
const answer: Script = (s, r) => {
  const x = ranged(r);
  s.write(Buffer.concat([x.head, x.body]));
};

function head(status: string, headers: Record<string, string | number>): Buffer {
  return Buffer.from(`HTTP/1.1 ${status}\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`, 'latin1');
}
function ranged(r: { start: number; end: number }, extra: Record<string, string | number> = {}): { head: Buffer; body: Buffer } {
  const body = pack.subarray(r.start, r.end + 1);
  return { head: head('206 Partial Content', { 'Content-Length': body.length, 'Content-Range': `bytes ${r.start}-${r.end}/${pack.length}`, ...extra }), body };
}

const expectGenuine = (got: Array<Uint8Array | undefined> | undefined) => {
  expect(got).toBeDefined();
  got!.forEach((p, i) => expect(Buffer.from(p!).equals(plains[i]!)).toBe(true));
};

for (const scheme of ['http', 'https'] as const) describe(`restore workers: ranged GETs over ${scheme}`, () => {
  let pool: WritePool;
  let url: string;
  let server: net.Server;
  beforeAll(async () => {
    let tlsCa: string | undefined;
    if (scheme === 'https') {
      const ca = await createCA('write-pool test CA');
      const cert = await issueServerCert(ca, { ips: ['127.0.0.1'] });
      server = tls.createServer({ key: cert.keyPem, cert: cert.certPem }, onConnection);
      tlsCa = ca.certPem;
    } else server = net.createServer(onConnection);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `${scheme}://127.0.0.1:${(server.address() as AddressInfo).port}/bucket/pack?X-Amz-Signature=abc`;
    pool = new WritePool(keys, 1, tlsCa ? { tlsCa } : {});
  });
  afterAll(async () => {
    await pool.close();
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
  });
  const read = (timeoutMs = 5_000) => ({ url, expiresAt: Date.now() + 600_000, timeoutMs });
  /** Fetch the whole pack as one range; the blobs' plaintexts, verified, or undefined. */
  const fetchAll = (timeoutMs?: number) => pool.fetchBlobs(read(timeoutMs), 0, pack.length, blobs);

  it('head and body in one write, then the same connection again (keep-alive)', async () => {
    script = answer;
    const before = connections;
    expectGenuine(await fetchAll());
    expectGenuine(await fetchAll());
    expect(connections - before).toBe(1);
  });

  it('the response one byte at a time for its head, the body in odd pieces', async () => {
    script = (s, r) => {
      const x = ranged(r);
      void (async () => {
        for (const b of x.head) {
          s.write(Buffer.of(b));
          await new Promise((res) => setImmediate(res));
        }
        for (let o = 0; o < x.body.length; o += 7777) {
          s.write(x.body.subarray(o, o + 7777));
          if (o % 5 === 0) await new Promise((res) => setImmediate(res));
        }
      })();
    };
    expectGenuine(await fetchAll());
  });

  it('a part of the range only: the blobs inside it, from offset 0 of what came', async () => {
    script = (s, r) => {
      const x = ranged(r);
      s.write(x.head);
      s.write(x.body);
    };
    const b = blobs[1]!;
    const got = await pool.fetchBlobs(read(), b.at, b.length, [{ ...b, at: 0 }]);
    expect(Buffer.from(got![0]!).equals(plains[1]!)).toBe(true);
  });

  it('Connection: close is honoured: the next fetch opens a new connection', async () => {
    script = (s, r) => {
      const x = ranged(r, { Connection: 'close' });
      s.end(Buffer.concat([x.head, x.body]));
    };
    expectGenuine(await fetchAll()); // may come over a connection kept from the test before; closed after it
    const before = connections;
    expectGenuine(await fetchAll());
    expectGenuine(await fetchAll());
    expect(connections - before).toBe(2);
  });

  it('a kept-alive connection the server closed is replaced once, without failing the fetch', async () => {
    script = answer;
    expectGenuine(await fetchAll());
    // the next request on the kept-alive connection meets a server that closes it (a keep-alive
    // timeout crossing the request): no byte of an answer, so the worker asks again on a new connection
    const n = requests;
    const c = connections;
    let first = true;
    script = (s, r) => {
      if (first) {
        first = false;
        s.destroy(); // the stale connection: closed with no answer
        return;
      }
      answer(s, r, 0);
    };
    const resent = pool.resent;
    expectGenuine(await fetchAll());
    expect(requests - n).toBe(2);
    expect(connections - c).toBe(1);
    expect(pool.resent - resent).toBe(1);
  });

  const refused: Array<[string, Script]> = [
    ['a status other than 206 (403)', (s) => s.write(Buffer.concat([head('403 Forbidden', { 'Content-Length': 6 }), Buffer.from('denied')]))],
    ['200 with the whole object (Range ignored)', (s) => s.write(Buffer.concat([head('200 OK', { 'Content-Length': pack.length }), pack]))],
    ['a chunked body', (s) => s.write(Buffer.concat([head('206 Partial Content', { 'Transfer-Encoding': 'chunked' }), Buffer.from('10\r\n0123456789abcdef\r\n0\r\n\r\n')]))],
    ['no Content-Length (a body ended by closing)', (s, r) => s.end(Buffer.concat([head('206 Partial Content', {}), ranged(r).body]))],
    ['a Content-Length shorter than the range', (s, r) => { const x = ranged(r); s.write(Buffer.concat([head('206 Partial Content', { 'Content-Length': x.body.length - 1 }), x.body.subarray(1)])); }],
    ['the body cut short by a closed connection', (s, r) => { const x = ranged(r); s.end(Buffer.concat([x.head, x.body.subarray(0, 1000)])); }],
    ['bytes changed in transit', (s, r) => { const x = ranged(r); const body = Buffer.from(x.body); body[body.length >> 1]! ^= 1; s.write(Buffer.concat([x.head, body])); }],
    ['not HTTP at all', (s) => s.write('SSH-2.0-OpenSSH_9.2\r\n\r\n')],
  ];
  for (const [what, bad] of refused) {
    it(`refused: ${what}`, async () => {
      script = bad;
      const got = await fetchAll();
      if (what === 'bytes changed in transit') {
        // the fetch itself succeeded; the blob holding the flipped byte does not verify, the others do
        expect(got).toBeDefined();
        expect(got!.filter((p) => p === undefined)).toHaveLength(1);
      } else expect(got).toBeUndefined();
      // and the worker is still good for the next fetch
      script = answer;
      expectGenuine(await fetchAll());
    });
  }

  if (scheme === 'https') {
    it('a server certificate the worker does not trust: refused, nothing fetched', async () => {
      script = answer;
      const n = requests;
      const untrusting = new WritePool(keys, 1);
      try {
        expect(await untrusting.fetchBlobs(read(), 0, pack.length, blobs)).toBeUndefined();
      } finally {
        await untrusting.close();
      }
      expect(requests).toBe(n);
    });
  }

  it('a server that stops sending times out', async () => {
    script = (s, r) => {
      const x = ranged(r);
      s.write(Buffer.concat([x.head, x.body.subarray(0, 5000)])); // and then nothing
    };
    const t0 = Date.now();
    expect(await fetchAll(300)).toBeUndefined();
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
  });
});
