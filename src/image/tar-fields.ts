/**
 * Field parsers of tar headers and their extensions (ustar numeric fields, checksums, pax
 * records and times, libarchive xattr names, sparse maps), strict and bounded: untrusted
 * input (see tar-reader.ts). Every error is BAD_IMAGE naming the byte offset.
 */
import { dmfsError, DmfsError } from '../errors';
import type { SparseSegment } from './tar-reader';

/** Tar's unit: headers and content are whole 512-byte blocks. */
export const TAR_BLOCK_BYTES = 512;
const MAX_ID = 0xffffffff;

const utf8 = new TextDecoder('utf-8', { fatal: true });

export function bad(message: string, offsetBytes?: number, cause?: unknown): DmfsError {
  const where = offsetBytes === undefined ? '' : ` (at byte ${offsetBytes})`;
  return dmfsError('BAD_IMAGE', `tar: ${message}${where}`, cause);
}

export function truncated(offsetBytes: number): DmfsError {
  return bad('archive is truncated', offsetBytes);
}

export function decodeUtf8(bytes: Buffer, what: string, offsetBytes?: number): string {
  let s: string;
  try {
    s = utf8.decode(bytes);
  } catch (err) {
    throw bad(`${what} is not valid UTF-8`, offsetBytes, err);
  }
  if (s.includes('\0')) throw bad(`${what} contains a NUL byte`, offsetBytes);
  return s;
}

export function cString(block: Buffer, begin: number, end: number): Buffer {
  const field = block.subarray(begin, end);
  const nul = field.indexOf(0);
  return nul < 0 ? field : field.subarray(0, nul);
}

/** A numeric header field: octal ASCII (space/NUL terminated) or GNU base-256. */
export function parseNumericField(block: Buffer, begin: number, end: number, what: string, offsetBytes: number): bigint {
  const field = block.subarray(begin, end);
  if (field[0] & 0x80) {
    // GNU base-256, big-endian two's complement.
    const negative = (field[0] & 0x40) !== 0;
    let v = BigInt(field[0] & (negative ? 0xff : 0x7f));
    for (let i = 1; i < field.length; i++) v = (v << 8n) | BigInt(field[i]);
    if (negative) v -= 1n << BigInt(8 * field.length);
    return v;
  }
  let i = 0;
  while (i < field.length && (field[i] === 0x20 || field[i] === 0)) {
    if (field[i] === 0 && field.subarray(i).every((b) => b === 0)) return 0n;
    i++;
  }
  let v = 0n;
  let digits = 0;
  while (i < field.length && field[i] >= 0x30 && field[i] <= 0x37) {
    v = v * 8n + BigInt(field[i] - 0x30);
    i++;
    digits++;
  }
  for (; i < field.length; i++) {
    if (field[i] !== 0 && field[i] !== 0x20) throw bad(`header field ${what} is not a number`, offsetBytes);
  }
  if (digits === 0) return 0n;
  return v;
}

export function toSafeCount(v: bigint, what: string, offsetBytes: number): number {
  if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`absurd ${what} ${v}`, offsetBytes);
  return Number(v);
}

export function toId(v: bigint, what: string, offsetBytes: number): number {
  if (v < 0n || v > BigInt(MAX_ID)) throw bad(`${what} ${v} out of range`, offsetBytes);
  return Number(v);
}

export function verifyChecksum(block: Buffer, offsetBytes: number): void {
  const stored = parseNumericField(block, 148, 156, 'chksum', offsetBytes);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < TAR_BLOCK_BYTES; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : block[i];
    unsigned += b;
    signed += b >= 0x80 ? b - 0x100 : b;
  }
  if (stored !== BigInt(unsigned) && stored !== BigInt(signed)) {
    throw bad(`header checksum mismatch (stored ${stored}, computed ${unsigned})`, offsetBytes);
  }
}

export function isZeroBlock(block: Buffer): boolean {
  for (let i = 0; i < block.length; i++) if (block[i] !== 0) return false;
  return true;
}

export interface PaxRecord {
  key: string;
  value: Buffer;
}

/** Parses `"%d %s=%s\n"` records; the length counts the whole record. */
export function parsePaxRecords(data: Buffer, offsetBytes: number): PaxRecord[] {
  const out: PaxRecord[] = [];
  let pos = 0;
  while (pos < data.length) {
    if (data[pos] === 0) {
      // Some writers pad the record area with NULs.
      if (data.subarray(pos).every((b) => b === 0)) break;
      throw bad('malformed pax record', offsetBytes);
    }
    const space = data.indexOf(0x20, pos);
    if (space < 0 || space - pos > 20 || space === pos) throw bad('malformed pax record length', offsetBytes);
    const lenText = data.toString('latin1', pos, space);
    if (!/^[0-9]+$/.test(lenText)) throw bad('malformed pax record length', offsetBytes);
    const len = Number(lenText);
    const end = pos + len;
    if (len <= space - pos + 1 || end > data.length || data[end - 1] !== 0x0a) {
      throw bad('malformed pax record', offsetBytes);
    }
    const eq = data.indexOf(0x3d, space + 1);
    if (eq < 0 || eq >= end - 1 || eq === space + 1) throw bad('malformed pax record (no key)', offsetBytes);
    const key = decodeUtf8(data.subarray(space + 1, eq), 'pax record key', offsetBytes);
    out.push({ key, value: data.subarray(eq + 1, end - 1) });
    pos = end;
  }
  return out;
}

/** Pax time: `[-]seconds[.fraction]` to nanoseconds. */
export function parsePaxTime(text: string, what: string, offsetBytes: number): bigint {
  const m = /^(-?)([0-9]{1,19})(?:\.([0-9]+))?$/.exec(text);
  if (!m) throw bad(`pax ${what} "${text}" is not a time`, offsetBytes);
  const frac = (m[3] ?? '').slice(0, 9).padEnd(9, '0');
  const ns = BigInt(m[2]) * 1_000_000_000n + BigInt(frac);
  return m[1] === '-' ? -ns : ns;
}

export function paxDecimal(value: Buffer, what: string, offsetBytes: number): bigint {
  const text = value.toString('latin1');
  if (!/^[0-9]{1,20}$/.test(text)) throw bad(`pax ${what} "${text.slice(0, 40)}" is not a number`, offsetBytes);
  return BigInt(text);
}

export function decodeLibarchiveXattrName(encoded: string, offsetBytes: number): string {
  try {
    return decodeURIComponent(encoded);
  } catch (err) {
    throw bad('malformed LIBARCHIVE.xattr name', offsetBytes, err);
  }
}

export function checkSparse(segments: SparseSegment[], realSizeBytes: number, storedBytes: number, offsetBytes: number): void {
  let end = 0;
  let sum = 0;
  for (const s of segments) {
    if (s.offsetBytes < end) throw bad('sparse map is not ascending', offsetBytes);
    if (s.offsetBytes + s.sizeBytes > realSizeBytes) throw bad('sparse map exceeds the file size', offsetBytes);
    end = s.offsetBytes + s.sizeBytes;
    sum += s.sizeBytes;
  }
  if (sum !== storedBytes) throw bad(`sparse map covers ${sum} bytes but the entry stores ${storedBytes}`, offsetBytes);
}
