/**
 * A fault-injecting HTTP proxy for S3 tests: a node:http server on 127.0.0.1 in front of a real S3
 * endpoint (RGW) that forwards every request (method, path and query, headers, body streamed) and,
 * by a seeded-random or scripted policy, answers some of them badly instead:
 *
 *   error500   500 InternalError with an S3 XML error body
 *   slowDown   503 SlowDown with an S3 XML error body
 *   reset      the connection is reset (RST): before the request reaches the server, after the
 *              server handled it but before any response byte, or in the middle of the body
 *   stall      the response (or, phase 'mid', the second half of its body) is held for `stallMs`
 *              (longer than the client's request timeout), then sent if the client is still there
 *   truncate   the response is sent with its correct Content-Length but the connection is closed
 *              (FIN, not RST) after half of the body
 *
 * SigV4 signs the Host header, and the client signs for the proxy's host:port. The Host header is
 * forwarded unchanged: RGW checks the signature against the Host it receives and does not care
 * that it names another port.
 *
 *   const proxy = await startFaultProxy({ target: cfg.endpoint, seed: 7, rules: [{ fault: 'slowDown', rate: 0.2 }] });
 *   openS3Store({ endpoint: proxy.url, … });
 *   proxy.stats.faults.byType.slowDown; proxy.setRules([]); await proxy.close();
 *
 * Rules are tried in order for each request; the first one that matches the request and fires
 * decides its fault. A request no rule fires for is forwarded untouched.
 */
import { rng as prng } from './fs-tree.js';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type FaultType = 'error500' | 'slowDown' | 'reset' | 'stall' | 'truncate';
export const FAULT_TYPES: readonly FaultType[] = ['error500', 'slowDown', 'reset', 'stall', 'truncate'];

/**
 * What a request is, from its method, path and query (path-style addressing: /bucket/key…).
 *   PUT        any PUT (object, retention)           GET        an object GET without Range
 *   GET_RANGE  an object GET with a Range header     HEAD       HEAD of an object or the bucket
 *   LIST       ListObjectsV2 / ListObjectVersions    BUCKET     other bucket-level GETs (versioning, object-lock)
 *   DELETE     any DELETE                            OTHER      anything else (POST, …)
 */
export type RequestKind = 'PUT' | 'GET' | 'GET_RANGE' | 'HEAD' | 'LIST' | 'BUCKET' | 'DELETE' | 'OTHER';
export const REQUEST_KINDS: readonly RequestKind[] = ['PUT', 'GET', 'GET_RANGE', 'HEAD', 'LIST', 'BUCKET', 'DELETE', 'OTHER'];

/**
 * When the fault strikes:
 *   before  the request never reaches the server (a 500/503 answered by the proxy, a reset while
 *           the client may still be sending, a stall before forwarding);
 *   after   the server handled the request (a PUT is stored!) but the client gets the fault
 *           instead of the server's answer;
 *   mid     reset and stall: the status line, headers and half the body are sent, then the
 *           connection is reset, or goes silent (a body stall). Without a body: as 'after'.
 */
export type FaultPhase = 'before' | 'after' | 'mid';

export interface RequestInfo {
  /** 1-based arrival number at the proxy. */
  seq: number;
  method: string;
  /** Path and query as received. */
  url: string;
  kind: RequestKind;
  range?: string;
}

export interface FaultRule {
  /** The fault, or several: one is picked each time the rule fires (see `order`). */
  fault: FaultType | readonly FaultType[];
  /** How one of several faults is picked: at random, seeded (default), or each in turn. */
  order?: 'random' | 'cycle';
  /** Only these kinds of request (default: all). */
  kinds?: readonly RequestKind[];
  /** A further filter. */
  match?: (r: RequestInfo) => boolean;
  /** Probability that a matching request is faulted (default 1). */
  rate?: number;
  /** Only the first N requests this rule matches are candidates. */
  firstN?: number;
  /** At most this many faults from this rule. */
  max?: number;
  /** When the fault strikes (default 'before'; a list: picked at random). Ignored by truncate. */
  phase?: FaultPhase | readonly FaultPhase[];
  /** stall: how long the response is held (default 60 s; the hold ends early if the client leaves). */
  stallMs?: number;
}

export interface FaultEvent {
  seq: number;
  kind: RequestKind;
  method: string;
  url: string;
  fault: FaultType;
  phase: FaultPhase;
}

export interface ProxyStats {
  requests: { total: number; byKind: Record<RequestKind, number> };
  faults: { total: number; byType: Record<FaultType, number>; byKind: Record<RequestKind, Record<FaultType, number>> };
  /** Every fault injected, in order. */
  events: FaultEvent[];
}

export interface FaultProxyOptions {
  /** The real endpoint, e.g. http://127.0.0.1:7480. */
  target: string;
  /** Seed of the random choices (rates, fault and phase picks). */
  seed?: number;
  rules?: readonly FaultRule[];
}

export interface FaultProxy {
  /** http://127.0.0.1:<port>, the endpoint to give the client. */
  readonly url: string;
  readonly stats: ProxyStats;
  /** Replace the rules (their firstN/max counters start again). */
  setRules(rules: readonly FaultRule[]): void;
  /** Zero the counters and the event log. */
  resetStats(): void;
  /** A one-line summary of the stats, for messages. */
  summary(): string;
  /** Stop listening, cut every open connection, cancel stalls. */
  close(): Promise<void>;
}

function zeroStats(): ProxyStats {
  const byType = () => Object.fromEntries(FAULT_TYPES.map((f) => [f, 0])) as Record<FaultType, number>;
  return {
    requests: { total: 0, byKind: Object.fromEntries(REQUEST_KINDS.map((k) => [k, 0])) as Record<RequestKind, number> },
    faults: { total: 0, byType: byType(), byKind: Object.fromEntries(REQUEST_KINDS.map((k) => [k, byType()])) as Record<RequestKind, Record<FaultType, number>> },
    events: [],
  };
}

export function classify(method: string, url: string, headers: http.IncomingHttpHeaders): RequestKind {
  const u = new URL(url, 'http://x');
  const parts = u.pathname.split('/').filter((p) => p !== '');
  const bucketLevel = parts.length <= 1;
  const q = u.searchParams;
  switch (method) {
    case 'PUT':
      return 'PUT';
    case 'DELETE':
      return 'DELETE';
    case 'HEAD':
      return 'HEAD';
    case 'GET':
      if (bucketLevel) return q.has('versions') || q.has('list-type') || [...q.keys()].every((k) => ['prefix', 'delimiter', 'marker', 'max-keys', 'encoding-type'].includes(k)) ? 'LIST' : 'BUCKET';
      return headers.range ? 'GET_RANGE' : 'GET';
    default:
      return 'OTHER';
  }
}

// Hop-by-hop headers are the proxy's own business; `expect` too (the proxy's server answers
// 100-continue itself, and SigV4 never signs it).
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'expect']);

function forwardHeaders(h: http.IncomingHttpHeaders): http.OutgoingHttpHeaders {
  const out: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
  return out;
}

function s3ErrorXml(code: string, message: string, resource: string, requestId: string): string {
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  return `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${esc(message)}</Message><Resource>${esc(resource)}</Resource><RequestId>${requestId}</RequestId></Error>`;
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(typeof c === 'string' ? Buffer.from(c) : c);
  return Buffer.concat(chunks);
}

export async function startFaultProxy(o: FaultProxyOptions): Promise<FaultProxy> {
  const target = new URL(o.target);
  if (target.protocol !== 'http:') throw new Error(`fault proxy: only http targets, not ${o.target}`);
  const rand = prng(o.seed ?? 1);
  let rules: Array<{ rule: FaultRule; matched: number; fired: number; turn: number }> = [];
  const setRules = (rs: readonly FaultRule[]) => {
    rules = rs.map((rule) => ({ rule, matched: 0, fired: 0, turn: 0 }));
  };
  setRules(o.rules ?? []);
  let stats = zeroStats();
  let seq = 0;
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  const upstreamAgent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  let closed = false;

  const pick = <T>(x: T | readonly T[]): T => (Array.isArray(x) ? (x as readonly T[])[Math.floor(rand() * (x as readonly T[]).length)]! : (x as T));

  function decide(info: RequestInfo): { fault: FaultType; phase: FaultPhase; stallMs: number; undo: () => void } | undefined {
    for (const r of rules) {
      const { rule } = r;
      if (rule.kinds && !rule.kinds.includes(info.kind)) continue;
      if (rule.match && !rule.match(info)) continue;
      r.matched++;
      if (rule.firstN !== undefined && r.matched > rule.firstN) continue;
      if (rule.max !== undefined && r.fired >= rule.max) continue;
      if (rand() >= (rule.rate ?? 1)) continue;
      r.fired++;
      const faults: readonly FaultType[] = typeof rule.fault === 'string' ? [rule.fault] : rule.fault;
      const fault = rule.order === 'cycle' ? faults[r.turn++ % faults.length]! : pick(faults);
      let phase: FaultPhase = fault === 'truncate' ? 'mid' : pick(rule.phase ?? 'before');
      if (phase === 'mid' && fault !== 'reset' && fault !== 'stall') phase = 'after';
      return { fault, phase, stallMs: rule.stallMs ?? 60_000, undo: () => r.fired-- };
    }
    return undefined;
  }

  function record(info: RequestInfo, fault: FaultType, phase: FaultPhase): void {
    stats.faults.total++;
    stats.faults.byType[fault]++;
    stats.faults.byKind[info.kind][fault]++;
    stats.events.push({ seq: info.seq, kind: info.kind, method: info.method, url: info.url, fault, phase });
  }

  function later(ms: number, fn: () => void): NodeJS.Timeout {
    const t = setTimeout(() => {
      timers.delete(t);
      fn();
    }, ms);
    timers.add(t);
    return t;
  }

  /** Wait `ms`, or until the client leaves. */
  function hold(res: http.ServerResponse, ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const t = later(ms, resolve);
      res.once('close', () => {
        clearTimeout(t);
        timers.delete(t);
        resolve();
      });
    });
  }

  /** Forward the request; resolves with the upstream response (not yet read). */
  function forward(req: http.IncomingMessage, res: http.ServerResponse, body?: Buffer): Promise<http.IncomingMessage> {
    return new Promise((resolve, reject) => {
      const up = http.request({
        host: target.hostname,
        port: target.port || 80,
        method: req.method,
        path: req.url,
        headers: forwardHeaders(req.headers),
        agent: upstreamAgent,
      });
      up.on('response', resolve);
      up.on('error', reject);
      // the client went away (timeout, reset): drop the upstream request too
      res.once('close', () => {
        if (!res.writableFinished) up.destroy();
      });
      if (body) up.end(body);
      else req.pipe(up);
    });
  }

  function sendError(req: http.IncomingMessage, res: http.ServerResponse, fault: 'error500' | 'slowDown', info: RequestInfo): void {
    const [status, code, message] =
      fault === 'slowDown' ? [503, 'SlowDown', 'Please reduce your request rate.'] : [500, 'InternalError', 'We encountered an internal error. Please try again.'];
    const xml = Buffer.from(s3ErrorXml(code, message, new URL(req.url ?? '/', 'http://x').pathname, `fault-proxy-${info.seq}`));
    res.writeHead(status, { 'content-type': 'application/xml', 'content-length': xml.length, 'x-amz-request-id': `fault-proxy-${info.seq}` });
    res.end(req.method === 'HEAD' ? undefined : xml);
  }

  function passThrough(ures: http.IncomingMessage, res: http.ServerResponse): void {
    res.writeHead(ures.statusCode ?? 502, ures.statusMessage, forwardHeaders(ures.headers));
    ures.pipe(res);
    res.once('close', () => {
      if (!ures.complete) ures.destroy();
    });
  }

  function cut(socket: Socket): void {
    // an RST rather than a FIN, as a crashed gateway or a middlebox would send
    if (typeof socket.resetAndDestroy === 'function') socket.resetAndDestroy();
    else socket.destroy();
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    const kind = classify(method, url, req.headers);
    const info: RequestInfo = { seq: ++seq, method, url, kind, ...(req.headers.range ? { range: req.headers.range } : {}) };
    stats.requests.total++;
    stats.requests.byKind[kind]++;
    const d = decide(info);

    if (!d) return passThrough(await forward(req, res), res);

    if (d.phase === 'before') {
      if (d.fault === 'reset') {
        record(info, 'reset', 'before');
        return cut(req.socket);
      }
      const body = await readAll(req);
      if (d.fault === 'error500' || d.fault === 'slowDown') {
        record(info, d.fault, 'before');
        return sendError(req, res, d.fault, info);
      }
      if (d.fault === 'stall') {
        record(info, 'stall', 'before');
        await hold(res, d.stallMs);
        if (res.destroyed || req.socket.destroyed || closed) return;
        return passThrough(await forward(req, res, body), res);
      }
    }

    // 'after' and 'mid': the server handles the request; its answer is replaced or damaged
    const ures = await forward(req, res);
    const body = await readAll(ures);
    // the body is buffered: it goes out with its length, not chunked
    const { 'transfer-encoding': _te, 'content-length': _cl, ...rest } = forwardHeaders(ures.headers);
    const headers = method === 'HEAD' ? forwardHeaders(ures.headers) : { ...rest, 'content-length': body.length };
    const status = ures.statusCode ?? 502;
    const hasBody = method !== 'HEAD' && body.length >= 2;
    switch (d.fault) {
      case 'error500':
      case 'slowDown':
        record(info, d.fault, 'after');
        return sendError(req, res, d.fault, info);
      case 'stall':
        if (d.phase === 'mid' && hasBody) {
          // the status line, the headers and half the body, then silence
          record(info, 'stall', 'mid');
          res.writeHead(status, ures.statusMessage, headers);
          res.write(body.subarray(0, body.length >> 1));
          await hold(res, d.stallMs);
          if (res.destroyed || req.socket.destroyed || closed) return;
          return void res.end(body.subarray(body.length >> 1));
        }
        record(info, 'stall', 'after');
        await hold(res, d.stallMs);
        if (res.destroyed || req.socket.destroyed || closed) return;
        res.writeHead(status, ures.statusMessage, headers);
        return void res.end(method === 'HEAD' ? undefined : body);
      case 'reset':
        if (d.phase === 'mid' && hasBody) {
          record(info, 'reset', 'mid');
          res.writeHead(status, ures.statusMessage, headers);
          res.write(body.subarray(0, body.length >> 1), () => cut(req.socket));
          return;
        }
        record(info, 'reset', 'after');
        return cut(req.socket);
      case 'truncate':
        if (!hasBody || status < 200 || status >= 300) {
          // nothing to truncate: the request passes and the rule may fire again
          d.undo();
          res.writeHead(status, ures.statusMessage, headers);
          return void res.end(method === 'HEAD' ? undefined : body);
        }
        record(info, 'truncate', 'mid');
        res.writeHead(status, ures.statusMessage, headers);
        // a clean close (FIN) after half the body: the length header promised more
        res.write(body.subarray(0, body.length >> 1), () => req.socket.end());
        return;
    }
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch(() => {
      // the upstream failed or the client left: the client sees a cut connection
      if (!req.socket.destroyed) req.socket.destroy();
    });
  });
  server.keepAliveTimeout = 30_000;
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('clientError', (_err, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;

  return {
    url: `http://127.0.0.1:${port}`,
    get stats() {
      return stats;
    },
    setRules,
    resetStats() {
      stats = zeroStats();
    },
    summary() {
      const kinds = REQUEST_KINDS.filter((k) => stats.requests.byKind[k] > 0).map((k) => {
        const f = FAULT_TYPES.filter((t) => stats.faults.byKind[k][t] > 0).map((t) => `${t} ${stats.faults.byKind[k][t]}`);
        return `${k} ${stats.requests.byKind[k]}${f.length ? ` (${f.join(', ')})` : ''}`;
      });
      return `${stats.requests.total} requests, ${stats.faults.total} faults: ${kinds.join('; ')}`;
    },
    async close() {
      closed = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      const done = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      upstreamAgent.destroy();
      await done;
    },
  };
}
