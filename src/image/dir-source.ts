/**
 * A plain directory as a stream of layer entries (what `tar -C DIR .` would hold), so
 * a root filesystem on disk imports through the same `LayerApplier` as a tar layer.
 * Walks with lstat and opens files with O_NOFOLLOW: symlinks are stored, never
 * followed. Hard links (same device and inode) become hardlink entries. Sockets are
 * skipped (tar cannot hold them either). Extended attributes in the user, trusted and
 * security namespaces (e.g. security.capability) are read in one `getfattr -R` pass
 * (Debian's attr package; Node has no xattr API); without getfattr they are left out.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { dmfsError } from '../errors';
import type { TarChunk, TarEntry, TarEntryType, TarItem } from './tar-reader';

function typeOf(st: fs.BigIntStats): TarEntryType | null {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'chardev';
  if (st.isBlockDevice()) return 'blockdev';
  if (st.isFIFO()) return 'fifo';
  return null;
}

function major(rdev: bigint): number {
  return Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
}

function minor(rdev: bigint): number {
  return Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
}

/** Largest read of a file's content. */
const READ_CHUNK_BYTES = 1 << 20;

async function* fileBody(file: string, sizeBytes: number): AsyncGenerator<TarChunk> {
  let offset = 0;
  if (sizeBytes === 0) return;
  const fd = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  // Each read allocates a fresh highWaterMark-sized buffer: sized to the file, small files
  // do not allocate 1 MiB each (11 GB of short-lived buffers for a 193 MB rootfs, which
  // kept V8 in back-to-back mark-compacts).
  const stream = fd.createReadStream({ highWaterMark: Math.min(READ_CHUNK_BYTES, sizeBytes) });
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      const take = Math.min(chunk.length, sizeBytes - offset);
      if (take > 0) yield { offsetBytes: offset, data: chunk.subarray(0, take) };
      offset += take;
      if (offset >= sizeBytes) break;
    }
  } finally {
    stream.destroy();
  }
  if (offset < sizeBytes) throw dmfsError('BAD_IMAGE', `${file} shrank while being imported`);
}

const KEPT_XATTR = /^(user|trusted|security)\./;

/** getfattr's escaping of file names: `\ooo` octal bytes. */
function unescapeGetfattrName(text: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const m = text[i] === '\\' ? /^[0-7]{3}/.exec(text.slice(i + 1)) : null;
    if (m) {
      bytes.push(parseInt(m[0], 8));
      i += 3;
    } else for (const b of Buffer.from(text[i])) bytes.push(b);
  }
  return Buffer.from(bytes).toString('utf8');
}

/** Parses `getfattr -d -e base64 --absolute-names` output: absolute path -> name -> value. */
export function parseGetfattr(text: string): Map<string, Map<string, Buffer>> {
  const out = new Map<string, Map<string, Buffer>>();
  let cur: Map<string, Buffer> | null = null;
  for (const line of text.split('\n')) {
    if (line.startsWith('# file: ')) {
      cur = new Map();
      out.set(unescapeGetfattrName(line.slice(8)), cur);
      continue;
    }
    const eq = line.indexOf('=');
    if (!cur || eq <= 0) continue;
    const name = line.slice(0, eq);
    const raw = line.slice(eq + 1);
    if (!KEPT_XATTR.test(name)) continue;
    const value = raw.startsWith('0s') ? Buffer.from(raw.slice(2), 'base64')
      : raw.startsWith('0x') ? Buffer.from(raw.slice(2), 'hex')
      : Buffer.from(raw.replace(/^"|"$/g, ''));
    cur.set(name, value);
  }
  return out;
}

/** Every kept xattr under root (one getfattr pass); empty when getfattr is not installed. */
async function readXattrs(root: string): Promise<Map<string, Map<string, Buffer>>> {
  return new Promise((resolve) => {
    const child = spawn('getfattr', ['-R', '-P', '-d', '-m', '-', '-e', 'base64', '--absolute-names', root], { stdio: ['ignore', 'pipe', 'ignore'] });
    const chunks: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => chunks.push(d));
    child.on('error', () => resolve(new Map()));
    // A non-zero exit (an unreadable file) still leaves what it could read.
    child.on('close', () => resolve(parseGetfattr(Buffer.concat(chunks).toString('utf8'))));
  });
}

/** Entries of `root` in tar order (parents first, names sorted), the root itself first as '.'. */
export async function* walkDirectory(rootArg: string): AsyncGenerator<TarItem> {
  const root = path.resolve(rootArg);
  const xattrs = await readXattrs(root);
  const links = new Map<string, string>();
  const empty = async function* (): AsyncGenerator<TarChunk> {};

  const itemFor = async (abs: string, rel: string, st: fs.BigIntStats): Promise<TarItem | null> => {
    let type = typeOf(st);
    if (type === null) return null;
    let linkPath = '';
    if (type === 'symlink') linkPath = await fs.promises.readlink(abs);
    if (type !== 'dir' && st.nlink > 1n) {
      const key = `${st.dev}:${st.ino}`;
      const first = links.get(key);
      if (first !== undefined) {
        type = 'hardlink';
        linkPath = first;
      } else links.set(key, rel);
    }
    const entry: TarEntry = {
      type,
      path: rel,
      linkPath,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      uname: '',
      gname: '',
      sizeBytes: type === 'file' ? Number(st.size) : 0,
      mtimeNs: st.mtimeNs,
      atimeNs: st.atimeNs,
      devMajor: type === 'chardev' || type === 'blockdev' ? major(st.rdev) : 0,
      devMinor: type === 'chardev' || type === 'blockdev' ? minor(st.rdev) : 0,
      xattrs: type === 'hardlink' ? new Map() : xattrs.get(abs) ?? new Map(),
      sparse: null,
      headerOffsetBytes: 0,
      dataOffsetBytes: 0,
    };
    return { entry, body: type === 'file' ? fileBody(abs, entry.sizeBytes) : empty() };
  };

  const rootStat = await fs.promises.lstat(root, { bigint: true });
  if (!rootStat.isDirectory()) throw dmfsError('NOT_DIR', `${root} is not a directory`);
  yield (await itemFor(root, '.', rootStat))!;

  // Depth-first with an explicit stack of directories still to list.
  const stack: string[] = [''];
  while (stack.length > 0) {
    const rel = stack.pop()!;
    const abs = rel === '' ? root : path.join(root, rel);
    const names = (await fs.promises.readdir(abs)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    const subdirs: string[] = [];
    for (const name of names) {
      const childRel = rel === '' ? name : `${rel}/${name}`;
      const childAbs = path.join(abs, name);
      const st = await fs.promises.lstat(childAbs, { bigint: true });
      const item = await itemFor(childAbs, childRel, st);
      if (item === null) continue;
      yield item;
      if (item.entry.type === 'dir') subdirs.push(childRel);
    }
    for (let i = subdirs.length - 1; i >= 0; i--) stack.push(subdirs[i]);
  }
}
