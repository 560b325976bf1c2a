import type { Ino } from '../store/layer-store';

/**
 * (directory inode, name) -> inode, the path walk's cache. Keyed by the parent's inode,
 * not by path, so renaming a directory invalidates exactly two entries and everything
 * below it stays valid. Only positive entries are kept. Coherent because every change to
 * a mounted layer passes through this mount (the store lets one writer open a layer).
 * Bounded: cleared when it reaches maxEntries (cheap, and refilled by the next walks).
 */
export class DentryCache {
  private readonly map = new Map<string, Ino>();

  constructor(private readonly maxEntries = 200_000) {}

  get size(): number {
    return this.map.size;
  }

  get(dirIno: Ino, name: string): Ino | undefined {
    return this.map.get(key(dirIno, name));
  }

  set(dirIno: Ino, name: string, ino: Ino): void {
    if (this.map.size >= this.maxEntries) this.map.clear();
    this.map.set(key(dirIno, name), ino);
  }

  delete(dirIno: Ino, name: string): void {
    this.map.delete(key(dirIno, name));
  }
}

function key(dirIno: Ino, name: string): string {
  return `${dirIno}/${name}`;
}
