/**
 * A plain directory as a stream of layer entries (what `tar -C DIR .` would hold), so
 * a root filesystem on disk imports through the same `LayerApplier` as a tar layer.
 * Walks with lstat and opens files with O_NOFOLLOW: symlinks are stored, never
 * followed. Hard links (same device and inode) become hardlink entries. Sockets are
 * skipped (tar cannot hold them either). Extended attributes are not read (Node has
 * no xattr API): TODO read them once a native xattr call exists in the native seam.
 */
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

async function* fileBody(file: string, sizeBytes: number): AsyncGenerator<TarChunk> {
  let offset = 0;
  if (sizeBytes === 0) return;
  const fd = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  const stream = fd.createReadStream({ highWaterMark: 1 << 20 });
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

/** Entries of `root` in tar order (parents first, names sorted), the root itself first as '.'. */
export async function* walkDirectory(root: string): AsyncGenerator<TarItem> {
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
      xattrs: new Map(),
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
