/**
 * A BlobStore served over plain HTTP for the restore's worker fetches in unit tests: a wrapper
 * that hands out `directRead` URLs of a local server, which answers ranged GETs from the wrapped
 * store (206 with exactly the range, like S3). The server can be told to misbehave: answer with
 * a status instead, ignore the Range header (200, whole object), or cut the body short.
 *
 * Not S3 and not a mock of it: the same worker code runs against RGW's presigned URLs in the
 * integration suite; this gives the unit suite (MemoryStore) that path too.
 */
import http, { type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { BlobStore, DirectRead } from '../../common/storage/blob-store.js';

export type HttpFault = { status: number } | { delayMs: number } | 'ignore-range' | 'cut-short' | undefined;

export interface HttpStore {
  /** The wrapped store plus `directRead`. */
  store: BlobStore;
  /** Ranged GETs the server answered (faulted ones included). */
  readonly gets: number;
  /** Decides, per request (key), how the server misbehaves; undefined: it answers properly. */
  fault: (key: string) => HttpFault;
  close(): Promise<void>;
}

export async function serveOverHttp(inner: BlobStore): Promise<HttpStore> {
  let gets = 0;
  const state: { fault: (key: string) => HttpFault } = { fault: () => undefined };
  const server: Server = http.createServer((req, res) => {
    void (async () => {
      gets++;
      const key = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname.slice(1));
      const fault = state.fault(key);
      if (fault && typeof fault === 'object' && 'delayMs' in fault) await new Promise((r) => setTimeout(r, fault.delayMs));
      else if (fault && typeof fault === 'object') {
        res.writeHead(fault.status).end('refused');
        return;
      }
      let body: Uint8Array;
      try {
        body = await inner.get(key);
      } catch {
        res.writeHead(404).end('not found');
        return;
      }
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      if (!m || fault === 'ignore-range') {
        res.writeHead(200, { 'content-length': body.length }).end(body);
        return;
      }
      const start = Number(m[1]);
      const end = Math.min(Number(m[2]), body.length - 1);
      const part = body.subarray(start, end + 1);
      res.writeHead(206, { 'content-length': part.length, 'content-range': `bytes ${start}-${end}/${body.length}` });
      if (fault === 'cut-short') {
        res.write(part.subarray(0, part.length >> 1));
        res.socket?.destroy();
        return;
      }
      res.end(part);
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const directRead = async (key: string): Promise<DirectRead> => ({
    url: `http://127.0.0.1:${port}/${encodeURIComponent(key)}`,
    expiresAt: Date.now() + 600_000,
    timeoutMs: 5_000,
  });
  // the wrapped store's methods, bound, plus directRead
  const store = new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === 'directRead') return directRead;
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  }) as BlobStore;
  return {
    store,
    get gets() {
      return gets;
    },
    get fault() {
      return state.fault;
    },
    set fault(f) {
      state.fault = f;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
