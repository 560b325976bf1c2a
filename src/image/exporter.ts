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
import type { Attr, ChangeDir, DirEntry, LayerChange, LayerFs, LayerStore } from '../store/layer-store';
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

/** What goes out at one path of the plan. */
type Item = { kind: 'node'; attr: Attr } | { kind: 'whiteout' } | { kind: 'opaque' };

/** A planned entry with its tar path (relative, no leading '/'). */
interface Planned {
  path: string;
  item: Item;
}

/**
 * V8 keeps a substring (from `split`, `slice`) of 13 or more characters as a view of the
 * whole string: a name kept from a path 10,000 levels deep would keep that path alive.
 * Names the plan keeps are copied out.
 */
function ownCopy(name: string): string {
  return name.length < 13 ? name : Buffer.from(name, 'utf8').toString('utf8');
}

/**
 * The values (plan nodes, lower-layer entries) along the last path looked at, found again
 * for the next path by string prefix. Paths come in tree order, so the next one is nearly
 * always below one of them: a seek compares one prefix natively and steps through the
 * new components only, where splitting every path and walking it from the root would
 * cost the square of the depth of a deep tree.
 */
class PathCursor<T> {
  /** The last path, '/a/b' ('' for the root); stack[i].end is where its i-th prefix ends. */
  private path = '';
  private readonly stack: { end: number; value: T }[];

  constructor(root: T) {
    this.stack = [{ end: 0, value: root }];
  }

  /**
   * Moves to `path` (absolute, '/'-separated, no trailing '/'; '/' is the root): keeps the
   * values of the ancestors it shares with the last path and returns the deepest, with
   * the components still to step through (each then given to `push`, in order).
   */
  seek(path: string): { value: T; rest: string[] } {
    const p = path === '/' ? '' : path;
    if (p === this.path) return { value: this.stack[this.stack.length - 1].value, rest: [] };
    while (this.stack.length > 1) {
      const end = this.stack[this.stack.length - 1].end;
      const below = p.length === end || (p.length > end && p.charCodeAt(end) === 0x2f);
      if (below && p.startsWith(this.path.substring(0, end))) break;
      this.stack.pop();
    }
    const top = this.stack[this.stack.length - 1];
    this.path = p;
    return { value: top.value, rest: p.length > top.end ? p.substring(top.end + 1).split('/') : [] };
  }

  /** The value at the next component of the path last given to `seek` (callers push every one). */
  push(name: string, value: T): void {
    this.stack.push({ end: this.stack[this.stack.length - 1].end + 1 + name.length, value });
  }
}

/**
 * Values (plan nodes, lower-layer entries) of the directories changes name through
 * `LayerChange.at`: each directory is worked out once, from the nearest one already
 * known, so a tree of any depth costs one step per directory.
 */
class DirMemo<T> {
  private readonly known = new Map<ChangeDir, T>();

  constructor(private readonly root: T, private readonly step: (parent: T, name: string) => T | Promise<T>) {}

  async get(dir: ChangeDir): Promise<T> {
    const pending: ChangeDir[] = [];
    let cur: ChangeDir | null = dir;
    let value: T | undefined;
    while (cur !== null && (value = this.known.get(cur)) === undefined) {
      if (cur.parent === null) {
        value = this.root;
        this.known.set(cur, value);
        break;
      }
      pending.push(cur);
      cur = cur.parent;
    }
    let v = value as T;
    for (let i = pending.length - 1; i >= 0; i--) {
      v = await this.step(v, pending[i].name);
      this.known.set(pending[i], v);
    }
    return v;
  }
}

/** One name in the plan: the entry written at its path, if any, and the names below it. */
interface PlanNode {
  /** Its last tar path component ('.wh.NAME' for a whiteout, the marker for an opaque one). */
  tarName: string;
  /**
   * Order among siblings, byte-wise: the tar name, except '' for an opaque marker so that
   * it comes right after its directory.
   */
  sortKey: string;
  item: Item | null;
  children: Map<string, PlanNode> | null;
}

/**
 * The planned entries as a tree of names, written out depth first with siblings sorted:
 * parents before children, names byte-wise. A tree rather than a sorted list of paths:
 * memory stays linear in the entries however deep the tree (a list of whole paths, or
 * sort keys split from them, grows with the square of the depth).
 */
class PlanTree {
  private readonly root: PlanNode = { tarName: '', sortKey: '', item: null, children: null };
  private readonly cursor = new PathCursor<PlanNode>(this.root);
  private readonly dirs = new DirMemo<PlanNode>(this.root, (parent, name) => PlanTree.child(parent, name));

  private static child(parent: PlanNode, tarName: string, sortKey = tarName): PlanNode {
    parent.children ??= new Map();
    let next = parent.children.get(sortKey);
    if (next === undefined) {
      const name = ownCopy(tarName);
      next = { tarName: name, sortKey: sortKey === tarName ? name : sortKey, item: null, children: null };
      parent.children.set(next.sortKey, next);
    }
    return next;
  }

  /** The node of a change's path, made (empty) when missing. */
  private async nodeOf(c: LayerChange): Promise<PlanNode> {
    return c.at !== undefined ? PlanTree.child(await this.dirs.get(c.at.dir), c.at.name) : this.nodeAt(c.path);
  }

  /** The node of layer path `path` ('/a/b'), made (empty) when missing. */
  private nodeAt(path: string): PlanNode {
    let { value: cur, rest } = this.cursor.seek(path);
    for (const c of rest) {
      cur = PlanTree.child(cur, c);
      this.cursor.push(c, cur);
    }
    return cur;
  }

  /** The same by components, from the root (for walks that have no path strings). */
  private nodeAtComponents(components: readonly string[]): PlanNode {
    let cur = this.root;
    for (const c of components) cur = PlanTree.child(cur, c);
    return cur;
  }

  /** Plans a node at the change's path unless something is already planned there; false if it was. */
  async addNode(c: LayerChange, attr: Attr): Promise<boolean> {
    const n = await this.nodeOf(c);
    if (n.item !== null) return false;
    n.item = { kind: 'node', attr };
    return true;
  }

  /** `addNode` by components (the root is []). */
  addNodeAt(components: readonly string[], attr: Attr): void {
    const n = this.nodeAtComponents(components);
    n.item ??= { kind: 'node', attr };
  }

  async addWhiteout(c: LayerChange): Promise<void> {
    let dir: PlanNode;
    let name: string;
    if (c.at !== undefined) {
      dir = await this.dirs.get(c.at.dir);
      name = c.at.name;
    } else {
      const slash = c.path.lastIndexOf('/');
      if (slash < 0 || slash === c.path.length - 1) return;
      dir = this.nodeAt(c.path.substring(0, slash) || '/');
      name = c.path.substring(slash + 1);
    }
    PlanTree.child(dir, WHITEOUT_PREFIX + name).item ??= { kind: 'whiteout' };
  }

  /** Plans the opaque marker of the change's directory ('/' included). */
  async addOpaque(c: LayerChange): Promise<void> {
    PlanTree.child(c.path === '/' ? this.root : await this.nodeOf(c), OPAQUE_MARKER, '').item ??= { kind: 'opaque' };
  }

  async hasOpaque(c: LayerChange): Promise<boolean> {
    return (await this.nodeOf(c)).children?.has('') ?? false;
  }

  /** The planned entries in tar order; each path is built once, as it is handed out. */
  *entries(): Generator<Planned> {
    const sorted = (n: PlanNode): PlanNode[] => {
      const kids = [...(n.children?.values() ?? [])].map((k) => ({ k, b: Buffer.from(k.sortKey) }));
      kids.sort((x, y) => Buffer.compare(x.b, y.b));
      return kids.map((x) => x.k);
    };
    const components: string[] = [];
    const stack: { kids: PlanNode[]; next: number }[] = [{ kids: sorted(this.root), next: 0 }];
    while (stack.length > 0) {
      const top = stack[stack.length - 1];
      if (top.next >= top.kids.length) {
        stack.pop();
        components.pop(); // The directory this level listed (nothing for the root).
        continue;
      }
      const n = top.kids[top.next++];
      components.push(n.tarName);
      if (n.item !== null) yield { path: components.join('/'), item: n.item };
      if (n.children !== null && n.children.size > 0) stack.push({ kids: sorted(n), next: 0 });
      else components.pop();
    }
  }
}

/** Looks changes' paths up in a layer by lookup (symlinks never followed), reusing the directories seen. */
class PathResolver {
  private cursor: PathCursor<Attr | null> | null = null;
  private dirs: DirMemo<Attr | null> | null = null;

  constructor(private readonly fs: LayerFs) {}

  private async lookup(dir: Attr | null, name: string): Promise<Attr | null> {
    return dir !== null && dir.kind === 'dir' && name !== '' ? this.fs.lookup(dir.ino, name) : null;
  }

  /** The entry at the change's path, or null when a component is missing or not a directory. */
  async resolveChange(c: LayerChange): Promise<Attr | null> {
    if (c.at === undefined) return this.resolve(c.path);
    this.dirs ??= new DirMemo<Attr | null>(await this.fs.getattr(this.fs.rootIno), (d, n) => this.lookup(d, n));
    return this.lookup(await this.dirs.get(c.at.dir), c.at.name);
  }

  /** The entry at `path` ('/a/b'), or null when a component is missing or not a directory. */
  async resolve(path: string): Promise<Attr | null> {
    this.cursor ??= new PathCursor<Attr | null>(await this.fs.getattr(this.fs.rootIno));
    let { value: cur, rest } = this.cursor.seek(path);
    for (const c of rest) {
      cur = await this.lookup(cur, c);
      this.cursor.push(c, cur);
    }
    return cur;
  }
}

/**
 * True when a `modified` non-directory differs from the parent layer's only in what a
 * tar cannot carry anyway (link count, ctime): e.g. another name of it was unlinked.
 * Emitting it would replace the file and cut it off from its other names.
 */
async function onlyLinkCountChanged(fs: LayerFs, attr: Attr, lower: Attr | null, parentFs: LayerFs): Promise<boolean> {
  if (lower === null) return false;
  if (lower.ino !== attr.ino || lower.kind !== attr.kind) return false;
  if (lower.mode !== attr.mode || lower.uid !== attr.uid || lower.gid !== attr.gid || lower.rdev !== attr.rdev) return false;
  if (lower.mtimeNs !== attr.mtimeNs || lower.sizeBytes !== attr.sizeBytes) return false;
  if (!(await sameXattrs(fs, attr.ino, parentFs, lower.ino))) return false;
  if (attr.kind === 'symlink') return (await fs.readlink(attr.ino)) === (await parentFs.readlink(lower.ino));
  if (attr.kind === 'file') return sameContent(fs, attr, parentFs, lower);
  return true;
}

/**
 * Plans every name of each inode in `inos` not planned yet, found by one walk of the
 * layer's merged tree (iterative: one listing per level of the current path).
 */
async function planOtherNames(fs: LayerFs, inos: Set<number>, tree: PlanTree): Promise<void> {
  const components: string[] = [];
  const stack: { entries: DirEntry[]; next: number }[] = [{ entries: await fs.readdir(fs.rootIno), next: 0 }];
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    if (top.next >= top.entries.length) {
      stack.pop();
      components.pop();
      continue;
    }
    const e = top.entries[top.next++];
    if (e.kind === 'dir') {
      components.push(e.name);
      stack.push({ entries: await fs.readdir(e.ino), next: 0 });
    } else if (inos.has(e.ino)) {
      tree.addNodeAt([...components, e.name], await fs.getattr(e.ino));
    }
  }
}

/** Plans the entries of a layer's changes. */
async function planChanges(fs: LayerFs, parentFs: LayerFs | null): Promise<PlanTree> {
  const tree = new PlanTree();
  const lower = parentFs !== null ? new PathResolver(parentFs) : null;
  // Files with several names among the planned nodes: how many names each has, how many are planned.
  const counts = new Map<number, { nlink: number; seen: number }>();
  for await (const c of fs.changes()) {
    if (c.change === 'opaque') {
      await tree.addOpaque(c);
      continue;
    }
    if (c.change === 'deleted') {
      await tree.addWhiteout(c);
      continue;
    }
    if (c.path === '/' || !c.attr) continue;
    const attr = c.attr;
    if (c.change === 'modified' && attr.kind !== 'dir' && parentFs !== null && lower !== null) {
      if (await onlyLinkCountChanged(fs, attr, await lower.resolveChange(c), parentFs)) continue;
    }
    if (!(await tree.addNode(c, attr))) continue;
    if (attr.kind !== 'dir' && attr.nlink >= 2) {
      const n = counts.get(attr.ino) ?? { nlink: attr.nlink, seen: 0 };
      n.seen++;
      counts.set(attr.ino, n);
    }
    if (attr.kind === 'dir' && c.change === 'added' && lower !== null && !(await tree.hasOpaque(c))) {
      // A new directory over a lower one of the same path: the lower entries must not show.
      if ((await lower.resolveChange(c))?.kind === 'dir') await tree.addOpaque(c);
    }
  }
  // A changed file with several names: every name goes in, so applying the tar keeps
  // them one inode (the first carries the content, the others link to it).
  const incomplete = new Set([...counts].filter(([, c]) => c.seen < c.nlink).map(([ino]) => ino));
  if (incomplete.size > 0) await planOtherNames(fs, incomplete, tree);
  return tree;
}

/** The flattened tree: every entry below the root, depth first, names sorted byte-wise. */
async function* planFull(fs: LayerFs): AsyncGenerator<Planned> {
  const sorted = async (dirIno: number): Promise<DirEntry[]> => {
    const entries = (await fs.readdir(dirIno)).map((e) => ({ e, b: Buffer.from(e.name) }));
    entries.sort((x, y) => Buffer.compare(x.b, y.b));
    return entries.map((x) => x.e);
  };
  const components: string[] = [];
  const stack: { entries: DirEntry[]; next: number }[] = [{ entries: await sorted(fs.rootIno), next: 0 }];
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    if (top.next >= top.entries.length) {
      stack.pop();
      components.pop();
      continue;
    }
    const e = top.entries[top.next++];
    components.push(e.name);
    const attr = await fs.getattr(e.ino);
    yield { path: components.join('/'), item: { kind: 'node', attr } };
    if (attr.kind === 'dir') stack.push({ entries: await sorted(e.ino), next: 0 });
    else components.pop();
  }
}

/** Writes the planned entries. */
async function writePlan(fs: LayerFs, plan: Iterable<Planned> | AsyncIterable<Planned>, writer: TarWriter): Promise<ExportStats> {
  const stats: ExportStats = { entries: 0, whiteouts: 0, opaques: 0, contentBytes: 0, tarBytes: 0 };
  const firstNameOf = new Map<number, string>();
  for await (const { path, item } of plan) {
    if (item.kind !== 'node') {
      await writer.add({ type: 'file', path, mode: 0o644, uid: 0, gid: 0, mtimeNs: 0n, sizeBytes: 0 });
      if (item.kind === 'whiteout') stats.whiteouts++;
      else stats.opaques++;
      stats.entries++;
      continue;
    }
    const a = item.attr;
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
    let plan: Iterable<Planned> | AsyncIterable<Planned>;
    if (opts.full) plan = planFull(fs);
    else {
      if (info.parent !== null) parentFs = await store.openLayer(info.parent, { readOnly: true });
      plan = (await planChanges(fs, parentFs)).entries();
    }
    return await writePlan(fs, plan, new TarWriter(sink));
  } finally {
    await parentFs?.close();
    await fs.close();
  }
}
