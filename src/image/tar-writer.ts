/**
 * Deterministic tar writer: ustar headers, with a pax `x` header only when ustar
 * cannot hold the entry (names over 100/155+100 bytes, link names over 100 bytes,
 * non-ASCII names, nanosecond or negative mtimes, ids or sizes over the octal fields,
 * extended attributes). No atime/ctime, empty uname/gname (readers then use the
 * numeric ids), pax records in a fixed order with xattrs sorted by name, and the pax
 * header named from the entry, so equal input gives byte-identical output.
 *
 * Output goes to an async `sink` one buffer at a time; the writer awaits each call,
 * so backpressure is the sink's to apply.
 */
import { dmfsError } from '../errors';
import { TAR_BLOCK_BYTES } from './tar-fields';
import type { TarEntryType } from './tar-reader';

export interface TarWriteEntry {
  type: TarEntryType;
  /** Relative path without a leading '/', directories with or without a trailing '/'. */
  path: string;
  /** Hardlink target path or symlink target. */
  linkPath?: string;
  /** Permission bits (`& 0o7777` is taken). */
  mode: number;
  uid: number;
  gid: number;
  /** File content size; must equal the bytes the body yields. */
  sizeBytes?: number;
  mtimeNs: bigint;
  devMajor?: number;
  devMinor?: number;
  xattrs?: Map<string, Buffer> | Record<string, Buffer>;
}

export type TarSink = (chunk: Buffer) => Promise<void> | void;

const USTAR_MAX_OCTAL_8 = 0o7777777; // 7 digits + NUL
const USTAR_MAX_OCTAL_12 = 0o77777777777; // 11 digits + NUL
const ZERO_BLOCK = Buffer.alloc(TAR_BLOCK_BYTES);

function writeOctal(block: Buffer, begin: number, width: number, value: number): void {
  const text = value.toString(8).padStart(width - 1, '0');
  block.write(text, begin, width - 1, 'latin1');
  block[begin + width - 1] = 0;
}

function isAscii(s: string): boolean {
  return /^[\x01-\x7f]*$/.test(s);
}

/** Splits a path into ustar `prefix` (<=155) and `name` (<=100) at a '/', or null. */
function splitUstarPath(path: string): { prefix: string; name: string } | null {
  if (Buffer.byteLength(path) <= 100) return { prefix: '', name: path };
  if (!isAscii(path) || path.length > 256) return null;
  for (let i = path.length - 1; i > 0; i--) {
    if (path[i] !== '/') continue;
    const prefix = path.slice(0, i);
    const name = path.slice(i + 1);
    if (prefix.length <= 155 && name.length <= 100 && name.length > 0) return { prefix, name };
    if (prefix.length <= 155) break;
  }
  return null;
}

function paxRecord(key: string, value: Buffer | string): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), Buffer.isBuffer(value) ? value : Buffer.from(value), Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function formatPaxTime(ns: bigint): string {
  const neg = ns < 0n;
  const abs = neg ? -ns : ns;
  const sec = abs / 1_000_000_000n;
  const frac = abs % 1_000_000_000n;
  let text = sec.toString();
  if (frac !== 0n) text += '.' + frac.toString().padStart(9, '0').replace(/0+$/, '');
  return (neg ? '-' : '') + text;
}

const TYPEFLAG: Record<TarEntryType, string> = {
  file: '0',
  hardlink: '1',
  symlink: '2',
  chardev: '3',
  blockdev: '4',
  dir: '5',
  fifo: '6',
};

function header(
  typeflag: string,
  name: { prefix: string; name: string },
  linkName: string,
  fields: { mode: number; uid: number; gid: number; sizeBytes: number; mtimeSec: number; devMajor: number; devMinor: number },
): Buffer {
  const block = Buffer.alloc(TAR_BLOCK_BYTES);
  block.write(name.name, 0, 100, 'utf8');
  writeOctal(block, 100, 8, fields.mode);
  writeOctal(block, 108, 8, fields.uid);
  writeOctal(block, 116, 8, fields.gid);
  writeOctal(block, 124, 12, fields.sizeBytes);
  writeOctal(block, 136, 12, fields.mtimeSec);
  block.write(typeflag, 156, 1, 'latin1');
  block.write(linkName, 157, 100, 'utf8');
  block.write('ustar\0', 257, 6, 'latin1');
  block.write('00', 263, 2, 'latin1');
  writeOctal(block, 329, 8, fields.devMajor);
  writeOctal(block, 337, 8, fields.devMinor);
  block.write(name.prefix, 345, 155, 'utf8');
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < TAR_BLOCK_BYTES; i++) sum += block[i];
  block.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
  return block;
}

export class TarWriter {
  private finished = false;
  /** Bytes written to the sink so far. */
  bytesWritten = 0;

  constructor(private readonly sink: TarSink) {}

  private async emit(chunk: Buffer): Promise<void> {
    this.bytesWritten += chunk.length;
    await this.sink(chunk);
  }

  /**
   * Appends one entry. `body` is required for a non-empty file and must yield exactly
   * `sizeBytes`; it may be a Buffer or an async iterable of buffers.
   */
  async add(entry: TarWriteEntry, body?: Buffer | AsyncIterable<Buffer>): Promise<void> {
    if (this.finished) throw dmfsError('INVALID', 'tar: add after finish');
    const isFile = entry.type === 'file';
    const sizeBytes = isFile ? entry.sizeBytes ?? (Buffer.isBuffer(body) ? body.length : 0) : 0;
    let path = entry.path.replace(/^\/+/, '');
    if (entry.type === 'dir' && (path === '' || path === '.')) path = './';
    if (entry.type === 'dir' && !path.endsWith('/')) path += '/';
    if (path.length === 0 || path === '/') throw dmfsError('INVALID', 'tar: empty entry path');
    const linkPath = entry.linkPath ?? '';
    if ((entry.type === 'symlink' || entry.type === 'hardlink') && linkPath.length === 0) {
      throw dmfsError('INVALID', `tar: ${entry.type} ${path} without a target`);
    }

    const records: Buffer[] = [];
    let name = splitUstarPath(path);
    if (name === null || !isAscii(path)) {
      records.push(paxRecord('path', path));
      const trimmed = path.endsWith('/') ? path.slice(0, -1) : path;
      const base = trimmed.slice(trimmed.lastIndexOf('/') + 1);
      name = { prefix: '', name: truncateUtf8(base.replace(/[^\x20-\x7e]/g, '_'), 99) + (entry.type === 'dir' ? '/' : '') };
    }
    let linkField = linkPath;
    if (Buffer.byteLength(linkPath) > 100 || !isAscii(linkPath)) {
      records.push(paxRecord('linkpath', linkPath));
      linkField = truncateUtf8(linkPath.replace(/[^\x20-\x7e]/g, '_'), 100);
    }
    let sizeField = sizeBytes;
    if (sizeBytes > USTAR_MAX_OCTAL_12) {
      records.push(paxRecord('size', String(sizeBytes)));
      sizeField = 0;
    }
    let uidField = entry.uid;
    if (entry.uid > USTAR_MAX_OCTAL_8) {
      records.push(paxRecord('uid', String(entry.uid)));
      uidField = 0;
    }
    let gidField = entry.gid;
    if (entry.gid > USTAR_MAX_OCTAL_8) {
      records.push(paxRecord('gid', String(entry.gid)));
      gidField = 0;
    }
    let mtimeSec = 0;
    if (entry.mtimeNs >= 0n && entry.mtimeNs % 1_000_000_000n === 0n && entry.mtimeNs / 1_000_000_000n <= BigInt(USTAR_MAX_OCTAL_12)) {
      mtimeSec = Number(entry.mtimeNs / 1_000_000_000n);
    } else {
      records.push(paxRecord('mtime', formatPaxTime(entry.mtimeNs)));
      if (entry.mtimeNs > 0n) mtimeSec = Math.min(Number(entry.mtimeNs / 1_000_000_000n), USTAR_MAX_OCTAL_12);
    }
    const xattrs = entry.xattrs instanceof Map ? [...entry.xattrs] : Object.entries(entry.xattrs ?? {});
    xattrs.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    for (const [k, v] of xattrs) records.push(paxRecord(`SCHILY.xattr.${k}`, v));

    if (records.length > 0) {
      const data = Buffer.concat(records);
      const paxName = truncateUtf8(`PaxHeaders/${name.name}`.replace(/\/$/, ''), 100);
      await this.emit(
        header('x', { prefix: '', name: paxName }, '', {
          mode: 0o644, uid: 0, gid: 0, sizeBytes: data.length, mtimeSec, devMajor: 0, devMinor: 0,
        }),
      );
      await this.emit(data);
      await this.pad(data.length);
    }
    await this.emit(
      header(TYPEFLAG[entry.type], name, linkField, {
        mode: entry.mode & 0o7777,
        uid: uidField,
        gid: gidField,
        sizeBytes: sizeField,
        mtimeSec,
        devMajor: entry.devMajor ?? 0,
        devMinor: entry.devMinor ?? 0,
      }),
    );
    if (!isFile || sizeBytes === 0) return;
    if (body === undefined) throw dmfsError('INVALID', `tar: no body for ${path}`);
    let written = 0;
    const chunks: AsyncIterable<Buffer> | Buffer[] = Buffer.isBuffer(body) ? [body] : body;
    for await (const chunk of chunks) {
      if (written + chunk.length > sizeBytes) throw dmfsError('INVALID', `tar: body of ${path} is longer than ${sizeBytes} bytes`);
      written += chunk.length;
      if (chunk.length > 0) await this.emit(chunk);
    }
    if (written !== sizeBytes) throw dmfsError('INVALID', `tar: body of ${path} is ${written} bytes, not ${sizeBytes}`);
    await this.pad(sizeBytes);
  }

  private async pad(sizeBytes: number): Promise<void> {
    const rest = sizeBytes % TAR_BLOCK_BYTES;
    if (rest !== 0) await this.emit(ZERO_BLOCK.subarray(0, TAR_BLOCK_BYTES - rest));
  }

  /** Writes the end-of-archive marker (two zero blocks). */
  async finish(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    await this.emit(Buffer.alloc(2 * TAR_BLOCK_BYTES));
  }
}

function truncateUtf8(s: string, maxBytes: number): string {
  let out = s;
  while (Buffer.byteLength(out) > maxBytes) out = out.slice(0, -1);
  return out;
}

/** Linux makedev / major / minor (glibc encoding). */
export function makedev(major: number, minor: number): number {
  return Number(
    ((BigInt(major) & 0xfffn) << 8n) |
      (BigInt(minor) & 0xffn) |
      ((BigInt(minor) & ~0xffn) << 12n) |
      ((BigInt(major) & ~0xfffn) << 32n),
  );
}

export function devMajorOf(rdev: number): number {
  const d = BigInt(rdev);
  return Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn));
}

export function devMinorOf(rdev: number): number {
  const d = BigInt(rdev);
  return Number((d & 0xffn) | ((d >> 12n) & ~0xffn));
}
