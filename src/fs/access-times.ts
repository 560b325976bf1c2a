/**
 * Access times of a mounted layer, as the Linux mount options say (fs/inode.c
 * atime_needs_update, relatime_need_update): the FUSE kernel never updates atime itself
 * (its inodes are S_NOATIME) but drops its cached atime after every READ and READDIR it
 * sends, so the file system updates atime when it serves them and the next stat asks again.
 *
 * - relatime (the default, as on ext4): a read moves atime to now when atime <= mtime,
 *   atime <= ctime, or atime is 24 h old or more; otherwise nothing is written.
 * - strictatime: every read that reaches dmfs moves atime.
 * - noatime: atime moves only by utimensat.
 *
 * A file a container has from its image keeps the image's atime (the store does not copy
 * an inode up for a read: a read is no change of the container, as on overlayfs).
 *
 * Cost: relatime needs no metadata write for a re-read, and not even a metadata read:
 * once a node is known not to need an update, the answer is kept (`quietUntilMs`) until
 * the node changes through the table (changed / namespaceChanged) or the 24 h pass.
 * Reads served from the kernel's page cache never reach dmfs, so they move no atime (a
 * re-read after 24 h from cached pages is the one case where ext4 would).
 */
import type { Ino, LayerFs } from '../store/layer-store';

export type AtimeMode = 'relatime' | 'strictatime' | 'noatime';

export const ATIME_MODES: readonly AtimeMode[] = ['relatime', 'strictatime', 'noatime'];

const RELATIME_WINDOW_NS = 24n * 3600n * 1_000_000_000n;
const RELATIME_WINDOW_MS = 24 * 3600 * 1000;
/** Decisions kept at most; past it they are dropped and re-learnt (one metadata read each). */
const MAX_KEPT_DECISIONS = 65536;

/** Whether relatime moves atime now, given the inode's times (all ns since the epoch). */
export function relatimeNeedsUpdate(atimeNs: bigint, mtimeNs: bigint, ctimeNs: bigint, nowNs: bigint): boolean {
  if (atimeNs <= mtimeNs || atimeNs <= ctimeNs) return true;
  return nowNs - atimeNs >= RELATIME_WINDOW_NS;
}

export class AccessTimes {
  /** ino -> wall-clock ms before which a read needs no atime update (relatime only). */
  private readonly quietUntilMs = new Map<Ino, number>();
  /** Nodes whose atime the store keeps (a lower layer's file): no update until they change. */
  private readonly kept = new Set<Ino>();
  /** Updates under way, so that concurrent reads of one node write once. */
  private readonly pending = new Map<Ino, Promise<void>>();
  readonly mode: AtimeMode;

  constructor(private readonly layer: LayerFs, mode: AtimeMode, private readonly nowNs: () => bigint) {
    // A read-only layer keeps its times, as a read-only ext4 mount does.
    this.mode = layer.readOnly ? 'noatime' : mode;
  }

  /**
   * ino was read (or listed). Returns undefined when atime is to stay (the hot path: no
   * promise), else a promise settled once atime is stored; answer the read after it, so
   * that a stat right after the read sees the new atime.
   */
  accessed(ino: Ino): Promise<void> | undefined {
    if (this.mode === 'noatime' || this.kept.has(ino)) return undefined;
    if (this.mode === 'relatime') {
      const quiet = this.quietUntilMs.get(ino);
      if (quiet !== undefined && Date.now() < quiet) return undefined;
    }
    const running = this.pending.get(ino);
    if (running) return running;
    // As touch_atime: a failed atime update (a full or read-only pool) never fails the read.
    const p = this.update(ino).catch(() => undefined).finally(() => this.pending.delete(ino));
    this.pending.set(ino, p);
    return p;
  }

  /** ino's mtime or ctime moved (write, setattr, xattrs, links): its relatime answer is stale. */
  changed(ino: Ino): void {
    this.quietUntilMs.delete(ino);
    this.kept.delete(ino);
  }

  /** An unlink, rmdir or rename moved the ctime of a node the table does not know: forget every answer. */
  namespaceChanged(): void {
    this.quietUntilMs.clear();
    this.kept.clear();
  }

  private async update(ino: Ino): Promise<void> {
    const attr = await this.layer.getattr(ino);
    const now = this.nowNs();
    if (this.mode === 'relatime' && !relatimeNeedsUpdate(attr.atimeNs, attr.mtimeNs, attr.ctimeNs, now)) {
      this.keepQuiet(ino, attr.atimeNs);
      return;
    }
    // The store stamps atime with the clock its mtimes and ctimes come from, so that a read
    // right after a write shows atime >= mtime, as on ext4.
    const after = await this.layer.setattr(ino, { accessOnly: true });
    if (after.atimeNs === attr.atimeNs) {
      if (this.kept.size >= MAX_KEPT_DECISIONS) this.kept.clear();
      this.kept.add(ino);
    } else if (this.mode === 'relatime') {
      this.keepQuiet(ino, after.atimeNs);
    }
  }

  private keepQuiet(ino: Ino, atimeNs: bigint): void {
    if (this.quietUntilMs.size >= MAX_KEPT_DECISIONS) this.quietUntilMs.clear();
    this.quietUntilMs.set(ino, Number(atimeNs / 1_000_000n) + RELATIME_WINDOW_MS);
  }
}
