/**
 * Applies an OCI layer changeset (a stream of tar entries) to one building image layer
 * through `LayerFs`, as the OCI image spec ("Applying changesets") says:
 *
 * - `.wh.NAME` removes NAME (and everything below it) of the lower layers; entries of
 *   this same layer are kept whatever the order in the archive (a whiteout of a
 *   directory this layer also writes into makes that directory opaque instead).
 * - `.wh..wh..opq` makes its directory opaque: every lower entry below it is hidden;
 *   this layer's entries stay. Other `.wh..wh.*` names are reserved and skipped.
 * - An entry replaces whatever is at its name: a file replaces a directory (with its
 *   subtree), a directory replaces a file; a later duplicate entry wins; a directory
 *   entry over a directory only updates its attributes and xattrs.
 * - Hard links name a file of this or a lower layer by path. A link to a lower file
 *   means that file was copied up (an overlay copies up before linking, and Docker's
 *   tars carry the target in full): the target name gets a copy made in this layer and
 *   the new name links to it, while the lower file's other names keep the lower inode.
 *   So a layer is the same tree whether its tar carries the copy or only the link, and
 *   `dmfs save` of a re-imported image gives the same diff ids. Symlinks are stored as
 *   text and never followed.
 *
 * Untrusted input: every path is split by `entryComponents` (`..` refused) and walked
 * component by component with `lookup` from the layer root. A symlink met as an
 * intermediate component is UNSAFE_PATH: nothing is ever written through one, and no
 * path is ever handed to anything that would follow one. Missing parents are created
 * (0755 root:root), as GNU tar and umoci do.
 *
 * Times: a file's mtime/atime come from its entry; a directory's from its entry too,
 * applied once the whole layer is written (children change their parent's mtime);
 * a directory this layer changes without an entry for it keeps the time it had.
 */
import { dmfsError, isDmfsError } from '../errors';
import type { Attr, Ino, LayerFs, NamedEntry, NewEntry, NewNodeOptions } from '../store/layer-store';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFMT, S_IFREG } from '../store/layer-store';
import { entryComponents, NAME_MAX_BYTES, whiteoutOf } from './entry-path';
import type { TarEntry, TarItem } from './tar-reader';
import { makedev } from './tar-writer';

export interface ApplyOptions {
  /** Largest file accepted (FILE_TOO_BIG past it); default the layer's size limit. */
  maxFileBytes?: number;
  /** Called after each entry with the count so far. */
  onEntry?: (entriesDone: number) => void;
}

export interface ApplyStats {
  entries: number;
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  devices: number;
  whiteouts: number;
  opaques: number;
  /** File content bytes in the layer tar. */
  contentBytes: number;
  /** Files that replaced a lower file and were rewritten in place, block by block. */
  rewrittenInPlace: number;
  /** Bytes of those files that matched the lower file and were not written (shared blocks). */
  sharedBytes: number;
}

const WRITE_COALESCE_BYTES = 1 << 20;
/** Most entries, and content bytes, made in one createEntries transaction. */
const QUEUE_MAX_ENTRIES = 256;
const QUEUE_MAX_BYTES = 8 << 20;

/** The key of a name this layer wrote: its parent directory's inode and the name. */
function writtenKey(parent: Ino, name: string): string {
  return `${parent}/${name}`;
}
/** mknod's options for a file, device or fifo entry: its type bits and mode, owner, device number. */
function nodeOptions(entry: TarEntry): NewNodeOptions {
  const ids = { uid: entry.uid, gid: entry.gid };
  switch (entry.type) {
    case 'chardev':
    case 'blockdev':
      return { mode: (entry.type === 'chardev' ? S_IFCHR : S_IFBLK) | entry.mode, ...ids, rdev: makedev(entry.devMajor, entry.devMinor) };
    case 'fifo':
      return { mode: S_IFIFO | entry.mode, ...ids };
    default:
      return { mode: S_IFREG | entry.mode, ...ids };
  }
}

/** Where `copyUp` builds a copy: a reserved name no tar entry can take. */
const COPY_UP_NAME = '.wh..wh.dmfs-copy-up';
/** The root directory's own key (it has no parent entry). */
const ROOT_KEY = '/';

interface DirTimes {
  mtimeNs: bigint;
  atimeNs: bigint;
  /** True when a directory entry of this layer gave them. */
  explicit: boolean;
}

/** One resolved directory of a path: its name in its parent and its inode. */
interface ChainLink {
  name: string;
  ino: Ino;
}

/**
 * Memory and time: nothing here is keyed by a whole path. A path 10,000 levels deep is
 * 20 KB, and a tar of such a tree has one per entry: sets of paths would hold the square
 * of the depth. Entries are resolved against the directories of the previous one (tar
 * order makes neighbours share most of their path), and what this layer wrote is keyed
 * by (parent inode, name) and directory inode, so state is linear in entries.
 */
export class LayerApplier {
  /** The directories of the last entry's parent path, root first (the root itself implicit). */
  private readonly entryChain: ChainLink[] = [];
  /** The same for the last hard link target, so links elsewhere do not evict entryChain. */
  private readonly linkChain: ChainLink[] = [];
  /** Names (`writtenKey`) that entries of this layer wrote. */
  private readonly written = new Set<string>();
  /** Directories with something written below them in this layer. */
  private readonly writtenUnder = new Set<Ino>();
  private readonly dirTimes = new Map<Ino, DirTimes>();
  private readonly maxFileBytes: number;
  readonly stats: ApplyStats = {
    entries: 0, files: 0, dirs: 0, symlinks: 0, hardlinks: 0, devices: 0, whiteouts: 0, opaques: 0, contentBytes: 0,
    rewrittenInPlace: 0, sharedBytes: 0,
  };
  private blockBytes = 0;
  /** Entries for createEntries not sent yet (see queueWhole), their keys and content bytes. */
  private queue: NamedEntry[] = [];
  private queuedKeys = new Set<string>();
  private queuedBytes = 0;
  /** The run sent to createEntries and not made yet (one at most: runs are made in order), and its keys. */
  private sending: Promise<Attr[]> | null = null;
  private sendingKeys = new Set<string>();

  constructor(private readonly fs: LayerFs, private readonly opts: ApplyOptions = {}) {
    this.maxFileBytes = opts.maxFileBytes ?? fs.sizeLimitBytes;
  }

  /** Applies every entry, then the deferred directory times. */
  async apply(items: AsyncIterable<TarItem>): Promise<ApplyStats> {
    try {
      for await (const item of items) {
        await this.applyEntry(item);
        this.stats.entries++;
        this.opts.onEntry?.(this.stats.entries);
      }
      await this.finish();
    } catch (err) {
      // Nothing of this layer may still be in the making when the caller removes it.
      await this.waitSent().catch(() => undefined);
      throw err;
    }
    return this.stats;
  }

  async applyEntry({ entry, body }: TarItem): Promise<void> {
    const comps = entryComponents(entry.path);
    if (comps.length === 0) {
      if (entry.type !== 'dir') throw dmfsError('BAD_IMAGE', `the root entry ${JSON.stringify(entry.path)} is a ${entry.type}`);
      await this.updateDir(this.fs.rootIno, entry, await this.fs.getattr(this.fs.rootIno));
      this.setDirTimes(this.fs.rootIno, entry);
      return;
    }
    const base = comps[comps.length - 1];
    const parentComps = comps.slice(0, -1);
    const wo = whiteoutOf(base);
    if (wo?.kind === 'reserved') return;
    if (wo?.kind === 'whiteout') {
      if (Buffer.byteLength(wo.name) > NAME_MAX_BYTES) throw dmfsError('NAME_TOO_LONG', `whiteout name too long: ${base.slice(0, 64)}...`);
      // A whiteout below a missing name or a non-directory hides nothing (umoci writes
      // `d/.wh.x` after replacing directory d by a file): no parents are made for it.
      const dir = await this.resolveDir(parentComps, 'or-null');
      if (dir !== null) await this.whiteout(dir, wo.name);
      this.stats.whiteouts++;
      return;
    }
    const parent = (await this.resolveDir(parentComps, true))!;
    if (wo?.kind === 'opaque') {
      await this.fs.setOpaque(parent);
      // The directory itself counts as written by this layer (its parent's entry for it).
      const depth = this.entryChain.length;
      if (depth === 0) this.markWritten(ROOT_KEY, 0);
      else this.markWritten(writtenKey(depth === 1 ? this.fs.rootIno : this.entryChain[depth - 2].ino, this.entryChain[depth - 1].name), depth - 1);
      this.stats.opaques++;
      return;
    }
    // The whole path only for messages: joining it per entry costs the square of the depth.
    const where = (): string => comps.join('/');
    const key = writtenKey(parent, base);
    const depth = this.entryChain.length;
    const existing = await this.lookup(parent, base);

    if (entry.type === 'dir') {
      let ino: Ino;
      if (existing?.kind === 'dir') {
        ino = existing.ino;
        await this.updateDir(ino, entry, existing);
      } else {
        if (existing) await this.remove(parent, base, existing);
        await this.touchDir(parent);
        const a = await this.fs.mkdir(parent, base, { mode: S_IFDIR | entry.mode, uid: entry.uid, gid: entry.gid });
        ino = a.ino;
        await this.setXattrs(ino, entry, false);
      }
      this.setDirTimes(ino, entry);
      this.markWritten(key, depth);
      this.stats.dirs++;
      return;
    }

    if (entry.type === 'file' && entry.sizeBytes > this.maxFileBytes) {
      throw dmfsError('FILE_TOO_BIG', `${where()}: ${entry.sizeBytes} bytes exceeds the layer limit of ${this.maxFileBytes}`);
    }
    let linkTarget: Attr | null = null;
    if (entry.type === 'hardlink') {
      const t = await this.resolveLinkTarget(entry);
      linkTarget = t.attr;
      let cur = existing;
      if (!this.written.has(writtenKey(t.dir, t.base))) {
        // A link to a lower file: the file was copied up (what an overlay does, and what
        // Docker's tars say by carrying the target as a full file). Its other lower names
        // keep the lower inode. So the layer is the same whichever way the tar says it.
        linkTarget = await this.copyUp(t.dir, t.base, t.attr, t.depth);
        cur = await this.lookup(parent, base);
      }
      if (cur && cur.ino === linkTarget.ino) {
        this.markWritten(key, depth); // Already this very file (a link to itself, or a repeated link).
        this.stats.hardlinks++;
        return;
      }
    }
    if (
      entry.type === 'file' && existing?.kind === 'file' && existing.nlink === 1 && entry.sparse === null &&
      !this.written.has(key) && (await this.worthRewriting(existing, entry))
    ) {
      await this.rewriteInPlace(existing, entry, body, where);
      this.markWritten(key, depth);
      return;
    }
    const replaced = entry.type === 'hardlink' ? await this.lookup(parent, base) : existing;
    if (replaced) await this.remove(parent, base, replaced);
    await this.touchDir(parent);

    if (entry.type !== 'hardlink' && (await this.queueWhole(parent, base, entry, body, where))) {
      this.markWritten(key, depth);
      return;
    }
    let node: Attr;
    switch (entry.type) {
      case 'file':
        node = await this.fs.mknod(parent, base, nodeOptions(entry));
        await this.writeContent(node.ino, entry, body, where);
        break;
      case 'symlink':
        node = await this.fs.symlink(parent, base, entry.linkPath, { uid: entry.uid, gid: entry.gid });
        break;
      case 'chardev':
      case 'blockdev':
      case 'fifo':
        node = await this.fs.mknod(parent, base, nodeOptions(entry));
        break;
      case 'hardlink':
        await this.fs.link(linkTarget!.ino, parent, base);
        this.markWritten(key, depth);
        this.stats.hardlinks++;
        return;
      default:
        throw dmfsError('BAD_IMAGE', `unexpected entry type ${String((entry as TarEntry).type)}`);
    }
    this.countMade(entry);
    await this.setXattrs(node.ino, entry, false);
    const after = await this.fs.setattr(node.ino, { mtimeNs: entry.mtimeNs, atimeNs: entry.atimeNs ?? entry.mtimeNs });
    if (entry.type !== 'symlink' && (after.mode & 0o7777) !== entry.mode) {
      // A write may clear setuid/setgid bits; the entry's mode is what counts.
      await this.fs.setattr(node.ino, { mode: (after.mode & S_IFMT) | entry.mode });
    }
    this.markWritten(key, depth);
  }

  /**
   * Queues a file (dense, up to WRITE_COALESCE_BYTES: read whole first), symlink, device
   * or fifo entry for LayerFs.createEntries, which makes a run of them in one metadata
   * transaction instead of one each for every node, its content and its times. False when
   * the layer lacks it or the entry does not fit it (the caller then makes the node step by
   * step). A full queue is sent and made while the next entries are read (its data write
   * overlaps their parsing). Queued and sent names are not in the layer yet: `lookup`
   * waits for them to be made before it looks one up, and everything else that reads the
   * tree waits for all of them first (drainQueue).
   */
  private async queueWhole(parent: Ino, name: string, entry: TarEntry, body: AsyncIterable<{ offsetBytes: number; data: Buffer }>, where: () => string): Promise<boolean> {
    if (!this.fs.createEntries) return false;
    const times = { mtimeNs: entry.mtimeNs, atimeNs: entry.atimeNs ?? entry.mtimeNs };
    let made: NewEntry;
    switch (entry.type) {
      case 'file':
        if (entry.sparse !== null || entry.sizeBytes > WRITE_COALESCE_BYTES) return false;
        made = { ...nodeOptions(entry), ...times, content: await this.wholeContent(entry, body, where) };
        break;
      case 'symlink':
        made = { mode: 0o777, uid: entry.uid, gid: entry.gid, ...times, target: entry.linkPath };
        break;
      case 'chardev':
      case 'blockdev':
      case 'fifo':
        made = { ...nodeOptions(entry), ...times };
        break;
      default:
        return false;
    }
    this.countMade(entry);
    this.queue.push({ dirIno: parent, name, entry: made });
    this.queuedKeys.add(writtenKey(parent, name));
    this.queuedBytes += made.content?.length ?? 0;
    if (entry.xattrs.size > 0) {
      // xattrs go through setxattr's checks (an image's are untrusted input), once the node exists.
      const node = (await this.drainQueue()).pop()!;
      await this.setXattrs(node.ino, entry, false);
    } else if (this.queue.length >= QUEUE_MAX_ENTRIES || this.queuedBytes >= QUEUE_MAX_BYTES) {
      await this.sendQueue();
    }
    return true;
  }

  /** Counts a file, symlink, device or fifo entry made. */
  private countMade(entry: TarEntry): void {
    if (entry.type === 'file') this.stats.files++;
    else if (entry.type === 'symlink') this.stats.symlinks++;
    else this.stats.devices++;
  }

  /** Sends the queued entries to createEntries (one transaction) once the previous run is made; does not wait for them. */
  private async sendQueue(): Promise<void> {
    await this.waitSent();
    if (this.queue.length === 0) return;
    const run = this.fs.createEntries!(this.queue);
    run.catch(() => undefined); // Thrown by waitSent; not an unhandled rejection meanwhile.
    this.sending = run;
    this.sendingKeys = this.queuedKeys;
    this.queue = [];
    this.queuedKeys = new Set();
    this.queuedBytes = 0;
  }

  /** Waits until the run sent is made; returns its attributes in queue order ([] when none was). */
  private async waitSent(): Promise<Attr[]> {
    const run = this.sending;
    if (run === null) return [];
    try {
      return await run;
    } finally {
      this.sending = null;
      this.sendingKeys = new Set();
    }
  }

  /** Sends the queue and waits until all of it is made; returns the last run's attributes. */
  private async drainQueue(): Promise<Attr[]> {
    await this.sendQueue();
    return this.waitSent();
  }

  /** fs.lookup, after the queue is made when it holds that very name. */
  private async lookup(dir: Ino, name: string): Promise<Attr | null> {
    const key = writtenKey(dir, name);
    if (this.queuedKeys.has(key) || this.sendingKeys.has(key)) await this.drainQueue();
    return this.fs.lookup(dir, name);
  }

  /** A file entry's whole content, its declared size (what the body leaves out is zeros, as writeContent's hole); BAD_IMAGE past that size. */
  private async wholeContent(entry: TarEntry, body: AsyncIterable<{ offsetBytes: number; data: Buffer }>, where: () => string): Promise<Buffer> {
    const chunks: { offsetBytes: number; data: Buffer }[] = [];
    let dense = true;
    let end = 0;
    for await (const chunk of body) {
      if (chunk.offsetBytes + chunk.data.length > entry.sizeBytes) throw dmfsError('BAD_IMAGE', `${where()}: content beyond the declared size`);
      if (chunk.offsetBytes !== end) dense = false;
      chunks.push(chunk);
      end = chunk.offsetBytes + chunk.data.length;
      this.stats.contentBytes += chunk.data.length;
    }
    if (dense && end === entry.sizeBytes) return chunks.length === 1 ? chunks[0].data : Buffer.concat(chunks.map((c) => c.data), end);
    const content = Buffer.alloc(entry.sizeBytes);
    for (const c of chunks) c.data.copy(content, c.offsetBytes);
    return content;
  }

  /** Applies the deferred directory times. Called by `apply`; call it after feeding `applyEntry` by hand. */
  async finish(): Promise<void> {
    await this.drainQueue();
    for (const [ino, t] of this.dirTimes) {
      try {
        const cur = await this.fs.getattr(ino);
        if (cur.mtimeNs !== t.mtimeNs || (t.explicit && cur.atimeNs !== t.atimeNs)) {
          await this.fs.setattr(ino, { mtimeNs: t.mtimeNs, atimeNs: t.atimeNs });
        }
      } catch (err) {
        if (!isDmfsError(err, 'NOT_FOUND')) throw err;
      }
    }
    this.dirTimes.clear();
  }

  /**
   * Records that this layer wrote the name `key`, whose parent is `entryChain[depth - 1]`
   * (the root for 0): that directory and every one above it have something written
   * below. Stops at the first already marked, so each directory is marked once.
   */
  private markWritten(key: string, depth: number, chain = this.entryChain): void {
    this.written.add(key);
    for (let i = depth - 1; i >= 0; i--) {
      const ino = chain[i].ino;
      if (this.writtenUnder.has(ino)) return;
      this.writtenUnder.add(ino);
    }
    this.writtenUnder.add(this.fs.rootIno);
  }

  /** Remembers a directory's times before this layer first changes its entries. */
  private async touchDir(ino: Ino): Promise<void> {
    if (this.dirTimes.has(ino)) return;
    const a = await this.fs.getattr(ino);
    this.dirTimes.set(ino, { mtimeNs: a.mtimeNs, atimeNs: a.atimeNs, explicit: false });
  }

  private setDirTimes(ino: Ino, entry: TarEntry): void {
    this.dirTimes.set(ino, { mtimeNs: entry.mtimeNs, atimeNs: entry.atimeNs ?? entry.mtimeNs, explicit: true });
  }

  /**
   * The directory at `comps`, walking with lookup and never through a symlink (UNSAFE_PATH).
   * Missing directories: created with `true`, BAD_IMAGE with `false`; with 'or-null' a
   * missing name or a non-directory gives null.
   */
  private async resolveDir(comps: readonly string[], create: boolean, chain?: ChainLink[]): Promise<Ino>;
  private async resolveDir(comps: readonly string[], create: 'or-null'): Promise<Ino | null>;
  private async resolveDir(comps: readonly string[], create: boolean | 'or-null', chain = this.entryChain): Promise<Ino | null> {
    // The previous path's directories up to the first differing component are still right
    // (remove() cuts the chains at a removed directory): look up only the rest.
    let same = 0;
    while (same < comps.length && same < chain.length && chain[same].name === comps[same]) same++;
    chain.length = same;
    let ino = same === 0 ? this.fs.rootIno : chain[same - 1].ino;
    const shown = (n: number): string => `/${comps.slice(0, n).join('/')}`;
    for (let i = same; i < comps.length; i++) {
      const a = await this.lookup(ino, comps[i]);
      if (a === null) {
        if (create === 'or-null') return null;
        if (!create) throw dmfsError('BAD_IMAGE', `${shown(i + 1)} does not exist`);
        await this.touchDir(ino);
        const made = await this.fs.mkdir(ino, comps[i], { mode: S_IFDIR | 0o755, uid: 0, gid: 0 });
        if (chain === this.entryChain) this.markWritten(writtenKey(ino, comps[i]), i);
        else this.written.add(writtenKey(ino, comps[i]));
        ino = made.ino;
      } else if (a.kind === 'dir') {
        ino = a.ino;
      } else if (a.kind === 'symlink') {
        throw dmfsError('UNSAFE_PATH', `${shown(comps.length)} goes through the symlink ${shown(i + 1)}`);
      } else {
        if (create === 'or-null') return null;
        throw dmfsError('BAD_IMAGE', `${shown(comps.length)}: ${shown(i + 1)} is not a directory`);
      }
      chain.push({ name: comps[i], ino });
    }
    return ino;
  }

  /** The hard link's target, its directory and name there, and its depth in `linkChain`. */
  private async resolveLinkTarget(entry: TarEntry): Promise<{ attr: Attr; dir: Ino; base: string; depth: number }> {
    const comps = entryComponents(entry.linkPath);
    if (comps.length === 0) throw dmfsError('BAD_IMAGE', `hard link ${entry.path} to the root`);
    const base = comps[comps.length - 1];
    if (whiteoutOf(base) !== null) throw dmfsError('BAD_IMAGE', `hard link ${entry.path} to a whiteout name`);
    const dir = await this.resolveDir(comps.slice(0, -1), false, this.linkChain);
    const a = await this.lookup(dir, base);
    if (a === null) throw dmfsError('BAD_IMAGE', `hard link ${entry.path}: target ${entry.linkPath} does not exist`);
    if (a.kind === 'dir') throw dmfsError('BAD_IMAGE', `hard link ${entry.path}: target ${entry.linkPath} is a directory`);
    return { attr: a, dir, base, depth: this.linkChain.length };
  }

  /**
   * Replaces lower entry `name` of `dir` by a copy of it made in this layer (content,
   * attributes, xattrs; holes stay holes) and returns the copy. The copy is made under a
   * reserved name (`.wh..wh.*`, never an entry of a tar) and renamed over the original
   * once whole, so the lower inode is read while it still has its name. `depth` places
   * `dir` in `linkChain`, for the written-below marks.
   */
  private async copyUp(dir: Ino, name: string, lower: Attr, depth: number): Promise<Attr> {
    await this.touchDir(dir);
    const ids = { uid: lower.uid, gid: lower.gid };
    const tmp = COPY_UP_NAME;
    const stale = await this.lookup(dir, tmp);
    if (stale) await this.remove(dir, tmp, stale);
    let copy = lower.kind === 'symlink'
      ? await this.fs.symlink(dir, tmp, await this.fs.readlink(lower.ino), ids)
      : await this.fs.mknod(dir, tmp, { mode: lower.mode, ...ids, rdev: lower.rdev });
    if (lower.kind === 'file') {
      await this.copyContent(lower, copy.ino);
      if (lower.sizeBytes > 0) await this.fs.setattr(copy.ino, { sizeBytes: lower.sizeBytes });
    }
    for (const x of await this.fs.listxattr(lower.ino)) {
      const v = await this.fs.getxattr(lower.ino, x);
      if (v !== null) await this.fs.setxattr(copy.ino, x, v);
    }
    await this.fs.unlink(dir, name);
    await this.fs.rename(dir, tmp, dir, name);
    copy = await this.fs.setattr(copy.ino, { mtimeNs: lower.mtimeNs, atimeNs: lower.atimeNs });
    if (lower.kind !== 'symlink' && (copy.mode & 0o7777) !== (lower.mode & 0o7777)) {
      // A write may clear setuid/setgid bits; the lower file's mode is what counts.
      copy = await this.fs.setattr(copy.ino, { mode: lower.mode });
    }
    this.markWritten(writtenKey(dir, name), depth, this.linkChain);
    return copy;
  }

  /** Copies a file's non-zero chunks to inode `to` (holes stay holes). */
  private async copyContent(from: Attr, to: Ino): Promise<void> {
    const buf = Buffer.alloc(Math.min(WRITE_COALESCE_BYTES, Math.max(from.sizeBytes, 1)));
    for (let off = 0; off < from.sizeBytes; off += buf.length) {
      const want = Math.min(buf.length, from.sizeBytes - off);
      const n = await this.fs.read(from.ino, buf.subarray(0, want), off);
      if (n > 0 && buf.subarray(0, n).some((b) => b !== 0)) await this.fs.write(to, buf.subarray(0, n), off);
    }
  }

  private async whiteout(parent: Ino, name: string): Promise<void> {
    const existing = await this.lookup(parent, name);
    if (existing === null) return; // Nothing below to hide.
    if (this.written.has(writtenKey(parent, name)) || (existing.kind === 'dir' && this.writtenUnder.has(existing.ino))) {
      // This layer's own entry stays; only what is below goes.
      if (existing.kind === 'dir') await this.fs.setOpaque(existing.ino);
      return;
    }
    await this.remove(parent, name, existing);
  }

  /**
   * Removes `name` (a whole subtree for a directory) from the merged view of this layer.
   * Iterative, one directory listing per level held: trees may be far deeper than the stack.
   */
  private async remove(parent: Ino, name: string, a: Attr): Promise<void> {
    await this.drainQueue(); // It lists directories, and may remove queued names below one.
    await this.touchDir(parent);
    this.written.delete(writtenKey(parent, name));
    if (a.kind !== 'dir') {
      await this.fs.unlink(parent, name);
      return;
    }
    this.cutChains(a.ino);
    // Hide everything of the lower layers at once, then remove this layer's own entries,
    // children before their directory. Keys under a removed directory name its inode,
    // which is never reused: they can stay in `written`.
    type Level = { parent: Ino; name: string; ino: Ino; children: string[] };
    const open = async (p: Ino, n: string, ino: Ino): Promise<Level> => {
      await this.fs.setOpaque(ino);
      return { parent: p, name: n, ino, children: (await this.fs.readdir(ino)).map((c) => c.name).reverse() };
    };
    const stack: Level[] = [await open(parent, name, a.ino)];
    while (stack.length > 0) {
      const top = stack[stack.length - 1];
      const child = top.children.pop();
      if (child === undefined) {
        stack.pop();
        await this.fs.rmdir(top.parent, top.name);
        this.dirTimes.delete(top.ino);
        this.writtenUnder.delete(top.ino);
        continue;
      }
      const ca = await this.lookup(top.ino, child);
      if (ca === null) continue;
      if (ca.kind === 'dir') stack.push(await open(top.ino, child, ca.ino));
      else await this.fs.unlink(top.ino, child);
    }
  }

  /** Drops the cached path directories from a removed directory down. */
  private cutChains(removedIno: Ino): void {
    for (const chain of [this.entryChain, this.linkChain]) {
      const at = chain.findIndex((l) => l.ino === removedIno);
      if (at >= 0) chain.length = at;
    }
  }

  private async updateDir(ino: Ino, entry: TarEntry, cur: Attr): Promise<void> {
    if ((cur.mode & 0o7777) !== entry.mode || cur.uid !== entry.uid || cur.gid !== entry.gid) {
      await this.fs.setattr(ino, { mode: S_IFDIR | entry.mode, uid: entry.uid, gid: entry.gid });
    }
    await this.setXattrs(ino, entry, true);
  }

  /** Sets the entry's xattrs; with `replace`, also removes xattrs the entry does not carry. */
  private async setXattrs(ino: Ino, entry: TarEntry, replace: boolean): Promise<void> {
    if (replace) {
      for (const name of await this.fs.listxattr(ino)) {
        if (!entry.xattrs.has(name)) await this.fs.removexattr(ino, name);
      }
    }
    for (const [name, value] of entry.xattrs) await this.fs.setxattr(ino, name, value);
  }

  /** Big enough to share blocks with: both the lower file and the new one span a pool block. */
  private async worthRewriting(existing: Attr, entry: TarEntry): Promise<boolean> {
    if (this.blockBytes === 0) this.blockBytes = (await this.fs.statfs()).blockSizeBytes;
    return existing.sizeBytes >= this.blockBytes && entry.sizeBytes >= this.blockBytes;
  }

  /**
   * A file entry replacing a lower single-link file: keep the inode and write only the
   * pool blocks whose bytes differ, so the unchanged ones stay shared with the lower
   * layer (a 4 KiB change to a large file costs one block, not the file). The merged
   * view is the same as unlink-and-create; only the inode number is the lower one.
   */
  private async rewriteInPlace(existing: Attr, entry: TarEntry, body: AsyncIterable<{ offsetBytes: number; data: Buffer }>, where: () => string): Promise<void> {
    const ino = existing.ino;
    if ((existing.mode & 0o7777) !== entry.mode || existing.uid !== entry.uid || existing.gid !== entry.gid) {
      await this.fs.setattr(ino, { mode: S_IFREG | entry.mode, uid: entry.uid, gid: entry.gid });
    }
    const bs = this.blockBytes;
    let lowerBuf = Buffer.alloc(2 * WRITE_COALESCE_BYTES);
    const writeChanged = async (data: Buffer, offsetBytes: number): Promise<void> => {
      if (lowerBuf.length < data.length) lowerBuf = Buffer.alloc(data.length);
      let n = 0;
      while (n < data.length) {
        const got = await this.fs.read(ino, lowerBuf.subarray(n, data.length), offsetBytes + n);
        if (got <= 0) break;
        n += got;
      }
      // Runs of differing blocks, [runBegin, runEnd) relative to data.
      let runBegin = -1;
      const flushRun = async (upTo: number): Promise<void> => {
        if (runBegin < 0) return;
        await this.fs.write(ino, data.subarray(runBegin, upTo), offsetBytes + runBegin);
        runBegin = -1;
      };
      // Block boundaries are those of the file: offsetBytes is a multiple of WRITE_COALESCE_BYTES, or 0.
      for (let b = 0; b < data.length; b += bs) {
        const end = Math.min(b + bs, data.length);
        if (end <= n && data.subarray(b, end).equals(lowerBuf.subarray(b, end))) {
          await flushRun(b);
          this.stats.sharedBytes += end - b;
        } else if (runBegin < 0) runBegin = b;
      }
      await flushRun(data.length);
    };
    await this.writeContent(ino, entry, body, where, writeChanged, existing.sizeBytes);
    this.stats.files++;
    this.stats.rewrittenInPlace++;
    await this.setXattrs(ino, entry, true);
    await this.fs.setattr(ino, { mtimeNs: entry.mtimeNs, atimeNs: entry.atimeNs ?? entry.mtimeNs });
  }

  /**
   * Writes a file's chunks, coalesced into writes that end on WRITE_COALESCE_BYTES
   * boundaries of the file (a multiple of every pool block size), so each block is
   * written once and whole except the file's last one.
   */
  private async writeContent(
    ino: Ino,
    entry: TarEntry,
    body: AsyncIterable<{ offsetBytes: number; data: Buffer }>,
    where: () => string,
    write: (data: Buffer, offsetBytes: number) => Promise<unknown> = (d, o) => this.fs.write(ino, d, o),
    currentSizeBytes = 0,
  ): Promise<void> {
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let pendingOffset = 0;
    let end = 0;
    const flush = async (all: boolean): Promise<void> => {
      if (pendingBytes === 0) return;
      const data = pending.length === 1 ? pending[0] : Buffer.concat(pending, pendingBytes);
      const alignedEnd = Math.floor((pendingOffset + pendingBytes) / WRITE_COALESCE_BYTES) * WRITE_COALESCE_BYTES;
      const n = all ? pendingBytes : alignedEnd - pendingOffset;
      if (n <= 0) return;
      await write(data.subarray(0, n), pendingOffset);
      pending = n < pendingBytes ? [data.subarray(n)] : [];
      pendingBytes -= n;
      pendingOffset += n;
    };
    for await (const { offsetBytes, data } of body) {
      if (offsetBytes + data.length > entry.sizeBytes) throw dmfsError('BAD_IMAGE', `${where()}: content beyond the declared size`);
      if (pendingBytes > 0 && offsetBytes !== pendingOffset + pendingBytes) await flush(true);
      if (pendingBytes === 0) pendingOffset = offsetBytes;
      pending.push(data);
      pendingBytes += data.length;
      end = offsetBytes + data.length;
      this.stats.contentBytes += data.length;
      if (pendingBytes >= WRITE_COALESCE_BYTES) await flush(false);
    }
    await flush(true);
    if (Math.max(end, currentSizeBytes) !== entry.sizeBytes) {
      // A sparse tail (or an all-hole file) extends with a hole; a shorter rewrite truncates.
      await this.fs.setattr(ino, { sizeBytes: entry.sizeBytes });
    }
  }
}
