/**
 * Read access to the files of an image as a tree of relative paths, whether the image
 * is a directory (OCI layout, extracted `docker save`) or an uncompressed tar archive
 * of one (indexed once, then read by byte range). Paths are checked: no `..`, no
 * absolute paths, regular files only (a FIFO or device posing as a blob would block or
 * never end).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { dmfsError } from '../errors';
import { ByteReader } from './byte-reader';
import { DigestTap, parseDigest } from './digest';
import { readTar } from './tar-reader';

export interface BlobAccess {
  /** Where the image lives, for messages. */
  readonly description: string;
  /** Size of the file at `relPath`, or null when there is none. */
  stat(relPath: string): Promise<number | null>;
  /** The bytes of the file at `relPath` (NOT_FOUND when absent). */
  read(relPath: string): AsyncIterable<Buffer>;
  close(): Promise<void>;
}

/** Normalises an in-image path ('./a//b' → 'a/b'); refuses '..' and empty names. */
export function normaliseMember(relPath: string): string {
  const parts: string[] = [];
  for (const p of relPath.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') throw dmfsError('UNSAFE_PATH', `image path ${JSON.stringify(relPath)} escapes the image`);
    parts.push(p);
  }
  if (parts.length === 0) throw dmfsError('BAD_IMAGE', `empty image path ${JSON.stringify(relPath)}`);
  return parts.join('/');
}

/** `blobs/<algorithm>/<hex>` for a validated digest. */
export function blobPath(digest: unknown, what = 'digest'): string {
  const d = parseDigest(digest, what);
  return `blobs/${d.algorithm}/${d.hex}`;
}

export class DirAccess implements BlobAccess {
  readonly description: string;

  constructor(private readonly root: string) {
    this.description = root;
  }

  private full(relPath: string): string {
    return path.join(this.root, ...normaliseMember(relPath).split('/'));
  }

  async stat(relPath: string): Promise<number | null> {
    try {
      const st = await fs.promises.stat(this.full(relPath));
      if (!st.isFile()) throw dmfsError('BAD_IMAGE', `${relPath} in ${this.root} is not a regular file`);
      return st.size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  async *read(relPath: string): AsyncGenerator<Buffer> {
    if ((await this.stat(relPath)) === null) throw dmfsError('NOT_FOUND', `${relPath} not found in ${this.root}`);
    yield* fs.createReadStream(this.full(relPath), { highWaterMark: 256 * 1024 }) as AsyncIterable<Buffer>;
  }

  async close(): Promise<void> {}
}

interface Member {
  type: 'file' | 'hardlink' | 'symlink' | 'other';
  dataOffsetBytes: number;
  sizeBytes: number;
  linkPath: string;
}

export interface TarIndexResult {
  members: Map<string, Member>;
  /** False when indexing stopped early at `maxMembers`. */
  complete: boolean;
  /** sha256 of the whole file, when the index read it all. */
  digest: string | null;
  sizeBytes: number;
}

/**
 * Longest member name indexed. An image archive's own files have short names
 * (`blobs/sha256/<hex>`, `<id>/layer.tar`, `manifest.json`); a layer tar may hold paths
 * of many KiB (a tree 10,000 levels deep), and keeping those would cost memory in the
 * square of the depth for nothing.
 */
const MAX_MEMBER_NAME_CHARS = 1024;

/**
 * Reads the member list of an uncompressed tar file (and hashes the file on the way).
 * At most `maxMembers` entries (counting the unindexed long names) before it gives up.
 */
export async function indexTarFile(file: string, maxMembers: number): Promise<TarIndexResult> {
  const tap = new DigestTap();
  const reader = ByteReader.from(tap.tap(fs.createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>));
  const members = new Map<string, Member>();
  let complete = true;
  let seen = 0;
  try {
    for await (const { entry } of readTar(reader)) {
      if (seen++ >= maxMembers) {
        complete = false;
        break;
      }
      if (entry.path.length > MAX_MEMBER_NAME_CHARS) continue;
      let name: string;
      try {
        name = normaliseMember(entry.path);
      } catch {
        continue; // '.' or similar: not an addressable member.
      }
      members.set(name, {
        type: entry.type === 'file' || entry.type === 'hardlink' || entry.type === 'symlink' ? entry.type : 'other',
        dataOffsetBytes: entry.dataOffsetBytes,
        sizeBytes: entry.type === 'file' ? entry.sizeBytes : 0,
        linkPath: entry.linkPath,
      });
      if (entry.type === 'file' && entry.sparse) members.get(name)!.type = 'other';
    }
    if (complete) await reader.drain();
  } finally {
    await reader.close();
  }
  return { members, complete, digest: complete ? tap.digest() : null, sizeBytes: tap.sizeBytes };
}

export class TarAccess implements BlobAccess {
  readonly description: string;

  constructor(private readonly file: string, private readonly members: Map<string, Member>, private readonly cleanup?: () => Promise<void>) {
    this.description = file;
  }

  has(relPath: string): boolean {
    return this.members.has(relPath);
  }

  private resolve(relPath: string): Member | null {
    let name = normaliseMember(relPath);
    for (let hops = 0; hops < 16; hops++) {
      const m = this.members.get(name);
      if (!m) return null;
      if (m.type === 'file') return m;
      if (m.type === 'hardlink') name = normaliseMember(m.linkPath);
      else if (m.type === 'symlink') {
        const dir = name.includes('/') ? name.slice(0, name.lastIndexOf('/')) : '';
        if (m.linkPath.startsWith('/')) throw dmfsError('UNSAFE_PATH', `${relPath} links outside the archive`);
        name = normaliseMember(path.posix.normalize(`${dir}/${m.linkPath}`).replace(/^\/+/, ''));
      } else throw dmfsError('BAD_IMAGE', `${relPath} in ${this.file} is not a regular file`);
    }
    throw dmfsError('LOOP', `${relPath} in ${this.file}: too many links`);
  }

  async stat(relPath: string): Promise<number | null> {
    return this.resolve(relPath)?.sizeBytes ?? null;
  }

  async *read(relPath: string): AsyncGenerator<Buffer> {
    const m = this.resolve(relPath);
    if (!m) throw dmfsError('NOT_FOUND', `${relPath} not found in ${this.file}`);
    if (m.sizeBytes === 0) return;
    yield* fs.createReadStream(this.file, {
      start: m.dataOffsetBytes,
      end: m.dataOffsetBytes + m.sizeBytes - 1,
      highWaterMark: 256 * 1024,
    }) as AsyncIterable<Buffer>;
  }

  async close(): Promise<void> {
    await this.cleanup?.();
  }
}

/** Reads a small file whole (JSON documents), refusing more than `maxBytes`, checking `digest` when given. */
export async function readSmall(access: BlobAccess, relPath: string, maxBytes: number, digest?: string): Promise<Buffer> {
  const size = await access.stat(relPath);
  if (size === null) throw dmfsError('BAD_IMAGE', `${relPath} is missing from ${access.description}`);
  if (size > maxBytes) throw dmfsError('BAD_IMAGE', `${relPath} is ${size} bytes, more than the ${maxBytes} allowed`);
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of access.read(relPath)) {
    n += c.length;
    if (n > maxBytes) throw dmfsError('BAD_IMAGE', `${relPath} is larger than ${maxBytes} bytes`);
    chunks.push(c);
  }
  const data = Buffer.concat(chunks);
  if (digest !== undefined) {
    const d = parseDigest(digest);
    const tap = new DigestTap(d.algorithm);
    tap.update(data);
    if (tap.digest() !== digest) {
      throw dmfsError('BAD_IMAGE', `${relPath}: digest mismatch (expected ${digest}, got ${tap.digest()})`);
    }
  }
  return data;
}

export function parseJson(data: Buffer, what: string): unknown {
  try {
    return JSON.parse(data.toString('utf8'));
  } catch (err) {
    throw dmfsError('BAD_IMAGE', `${what} is not valid JSON`, err);
  }
}
