/**
 * Layer decompression by content (magic bytes), not by file name or media type:
 * gzip (zlib, multi-member), zstd (fzstd, pure JS), or plain. bzip2 and xz are
 * recognised and refused with NOT_SUPPORTED.
 *
 * Bounded, for hostile input (zip bombs):
 * - total output is capped (`maxOutputBytes`): past it the stream fails with BAD_IMAGE;
 * - memory per step is bounded: gzip output comes in GZIP_CHUNK_BYTES pieces and zlib
 *   waits for each to be read before it inflates more of the same input (Node's zlib
 *   keeps backpressure within one input chunk), so a 1032:1 bomb costs no more memory
 *   than any other input; zstd input is cut at block boundaries so
 *   the decoder emits at most one block (<= 128 KiB) per step, and a frame whose
 *   window exceeds `maxWindowBytes` (default 128 MiB, zstd's own default limit) is
 *   refused before the decoder allocates it.
 */
import { Readable, pipeline } from 'node:stream';
import * as zlib from 'node:zlib';
import { Decompress as ZstdDecompress } from 'fzstd';
import { dmfsError, DmfsError } from '../errors';

export type Compression = 'gzip' | 'zstd' | 'none';

export interface DecompressOptions {
  /** Most decompressed bytes accepted; default unlimited. */
  maxOutputBytes?: number;
  /** Largest zstd window accepted; default 128 MiB. */
  maxWindowBytes?: number;
}

/**
 * gzip input and output pieces. Each piece is one round trip to libuv's thread pool: 16 KiB
 * pieces made a pull of an 89 MiB layer wait on those round trips for a third of its time.
 */
const GZIP_INPUT_SLICE_BYTES = 256 * 1024;
const GZIP_CHUNK_BYTES = 256 * 1024;
const ZSTD_MAGIC = 0xfd2fb528;
const ZSTD_MAX_BLOCK_BYTES = 128 * 1024;
const DEFAULT_MAX_WINDOW_BYTES = 128 * 1024 * 1024;

/** Compression of a stream from its first bytes (at least 6 wanted). */
export function detectCompression(head: Buffer): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4) {
    const magic = head.readUInt32LE(0);
    if (magic === ZSTD_MAGIC || (magic & 0xfffffff0) === 0x184d2a50) return 'zstd';
  }
  if (head.length >= 3 && head.toString('latin1', 0, 3) === 'BZh') {
    throw dmfsError('NOT_SUPPORTED', 'bzip2-compressed layers are not supported (gzip, zstd or plain tar)');
  }
  if (head.length >= 6 && head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) {
    throw dmfsError('NOT_SUPPORTED', 'xz-compressed layers are not supported (gzip, zstd or plain tar)');
  }
  return 'none';
}

/** Splits off the first `wantBytes` of a stream for inspection and returns the whole stream again. */
export async function peek(
  source: AsyncIterable<Buffer>,
  wantBytes: number,
): Promise<{ head: Buffer; stream: AsyncIterable<Buffer> }> {
  const it = source[Symbol.asyncIterator]();
  const got: Buffer[] = [];
  let n = 0;
  let ended = false;
  while (n < wantBytes) {
    const r = await it.next();
    if (r.done) {
      ended = true;
      break;
    }
    const b = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value);
    got.push(b);
    n += b.length;
  }
  const head = Buffer.concat(got);
  async function* again(): AsyncGenerator<Buffer> {
    if (head.length > 0) yield head;
    if (ended) return;
    for (;;) {
      const r = await it.next();
      if (r.done) return;
      yield Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value);
    }
  }
  return { head: head.subarray(0, Math.min(head.length, wantBytes)), stream: again() };
}

function limitError(maxOutputBytes: number): DmfsError {
  return dmfsError('BAD_IMAGE', `decompressed data exceeds the limit of ${maxOutputBytes} bytes (compression bomb?)`);
}

/** Detects the compression and yields the decompressed bytes. */
export async function* decompress(
  source: AsyncIterable<Buffer>,
  opts: DecompressOptions = {},
): AsyncGenerator<Buffer> {
  const { head, stream } = await peek(source, 6);
  const kind = detectCompression(head);
  yield* decompressAs(kind, stream, opts);
}

export async function* decompressAs(
  kind: Compression,
  source: AsyncIterable<Buffer>,
  opts: DecompressOptions = {},
): AsyncGenerator<Buffer> {
  const max = opts.maxOutputBytes ?? Number.POSITIVE_INFINITY;
  let total = 0;
  const inner = kind === 'gzip' ? gunzip(source) : kind === 'zstd' ? unzstd(source, opts.maxWindowBytes ?? DEFAULT_MAX_WINDOW_BYTES) : passThrough(source);
  try {
    for await (const chunk of inner) {
      total += chunk.length;
      if (total > max) throw limitError(max);
      yield chunk;
    }
  } finally {
    await inner.return(undefined);
  }
}

async function* passThrough(source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  yield* source;
}

async function* sliced(source: AsyncIterable<Buffer>, sliceBytes: number): AsyncGenerator<Buffer> {
  for await (const chunk of source) {
    for (let i = 0; i < chunk.length; i += sliceBytes) yield chunk.subarray(i, i + sliceBytes);
  }
}

async function* gunzip(source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const input = Readable.from(sliced(source, GZIP_INPUT_SLICE_BYTES), { objectMode: false, highWaterMark: GZIP_INPUT_SLICE_BYTES });
  const z = zlib.createGunzip({ chunkSize: GZIP_CHUNK_BYTES });
  pipeline(input, z, () => {
    // Errors surface through the iteration of `z` below.
  });
  try {
    for await (const chunk of z) yield chunk as Buffer;
  } catch (err) {
    if (err instanceof DmfsError) throw err;
    const code = (err as { code?: string }).code;
    if (typeof code === 'string' && code.startsWith('Z_')) {
      throw dmfsError('BAD_IMAGE', `gzip: ${(err as Error).message}`, err);
    }
    throw err;
  } finally {
    z.destroy();
    input.destroy();
  }
}

/**
 * Walks zstd frame and block headers (RFC 8878) to find block ends, so the decoder
 * can be fed one block at a time, and to vet window sizes before decoding.
 */
export class ZstdFramer {
  private state: 'magic' | 'skipsize' | 'skip' | 'fhd' | 'fh' | 'block' | 'body' | 'checksum' = 'magic';
  private need = 4;
  private buf: number[] = [];
  private skipBytes = 0;
  private fhdByte = 0;
  private lastBlock = false;
  private blockMaxBytes = ZSTD_MAX_BLOCK_BYTES;
  private frames = 0;

  constructor(private readonly maxWindowBytes: number) {}

  /** True when the input so far ends exactly between frames. */
  get atFrameBoundary(): boolean {
    return this.state === 'magic' && this.buf.length === 0 && this.frames > 0;
  }

  /** Offsets in `chunk` just after each block end (ascending). */
  feed(chunk: Buffer): number[] {
    const cuts: number[] = [];
    let i = 0;
    while (i < chunk.length) {
      if (this.state === 'skip' || this.state === 'body') {
        const n = Math.min(this.skipBytes, chunk.length - i);
        this.skipBytes -= n;
        i += n;
        if (this.skipBytes === 0) {
          if (this.state === 'skip') this.enter('magic', 4);
          else {
            cuts.push(i);
            if (this.lastBlock) {
              if (this.fhdByte & 0x04) this.enter('checksum', 4);
              else this.endFrame();
            } else this.enter('block', 3);
          }
        }
        continue;
      }
      this.buf.push(chunk[i++]);
      if (this.buf.length < this.need) continue;
      const b = this.buf;
      switch (this.state) {
        case 'magic': {
          const magic = (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >>> 0;
          if (magic === ZSTD_MAGIC) this.enter('fhd', 1);
          else if ((magic & 0xfffffff0) >>> 0 === 0x184d2a50) this.enter('skipsize', 4);
          else throw dmfsError('BAD_IMAGE', 'zstd: bad frame magic');
          break;
        }
        case 'skipsize': {
          this.skipBytes = (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >>> 0;
          this.enter('skip', 0);
          if (this.skipBytes === 0) this.enter('magic', 4);
          break;
        }
        case 'fhd': {
          const d = b[0];
          if (d & 0x08) throw dmfsError('BAD_IMAGE', 'zstd: reserved frame header bit set');
          this.fhdByte = d;
          const fcsFlag = d >> 6;
          const single = (d >> 5) & 1;
          const dictBytes = [0, 1, 2, 4][d & 3];
          const fcsBytes = fcsFlag === 0 ? single : [0, 2, 4, 8][fcsFlag];
          this.enter('fh', (single ? 0 : 1) + dictBytes + fcsBytes);
          if (this.need === 0) this.frameHeader([]);
          break;
        }
        case 'fh':
          this.frameHeader(b);
          break;
        case 'block': {
          const v = b[0] | (b[1] << 8) | (b[2] << 16);
          this.lastBlock = (v & 1) === 1;
          const type = (v >> 1) & 3;
          const size = v >>> 3;
          if (type === 3) throw dmfsError('BAD_IMAGE', 'zstd: reserved block type');
          if (size > this.blockMaxBytes) throw dmfsError('BAD_IMAGE', 'zstd: block larger than the window or 128 KiB');
          this.skipBytes = type === 1 ? 1 : size;
          this.enter('body', 0);
          if (this.skipBytes === 0) {
            cuts.push(i);
            if (this.lastBlock) {
              if (this.fhdByte & 0x04) this.enter('checksum', 4);
              else this.endFrame();
            } else this.enter('block', 3);
          }
          break;
        }
        case 'checksum':
          this.endFrame();
          break;
        default:
          break;
      }
    }
    return cuts;
  }

  private enter(state: ZstdFramer['state'], need: number): void {
    this.state = state;
    this.need = need;
    this.buf = [];
  }

  private endFrame(): void {
    this.frames++;
    this.enter('magic', 4);
  }

  private frameHeader(b: number[]): void {
    const d = this.fhdByte;
    const single = (d >> 5) & 1;
    const dictBytes = [0, 1, 2, 4][d & 3];
    let p = 0;
    let windowBytes = 0;
    if (!single) {
      const wd = b[p++];
      const base = 2 ** (10 + (wd >> 3));
      windowBytes = base + (base / 8) * (wd & 7);
    }
    let dictId = 0;
    for (let k = 0; k < dictBytes; k++) dictId += b[p++] * 2 ** (8 * k);
    if (dictId !== 0) throw dmfsError('NOT_SUPPORTED', 'zstd: frames that need a dictionary are not supported');
    const fcsFlag = d >> 6;
    const fcsBytes = fcsFlag === 0 ? single : [0, 2, 4, 8][fcsFlag];
    let fcs = 0;
    for (let k = 0; k < fcsBytes; k++) fcs += b[p++] * 2 ** (8 * k);
    if (fcsBytes === 2) fcs += 256;
    if (single) windowBytes = fcs;
    if (windowBytes > this.maxWindowBytes) {
      throw dmfsError('BAD_IMAGE', `zstd: window of ${windowBytes} bytes exceeds the limit of ${this.maxWindowBytes}`);
    }
    this.blockMaxBytes = Math.min(ZSTD_MAX_BLOCK_BYTES, Math.max(windowBytes, 1));
    this.enter('block', 3);
  }
}

async function* unzstd(source: AsyncIterable<Buffer>, maxWindowBytes: number): AsyncGenerator<Buffer> {
  const framer = new ZstdFramer(maxWindowBytes);
  const out: Buffer[] = [];
  const d = new ZstdDecompress((data) => {
    if (data.length > 0) out.push(Buffer.from(data));
  });
  const push = (piece: Buffer, final: boolean): void => {
    try {
      d.push(piece, final);
    } catch (err) {
      throw dmfsError('BAD_IMAGE', `zstd: ${(err as Error).message}`, err);
    }
  };
  for await (const chunk of source) {
    const cuts = framer.feed(chunk);
    let begin = 0;
    for (const cut of [...cuts, chunk.length]) {
      if (cut > begin) {
        push(chunk.subarray(begin, cut), false);
        begin = cut;
        while (out.length > 0) yield out.shift()!;
      }
    }
  }
  if (!framer.atFrameBoundary) throw dmfsError('BAD_IMAGE', 'zstd: stream is truncated');
  push(new Uint8Array(0) as Buffer, true);
  while (out.length > 0) yield out.shift()!;
}
