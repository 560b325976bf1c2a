import * as fs from 'node:fs';
import { promisify, types } from 'node:util';
import { DmfsError, dmfsError } from '../errors';
import type { BlockIo } from './block-io';

/**
 * The pure TypeScript BlockIo: the same argument rules, results and error codes as the
 * Rust addon (native/src), so everything above `src/native` works without it. What it
 * cannot do: reflink (copyRange always reads and writes, probeReflink resolves false)
 * and hole punching (punchHole resolves false and changes nothing).
 *
 * The argument checks below are the contract both implementations follow; the addon
 * repeats them in Rust (native/src/lib.rs) and test/unit/native runs one table of cases
 * through both.
 */

/** Bounce buffer of the read/write copy loop; the addon's pread/pwrite path uses the same. */
export const COPY_CHUNK_BYTES = 1 << 20;
/** Largest fd accepted (fds are C ints). */
const MAX_FD = 0x7fff_ffff;

const fstatAsync = promisify(fs.fstat);
const statAsync = promisify(fs.stat);

/** Reads up to lengthBytes into buf[bufOffset..]; resolves bytes read (0 at EOF). */
function readAt(fd: number, buf: Uint8Array, bufOffset: number, lengthBytes: number, positionBytes: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.read(fd, buf, bufOffset, lengthBytes, positionBytes, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

function writeAt(fd: number, buf: Uint8Array, bufOffset: number, lengthBytes: number, positionBytes: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.write(fd, buf, bufOffset, lengthBytes, positionBytes, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

// ---------------------------------------------------------------------------------------
// Argument checks: throw DmfsError(INVALID).

function invalid(op: string, message: string): DmfsError {
  return dmfsError('INVALID', `${op}: ${message}`);
}

function checkUint(op: string, name: string, v: unknown, max: number): number {
  if (typeof v !== 'number') throw invalid(op, `${name} must be a number`);
  if (!(Number.isInteger(v) && v >= 0 && v <= max)) throw invalid(op, `${name} must be an integer in [0, ${max}], got ${v}`);
  return v;
}

export function checkFd(op: string, name: string, v: unknown): number {
  return checkUint(op, name, v, MAX_FD);
}

/** A byte offset or length: a non-negative safe integer. */
export function checkBytes(op: string, name: string, v: unknown): number {
  return checkUint(op, name, v, Number.MAX_SAFE_INTEGER);
}

/** offsetBytes + lengthBytes must stay a safe integer (the end of the range is exact). */
function checkEnd(op: string, name: string, offsetBytes: number, lengthBytes: number): void {
  if (offsetBytes + lengthBytes > Number.MAX_SAFE_INTEGER) throw invalid(op, `${name} + length exceeds 2^53 - 1`);
}

function checkData(op: string, name: string, v: unknown): Uint8Array {
  // util.types works across realms (jest's vm contexts); Buffer is a Uint8Array.
  if (!types.isUint8Array(v)) throw invalid(op, `${name} must be a Buffer (Uint8Array)`);
  return v;
}

export function checkRange(op: string, fdIn: unknown, inOffsetBytes: unknown, fdOut: unknown, outOffsetBytes: unknown, lengthBytes: unknown): void {
  checkFd(op, 'fdIn', fdIn);
  checkBytes(op, 'inOffsetBytes', inOffsetBytes);
  checkFd(op, 'fdOut', fdOut);
  checkBytes(op, 'outOffsetBytes', outOffsetBytes);
  checkBytes(op, 'lengthBytes', lengthBytes);
  checkEnd(op, 'inOffsetBytes', inOffsetBytes as number, lengthBytes as number);
  checkEnd(op, 'outOffsetBytes', outOffsetBytes as number, lengthBytes as number);
}

function checkVector(op: string, fd: unknown, buffers: unknown, offsetsBytes: unknown): void {
  checkFd(op, 'fd', fd);
  if (!Array.isArray(buffers)) throw invalid(op, 'buffers must be an array');
  if (!Array.isArray(offsetsBytes)) throw invalid(op, 'offsetsBytes must be an array');
  if (buffers.length !== offsetsBytes.length) {
    throw invalid(op, `buffers (${buffers.length}) and offsetsBytes (${offsetsBytes.length}) differ in length`);
  }
  for (let i = 0; i < buffers.length; i++) {
    const b = checkData(op, `buffers[${i}]`, buffers[i]);
    const off = checkBytes(op, `offsetsBytes[${i}]`, offsetsBytes[i]);
    checkEnd(op, `offsetsBytes[${i}]`, off, b.byteLength);
  }
}

export function checkSeed(op: string, seed: unknown): number {
  return seed === undefined ? 0 : checkUint(op, 'seed', seed, 0xffff_ffff);
}

export function checkDirPath(op: string, dirPath: unknown): string {
  if (typeof dirPath !== 'string' || dirPath === '') throw invalid(op, 'dirPath must be a non-empty string');
  return dirPath;
}

/**
 * A failed system call as DmfsError(IO_ERROR) keeping the Node system error (code 'EBADF',
 * negative errno, syscall) as cause. Node argument errors (ERR_*) mean a check above
 * missed something: they stay INVALID.
 */
export function ioError(op: string, err: unknown): DmfsError {
  if (err instanceof DmfsError) return err;
  const e = err as NodeJS.ErrnoException | null;
  if (typeof e?.code === 'string' && e.code.startsWith('ERR_')) return dmfsError('INVALID', `${op}: ${e.message}`, err);
  const what = e?.syscall ? `${e.syscall} failed: ${e.code ?? 'unknown error'}` : String(e?.message ?? err);
  return dmfsError('IO_ERROR', `${op}: ${what}`, err);
}

// ---------------------------------------------------------------------------------------
// CRC-32C, slicing-by-8 (same tables and bits as native/src/crc32c.rs)

const CRC32C_POLY = 0x82f63b78;

/** TABLES[k * 256 + b]: the CRC of byte b followed by k zero bytes. */
const TABLES: Uint32Array = (() => {
  const t = new Uint32Array(8 * 256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ CRC32C_POLY : c >>> 1;
    t[i] = c >>> 0;
  }
  for (let j = 1; j < 8; j++) {
    for (let i = 0; i < 256; i++) {
      const prev = t[(j - 1) * 256 + i];
      t[j * 256 + i] = (prev >>> 8) ^ t[prev & 0xff];
    }
  }
  return t;
})();

/** CRC-32C of data continuing from seed: crc32c(b, crc32c(a)) === crc32c(a ++ b). */
export function crc32cTable(data: Uint8Array, seed = 0): number {
  const t = TABLES;
  let crc = ~seed;
  const n = data.length;
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    const lo = (data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)) ^ crc;
    const hi = data[i + 4] | (data[i + 5] << 8) | (data[i + 6] << 16) | (data[i + 7] << 24);
    crc =
      t[1792 + (lo & 0xff)] ^
      t[1536 + ((lo >>> 8) & 0xff)] ^
      t[1280 + ((lo >>> 16) & 0xff)] ^
      t[1024 + (lo >>> 24)] ^
      t[768 + (hi & 0xff)] ^
      t[512 + ((hi >>> 8) & 0xff)] ^
      t[256 + ((hi >>> 16) & 0xff)] ^
      t[hi >>> 24];
  }
  for (; i < n; i++) crc = (crc >>> 8) ^ t[(crc ^ data[i]) & 0xff];
  return ~crc >>> 0;
}

// ---------------------------------------------------------------------------------------

/** Reads until buf[0..lengthBytes) is full or EOF; resolves bytes read. */
async function readFull(fd: number, buf: Uint8Array, lengthBytes: number, positionBytes: number): Promise<number> {
  let done = 0;
  while (done < lengthBytes) {
    const n = await readAt(fd, buf, done, lengthBytes - done, positionBytes + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

async function writeFull(fd: number, buf: Uint8Array, lengthBytes: number, positionBytes: number): Promise<void> {
  let done = 0;
  while (done < lengthBytes) {
    const n = await writeAt(fd, buf, done, lengthBytes - done, positionBytes + done);
    if (n === 0) throw Object.assign(new Error('write returned 0'), { code: 'EIO', syscall: 'write' });
    done += n;
  }
}

export class FallbackBlockIo implements BlockIo {
  readonly kind = 'fallback' as const;

  /** @param unavailableReason why the addon is not in use (shown by `dmfs doctor`). */
  constructor(readonly unavailableReason: string) {}

  async copyRange(fdIn: number, inOffsetBytes: number, fdOut: number, outOffsetBytes: number, lengthBytes: number): Promise<number> {
    const op = 'copyRange';
    checkRange(op, fdIn, inOffsetBytes, fdOut, outOffsetBytes, lengthBytes);
    try {
      const [a, b] = [await fstatAsync(fdIn), await fstatAsync(fdOut)];
      const sameFile = a.dev === b.dev && a.ino === b.ino;
      if (sameFile && lengthBytes > 0 && inOffsetBytes < outOffsetBytes + lengthBytes && outOffsetBytes < inOffsetBytes + lengthBytes) {
        throw invalid(op, 'source and destination ranges overlap in one file');
      }
      if (lengthBytes === 0) return 0;
      const buf = Buffer.allocUnsafe(Math.min(lengthBytes, COPY_CHUNK_BYTES));
      let done = 0;
      while (done < lengthBytes) {
        const want = Math.min(lengthBytes - done, buf.length);
        const n = await readAt(fdIn, buf, 0, want, inOffsetBytes + done);
        if (n === 0) break;
        await writeFull(fdOut, buf, n, outOffsetBytes + done);
        done += n;
      }
      return done;
    } catch (err) {
      throw ioError(op, err);
    }
  }

  async readBlocks(fd: number, buffers: Buffer[], offsetsBytes: number[]): Promise<number> {
    checkVector('readBlocks', fd, buffers, offsetsBytes);
    try {
      // Reads of distinct buffers are independent: issue them together (the libuv pool
      // runs several at once). Writes stay in order: overlapping ranges must end as the
      // addon's sequential pwritev leaves them.
      // allSettled: no read still fills a buffer after the call has settled.
      const results = await Promise.allSettled(buffers.map((b, i) => readFull(fd, b, b.byteLength, offsetsBytes[i])));
      let total = 0;
      for (const r of results) {
        if (r.status === 'rejected') throw r.reason;
        total += r.value;
      }
      return total;
    } catch (err) {
      throw ioError('readBlocks', err);
    }
  }

  async writeBlocks(fd: number, buffers: Buffer[], offsetsBytes: number[]): Promise<number> {
    checkVector('writeBlocks', fd, buffers, offsetsBytes);
    try {
      let total = 0;
      for (let i = 0; i < buffers.length; i++) {
        await writeFull(fd, buffers[i], buffers[i].byteLength, offsetsBytes[i]);
        total += buffers[i].byteLength;
      }
      return total;
    } catch (err) {
      throw ioError('writeBlocks', err);
    }
  }

  /** Cannot punch without fallocate: checks the fd, changes nothing, resolves false. */
  async punchHole(fd: number, offsetBytes: number, lengthBytes: number): Promise<boolean> {
    const op = 'punchHole';
    checkFd(op, 'fd', fd);
    checkBytes(op, 'offsetBytes', offsetBytes);
    checkBytes(op, 'lengthBytes', lengthBytes);
    checkEnd(op, 'offsetBytes', offsetBytes, lengthBytes);
    try {
      await fstatAsync(fd);
    } catch (err) {
      throw ioError(op, err);
    }
    return false;
  }

  crc32c(data: Buffer, seed?: number): number {
    const bytes = checkData('crc32c', 'data', data);
    return crc32cTable(bytes, checkSeed('crc32c', seed));
  }

  /** No FICLONERANGE without the addon: false for any existing writable directory. */
  async probeReflink(dirPath: string): Promise<boolean> {
    const op = 'probeReflink';
    checkDirPath(op, dirPath);
    let st: fs.Stats;
    try {
      st = await statAsync(dirPath);
    } catch (err) {
      throw ioError(op, err);
    }
    if (!st.isDirectory()) {
      throw ioError(op, Object.assign(new Error(`${dirPath} is not a directory`), { code: 'ENOTDIR', syscall: 'stat', path: dirPath }));
    }
    try {
      await fs.promises.access(dirPath, fs.constants.W_OK);
    } catch (err) {
      throw ioError(op, err);
    }
    return false;
  }
}
