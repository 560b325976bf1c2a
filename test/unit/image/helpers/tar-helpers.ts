import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { readTar, TarEntry } from '../../../../src/image/tar-reader';
import { TarWriter, TarWriteEntry } from '../../../../src/image/tar-writer';

/** Yields `buf` in pieces of varying size, to exercise every chunk boundary case. */
export async function* chunked(buf: Buffer, seed = 7): AsyncGenerator<Buffer> {
  let x = seed;
  let pos = 0;
  while (pos < buf.length) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    const n = 1 + (x % 1500);
    yield buf.subarray(pos, pos + n);
    pos += n;
  }
}

export interface ReadEntry {
  entry: TarEntry;
  /** Content with holes filled with zeros. */
  data: Buffer;
}

export async function readAll(src: Buffer | AsyncIterable<Buffer>): Promise<ReadEntry[]> {
  const out: ReadEntry[] = [];
  for await (const { entry, body } of readTar(Buffer.isBuffer(src) ? chunked(src) : src)) {
    const data = Buffer.alloc(entry.type === 'file' ? entry.sizeBytes : 0);
    for await (const c of body) c.data.copy(data, c.offsetBytes);
    out.push({ entry, data });
  }
  return out;
}

export async function writeTar(entries: { e: TarWriteEntry; body?: Buffer }[], finish = true): Promise<Buffer> {
  const parts: Buffer[] = [];
  const w = new TarWriter((c) => {
    parts.push(Buffer.from(c));
  });
  for (const { e, body } of entries) await w.add(e, body);
  if (finish) await w.finish();
  return Buffer.concat(parts);
}

export function tmpdir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `dmfs-${prefix}-`));
}

export function sh(cmd: string, args: string[], opts: { cwd?: string; input?: Buffer } = {}): Buffer {
  return execFileSync(cmd, args, { cwd: opts.cwd, input: opts.input, maxBuffer: 1 << 30, stdio: ['pipe', 'pipe', 'pipe'] });
}

/** A ustar header block with a correct checksum, for hand-made hostile archives. */
export function rawHeader(fields: {
  name: string; typeflag?: string; size?: number | Buffer; mode?: number; linkname?: string;
  magic?: 'ustar' | 'gnu' | 'v7'; prefix?: string; nameBytes?: Buffer;
}): Buffer {
  const b = Buffer.alloc(512);
  if (fields.nameBytes) fields.nameBytes.copy(b, 0, 0, Math.min(100, fields.nameBytes.length));
  else b.write(fields.name, 0, 100, 'utf8');
  b.write((fields.mode ?? 0o644).toString(8).padStart(7, '0') + '\0', 100, 'latin1');
  b.write('0000000\0', 108, 'latin1');
  b.write('0000000\0', 116, 'latin1');
  if (Buffer.isBuffer(fields.size)) fields.size.copy(b, 124, 0, 12);
  else b.write((fields.size ?? 0).toString(8).padStart(11, '0') + '\0', 124, 'latin1');
  b.write('14000000000\0', 136, 'latin1');
  b.write(fields.typeflag ?? '0', 156, 'latin1');
  if (fields.linkname) b.write(fields.linkname, 157, 100, 'utf8');
  const magic = fields.magic ?? 'ustar';
  if (magic === 'ustar') b.write('ustar\x0000', 257, 'latin1');
  if (magic === 'gnu') b.write('ustar  \0', 257, 'latin1');
  if (fields.prefix) b.write(fields.prefix, 345, 155, 'utf8');
  fixChecksum(b);
  return b;
}

export function fixChecksum(b: Buffer, at = 0): void {
  b.fill(0x20, at + 148, at + 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += b[at + i];
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', at + 148, 'latin1');
}

export function pad512(data: Buffer): Buffer {
  const rest = data.length % 512;
  return rest === 0 ? data : Buffer.concat([data, Buffer.alloc(512 - rest)]);
}

export function paxBlock(name: string, records: Record<string, string | Buffer>): Buffer {
  const body = Buffer.concat(Object.entries(records).map(([k, v]) => {
    const kv = Buffer.concat([Buffer.from(` ${k}=`), Buffer.isBuffer(v) ? v : Buffer.from(v), Buffer.from('\n')]);
    let len = kv.length + 1;
    while (String(len).length + kv.length !== len) len = String(len).length + kv.length;
    return Buffer.concat([Buffer.from(String(len)), kv]);
  }));
  return Buffer.concat([rawHeader({ name, typeflag: 'x', size: body.length }), pad512(body)]);
}

export const END = Buffer.alloc(1024);

/** The error code a promise rejects with, or 'no error'. */
export async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    return (err as { code: string }).code;
  }
  return 'no error';
}
