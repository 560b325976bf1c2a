/**
 * One open layer used through several handles in one process: the daemon's mounts of one
 * layer (one read-write plus any number of read-only ones, or read-only ones alone) share
 * the layer's one LayerFs, so they share its open counts (a file unlinked through one
 * mount and open through another stays readable), its per-inode serialisation and its
 * periodic sync, and every change is seen by every mount the moment the store has it.
 *
 * What the store cannot share is the kernel's caches: each mount has its own. So each
 * handle reports the edits made through it (LayerEdit, in store inode numbers) to every
 * other handle's `onPeerEdits`, once the store call that made them has settled; the
 * mount behind that handle turns them into cache invalidations (kernel-transport.ts). An
 * edit is reported only when it succeeded; a failed call may still have changed
 * something (a write cut short by a full pool) and reports nothing, as the kernel of the
 * changing mount would not learn of it either.
 *
 * Handles: `handle({ readOnly })` gives a LayerFs over the one layer; a read-only handle
 * refuses every change (READ_ONLY_LAYER) before the store sees it. A handle's close()
 * releases the mounts it claimed; the last handle's close closes the layer. Claims made
 * through a handle are coherent (LayerFs.claimMount): the store lets several mounts of
 * one open layer stand because this host invalidates their caches.
 */
import { dmfsError } from '../errors';
import type {
  Attr, DirEntry, FallocateHow, Ino, LayerChange, LayerFs, NewNodeOptions, ReadOptions, RenameFlags, SetAttr, StatFs, XattrSetFlags,
} from './layer-store';

/**
 * What a change did, as another mount's caches see it:
 * - data: the bytes of [offsetBytes, offsetBytes + lengthBytes) of `ino` (lengthBytes 0:
 *   to the end) and its attributes; for a directory, its listing;
 * - attr: attributes only (mode, owners, times, link count, xattrs and ACLs);
 * - name: what `name` in `dirIno` names (it appeared, vanished or now names another
 *   inode), and with it the directory's listing and attributes;
 * - deleted: `name` in `dirIno` is gone and so is `ino` (its last link, or a directory).
 */
export type LayerEdit =
  | { kind: 'data'; ino: Ino; offsetBytes: number; lengthBytes: number }
  | { kind: 'attr'; ino: Ino }
  | { kind: 'name'; dirIno: Ino; name: string }
  | { kind: 'deleted'; dirIno: Ino; name: string; ino: Ino };

export interface SharedLayerHandleOptions {
  /** Refuse every change through this handle (a read-only mount of a writable layer). */
  readOnly: boolean;
  /** Told of the edits other handles made, after each store call that made them. */
  onPeerEdits?: (edits: readonly LayerEdit[]) => void;
}

export class SharedLayer {
  private readonly handles = new Set<SharedLayerHandle>();
  private closing: Promise<void> | null = null;

  /** `onLastClose`: called (synchronously) when the last handle starts closing the layer. */
  constructor(readonly layer: LayerFs, private readonly onLastClose: () => void = () => undefined) {}

  /** Handles not closed yet. */
  get users(): number {
    return this.handles.size;
  }

  /** True once the last handle closed (or is closing) the layer: open it afresh. */
  get closed(): boolean {
    return this.closing !== null;
  }

  /** A new handle. A writable one needs the layer open for writing (READ_ONLY_LAYER otherwise). */
  handle(opts: SharedLayerHandleOptions): LayerFs {
    if (this.closing) throw dmfsError('LAYER_NOT_FOUND', `layer ${this.layer.layerName} is being closed`);
    if (!opts.readOnly && this.layer.readOnly) throw dmfsError('READ_ONLY_LAYER', `layer ${this.layer.layerName} is open read-only here`);
    const h = new SharedLayerHandle(this, this.layer, opts);
    this.handles.add(h);
    return h;
  }

  /** Whether any handle but `from` listens for edits (else the edits need not be worked out). */
  hasListeners(from: SharedLayerHandle): boolean {
    for (const h of this.handles) if (h !== from && h.listener) return true;
    return false;
  }

  publish(from: SharedLayerHandle, edits: readonly LayerEdit[]): void {
    if (!edits.length) return;
    for (const h of this.handles) if (h !== from && h.listener) h.listener(edits);
  }

  async release(h: SharedLayerHandle): Promise<void> {
    if (!this.handles.delete(h) || this.handles.size > 0) return;
    this.closing = this.layer.close();
    this.onLastClose();
    await this.closing;
  }
}

/** Forwards to the shared layer; see SharedLayer. Not exported: made by SharedLayer.handle. */
class SharedLayerHandle implements LayerFs {
  readonly layerName: string;
  readonly readOnly: boolean;
  readonly rootIno: Ino;
  readonly sizeLimitBytes: number;
  readonly listener: ((edits: readonly LayerEdit[]) => void) | null;
  createUnnamed?: LayerFs['createUnnamed'];
  copyFileRange?: LayerFs['copyFileRange'];
  fallocate?: LayerFs['fallocate'];
  seekData?: LayerFs['seekData'];
  private readonly claimed = new Set<string>();
  private closed = false;

  constructor(private readonly shared: SharedLayer, private readonly layer: LayerFs, opts: SharedLayerHandleOptions) {
    this.layerName = layer.layerName;
    this.readOnly = opts.readOnly || layer.readOnly;
    this.rootIno = layer.rootIno;
    this.sizeLimitBytes = layer.sizeLimitBytes;
    this.listener = opts.onPeerEdits ?? null;
    // Optional store calls stay absent where the layer lacks them (the FUSE table answers ENOSYS / EOPNOTSUPP).
    const { createUnnamed, copyFileRange, fallocate, seekData } = layer;
    if (createUnnamed) {
      this.createUnnamed = async (dirIno, o) => {
        this.assertWritable();
        return createUnnamed.call(layer, dirIno, o);
      };
    }
    if (copyFileRange) {
      this.copyFileRange = async (inoIn, offIn, inoOut, offOut, len) => {
        this.assertWritable();
        return this.edited(copyFileRange.call(layer, inoIn, offIn, inoOut, offOut, len), (n) => [{ kind: 'data', ino: inoOut, offsetBytes: offOut, lengthBytes: n }]);
      };
    }
    if (fallocate) {
      this.fallocate = async (ino, off, len, how) => {
        this.assertWritable();
        return this.edited(fallocate.call(layer, ino, off, len, how), () => [fallocateEdit(ino, off, len, how)]);
      };
    }
    if (seekData) this.seekData = (ino, off, what) => seekData.call(layer, ino, off, what);
  }

  private assertWritable(): void {
    if (this.readOnly) throw dmfsError('READ_ONLY_LAYER', `layer ${this.layerName} is mounted read-only here`);
  }

  /** `done`, reporting its edits to the other handles once it succeeded. */
  private edited<T>(done: Promise<T>, edits: (result: T) => LayerEdit[]): Promise<T> {
    return done.then((result) => {
      if (this.shared.hasListeners(this)) this.shared.publish(this, edits(result));
      return result;
    });
  }

  // ---- reads: forwarded as they are ---------------------------------------------

  getattr(ino: Ino): Promise<Attr> {
    return this.layer.getattr(ino);
  }

  lookup(dirIno: Ino, name: string): Promise<Attr | null> {
    return this.layer.lookup(dirIno, name);
  }

  resolve(path: string): Promise<Attr> {
    return this.layer.resolve(path);
  }

  readdir(dirIno: Ino): Promise<DirEntry[]> {
    return this.layer.readdir(dirIno);
  }

  readlink(ino: Ino): Promise<string> {
    return this.layer.readlink(ino);
  }

  read(ino: Ino, target: Buffer, offsetBytes: number, opts?: ReadOptions): Promise<number> {
    return this.layer.read(ino, target, offsetBytes, opts);
  }

  getxattr(ino: Ino, name: string): Promise<Buffer | null> {
    return this.layer.getxattr(ino, name);
  }

  listxattr(ino: Ino): Promise<string[]> {
    return this.layer.listxattr(ino);
  }

  statfs(): Promise<StatFs> {
    return this.layer.statfs();
  }

  changes(): AsyncIterable<LayerChange> {
    return this.layer.changes();
  }

  // Open counts are the layer's own, shared by every handle: that keeps an inode unlinked
  // through one mount alive while another has it open.
  retain(ino: Ino): void {
    this.layer.retain(ino);
  }

  release(ino: Ino): Promise<void> {
    return this.layer.release(ino);
  }

  fsync(): Promise<void> {
    return this.layer.fsync();
  }

  // ---- changes: refused read-only, reported to the other handles ----------------

  async setattr(ino: Ino, changes: SetAttr): Promise<Attr> {
    this.assertWritable();
    const edit: LayerEdit = changes.sizeBytes !== undefined ? { kind: 'data', ino, offsetBytes: 0, lengthBytes: 0 } : { kind: 'attr', ino };
    return this.edited(this.layer.setattr(ino, changes), () => [edit]);
  }

  async mknod(dirIno: Ino, name: string, opts: NewNodeOptions): Promise<Attr> {
    this.assertWritable();
    return this.edited(this.layer.mknod(dirIno, name, opts), () => [{ kind: 'name', dirIno, name }]);
  }

  async mkdir(dirIno: Ino, name: string, opts: NewNodeOptions): Promise<Attr> {
    this.assertWritable();
    return this.edited(this.layer.mkdir(dirIno, name, opts), () => [{ kind: 'name', dirIno, name }]);
  }

  async symlink(dirIno: Ino, name: string, target: string, opts: Omit<NewNodeOptions, 'mode'>): Promise<Attr> {
    this.assertWritable();
    return this.edited(this.layer.symlink(dirIno, name, target, opts), () => [{ kind: 'name', dirIno, name }]);
  }

  async link(ino: Ino, newDirIno: Ino, newName: string): Promise<Attr> {
    this.assertWritable();
    return this.edited(this.layer.link(ino, newDirIno, newName), () => [{ kind: 'name', dirIno: newDirIno, name: newName }, { kind: 'attr', ino }]);
  }

  /**
   * The edits of a name going away (unlink, rmdir, a rename's replaced target), from what
   * it named before: `deleted` when that was the inode's last link or a directory, else
   * the name and the inode's attributes (its link count).
   */
  private removal(dirIno: Ino, name: string, before: Attr | null): LayerEdit[] {
    if (!before) return [{ kind: 'name', dirIno, name }];
    if (before.kind === 'dir' || before.nlink <= 1) return [{ kind: 'deleted', dirIno, name, ino: before.ino }];
    return [{ kind: 'name', dirIno, name }, { kind: 'attr', ino: before.ino }];
  }

  async unlink(dirIno: Ino, name: string): Promise<void> {
    this.assertWritable();
    // What the name named, looked up only when someone listens: the kernel of the changing
    // mount holds the directory's lock, so the name cannot change in between.
    const before = this.shared.hasListeners(this) ? await this.layer.lookup(dirIno, name) : null;
    return this.edited(this.layer.unlink(dirIno, name), () => this.removal(dirIno, name, before));
  }

  async rmdir(dirIno: Ino, name: string): Promise<void> {
    this.assertWritable();
    const before = this.shared.hasListeners(this) ? await this.layer.lookup(dirIno, name) : null;
    return this.edited(this.layer.rmdir(dirIno, name), () => this.removal(dirIno, name, before));
  }

  async rename(oldDirIno: Ino, oldName: string, newDirIno: Ino, newName: string, flags?: RenameFlags): Promise<void> {
    this.assertWritable();
    const listening = this.shared.hasListeners(this);
    const moved = listening ? await this.layer.lookup(oldDirIno, oldName) : null;
    const target = listening ? await this.layer.lookup(newDirIno, newName) : null;
    return this.edited(this.layer.rename(oldDirIno, oldName, newDirIno, newName, flags), () => {
      const edits: LayerEdit[] = [{ kind: 'name', dirIno: oldDirIno, name: oldName }];
      if (flags?.exchange || !target) edits.push({ kind: 'name', dirIno: newDirIno, name: newName });
      else edits.push(...this.removal(newDirIno, newName, target));
      // Both inodes' ctime moved (and an exchanged directory's '..').
      if (moved) edits.push({ kind: 'attr', ino: moved.ino });
      if (flags?.exchange && target) edits.push({ kind: 'attr', ino: target.ino });
      return edits;
    });
  }

  async setOpaque(dirIno: Ino): Promise<void> {
    this.assertWritable();
    return this.edited(this.layer.setOpaque(dirIno), () => [{ kind: 'data', ino: dirIno, offsetBytes: 0, lengthBytes: 0 }]);
  }

  async write(ino: Ino, data: Buffer, offsetBytes: number): Promise<number> {
    this.assertWritable();
    return this.edited(this.layer.write(ino, data, offsetBytes), (n) => [{ kind: 'data', ino, offsetBytes, lengthBytes: n }]);
  }

  async setxattr(ino: Ino, name: string, value: Buffer, flags?: XattrSetFlags): Promise<void> {
    this.assertWritable();
    return this.edited(this.layer.setxattr(ino, name, value, flags), () => [{ kind: 'attr', ino }]);
  }

  async removexattr(ino: Ino, name: string): Promise<void> {
    this.assertWritable();
    return this.edited(this.layer.removexattr(ino, name), () => [{ kind: 'attr', ino }]);
  }

  // ---- mounts and the end ---------------------------------------------------------

  async claimMount(mountpoint: string): Promise<void> {
    if (this.closed) throw dmfsError('LAYER_NOT_FOUND', `layer ${this.layerName}: this handle is closed`);
    await this.layer.claimMount?.(mountpoint, { coherent: true });
    this.claimed.add(mountpoint);
  }

  async releaseMount(mountpoint: string): Promise<void> {
    if (!this.claimed.delete(mountpoint)) return;
    await this.layer.releaseMount?.(mountpoint);
  }

  /** Releases this handle's mount claims; the last handle's close closes the layer. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.shared.users > 1) for (const mp of [...this.claimed]) await this.releaseMount(mp);
    await this.shared.release(this);
  }
}

/** What fallocate changed: nothing readable for allocate, the range for punch/zero, all past it for collapse/insert. */
function fallocateEdit(ino: Ino, offsetBytes: number, lengthBytes: number, how: FallocateHow): LayerEdit {
  switch (how.mode) {
    case 'allocate': return { kind: 'attr', ino };
    case 'punch-hole':
    case 'zero-range': return { kind: 'data', ino, offsetBytes, lengthBytes };
    default: return { kind: 'data', ino, offsetBytes, lengthBytes: 0 };
  }
}
