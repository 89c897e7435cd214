/**
 * doctor's small-reads verdict: a GET of a small object far slower than a HEAD of it is the
 * server's Nagle stall (RGW's beast without tcp_nodelay), a distance to the server is not.
 */
import { describe, expect, it } from 'vitest';
import { judgeSmallReads } from '../../common/storage/doctor.js';

describe('judgeSmallReads', () => {
  it('is ok on a near server without the stall (RGW with tcp_nodelay: GET ~3 ms)', () => {
    const r = judgeSmallReads([3.2, 2.9, 3.3, 6.5, 3.1], [2.1, 2.4, 2.0, 2.2, 2.3]);
    expect(r.status).toBe('ok');
    expect(r.detail).toMatch(/GET of a 64-byte object 3\.2 ms, HEAD 2\.2 ms \(medians of 5\)/);
  });

  it('is ok on a far server: the distance shows in HEADs as much as in GETs', () => {
    expect(judgeSmallReads([92, 95, 90, 130, 91], [88, 90, 87, 89, 120]).status).toBe('ok');
  });

  it('warns when GETs wait for a delayed ACK (RGW 16.2 beast defaults: GET 48 ms, HEAD 5-8 ms)', () => {
    const r = judgeSmallReads([54, 47.7, 48.1, 51.7, 48.1], [8.3, 6.3, 6.4, 5.4, 5.4]);
    expect(r.status).toBe('warn');
    expect(r.fix).toMatch(/tcp_nodelay=1/);
  });

  it('takes medians, so one slow read does not decide', () => {
    expect(judgeSmallReads([3, 3, 300, 3], [2, 2, 2, 2]).status).toBe('ok');
    expect(judgeSmallReads([48, 48, 3, 48], [5, 5, 5, 5]).status).toBe('warn');
  });
});
