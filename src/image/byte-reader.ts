/**
 * A pull reader over an async byte stream: exact reads for headers, bounded reads
 * for bodies, skips. Holds at most the chunks the source already produced and the
 * caller has not consumed yet (one source chunk plus what a `readExact` asked for),
 * so memory stays bounded by the largest single read.
 */
export class ByteReader {
  private readonly chunks: Buffer[] = [];
  private availBytes = 0;
  private ended = false;
  /** Bytes handed to the caller (read or skipped) so far. */
  positionBytes = 0;

  constructor(private readonly source: AsyncIterator<Buffer | Uint8Array>) {}

  static from(src: AsyncIterable<Buffer | Uint8Array>): ByteReader {
    return new ByteReader(src[Symbol.asyncIterator]());
  }

  /** Pulls one more chunk; false at the end of the source. */
  private async fill(): Promise<boolean> {
    while (!this.ended) {
      const r = await this.source.next();
      if (r.done) {
        this.ended = true;
        return false;
      }
      const chunk = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
      if (chunk.length === 0) continue;
      this.chunks.push(chunk);
      this.availBytes += chunk.length;
      return true;
    }
    return false;
  }

  private take(n: number): Buffer {
    // Precondition: n <= availBytes.
    const first = this.chunks[0];
    if (first.length === n) {
      this.chunks.shift();
      this.availBytes -= n;
      this.positionBytes += n;
      return first;
    }
    if (first.length > n) {
      this.chunks[0] = first.subarray(n);
      this.availBytes -= n;
      this.positionBytes += n;
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0];
      const want = n - filled;
      if (c.length <= want) {
        c.copy(out, filled);
        filled += c.length;
        this.chunks.shift();
      } else {
        c.copy(out, filled, 0, want);
        this.chunks[0] = c.subarray(want);
        filled += want;
      }
    }
    this.availBytes -= n;
    this.positionBytes += n;
    return out;
  }

  /** Exactly `n` bytes, or fewer (possibly 0) when the source ends first. */
  async readExact(n: number): Promise<Buffer> {
    while (this.availBytes < n && (await this.fill()));
    const count = Math.min(n, this.availBytes);
    return count === 0 ? Buffer.alloc(0) : this.take(count);
  }

  /** Between 1 and `maxBytes` bytes without copying when possible; empty only at the end. */
  async readSome(maxBytes: number): Promise<Buffer> {
    if (maxBytes <= 0) return Buffer.alloc(0);
    if (this.availBytes === 0 && !(await this.fill())) return Buffer.alloc(0);
    return this.take(Math.min(maxBytes, this.chunks[0].length));
  }

  /** Skips up to `n` bytes; returns how many were skipped (fewer only at the end). */
  async skip(n: number): Promise<number> {
    let skipped = 0;
    while (skipped < n) {
      const b = await this.readSome(Math.min(n - skipped, 1 << 20));
      if (b.length === 0) break;
      skipped += b.length;
    }
    return skipped;
  }

  /** Consumes the rest of the source; returns the byte count. */
  async drain(): Promise<number> {
    let n = 0;
    for (;;) {
      const b = await this.readSome(1 << 20);
      if (b.length === 0) return n;
      n += b.length;
    }
  }

  /** Stops the source early (runs its cleanup). */
  async close(): Promise<void> {
    this.chunks.length = 0;
    this.availBytes = 0;
    if (!this.ended) {
      this.ended = true;
      await this.source.return?.();
    }
  }
}
