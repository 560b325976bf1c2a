/**
 * An in-memory LayerFs: one layer, no chain, sparse files in 4 KiB pages. It follows the
 * LayerStore contract closely enough to drive the FUSE frontend with real tools, so the
 * frontend can be tested without the pool. Not for production: no durability.
 */
import { dmfsError } from '../../src/errors';
import type {
  Attr,
  DirEntry,
  FileKind,
  Ino,
  LayerChange,
  LayerFs,
  NewNodeOptions,
  RenameFlags,
  SetAttr,
  StatFs,
  XattrSetFlags,
} from '../../src/store/layer-store';
import { fileKindOfMode, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK } from '../../src/store/layer-store';

const PAGE = 4096;
const NAME_MAX = 255;

interface Node {
  ino: Ino;
  kind: FileKind;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  rdev: number;
  sizeBytes: number;
  atimeNs: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  pages: Map<number, Buffer>;
  children: Map<string, Ino> | null;
  target: string | null;
  xattrs: Map<string, Buffer>;
}

export interface MemoryLayerFsOptions {
  layerName?: string;
  readOnly?: boolean;
  sizeLimitBytes?: number;
  /** Wall clock in ns (tests may freeze it). */
  nowNs?: () => bigint;
  /** First inode number after the root (tests use numbers above 2^32). */
  firstIno?: number;
}


export class MemoryLayerFs implements LayerFs {
  readonly layerName: string;
  readonly readOnly: boolean;
  readonly rootIno: Ino = 1;
  readonly sizeLimitBytes: number;
  /** Calls of fsync() so far. */
  fsyncCount = 0;
  closed = false;

  private readonly nodes = new Map<Ino, Node>();
  private readonly openCounts = new Map<Ino, number>();
  private nextIno = 2;
  private usedPages = 0;
  private readonly now: () => bigint;

  constructor(opts: MemoryLayerFsOptions = {}) {
    this.layerName = opts.layerName ?? 'memory';
    this.readOnly = opts.readOnly ?? false;
    this.sizeLimitBytes = opts.sizeLimitBytes ?? 1 << 30;
    this.now = opts.nowNs ?? (() => BigInt(Date.now()) * 1_000_000n);
    this.nextIno = opts.firstIno ?? 2;
    const t = this.now();
    this.nodes.set(1, this.makeNode(1, S_IFDIR | 0o755, 0, 0, t));
    this.nodes.get(1)!.nlink = 2;
  }

  /** A writable copy for tests that need a read-only twin with the same content. */
  withReadOnly(readOnly: boolean): MemoryLayerFs {
    const twin = Object.create(MemoryLayerFs.prototype) as MemoryLayerFs;
    Object.assign(twin, this, { readOnly });
    return twin;
  }

  /** Number of live inodes (tests check that unlinked files are freed). */
  get inodeCount(): number {
    return this.nodes.size;
  }

  private makeNode(ino: Ino, mode: number, uid: number, gid: number, t: bigint): Node {
    const kind = fileKindOfMode(mode);
    return {
      ino, kind, mode, uid, gid, nlink: 1, rdev: 0, sizeBytes: 0,
      atimeNs: t, mtimeNs: t, ctimeNs: t,
      pages: new Map(), children: kind === 'dir' ? new Map() : null, target: null, xattrs: new Map(),
    };
  }

  private node(ino: Ino): Node {
    this.assertOpen();
    const n = this.nodes.get(ino);
    if (!n) throw dmfsError('NOT_FOUND', `no inode ${ino}`);
    return n;
  }

  private dir(ino: Ino): Node {
    const n = this.node(ino);
    if (n.kind !== 'dir') throw dmfsError('NOT_DIR', `inode ${ino} is not a directory`);
    return n;
  }

  private assertOpen(): void {
    if (this.closed) throw dmfsError('INVALID', 'layer closed');
  }

  private assertWritable(): void {
    this.assertOpen();
    if (this.readOnly) throw dmfsError('READ_ONLY_LAYER', `layer ${this.layerName} is read-only`);
  }

  private checkName(name: string): void {
    if (!name || name === '.' || name === '..' || name.includes('/')) throw dmfsError('INVALID', `bad name '${name}'`);
    if (Buffer.byteLength(name) > NAME_MAX) throw dmfsError('NAME_TOO_LONG', 'name too long');
  }

  private attr(n: Node): Attr {
    return {
      ino: n.ino, kind: n.kind, mode: n.mode, uid: n.uid, gid: n.gid, sizeBytes: n.sizeBytes,
      nlink: n.nlink, rdev: n.rdev, atimeNs: n.atimeNs, mtimeNs: n.mtimeNs, ctimeNs: n.ctimeNs,
      blocks512: n.pages.size * (PAGE / 512) + (n.kind === 'symlink' || n.kind === 'dir' ? 8 : 0),
    };
  }

  private touchDir(d: Node): void {
    const t = this.now();
    d.mtimeNs = t;
    d.ctimeNs = t;
  }

  private maybeFree(n: Node): void {
    if (n.nlink > 0 || (this.openCounts.get(n.ino) ?? 0) > 0) return;
    this.usedPages -= n.pages.size;
    this.nodes.delete(n.ino);
  }

  async getattr(ino: Ino): Promise<Attr> {
    return this.attr(this.node(ino));
  }

  async lookup(dirIno: Ino, name: string): Promise<Attr | null> {
    const d = this.dir(dirIno);
    if (Buffer.byteLength(name) > NAME_MAX) throw dmfsError('NAME_TOO_LONG', 'name too long');
    const ino = d.children!.get(name);
    return ino === undefined ? null : this.attr(this.node(ino));
  }

  async resolve(path: string): Promise<Attr> {
    let cur = this.node(this.rootIno);
    for (const part of path.split('/').filter(Boolean)) {
      const next = await this.lookup(cur.ino, part);
      if (!next) throw dmfsError('NOT_FOUND', `no such file: ${path}`);
      cur = this.node(next.ino);
    }
    return this.attr(cur);
  }

  async readdir(dirIno: Ino): Promise<DirEntry[]> {
    const d = this.dir(dirIno);
    return [...d.children!].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([name, ino]) => ({ name, ino, kind: this.node(ino).kind }));
  }

  private insert(dirIno: Ino, name: string, mode: number, uid: number, gid: number): Node {
    this.assertWritable();
    this.checkName(name);
    const d = this.dir(dirIno);
    if (d.children!.has(name)) throw dmfsError('EXISTS', `${name} exists`);
    const n = this.makeNode(this.nextIno++, mode, uid, gid, this.now());
    this.nodes.set(n.ino, n);
    d.children!.set(name, n.ino);
    this.touchDir(d);
    return n;
  }

  async mknod(dirIno: Ino, name: string, opts: NewNodeOptions): Promise<Attr> {
    const mode = (opts.mode & S_IFMT) === 0 ? opts.mode | S_IFREG : opts.mode;
    if ((mode & S_IFMT) === S_IFDIR) throw dmfsError('INVALID', 'mknod of a directory');
    const n = this.insert(dirIno, name, mode, opts.uid, opts.gid);
    n.rdev = opts.rdev ?? 0;
    for (const [k, v] of Object.entries(opts.xattrs ?? {})) n.xattrs.set(k, Buffer.from(v));
    return this.attr(n);
  }

  async mkdir(dirIno: Ino, name: string, opts: NewNodeOptions): Promise<Attr> {
    const n = this.insert(dirIno, name, S_IFDIR | (opts.mode & 0o7777), opts.uid, opts.gid);
    for (const [k, v] of Object.entries(opts.xattrs ?? {})) n.xattrs.set(k, Buffer.from(v));
    n.nlink = 2;
    this.node(dirIno).nlink++;
    return this.attr(n);
  }

  async symlink(dirIno: Ino, name: string, target: string, opts: Omit<NewNodeOptions, 'mode'>): Promise<Attr> {
    const n = this.insert(dirIno, name, S_IFLNK | 0o777, opts.uid, opts.gid);
    n.target = target;
    n.sizeBytes = Buffer.byteLength(target);
    return this.attr(n);
  }

  async link(ino: Ino, newDirIno: Ino, newName: string): Promise<Attr> {
    this.assertWritable();
    this.checkName(newName);
    const n = this.node(ino);
    if (n.kind === 'dir') throw dmfsError('NOT_PERMITTED', 'hard link to a directory');
    const d = this.dir(newDirIno);
    if (d.children!.has(newName)) throw dmfsError('EXISTS', `${newName} exists`);
    d.children!.set(newName, ino);
    n.nlink++;
    n.ctimeNs = this.now();
    this.touchDir(d);
    return this.attr(n);
  }

  async unlink(dirIno: Ino, name: string): Promise<void> {
    this.assertWritable();
    const d = this.dir(dirIno);
    const ino = d.children!.get(name);
    if (ino === undefined) throw dmfsError('NOT_FOUND', `no such file: ${name}`);
    const n = this.node(ino);
    if (n.kind === 'dir') throw dmfsError('IS_DIR', `${name} is a directory`);
    d.children!.delete(name);
    this.touchDir(d);
    n.nlink--;
    n.ctimeNs = this.now();
    this.maybeFree(n);
  }

  async rmdir(dirIno: Ino, name: string): Promise<void> {
    this.assertWritable();
    const d = this.dir(dirIno);
    const ino = d.children!.get(name);
    if (ino === undefined) throw dmfsError('NOT_FOUND', `no such directory: ${name}`);
    const n = this.node(ino);
    if (n.kind !== 'dir') throw dmfsError('NOT_DIR', `${name} is not a directory`);
    if (n.children!.size > 0) throw dmfsError('NOT_EMPTY', `${name} is not empty`);
    d.children!.delete(name);
    d.nlink--;
    this.touchDir(d);
    n.nlink = 0;
    this.maybeFree(n);
  }

  private isAncestor(ancestor: Ino, ino: Ino): boolean {
    // Walk down from ancestor looking for ino (small test trees only).
    const stack = [ancestor];
    while (stack.length) {
      const cur = this.nodes.get(stack.pop()!)!;
      if (cur.ino === ino) return true;
      if (cur.children) for (const c of cur.children.values()) if (this.nodes.get(c)?.kind === 'dir') stack.push(c);
    }
    return false;
  }

  async rename(oldDirIno: Ino, oldName: string, newDirIno: Ino, newName: string, flags: RenameFlags = {}): Promise<void> {
    this.assertWritable();
    this.checkName(newName);
    const od = this.dir(oldDirIno);
    const nd = this.dir(newDirIno);
    const ino = od.children!.get(oldName);
    if (ino === undefined) throw dmfsError('NOT_FOUND', `no such file: ${oldName}`);
    const n = this.node(ino);
    const targetIno = nd.children!.get(newName);
    if (flags.exchange) throw dmfsError('NOT_SUPPORTED', 'RENAME_EXCHANGE');
    if (targetIno === ino) return;
    if (n.kind === 'dir' && this.isAncestor(ino, newDirIno)) throw dmfsError('INVALID', 'rename into own subdirectory');
    if (targetIno !== undefined) {
      if (flags.noReplace) throw dmfsError('EXISTS', `${newName} exists`);
      const t = this.node(targetIno);
      if (n.kind === 'dir' && t.kind !== 'dir') throw dmfsError('NOT_DIR', `${newName} is not a directory`);
      if (n.kind !== 'dir' && t.kind === 'dir') throw dmfsError('IS_DIR', `${newName} is a directory`);
      if (t.kind === 'dir') {
        if (t.children!.size > 0) throw dmfsError('NOT_EMPTY', `${newName} is not empty`);
        nd.nlink--;
        t.nlink = 0;
      } else {
        t.nlink--;
      }
      nd.children!.delete(newName);
      t.ctimeNs = this.now();
      this.maybeFree(t);
    }
    od.children!.delete(oldName);
    nd.children!.set(newName, ino);
    if (n.kind === 'dir' && od !== nd) {
      od.nlink--;
      nd.nlink++;
    }
    n.ctimeNs = this.now();
    this.touchDir(od);
    this.touchDir(nd);
  }

  async readlink(ino: Ino): Promise<string> {
    const n = this.node(ino);
    if (n.kind !== 'symlink') throw dmfsError('INVALID', 'not a symlink');
    return n.target!;
  }

  async setattr(ino: Ino, changes: SetAttr): Promise<Attr> {
    this.assertWritable();
    const n = this.node(ino);
    if (changes.sizeBytes !== undefined) {
      if (n.kind === 'dir') throw dmfsError('IS_DIR', 'is a directory');
      if (changes.sizeBytes > this.sizeLimitBytes) throw dmfsError('FILE_TOO_BIG', 'size over the layer limit');
      this.truncate(n, changes.sizeBytes);
      n.mtimeNs = this.now();
    }
    if (changes.mode !== undefined) n.mode = (n.mode & S_IFMT) | (changes.mode & 0o7777);
    if (changes.uid !== undefined) n.uid = changes.uid;
    if (changes.gid !== undefined) n.gid = changes.gid;
    if (changes.atimeNs !== undefined) n.atimeNs = changes.atimeNs;
    else if (changes.accessOnly) n.atimeNs = this.now();
    if (changes.mtimeNs !== undefined) n.mtimeNs = changes.mtimeNs;
    if (changes.ctimeNs !== undefined || !changes.accessOnly) n.ctimeNs = changes.ctimeNs ?? this.now();
    return this.attr(n);
  }

  private truncate(n: Node, size: number): void {
    if (size < n.sizeBytes) {
      for (const idx of [...n.pages.keys()]) {
        if (idx * PAGE >= size) {
          n.pages.delete(idx);
          this.usedPages--;
        }
      }
      const lastIdx = Math.floor(size / PAGE);
      const last = n.pages.get(lastIdx);
      if (last) last.fill(0, size - lastIdx * PAGE);
    }
    n.sizeBytes = size;
  }

  async setOpaque(dirIno: Ino): Promise<void> {
    this.assertWritable();
    this.dir(dirIno);
    // One layer, nothing below: opaque hides nothing.
  }

  async read(ino: Ino, target: Buffer, offsetBytes: number): Promise<number> {
    const n = this.node(ino);
    if (n.kind === 'dir') throw dmfsError('IS_DIR', 'is a directory');
    const end = Math.min(n.sizeBytes, offsetBytes + target.length);
    if (end <= offsetBytes) return 0;
    for (let pos = offsetBytes; pos < end; ) {
      const idx = Math.floor(pos / PAGE);
      const inPage = pos - idx * PAGE;
      const len = Math.min(PAGE - inPage, end - pos);
      const page = n.pages.get(idx);
      if (page) page.copy(target, pos - offsetBytes, inPage, inPage + len);
      else target.fill(0, pos - offsetBytes, pos - offsetBytes + len);
      pos += len;
    }
    return end - offsetBytes;
  }

  async write(ino: Ino, data: Buffer, offsetBytes: number): Promise<number> {
    this.assertWritable();
    const n = this.node(ino);
    if (n.kind === 'dir') throw dmfsError('IS_DIR', 'is a directory');
    const end = offsetBytes + data.length;
    if (end > this.sizeLimitBytes) throw dmfsError('FILE_TOO_BIG', 'write past the layer size limit');
    let newPages = 0;
    for (let idx = Math.floor(offsetBytes / PAGE); idx * PAGE < end; idx++) if (!n.pages.has(idx)) newPages++;
    if ((this.usedPages + newPages) * PAGE > this.sizeLimitBytes) throw dmfsError('LAYER_FULL', 'layer is full');
    for (let pos = offsetBytes; pos < end; ) {
      const idx = Math.floor(pos / PAGE);
      const inPage = pos - idx * PAGE;
      const len = Math.min(PAGE - inPage, end - pos);
      let page = n.pages.get(idx);
      if (!page) {
        page = Buffer.alloc(PAGE);
        n.pages.set(idx, page);
        this.usedPages++;
      }
      data.copy(page, inPage, pos - offsetBytes, pos - offsetBytes + len);
      pos += len;
    }
    n.sizeBytes = Math.max(n.sizeBytes, end);
    const t = this.now();
    n.mtimeNs = t;
    n.ctimeNs = t;
    return data.length;
  }

  retain(ino: Ino): void {
    this.node(ino);
    this.openCounts.set(ino, (this.openCounts.get(ino) ?? 0) + 1);
  }

  async release(ino: Ino): Promise<void> {
    const left = (this.openCounts.get(ino) ?? 0) - 1;
    if (left > 0) {
      this.openCounts.set(ino, left);
      return;
    }
    this.openCounts.delete(ino);
    const n = this.nodes.get(ino);
    if (n) this.maybeFree(n);
  }

  async getxattr(ino: Ino, name: string): Promise<Buffer | null> {
    const v = this.node(ino).xattrs.get(name);
    return v ? Buffer.from(v) : null;
  }

  async listxattr(ino: Ino): Promise<string[]> {
    return [...this.node(ino).xattrs.keys()].sort();
  }

  async setxattr(ino: Ino, name: string, value: Buffer, flags: XattrSetFlags = {}): Promise<void> {
    this.assertWritable();
    const n = this.node(ino);
    if (!/^(user|trusted|security|system)\./.test(name)) throw dmfsError('NOT_SUPPORTED', `xattr namespace of ${name}`);
    const has = n.xattrs.has(name);
    if (flags.create && has) throw dmfsError('XATTR_EXISTS', `${name} exists`);
    if (flags.replace && !has) throw dmfsError('NO_XATTR', `no ${name}`);
    n.xattrs.set(name, Buffer.from(value));
    if (flags.mode !== undefined) n.mode = (n.mode & S_IFMT) | (flags.mode & 0o7777);
    n.ctimeNs = this.now();
  }

  async removexattr(ino: Ino, name: string): Promise<void> {
    this.assertWritable();
    const n = this.node(ino);
    if (!n.xattrs.delete(name)) throw dmfsError('NO_XATTR', `no ${name}`);
    n.ctimeNs = this.now();
  }

  async statfs(): Promise<StatFs> {
    const total = Math.floor(this.sizeLimitBytes / PAGE);
    const free = Math.max(0, total - this.usedPages);
    return { blockSizeBytes: PAGE, totalBlocks: total, freeBlocks: free, availBlocks: free, totalInodes: 1 << 20, freeInodes: (1 << 20) - this.nodes.size, nameMaxBytes: NAME_MAX };
  }

  async fsync(): Promise<void> {
    this.assertOpen();
    this.fsyncCount++;
  }

  async *changes(): AsyncIterable<LayerChange> {
    const walk = async function* (self: MemoryLayerFs, dirIno: Ino, prefix: string): AsyncGenerator<LayerChange> {
      for (const e of await self.readdir(dirIno)) {
        const path = `${prefix}/${e.name}`;
        yield { path, change: 'added', attr: await self.getattr(e.ino) };
        if (e.kind === 'dir') yield* walk(self, e.ino, path);
      }
    };
    yield* walk(this, this.rootIno, '');
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
