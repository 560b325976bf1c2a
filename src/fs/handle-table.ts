import type { Ino } from '../store/layer-store';

export interface Handle {
  ino: Ino;
  writable: boolean;
}

/**
 * FUSE file handles -> inodes. Reads and writes go by inode, never by path, so a file
 * renamed or unlinked while open keeps working. Handles are small integers in [1, 2^31):
 * fuse-native carries fh as a 32-bit value (0 means "none").
 */
export class HandleTable {
  private readonly handles = new Map<number, Handle>();
  private readonly openPerIno = new Map<Ino, number>();
  static readonly MAX_FH = 0x7fffffff;

  /** A random first handle in [1, MAX_FH): see createFuseOperations. */
  static randomStart(): number {
    return 1 + Math.floor(Math.random() * (HandleTable.MAX_FH - 2));
  }

  constructor(private next = 1) {}

  get size(): number {
    return this.handles.size;
  }

  open(ino: Ino, writable: boolean): number {
    if (this.handles.size >= HandleTable.MAX_FH - 1) throw new RangeError('out of file handles');
    let fh = this.next;
    while (this.handles.has(fh)) fh = fh >= HandleTable.MAX_FH - 1 ? 1 : fh + 1;
    this.next = fh >= HandleTable.MAX_FH - 1 ? 1 : fh + 1;
    this.handles.set(fh, { ino, writable });
    this.openPerIno.set(ino, (this.openPerIno.get(ino) ?? 0) + 1);
    return fh;
  }

  get(fh: number): Handle | undefined {
    return this.handles.get(fh);
  }

  /** Removes the handle; returns it (undefined if unknown). */
  close(fh: number): Handle | undefined {
    const h = this.handles.get(fh);
    if (!h) return undefined;
    this.handles.delete(fh);
    const n = (this.openPerIno.get(h.ino) ?? 1) - 1;
    if (n > 0) this.openPerIno.set(h.ino, n);
    else this.openPerIno.delete(h.ino);
    return h;
  }

  openCount(ino: Ino): number {
    return this.openPerIno.get(ino) ?? 0;
  }

  /** Every open handle (for shutdown). */
  entries(): IterableIterator<[number, Handle]> {
    return this.handles.entries();
  }
}
