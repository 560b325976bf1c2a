/**
 * A layer as an OCI layer tar.
 *
 * - Changes (default): what `LayerFs.changes()` reports, never a walk of whole trees:
 *   added/modified entries with their attributes, xattrs and content; `deleted` as a
 *   `.wh.NAME` whiteout; `opaque` as `DIR/.wh..wh..opq`. A directory added where the
 *   parent layer has a directory of the same path (removed and made anew, so a new
 *   inode) also gets an opaque marker: otherwise the lower entries would show through
 *   when the tar is applied.
 * - Full (`--full`): the flattened tree of the layer and all below it, no whiteouts.
 *
 * Deterministic: entries sorted by path (parents first), attributes from the store,
 * the tar writer's fixed encoding. Files with several names in the output: the first
 * name carries the content and the others are hard links to it. Sockets are skipped
 * (tar has no type for them).
 */
import { dmfsError } from '../errors';
import type { Attr, LayerFs, LayerStore } from '../store/layer-store';
import { OPAQUE_MARKER, WHITEOUT_PREFIX } from './entry-path';
import { devMajorOf, devMinorOf, TarSink, TarWriteEntry, TarWriter } from './tar-writer';

const READ_CHUNK_BYTES = 1 << 20;

export interface ExportOptions {
  /** The flattened tree instead of the layer's changes. */
  full?: boolean;
}

export interface ExportStats {
  entries: number;
  whiteouts: number;
  opaques: number;
  contentBytes: number;
  tarBytes: number;
}

type Planned =
  | { kind: 'node'; path: string; attr: Attr }
  | { kind: 'whiteout'; path: string }
  | { kind: 'opaque'; path: string };

function rel(path: string): string {
  return path.replace(/^\/+/, '');
}

function join(dir: string, name: string): string {
  return dir === '/' || dir === '' ? `/${name}` : `${dir}/${name}`;
}

async function* fileContent(fs: LayerFs, attr: Attr, path: string): AsyncGenerator<Buffer> {
  let offset = 0;
  while (offset < attr.sizeBytes) {
    const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK_BYTES, attr.sizeBytes - offset));
    const n = await fs.read(attr.ino, buf, offset);
    if (n <= 0) throw dmfsError('IO_ERROR', `${path} ended at ${offset} of ${attr.sizeBytes} bytes while exporting`);
    offset += n;
    yield n === buf.length ? buf : buf.subarray(0, n);
  }
}

async function xattrsOf(fs: LayerFs, ino: number): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const name of (await fs.listxattr(ino)).sort()) {
    const v = await fs.getxattr(ino, name);
    if (v !== null) out.set(name, v);
  }
  return out;
}

async function sameContent(a: LayerFs, aAttr: Attr, b: LayerFs, bAttr: Attr): Promise<boolean> {
  if (aAttr.sizeBytes !== bAttr.sizeBytes) return false;
  const x = Buffer.allocUnsafe(READ_CHUNK_BYTES);
  const y = Buffer.allocUnsafe(READ_CHUNK_BYTES);
  for (let off = 0; off < aAttr.sizeBytes; off += READ_CHUNK_BYTES) {
    const want = Math.min(READ_CHUNK_BYTES, aAttr.sizeBytes - off);
    const n = await a.read(aAttr.ino, x.subarray(0, want), off);
    const m = await b.read(bAttr.ino, y.subarray(0, want), off);
    if (n !== m || !x.subarray(0, n).equals(y.subarray(0, m))) return false;
  }
  return true;
}

async function sameXattrs(a: LayerFs, aIno: number, b: LayerFs, bIno: number): Promise<boolean> {
  const ax = await xattrsOf(a, aIno);
  const bx = await xattrsOf(b, bIno);
  if (ax.size !== bx.size) return false;
  for (const [k, v] of ax) if (!bx.get(k)?.equals(v)) return false;
  return true;
}

/**
 * True when a `modified` non-directory differs from the parent layer's only in what a
 * tar cannot carry anyway (link count, ctime): e.g. another name of it was unlinked.
 * Emitting it would replace the file and cut it off from its other names.
 */
async function onlyLinkCountChanged(fs: LayerFs, attr: Attr, path: string, parentFs: LayerFs): Promise<boolean> {
  let lower: Attr;
  try {
    lower = await parentFs.resolve(path);
  } catch {
    return false;
  }
  if (lower.ino !== attr.ino || lower.kind !== attr.kind) return false;
  if (lower.mode !== attr.mode || lower.uid !== attr.uid || lower.gid !== attr.gid || lower.rdev !== attr.rdev) return false;
  if (lower.mtimeNs !== attr.mtimeNs || lower.sizeBytes !== attr.sizeBytes) return false;
  if (!(await sameXattrs(fs, attr.ino, parentFs, lower.ino))) return false;
  if (attr.kind === 'symlink') return (await fs.readlink(attr.ino)) === (await parentFs.readlink(lower.ino));
  if (attr.kind === 'file') return sameContent(fs, attr, parentFs, lower);
  return true;
}

/** Every name of each inode in `inos`, found by one walk of the layer's merged tree. */
async function namesOf(fs: LayerFs, inos: Set<number>): Promise<Map<number, { path: string; attr: Attr }[]>> {
  const out = new Map<number, { path: string; attr: Attr }[]>();
  const visit = async (dirIno: number, dirPath: string): Promise<void> => {
    for (const e of await fs.readdir(dirIno)) {
      const p = join(dirPath, e.name);
      if (e.kind === 'dir') await visit(e.ino, p);
      else if (inos.has(e.ino)) {
        if (!out.has(e.ino)) out.set(e.ino, []);
        out.get(e.ino)!.push({ path: p, attr: await fs.getattr(e.ino) });
      }
    }
  };
  await visit(fs.rootIno, '/');
  return out;
}

/** Plans the entries of a layer's changes, in output order. */
async function planChanges(fs: LayerFs, parentFs: LayerFs | null): Promise<Planned[]> {
  const plan: Planned[] = [];
  const opaque = new Set<string>();
  const nodes: { path: string; attr: Attr; change: string }[] = [];
  for await (const c of fs.changes()) {
    if (c.change === 'opaque') opaque.add(c.path);
    else if (c.change === 'deleted') plan.push({ kind: 'whiteout', path: c.path });
    else if (c.path !== '/' && c.attr) nodes.push({ path: c.path, attr: c.attr, change: c.change });
  }
  const planned = new Set<string>();
  for (const n of nodes) {
    if (n.change === 'modified' && n.attr.kind !== 'dir' && parentFs !== null && (await onlyLinkCountChanged(fs, n.attr, n.path, parentFs))) {
      continue;
    }
    plan.push({ kind: 'node', path: n.path, attr: n.attr });
    planned.add(n.path);
    if (n.attr.kind === 'dir' && n.change === 'added' && !opaque.has(n.path) && parentFs !== null) {
      // A new directory over a lower one of the same path: the lower entries must not show.
      try {
        const lower = await parentFs.resolve(n.path);
        if (lower.kind === 'dir') opaque.add(n.path);
      } catch {
        // Nothing below: nothing to hide.
      }
    }
  }
  // A changed file with several names: every name goes in, so applying the tar keeps
  // them one inode (the first carries the content, the others link to it).
  const counts = new Map<number, { nlink: number; seen: number }>();
  for (const p of plan) {
    if (p.kind !== 'node' || p.attr.kind === 'dir' || p.attr.nlink < 2) continue;
    const c = counts.get(p.attr.ino) ?? { nlink: p.attr.nlink, seen: 0 };
    c.seen++;
    counts.set(p.attr.ino, c);
  }
  const incomplete = new Set([...counts].filter(([, c]) => c.seen < c.nlink).map(([ino]) => ino));
  if (incomplete.size > 0) {
    for (const names of (await namesOf(fs, incomplete)).values()) {
      for (const { path, attr } of names) {
        if (!planned.has(path)) {
          plan.push({ kind: 'node', path, attr });
          planned.add(path);
        }
      }
    }
  }
  for (const p of opaque) plan.push({ kind: 'opaque', path: p });
  return sortPlan(plan);
}

function plannedPath(p: Planned): string {
  if (p.kind === 'node') return rel(p.path);
  const slash = p.path.lastIndexOf('/');
  if (p.kind === 'whiteout') return rel(`${p.path.slice(0, slash)}/${WHITEOUT_PREFIX}${p.path.slice(slash + 1)}`);
  return rel(p.path === '/' ? OPAQUE_MARKER : `${p.path}/${OPAQUE_MARKER}`);
}

/**
 * Tar order: parents before children, names byte-wise; a directory's opaque marker
 * right after the directory (its key is the directory's plus an empty component).
 */
function sortPlan(plan: Planned[]): Planned[] {
  const keyOf = (p: Planned): Buffer[] => {
    const comps = rel(p.path).split('/').filter((c) => c !== '');
    if (p.kind === 'opaque') comps.push('');
    else if (p.kind === 'whiteout') comps[comps.length - 1] = WHITEOUT_PREFIX + comps[comps.length - 1];
    return comps.map((c) => Buffer.from(c));
  };
  const keyed = plan.map((p) => ({ p, key: keyOf(p) }));
  keyed.sort((a, b) => {
    const n = Math.min(a.key.length, b.key.length);
    for (let i = 0; i < n; i++) {
      const c = Buffer.compare(a.key[i], b.key[i]);
      if (c !== 0) return c;
    }
    return a.key.length - b.key.length;
  });
  return keyed.map((k) => k.p);
}

/** Plans the flattened tree: every entry below the root, depth first, names sorted. */
async function planFull(fs: LayerFs): Promise<Planned[]> {
  const plan: Planned[] = [];
  const visit = async (dirIno: number, dirPath: string): Promise<void> => {
    const entries = (await fs.readdir(dirIno)).sort((a, b) => Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)));
    for (const e of entries) {
      const path = join(dirPath, e.name);
      const attr = await fs.getattr(e.ino);
      plan.push({ kind: 'node', path, attr });
      if (attr.kind === 'dir') await visit(e.ino, path);
    }
  };
  await visit(fs.rootIno, '/');
  return plan;
}

/** Writes the planned entries. */
async function writePlan(fs: LayerFs, plan: Planned[], writer: TarWriter): Promise<ExportStats> {
  const stats: ExportStats = { entries: 0, whiteouts: 0, opaques: 0, contentBytes: 0, tarBytes: 0 };
  const firstNameOf = new Map<number, string>();
  for (const p of plan) {
    const path = plannedPath(p);
    if (p.kind !== 'node') {
      await writer.add({ type: 'file', path, mode: 0o644, uid: 0, gid: 0, mtimeNs: 0n, sizeBytes: 0 });
      if (p.kind === 'whiteout') stats.whiteouts++;
      else stats.opaques++;
      stats.entries++;
      continue;
    }
    const a = p.attr;
    if (a.kind === 'socket') continue;
    const base: Omit<TarWriteEntry, 'type'> = {
      path, mode: a.mode & 0o7777, uid: a.uid, gid: a.gid, mtimeNs: a.mtimeNs, xattrs: await xattrsOf(fs, a.ino),
    };
    if (a.kind !== 'dir' && a.nlink > 1) {
      const first = firstNameOf.get(a.ino);
      if (first !== undefined) {
        await writer.add({ ...base, type: 'hardlink', linkPath: first, xattrs: undefined });
        stats.entries++;
        continue;
      }
      firstNameOf.set(a.ino, path);
    }
    switch (a.kind) {
      case 'dir':
        await writer.add({ ...base, type: 'dir' });
        break;
      case 'file': {
        // Read the size now: the change list's attributes may predate a later write.
        const cur = await fs.getattr(a.ino);
        await writer.add({ ...base, type: 'file', sizeBytes: cur.sizeBytes }, fileContent(fs, cur, path));
        stats.contentBytes += cur.sizeBytes;
        break;
      }
      case 'symlink':
        await writer.add({ ...base, type: 'symlink', linkPath: await fs.readlink(a.ino) });
        break;
      case 'chardev':
      case 'blockdev':
        await writer.add({ ...base, type: a.kind, devMajor: devMajorOf(a.rdev), devMinor: devMinorOf(a.rdev) });
        break;
      case 'fifo':
        await writer.add({ ...base, type: 'fifo' });
        break;
      default:
        continue;
    }
    stats.entries++;
  }
  await writer.finish();
  stats.tarBytes = writer.bytesWritten;
  return stats;
}

/** Writes layer `name` (its changes, or with `full` its flattened tree) as a tar to `sink`. */
export async function exportLayer(store: LayerStore, name: string, sink: TarSink, opts: ExportOptions = {}): Promise<ExportStats> {
  const info = await store.getLayer(name);
  const fs = await store.openLayer(name, { readOnly: true });
  let parentFs: LayerFs | null = null;
  try {
    let plan: Planned[];
    if (opts.full) plan = await planFull(fs);
    else {
      if (info.parent !== null) parentFs = await store.openLayer(info.parent, { readOnly: true });
      plan = await planChanges(fs, parentFs);
    }
    return await writePlan(fs, plan, new TarWriter(sink));
  } finally {
    await parentFs?.close();
    await fs.close();
  }
}
