/**
 * Output for people: tables, sizes, times, and the live progress line of `--wait`. Core code has
 * no UI; the CLI renders the progress records the pipelines report.
 */
export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function time(ms: number): string {
  return ms > 0 ? new Date(ms).toISOString().replace('.000Z', 'Z') : '-';
}

export function ago(ms: number, now = Date.now()): string {
  if (ms <= 0) return 'never';
  const s = Math.round((now - ms) / 1000);
  if (Math.abs(s) < 90) return s >= 0 ? `${s}s ago` : `in ${-s}s`;
  const m = Math.round(s / 60);
  if (Math.abs(m) < 90) return m >= 0 ? `${m}m ago` : `in ${-m}m`;
  const h = Math.round(m / 60);
  if (Math.abs(h) < 48) return h >= 0 ? `${h}h ago` : `in ${-h}h`;
  const d = Math.round(h / 24);
  return d >= 0 ? `${d}d ago` : `in ${-d}d`;
}

export function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  return [line(head), ...rows.map(line)].join('\n');
}

export interface ProgressView {
  filesDone: number;
  filesTotal: number;
  bytesDone: number;
  bytesTotal: number;
  bytesUploaded: number;
  phase: string;
  currentPath: string;
}

/** One progress line: files, bytes, rate, ETA (when the total is known). */
export function progressLine(p: ProgressView, elapsedMs: number): string {
  const rate = elapsedMs > 0 ? (p.bytesDone * 1000) / elapsedMs : 0;
  const pct = p.bytesTotal > 0 ? ` ${Math.min(100, Math.floor((p.bytesDone / p.bytesTotal) * 100))}%` : '';
  const eta = p.bytesTotal > 0 && rate > 0 ? ` ETA ${Math.ceil((p.bytesTotal - p.bytesDone) / rate)}s` : '';
  const files = p.filesTotal > 0 ? `${p.filesDone}/${p.filesTotal}` : `${p.filesDone}`;
  return `${p.phase || 'working'}${pct}: ${files} files, ${bytes(p.bytesDone)}${p.bytesTotal ? ` of ${bytes(p.bytesTotal)}` : ''}, ${bytes(rate)}/s${eta}${p.bytesUploaded ? `, ${bytes(p.bytesUploaded)} uploaded` : ''}`;
}
