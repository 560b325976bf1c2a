import type { Table } from '../pool/metadata-env';
import { ROOT_INO, type InodeRecords } from './inode-records';
import type { LayerContext } from './layer-context';
import type { LayerNamespace } from './layer-namespace';
import type { ChangeDir, FileKind, Ino, LayerChange, LayerFs } from './layer-store';
import { direntRange, isWhiteout, unpackDirent, unpackInode, type DirentRecord, type InodeRecord } from './records';

/** The change listing of one open layer: what its own segment changed against the chain below. */
export class ChangeListing implements Pick<LayerFs, 'changes'> {
  private readonly inodes: Table;
  private readonly dirents: Table;
  private readonly top: number;

  constructor(
    private readonly ctx: LayerContext,
    private readonly records: InodeRecords,
    private readonly namespace: LayerNamespace,
  ) {
    this.inodes = ctx.tables.inodes;
    this.dirents = ctx.tables.dirents;
    this.top = ctx.top;
  }

  /**
   * Marks `dirIno` and its ancestors (by the parent links of their nearest records) as
   * directories the change walk must enter. Stops at the first one already marked, so
   * marking every changed entry's directory costs time linear in the directories.
   */
  private markChangedDir(dirIno: Ino, marked: Set<Ino>): void {
    let cur = dirIno;
    while (!marked.has(cur)) {
      marked.add(cur);
      if (cur === ROOT_INO) return;
      const found = this.records.findInode(cur);
      if (!found || found.rec.kind !== 'dir') return;
      cur = found.rec.parent;
    }
  }

  /**
   * What this layer's own segment changed, as one walk of the merged tree from the root
   * that enters only directories holding a change (found from the segment's dirents and
   * inode records) and whole subtrees that are new at their path. Tree order: parents
   * before children, siblings by name; a directory's `opaque` just before its own line.
   *
   * Time linear in the changes plus the sizes of the directories holding them; memory is
   * one listing per level of the current path and a set of directory inodes. Paths are
   * never rebuilt from the root per entry (a tree 10,000 levels deep would cost the square
   * of its depth): each level's path is its parent's plus one name. V8 keeps such a
   * concatenation as a rope sharing its prefix, until something reads it as flat text
   * (then that one string gets a flat copy): each frame keeps a path string of its own,
   * never the one handed out, so the listing holds linear memory whatever the consumer
   * does, and a consumer that keeps every change (`dmfs diff`) keeps ropes, not copies.
   */
  async *changes(): AsyncIterable<LayerChange> {
    this.ctx.assertOpen();
    const marked = new Set<Ino>();
    for (const { key } of this.dirents.range([this.top], [this.top + 1])) {
      const dirIno = (key as [number, number, string])[1];
      if (!marked.has(dirIno)) this.markChangedDir(dirIno, marked);
    }
    for (const { key, value } of this.inodes.range([this.top], [this.top + 1])) {
      const ino = (key as [number, number])[1];
      if (ino === ROOT_INO) continue;
      const rec = unpackInode(value);
      if (!rec.born && rec.nlink > 0) this.markChangedDir(rec.parent, marked);
    }
    const ownRecord = (ino: Ino): InodeRecord | null => {
      const found = this.records.findInode(ino);
      return found !== null && found.level === 0 ? found.rec : null;
    };
    const root = ownRecord(ROOT_INO);
    if (root?.opaque && !root.born) yield { path: '/', change: 'opaque', attr: this.records.toAttr(ROOT_INO, root) };
    if (!marked.has(ROOT_INO)) return;

    /** One directory being listed: its path ('' for the root) and its names still to go, last first. */
    interface Frame {
      dirIno: Ino;
      path: string;
      dir: ChangeDir;
      /** Every entry below is new at its path (a directory moved here from a lower path). */
      allAdded: boolean;
      names: string[];
      own: Map<string, DirentRecord>;
      merged: Map<string, { ino: Ino; kind: FileKind }>;
    }
    const open = (dirIno: Ino, path: string, dir: ChangeDir, allAdded: boolean): Frame => {
      const own = new Map<string, DirentRecord>();
      const [start, end] = direntRange(this.top, dirIno);
      for (const { key, value } of this.dirents.range(start, end)) own.set((key as [number, number, string])[2], unpackDirent(value));
      const merged = this.namespace.mergedEntries(dirIno);
      const names = [...new Set([...own.keys(), ...merged.keys()])];
      names.sort((a, b) => (a < b ? 1 : a > b ? -1 : 0));
      return { dirIno, path, dir, allAdded, names, own, merged };
    };
    const stack: Frame[] = [open(ROOT_INO, '', { parent: null, name: '' }, false)];
    while (stack.length > 0) {
      const frame = stack[stack.length - 1];
      const name = frame.names.pop();
      if (name === undefined) {
        stack.pop();
        continue;
      }
      const path = `${frame.path}/${name}`;
      const at = { dir: frame.dir, name };
      const own = frame.own.get(name);
      if (own !== undefined && isWhiteout(own)) {
        yield { path, change: 'deleted', at };
        continue;
      }
      const entry = frame.merged.get(name);
      if (entry === undefined) continue;
      const found = this.records.findInode(entry.ino);
      if (found === null) continue;
      const rec = found.level === 0 ? found.rec : null;
      const attr = this.records.toAttr(entry.ino, found.rec);
      if (rec?.opaque && !rec.born && entry.kind === 'dir') yield { path, change: 'opaque', attr, at };
      let descend: 'no' | 'changes' | 'all' = 'no';
      if (frame.allAdded || own !== undefined) {
        yield { path, change: 'added', attr, at };
        // A directory made here has only own entries; one moved here brings its lower ones.
        if (entry.kind === 'dir') descend = frame.allAdded || (rec !== null && !rec.born) ? 'all' : 'changes';
      } else {
        if (rec !== null && !rec.born && rec.nlink > 0 && rec.parent === frame.dirIno && rec.name === name) {
          yield { path, change: 'modified', attr, at };
        }
        if (entry.kind === 'dir' && marked.has(entry.ino)) descend = 'changes';
      }
      // A string of its own for the frame: consumers flatten the one they were given.
      if (descend !== 'no') stack.push(open(entry.ino, frame.path + '/' + name, { parent: frame.dir, name }, descend === 'all'));
    }
  }
}
