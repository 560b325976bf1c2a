/**
 * Downloads layers ahead of the importer, which applies them one at a time in order.
 *
 * Contract:
 * - `schedule(keys)` names the layers in the order they will be consumed; at most
 *   `concurrency` downloads run at once, started in that order, so the layer consumed
 *   next has always started (no wait on a slot held by a later layer).
 * - A download runs ahead of its consumer by at most `maxBufferedBytes`, in memory;
 *   past that it stops reading and the connection's flow control holds the sender (no
 *   temporary file: a layer is applied as it arrives, and at most
 *   concurrency × maxBufferedBytes wait in memory).
 * - `stream(key)` yields a layer's bytes once; an error of the download comes out of it.
 *   A consumer that stops early cancels its download.
 * - `close()` cancels every download (a failed import).
 */

export interface PrefetchOptions {
  concurrency?: number;
  maxBufferedBytes?: number;
  /** Called as bytes of a download arrive (total so far for that key). */
  onBytes?: (key: number, downloadedBytes: number) => void;
}

const DEFAULT_CONCURRENCY = 3;
const DEFAULT_MAX_BUFFERED_BYTES = 16 * 1024 * 1024;

class Download {
  private readonly queue: Buffer[] = [];
  private bufferedBytes = 0;
  downloadedBytes = 0;
  private finished = false;
  private failure: unknown = null;
  private cancelled = false;
  started = false;
  /** Wakes the consumer (data, end or failure). */
  private wakeConsumer: (() => void) | null = null;
  /** Wakes the producer (room in the buffer, or cancel). */
  private wakeProducer: (() => void) | null = null;
  readonly done: Promise<void>;
  private resolveDone!: () => void;

  constructor(private readonly source: () => AsyncIterable<Buffer>, private readonly maxBufferedBytes: number, private readonly onBytes: (n: number) => void) {
    this.done = new Promise((r) => (this.resolveDone = r));
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    void this.pump();
  }

  private async pump(): Promise<void> {
    const it = this.source()[Symbol.asyncIterator]();
    try {
      for (;;) {
        while (this.bufferedBytes >= this.maxBufferedBytes && !this.cancelled) await new Promise<void>((r) => (this.wakeProducer = r));
        if (this.cancelled) break;
        const r = await it.next();
        if (r.done) break;
        this.queue.push(r.value);
        this.bufferedBytes += r.value.length;
        this.downloadedBytes += r.value.length;
        this.onBytes(this.downloadedBytes);
        this.notifyConsumer();
      }
    } catch (err) {
      this.failure = err;
    } finally {
      if (this.cancelled) await it.return?.(undefined)?.catch?.(() => undefined);
      this.finished = true;
      this.notifyConsumer();
      this.resolveDone();
    }
  }

  private notifyConsumer(): void {
    const w = this.wakeConsumer;
    this.wakeConsumer = null;
    w?.();
  }

  private notifyProducer(): void {
    const w = this.wakeProducer;
    this.wakeProducer = null;
    w?.();
  }

  async *stream(): AsyncGenerator<Buffer> {
    this.start();
    try {
      for (;;) {
        const chunk = this.queue.shift();
        if (chunk !== undefined) {
          this.bufferedBytes -= chunk.length;
          this.notifyProducer();
          yield chunk;
          continue;
        }
        if (this.finished) {
          if (this.failure !== null) throw this.failure;
          return;
        }
        await new Promise<void>((r) => (this.wakeConsumer = r));
      }
    } finally {
      if (!this.finished) this.cancel();
    }
  }

  cancel(): void {
    this.cancelled = true;
    this.queue.length = 0;
    this.bufferedBytes = 0;
    this.notifyProducer();
  }
}

export class LayerPrefetch {
  private readonly downloads = new Map<number, Download>();
  private order: number[] = [];
  private readonly concurrency: number;
  private readonly maxBufferedBytes: number;
  private running = 0;

  constructor(private readonly sources: ReadonlyMap<number, () => AsyncIterable<Buffer>>, private readonly opts: PrefetchOptions = {}) {
    this.concurrency = Math.max(1, opts.concurrency ?? DEFAULT_CONCURRENCY);
    this.maxBufferedBytes = Math.max(64 * 1024, opts.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES);
  }

  /** The layers to fetch, in the order they will be consumed. */
  schedule(keys: readonly number[]): void {
    this.order = [...keys];
    for (const k of keys) this.download(k);
    this.fill();
  }

  private download(key: number): Download {
    let d = this.downloads.get(key);
    if (!d) {
      const source = this.sources.get(key);
      if (!source) throw new Error(`LayerPrefetch: no source for layer ${key}`);
      d = new Download(source, this.maxBufferedBytes, (n) => this.opts.onBytes?.(key, n));
      this.downloads.set(key, d);
    }
    return d;
  }

  private fill(): void {
    for (const key of this.order) {
      if (this.running >= this.concurrency) return;
      const d = this.downloads.get(key)!;
      if (d.started) continue;
      this.begin(d);
    }
  }

  private begin(d: Download): void {
    this.running++;
    d.start();
    void d.done.then(() => {
      this.running--;
      this.fill();
    });
  }

  /** A layer's bytes; starts its download now if it has not started (outside the schedule too). */
  stream(key: number): AsyncGenerator<Buffer> {
    const d = this.download(key);
    if (!d.started) this.begin(d);
    return d.stream();
  }

  close(): void {
    this.order = [];
    for (const d of this.downloads.values()) d.cancel();
  }
}
