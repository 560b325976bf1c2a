import { dmfsError } from '../errors';
import { packUint48, unpackUint48 } from '../pool/codec';
import type { Table } from '../pool/metadata-env';

/**
 * Data blocks mapped by more than one block-map entry: what copy_file_range and reflinks
 * (FileRangeCopy) make, so a copied range costs metadata, not data.
 *
 * The rules (every one holds inside one metadata transaction, so a crash leaves counts and
 * maps consistent: the count changes in the same txn as the entries it counts):
 *
 * 1. One count per data block, global to the pool: `block-refs [block] → sharers` (uint48),
 *    `sharers` = how many block-map entries, in any segment, point at the block. Absent
 *    means one entry (or none, for a free block): an unshared block costs nothing extra.
 *    A record always holds sharers >= 2; dropping to one deletes it.
 * 2. A block borrowed from a LOWER segment (a container copying a file of its image) is
 *    counted like any other. Lower segments never change while a layer above them exists,
 *    so the lower entry outlives every borrower, and the count never reaches zero through
 *    the borrower: the borrower can never free it. Counting borrowed blocks too (instead
 *    of flagging the entry) keeps one rule for freeing and copy-on-write, and lets `dmfs
 *    check` verify every shared block the same way.
 * 3. Copy-on-write: a layer writes a block it maps in place only when the block is not
 *    shared. A write into a shared block takes a fresh block, copies the old content,
 *    applies the write, maps the fresh block and drops one sharer of the old one; every
 *    other sharer keeps the old content. Truncation copies its partial block anyway.
 * 4. Freeing: every path that removes a block-map entry (unlink, truncate, an overwrite
 *    that remaps, layer removal) drops one sharer; the block goes back to the pool only
 *    when nothing maps it any more (dropSharer returns true).
 * 5. Space: a block's pool space belongs to the segment that took it from the pool (its
 *    home, always the lowest segment mapping it: sharers live in that segment or in layers
 *    built on it). A segment's usage (exclusive bytes, `dmfs ls`) counts each home block
 *    once; a shared entry adds nothing, as a reflinked copy on btrfs or XFS takes no new
 *    space; the layer's size limit (sizeLimitBytes, checked against the chain's usage)
 *    therefore counts a shared block once too, and only the copy-on-write of a shared
 *    block consumes space.
 * 6. Commit (container → image) moves a segment, not its entries: counts stay right.
 *    Sharing never crosses layers that are not on one chain (one mount copies only within
 *    its own layer; another mount's file is EXDEV).
 * 7. Sector checksums travel with the entry (a shared entry is a copy of the source entry,
 *    checksums included), and each entry counts in its inode's `mapped`, so a lost shared
 *    entry still reads EIO, never zeros.
 */
export class BlockSharing {
  constructor(private readonly refs: Table) {}

  /** Inside or outside txn: whether more than one entry maps the block (writes must copy it first). */
  isShared(block: number): boolean {
    return this.refs.get(block) !== undefined;
  }

  /** Entries mapping the block: the record's count, else 1 (the caller knows the block is mapped). */
  sharers(block: number): number {
    const raw = this.refs.get(block);
    return raw === undefined ? 1 : unpackSharers(raw);
  }

  /** Inside txn: one more entry maps the block (which some entry maps already). */
  addSharer(block: number): void {
    this.refs.put(block, packSharers(this.sharers(block) + 1));
  }

  /**
   * Inside txn: addSharer for each block of the list (a block listed twice gains two). One
   * range scan reads the counts there are when the blocks lie close together (a file
   * written in one go), instead of a lookup each.
   */
  addSharers(blocks: readonly number[]): void {
    if (!blocks.length) return;
    let lo = Infinity;
    let hi = -1;
    for (const b of blocks) {
      if (b < lo) lo = b;
      if (b > hi) hi = b;
    }
    const counts = new Map<number, number>();
    const dense = hi - lo < 4 * blocks.length + 1024;
    if (dense) for (const { key, value } of this.refs.range(lo, hi + 1)) counts.set(key as number, unpackSharers(value));
    for (const b of blocks) {
      const n = (counts.get(b) ?? (dense ? 1 : this.sharers(b))) + 1;
      counts.set(b, n);
      this.refs.put(b, packSharers(n));
    }
  }

  /** Inside txn: one entry stopped mapping the block. True when nothing maps it now: the caller frees it. */
  dropSharer(block: number): boolean {
    const raw = this.refs.get(block);
    if (raw === undefined) return true;
    const left = unpackSharers(raw) - 1;
    if (left <= 1) this.refs.del(block);
    else this.refs.put(block, packSharers(left));
    return false;
  }
}

/**
 * A block's count is stored bare, 6 bytes little-endian, like the pool's counters: a copy
 * of a 1 GiB file writes 16,384 of them in one transaction, and `dmfs check` recounts
 * every one from the block maps anyway. A value of another length, or below 2, is damage.
 */
export function packSharers(sharers: number): Buffer {
  return packUint48(sharers);
}

export function unpackSharers(raw: Buffer): number {
  const n = unpackUint48(raw);
  if (n < 2) throw dmfsError('METADATA_CORRUPT', `block reference count ${n} is below 2; run dmfs check`);
  return n;
}
