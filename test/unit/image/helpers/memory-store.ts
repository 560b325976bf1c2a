/**
 * A small in-memory LayerStore for the image unit tests: segments of inodes and
 * inode-keyed directory entries per layer, whiteouts, opaque directories, read-only
 * committed layers. `changes()` diffs the layer's tree with its parent's (fine for a
 * test double; the real store computes it from its own segment).
 */
import { dmfsError } from '../../../../src/errors';
import type {
  Attr, CreateLayerOptions, DirEntry, FileKind, Ino, LayerChange, LayerFs, LayerInfo, LayerStore,
  NewNodeOptions, OpenLayerOptions, RenameFlags, SetAttr, StatFs, XattrSetFlags,
} from '../../../../src/store/layer-store';
import { fileKindOfMode, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK } from '../../../../src/store/layer-store';

interface Node {
  attr: Attr;
  data: Buffer;
  target: string;
  xattrs: Map<string, Buffer>;
}

interface Layer {
  id: number;
  name: string;
  kind: LayerInfo['kind'];
  state: LayerInfo['state'];
  parent: Layer | null;
  labels: Record<string, string>;
  createdMs: number;
  inodes: Map<Ino, Node>;
  dirents: Map<Ino, Map<string, Ino | null>>;
  opaque: Set<Ino>;
  openWriters: number;
}


const ROOT_INO = 1;

export class MemoryStore implements LayerStore {
  private layers = new Map<string, Layer>();
  private nextIno = 2;
  private nextId = 1;
  /** Counts every LayerFs call, by method, for tests that check what the importer did. */
  readonly calls = new Map<string, number>();
  now = 1_700_000_000_000_000_000n;

  constructor() {
    const base: Layer = this.newLayer('base', 'base', null, {});
    base.state = 'committed';
    const root: Node = {
      attr: this.attr(ROOT_INO, S_IFDIR | 0o755, 0, 0, 0),
      data: Buffer.alloc(0), target: '', xattrs: new Map(),
    };
    root.attr.nlink = 2;
    base.inodes.set(ROOT_INO, root);
  }

  private attr(ino: Ino, mode: number, uid: number, gid: number, rdev: number): Attr {
    return {
      ino, kind: fileKindOfMode(mode), mode, uid, gid, sizeBytes: 0, nlink: 1, rdev,
      atimeNs: this.now, mtimeNs: this.now, ctimeNs: this.now, blocks512: 0,
    };
  }

  private newLayer(name: string, kind: LayerInfo['kind'], parent: Layer | null, labels: Record<string, string>): Layer {
    const l: Layer = {
      id: this.nextId++, name, kind, state: 'active', parent, labels: { ...labels }, createdMs: Date.now(),
      inodes: new Map(), dirents: new Map(), opaque: new Set(), openWriters: 0,
    };
    this.layers.set(name, l);
    return l;
  }

  private get(name: string): Layer {
    const l = this.layers.get(name);
    if (!l) throw dmfsError('LAYER_NOT_FOUND', `no layer ${name}`);
    return l;
  }

  private info(l: Layer): LayerInfo {
    let exclusive = 0;
    for (const n of l.inodes.values()) exclusive += n.data.length;
    return {
      id: l.id, name: l.name, kind: l.kind, state: l.state, parent: l.parent?.name ?? null,
      createdMs: l.createdMs, labels: { ...l.labels }, sizeLimitBytes: 1 << 30,
      exclusiveBytes: exclusive, sharedBytes: 0,
      children: [...this.layers.values()].filter((c) => c.parent === l).map((c) => c.name),
      mounts: [], deferredRemoval: false,
    };
  }

  async createLayer(name: string, opts: CreateLayerOptions): Promise<LayerInfo> {
    if (this.layers.has(name)) throw dmfsError('LAYER_EXISTS', `layer ${name} exists`);
    const parent = this.get(opts.parent ?? 'base');
    // One process builds a chain of image layers in one go; anything else waits for the seal.
    if (parent.state === 'building' && !(opts.kind === 'image' && opts.building)) {
      throw dmfsError('WRONG_LAYER_KIND', `parent ${parent.name} is still building`);
    }
    const l = this.newLayer(name, opts.kind, parent, opts.labels ?? {});
    l.state = opts.kind === 'image' ? (opts.building ? 'building' : 'committed') : 'active';
    return this.info(l);
  }

  async sealLayer(name: string): Promise<LayerInfo> {
    const l = this.get(name);
    if (l.state !== 'building') throw dmfsError('WRONG_LAYER_KIND', `${name} is not building`);
    if (l.parent && l.parent.state === 'building') throw dmfsError('WRONG_LAYER_KIND', `${name} sits on a layer still being built`);
    l.state = 'committed';
    return this.info(l);
  }

  async commit(containerName: string, imageName: string): Promise<LayerInfo> {
    const c = this.get(containerName);
    if (c.kind !== 'container') throw dmfsError('WRONG_LAYER_KIND', `${containerName} is not a container`);
    if (this.layers.has(imageName)) throw dmfsError('LAYER_EXISTS', `layer ${imageName} exists`);
    const img = this.newLayer(imageName, 'image', c.parent, {});
    img.state = 'committed';
    img.inodes = c.inodes;
    img.dirents = c.dirents;
    img.opaque = c.opaque;
    c.inodes = new Map();
    c.dirents = new Map();
    c.opaque = new Set();
    c.parent = img;
    return this.info(img);
  }

  async removeLayer(name: string): Promise<{ deferred: boolean }> {
    const l = this.get(name);
    if (l.kind === 'base') throw dmfsError('WRONG_LAYER_KIND', 'cannot remove base');
    if ([...this.layers.values()].some((c) => c.parent === l)) throw dmfsError('LAYER_HAS_CHILDREN', `${name} has children`);
    this.layers.delete(name);
    return { deferred: false };
  }

  async renameLayer(name: string, newName: string): Promise<void> {
    const l = this.get(name);
    if (this.layers.has(newName)) throw dmfsError('LAYER_EXISTS', `layer ${newName} exists`);
    this.layers.delete(name);
    l.name = newName;
    this.layers.set(newName, l);
  }

  async setLabels(name: string, labels: Record<string, string>): Promise<void> {
    this.get(name).labels = { ...labels };
  }

  async getLayer(name: string): Promise<LayerInfo> {
    return this.info(this.get(name));
  }

  async listLayers(): Promise<LayerInfo[]> {
    return [...this.layers.values()].map((l) => this.info(l));
  }

  async openLayer(name: string, opts: OpenLayerOptions = {}): Promise<LayerFs> {
    const l = this.get(name);
    const readOnly = opts.readOnly === true || l.kind === 'base' || l.state === 'committed';
    return new MemoryLayerFs(this, l, readOnly);
  }

  async close(): Promise<void> {}

  /** Snapshot of the layer names, kinds and labels, to assert "the pool is as before". */
  snapshot(): string {
    return JSON.stringify([...this.layers.values()].map((l) => [l.name, l.kind, l.state, l.parent?.name, l.labels]).sort());
  }

  count(method: string): void {
    this.calls.set(method, (this.calls.get(method) ?? 0) + 1);
  }

  allocIno(): Ino {
    return this.nextIno++;
  }

  tick(): bigint {
    this.now += 1000n;
    return this.now;
  }

  mkAttr(ino: Ino, mode: number, uid: number, gid: number, rdev: number): Attr {
    return this.attr(ino, mode, uid, gid, rdev);
  }
}

class MemoryLayerFs implements LayerFs {
  readonly rootIno = ROOT_INO;
  readonly sizeLimitBytes = 1 << 30;
  readonly layerName: string;
  private closed = false;

  constructor(private readonly store: MemoryStore, private readonly layer: Layer, readonly readOnly: boolean) {
    this.layerName = layer.name;
  }

  private w(method: string): void {
    this.store.count(method);
    if (this.closed) throw dmfsError('INVALID', 'layer closed');
    if (this.readOnly) throw dmfsError('READ_ONLY_LAYER', `${this.layerName} is read-only`);
  }

  private node(ino: Ino, from: Layer | null = this.layer): Node {
    for (let l = from; l; l = l.parent) {
      const n = l.inodes.get(ino);
      if (n) return n;
    }
    throw dmfsError('NOT_FOUND', `no inode ${ino}`);
  }

  private own(ino: Ino): Node {
    let n = this.layer.inodes.get(ino);
    if (!n) {
      const lower = this.node(ino);
      n = { attr: { ...lower.attr }, data: Buffer.from(lower.data), target: lower.target, xattrs: new Map(lower.xattrs) };
      this.layer.inodes.set(ino, n);
    }
    return n;
  }

  private lookupIn(from: Layer | null, dir: Ino, name: string): Ino | null {
    for (let l = from; l; l = l.parent) {
      const d = l.dirents.get(dir);
      if (d && d.has(name)) return d.get(name) ?? null;
      if (l.opaque.has(dir)) return null;
    }
    return null;
  }

  private entriesIn(from: Layer | null, dir: Ino): Map<string, Ino> {
    const seen = new Map<string, Ino | null>();
    for (let l = from; l; l = l.parent) {
      const d = l.dirents.get(dir);
      if (d) for (const [k, v] of d) if (!seen.has(k)) seen.set(k, v);
      if (l.opaque.has(dir)) break;
    }
    const out = new Map<string, Ino>();
    for (const [k, v] of seen) if (v !== null) out.set(k, v);
    return out;
  }

  private dirOf(dir: Ino): Node {
    const n = this.node(dir);
    if (n.attr.kind !== 'dir') throw dmfsError('NOT_DIR', `inode ${dir} is not a directory`);
    return n;
  }

  private setEntry(dir: Ino, name: string, ino: Ino | null): void {
    let d = this.layer.dirents.get(dir);
    if (!d) this.layer.dirents.set(dir, (d = new Map()));
    d.set(name, ino);
    const p = this.own(dir);
    p.attr.mtimeNs = p.attr.ctimeNs = this.store.tick();
  }

  private dropEntry(dir: Ino, name: string): void {
    const d = this.layer.dirents.get(dir);
    if (d) d.delete(name);
    if (this.lookupIn(this.layer, dir, name) !== null) this.setEntry(dir, name, null);
    const p = this.own(dir);
    p.attr.mtimeNs = p.attr.ctimeNs = this.store.tick();
  }

  async getattr(ino: Ino): Promise<Attr> {
    this.store.count('getattr');
    const n = this.node(ino);
    return { ...n.attr, sizeBytes: n.attr.kind === 'symlink' ? Buffer.byteLength(n.target) : n.data.length };
  }

  async lookup(dirIno: Ino, name: string): Promise<Attr | null> {
    this.store.count('lookup');
    this.dirOf(dirIno);
    const ino = this.lookupIn(this.layer, dirIno, name);
    return ino === null ? null : this.getattr(ino);
  }

  async resolve(path: string): Promise<Attr> {
    let a = await this.getattr(ROOT_INO);
    for (const c of path.split('/').filter((x) => x !== '')) {
      if (a.kind !== 'dir') throw dmfsError('NOT_DIR', path);
      const next = await this.lookup(a.ino, c);
      if (!next) throw dmfsError('NOT_FOUND', path);
      a = next;
    }
    return a;
  }

  async readdir(dirIno: Ino): Promise<DirEntry[]> {
    this.store.count('readdir');
    this.dirOf(dirIno);
    return [...this.entriesIn(this.layer, dirIno)].sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([name, ino]) => ({ name, ino, kind: this.node(ino).attr.kind }));
  }

  private create(dirIno: Ino, name: string, mode: number, uid: number, gid: number, rdev: number, target = ''): Attr {
    this.dirOf(dirIno);
    if (Buffer.byteLength(name) > 255) throw dmfsError('NAME_TOO_LONG', name);
    if (name === '' || name.includes('/') || name === '.' || name === '..') throw dmfsError('INVALID', name);
    if (this.lookupIn(this.layer, dirIno, name) !== null) throw dmfsError('EXISTS', name);
    const ino = this.store.allocIno();
    const attr = this.store.mkAttr(ino, mode, uid, gid, rdev);
    if (attr.kind === 'dir') attr.nlink = 2;
    this.layer.inodes.set(ino, { attr, data: Buffer.alloc(0), target, xattrs: new Map() });
    this.setEntry(dirIno, name, ino);
    return { ...attr, sizeBytes: Buffer.byteLength(target) };
  }

  async mknod(dirIno: Ino, name: string, opts: NewNodeOptions): Promise<Attr> {
    this.w('mknod');
    const mode = (opts.mode & S_IFMT) === 0 ? S_IFREG | opts.mode : opts.mode;
    return this.create(dirIno, name, mode, opts.uid, opts.gid, opts.rdev ?? 0);
  }

  async mkdir(dirIno: Ino, name: string, opts: NewNodeOptions): Promise<Attr> {
    this.w('mkdir');
    return this.create(dirIno, name, S_IFDIR | (opts.mode & 0o7777), opts.uid, opts.gid, 0);
  }

  async symlink(dirIno: Ino, name: string, target: string, opts: Omit<NewNodeOptions, 'mode'>): Promise<Attr> {
    this.w('symlink');
    return this.create(dirIno, name, S_IFLNK | 0o777, opts.uid, opts.gid, 0, target);
  }

  async link(ino: Ino, newDirIno: Ino, newName: string): Promise<Attr> {
    this.w('link');
    const n = this.node(ino);
    if (n.attr.kind === 'dir') throw dmfsError('NOT_PERMITTED', 'link to a directory');
    if (this.lookupIn(this.layer, newDirIno, newName) !== null) throw dmfsError('EXISTS', newName);
    const o = this.own(ino);
    o.attr.nlink++;
    this.setEntry(newDirIno, newName, ino);
    return this.getattr(ino);
  }

  async unlink(dirIno: Ino, name: string): Promise<void> {
    this.w('unlink');
    const ino = this.lookupIn(this.layer, dirIno, name);
    if (ino === null) throw dmfsError('NOT_FOUND', name);
    if (this.node(ino).attr.kind === 'dir') throw dmfsError('IS_DIR', name);
    this.own(ino).attr.nlink--;
    this.dropEntry(dirIno, name);
  }

  async rmdir(dirIno: Ino, name: string): Promise<void> {
    this.w('rmdir');
    const ino = this.lookupIn(this.layer, dirIno, name);
    if (ino === null) throw dmfsError('NOT_FOUND', name);
    if (this.node(ino).attr.kind !== 'dir') throw dmfsError('NOT_DIR', name);
    if (this.entriesIn(this.layer, ino).size > 0) throw dmfsError('NOT_EMPTY', name);
    this.dropEntry(dirIno, name);
  }

  async rename(oldDirIno: Ino, oldName: string, newDirIno: Ino, newName: string, flags: RenameFlags = {}): Promise<void> {
    this.w('rename');
    const ino = this.lookupIn(this.layer, oldDirIno, oldName);
    if (ino === null) throw dmfsError('NOT_FOUND', oldName);
    const existing = this.lookupIn(this.layer, newDirIno, newName);
    if (existing !== null && flags.noReplace) throw dmfsError('EXISTS', newName);
    if (existing !== null) {
      if (this.node(existing).attr.kind === 'dir') await this.rmdir(newDirIno, newName);
      else await this.unlink(newDirIno, newName);
    }
    this.dropEntry(oldDirIno, oldName);
    this.setEntry(newDirIno, newName, ino);
  }

  async readlink(ino: Ino): Promise<string> {
    const n = this.node(ino);
    if (n.attr.kind !== 'symlink') throw dmfsError('INVALID', 'not a symlink');
    return n.target;
  }

  async setattr(ino: Ino, c: SetAttr): Promise<Attr> {
    this.w('setattr');
    const n = this.own(ino);
    if (c.mode !== undefined) n.attr.mode = (n.attr.mode & S_IFMT) | (c.mode & 0o7777);
    if (c.uid !== undefined) n.attr.uid = c.uid;
    if (c.gid !== undefined) n.attr.gid = c.gid;
    if (c.sizeBytes !== undefined) {
      const d = Buffer.alloc(c.sizeBytes);
      n.data.copy(d, 0, 0, Math.min(c.sizeBytes, n.data.length));
      n.data = d;
    }
    if (c.atimeNs !== undefined) n.attr.atimeNs = c.atimeNs;
    if (c.mtimeNs !== undefined) n.attr.mtimeNs = c.mtimeNs;
    if (c.ctimeNs !== undefined) n.attr.ctimeNs = c.ctimeNs;
    return this.getattr(ino);
  }

  async setOpaque(dirIno: Ino): Promise<void> {
    this.w('setOpaque');
    this.dirOf(dirIno);
    this.own(dirIno);
    this.layer.opaque.add(dirIno);
    const d = this.layer.dirents.get(dirIno);
    if (d) for (const [k, v] of d) if (v === null) d.delete(k);
  }

  async read(ino: Ino, target: Buffer, offsetBytes: number): Promise<number> {
    const n = this.node(ino);
    if (offsetBytes >= n.data.length) return 0;
    return n.data.copy(target, 0, offsetBytes, Math.min(n.data.length, offsetBytes + target.length));
  }

  async write(ino: Ino, data: Buffer, offsetBytes: number): Promise<number> {
    this.w('write');
    const n = this.own(ino);
    if (offsetBytes + data.length > n.data.length) {
      const d = Buffer.alloc(offsetBytes + data.length);
      n.data.copy(d);
      n.data = d;
    }
    data.copy(n.data, offsetBytes);
    n.attr.mtimeNs = this.store.tick();
    return data.length;
  }

  retain(): void {}
  async release(): Promise<void> {}

  async getxattr(ino: Ino, name: string): Promise<Buffer | null> {
    return this.node(ino).xattrs.get(name) ?? null;
  }

  async listxattr(ino: Ino): Promise<string[]> {
    return [...this.node(ino).xattrs.keys()];
  }

  async setxattr(ino: Ino, name: string, value: Buffer, flags: XattrSetFlags = {}): Promise<void> {
    this.w('setxattr');
    const n = this.own(ino);
    if (flags.create && n.xattrs.has(name)) throw dmfsError('XATTR_EXISTS', name);
    if (flags.replace && !n.xattrs.has(name)) throw dmfsError('NO_XATTR', name);
    n.xattrs.set(name, Buffer.from(value));
  }

  async removexattr(ino: Ino, name: string): Promise<void> {
    this.w('removexattr');
    const n = this.own(ino);
    if (!n.xattrs.delete(name)) throw dmfsError('NO_XATTR', name);
  }

  async statfs(): Promise<StatFs> {
    return { blockSizeBytes: 4096, totalBlocks: 1 << 20, freeBlocks: 1 << 19, availBlocks: 1 << 19, totalInodes: 1 << 20, freeInodes: 1 << 19, nameMaxBytes: 255 };
  }

  async fsync(): Promise<void> {}

  private walk(from: Layer | null): Map<string, Ino> {
    const out = new Map<string, Ino>();
    const visit = (dir: Ino, prefix: string): void => {
      for (const [name, ino] of this.entriesIn(from, dir)) {
        const p = `${prefix}/${name}`;
        out.set(p, ino);
        if (this.node(ino, from).attr.kind === 'dir') visit(ino, p);
      }
    };
    visit(ROOT_INO, '');
    return out;
  }

  async *changes(): AsyncIterable<LayerChange> {
    const mine = this.walk(this.layer);
    const below = this.walk(this.layer.parent);
    const out: LayerChange[] = [];
    for (const [p, ino] of mine) {
      const attr = await this.getattr(ino);
      if (below.get(p) !== ino) out.push({ path: p, change: 'added', attr });
      else if (this.layer.inodes.has(ino)) out.push({ path: p, change: 'modified', attr });
      if (this.layer.opaque.has(ino)) out.push({ path: p, change: 'opaque', attr });
    }
    for (const p of below.keys()) {
      if (mine.has(p)) continue;
      const parent = p.slice(0, p.lastIndexOf('/'));
      if (parent !== '' && !mine.has(parent)) continue; // Its parent went: reported there.
      if (parent !== '' && below.has(parent) && mine.get(parent) !== below.get(parent)) continue;
      out.push({ path: p, change: 'deleted' });
    }
    yield* out;
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
