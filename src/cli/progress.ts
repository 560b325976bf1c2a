/**
 * A one-line progress bar on a terminal's stderr: bytes (done / total), layers, rate
 * and ETA, redrawn at most every `intervalMs`. Silent when stderr is not a TTY or when
 * `--json` was given, so pipes and logs get nothing but the result.
 */

export interface ProgressState {
  bytesDone: number;
  /** Unknown totals show no percentage or ETA. */
  bytesTotal: number | null;
  layersDone: number;
  layersTotal: number;
}

interface TtyLike {
  isTTY?: boolean;
  columns?: number;
  write(chunk: string): boolean;
}

export interface ProgressOptions {
  /** Force on or off; default: on when the stream is a TTY. */
  enabled?: boolean;
  /** Label before the bar, e.g. 'Importing'. */
  label?: string;
  intervalMs?: number;
  /** Clock in ms (for tests). */
  now?: () => number;
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function formatBytes(n: number): string {
  let v = n;
  let u = 0;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${UNITS[u]}`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${String(sec).padStart(2, '0')}` : `${m}:${String(sec).padStart(2, '0')}`;
}

/** Bytes per second over the recent samples (the last ~5 s). */
export class RateMeter {
  private samples: [number, number][] = [];

  add(timeMs: number, bytes: number): void {
    this.samples.push([timeMs, bytes]);
    while (this.samples.length > 2 && timeMs - this.samples[0][0] > 5000) this.samples.shift();
  }

  /** 0 until there are two samples. */
  rate(): number {
    if (this.samples.length < 2) return 0;
    const [t0, b0] = this.samples[0];
    const [t1, b1] = this.samples[this.samples.length - 1];
    return t1 > t0 ? ((b1 - b0) * 1000) / (t1 - t0) : 0;
  }
}

/** `[####------] 40% ` for a fraction in [0, 1], or '' when it is unknown. */
function barText(frac: number | null, width: number): string {
  if (frac === null) return '';
  const filled = Math.round(frac * width);
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${String(Math.floor(frac * 100)).padStart(3)}% `;
}

export class ProgressBar {
  readonly enabled: boolean;
  private readonly label: string;
  private readonly intervalMs: number;
  private readonly now: () => number;
  private readonly startMs: number;
  private lastDrawMs = -Infinity;
  private readonly meter = new RateMeter();
  private drawn = false;

  constructor(private readonly stream: TtyLike, opts: ProgressOptions = {}) {
    this.enabled = opts.enabled ?? stream.isTTY === true;
    this.label = opts.label ?? '';
    this.intervalMs = opts.intervalMs ?? 100;
    this.now = opts.now ?? Date.now;
    this.startMs = this.now();
  }

  /** Records progress; redraws when the interval has passed (or `force`). */
  update(p: ProgressState, force = false): void {
    if (!this.enabled) return;
    const t = this.now();
    this.meter.add(t, p.bytesDone);
    if (!force && t - this.lastDrawMs < this.intervalMs) return;
    this.lastDrawMs = t;
    this.stream.write(`\r${this.render(p, t)}\x1b[K`);
    this.drawn = true;
  }

  /** Bytes per second over the recent samples (0 until there are two). */
  rate(): number {
    return this.meter.rate();
  }

  render(p: ProgressState, t = this.now()): string {
    const width = Math.max(10, Math.min(30, (this.stream.columns ?? 80) - 60));
    const frac = p.bytesTotal && p.bytesTotal > 0 ? Math.min(1, p.bytesDone / p.bytesTotal) : null;
    const bar = barText(frac, width);
    const bytes = p.bytesTotal !== null ? `${formatBytes(p.bytesDone)}/${formatBytes(p.bytesTotal)}` : formatBytes(p.bytesDone);
    const rate = this.rate();
    const eta = frac !== null && rate > 0 ? formatDuration((p.bytesTotal! - p.bytesDone) / rate) : '--:--';
    const elapsed = formatDuration((t - this.startMs) / 1000);
    return `${this.label ? `${this.label} ` : ''}${bar}${bytes}  layer ${Math.min(p.layersDone + 1, p.layersTotal)}/${p.layersTotal}  ${formatBytes(Math.round(rate))}/s  ${frac !== null ? `ETA ${eta}` : `elapsed ${elapsed}`}`;
  }

  /** Clears the bar line (the caller prints the result after it). */
  done(): void {
    if (this.enabled && this.drawn) this.stream.write('\r\x1b[K');
    this.drawn = false;
  }
}

export interface LayerLine {
  /** Stable key of the line (a layer digest or name). */
  id: string;
  /** Shown first, e.g. the short digest. */
  title: string;
  /** The layer's state, e.g. 'Downloading', 'Exists'. */
  status: string;
  bytesDone: number;
  bytesTotal: number | null;
  /** Draw bytes, rate and ETA (false for layers that move no bytes now). */
  active: boolean;
}

/**
 * One line per layer (as `docker pull` shows them) on a terminal's stderr: state, bar,
 * bytes, rate and ETA, redrawn in place at most every `intervalMs`. Silent when the
 * stream is not a TTY or `enabled` is false (`--json`). The last drawing stays on screen.
 */
export class LayerProgress {
  readonly enabled: boolean;
  private readonly intervalMs: number;
  private readonly now: () => number;
  private readonly meters = new Map<string, RateMeter>();
  private lastDrawMs = -Infinity;
  private drawnLines = 0;
  private last: readonly LayerLine[] = [];

  constructor(private readonly stream: TtyLike, opts: Omit<ProgressOptions, 'label'> = {}) {
    this.enabled = opts.enabled ?? stream.isTTY === true;
    this.intervalMs = opts.intervalMs ?? 100;
    this.now = opts.now ?? Date.now;
  }

  update(lines: readonly LayerLine[], force = false): void {
    if (!this.enabled) return;
    const t = this.now();
    for (const l of lines) {
      let m = this.meters.get(l.id);
      if (!m) this.meters.set(l.id, (m = new RateMeter()));
      m.add(t, l.bytesDone);
    }
    this.last = lines;
    if (!force && t - this.lastDrawMs < this.intervalMs) return;
    this.lastDrawMs = t;
    const up = this.drawnLines > 0 ? `\x1b[${this.drawnLines}A` : '';
    this.stream.write(up + lines.map((l) => `\r${this.renderLine(l)}\x1b[K\n`).join(''));
    this.drawnLines = lines.length;
  }

  renderLine(l: LayerLine): string {
    const head = `${l.title}  ${l.status.padEnd(11)}`;
    if (!l.active) return head.trimEnd();
    const width = Math.max(10, Math.min(30, (this.stream.columns ?? 80) - 70));
    const frac = l.bytesTotal && l.bytesTotal > 0 ? Math.min(1, l.bytesDone / l.bytesTotal) : null;
    const bytes = l.bytesTotal !== null ? `${formatBytes(l.bytesDone)}/${formatBytes(l.bytesTotal)}` : formatBytes(l.bytesDone);
    const rate = this.meters.get(l.id)?.rate() ?? 0;
    const eta = frac !== null && rate > 0 ? `  ETA ${formatDuration((l.bytesTotal! - l.bytesDone) / rate)}` : '';
    return `${head} ${barText(frac, width)}${bytes}  ${formatBytes(Math.round(rate))}/s${eta}`;
  }

  /** Draws the final state once more (the lines stay). */
  done(): void {
    if (this.enabled && this.last.length > 0) this.update(this.last, true);
  }
}
