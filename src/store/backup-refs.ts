import type { BackupInfo } from '../pool/metadata-backup';
import { MetadataSnapshot } from '../pool/metadata-backup';
import type { Table } from '../pool/metadata-env';
import { isDataRef, unpackBlockRef, unpackInode, unpackLayer, type LayerRecord } from './records';

/** The root directory's inode number (inode-records ROOT_INO; repeated to keep this module free of the open-layer code). */
const ROOT_INO = 1;

/** Anything with the store's tables: a ThinPool (live metadata) or a MetadataSnapshot (a backup, read-only). */
export interface TableSource {
  table(name: string): Table;
}

/** A file as a person names it: the layer and the path inside it. */
export interface FileName {
  layer: string;
  path: string;
}

/**
 * Names files of one metadata copy: segment → layer name, inode → path. Reads every layer
 * and inode record once (records that do not decode are skipped: a damaged copy still
 * names what it can). Paths follow each inode's recorded link (parent, name) up to the root.
 */
export class FileNamer {
  readonly layers: LayerRecord[] = [];
  private readonly layerBySegment = new Map<number, LayerRecord>();
  private readonly links = new Map<number, { parent: number; name: string }>();

  constructor(src: TableSource) {
    for (const { value } of src.table('layers').range(0, Number.MAX_SAFE_INTEGER)) {
      try {
        const l = unpackLayer(value);
        this.layers.push(l);
        this.layerBySegment.set(l.segment, l);
      } catch {
        /* damaged layer record: its segment stays unnamed */
      }
    }
    for (const { key, value } of src.table('inodes').range([0], [Number.MAX_SAFE_INTEGER])) {
      const ino = (key as number[])[1];
      try {
        const r = unpackInode(value);
        if (!this.links.has(ino) || r.born) this.links.set(ino, { parent: r.parent, name: r.name });
      } catch {
        /* damaged inode record: paths through it end in '?' */
      }
    }
  }

  layerOfSegment(segment: number): LayerRecord | undefined {
    return this.layerBySegment.get(segment);
  }

  /** Path of inode `ino`, '/a/b'; an unknown link shows as '<inode N>'. */
  pathOf(ino: number): string {
    const parts: string[] = [];
    let cur = ino;
    for (let depth = 0; cur !== ROOT_INO; depth++) {
      const link = this.links.get(cur);
      if (!link || depth > 4096) {
        parts.push(`<inode ${cur}>`);
        break;
      }
      parts.push(link.name);
      cur = link.parent;
    }
    return '/' + parts.reverse().join('/');
  }

  name(segment: number, ino: number): FileName {
    const l = this.layerBySegment.get(segment);
    return { layer: l ? l.name : `<segment ${segment}>`, path: this.pathOf(ino) };
  }
}

/** Who owns a data block according to one backup. */
export interface BackupBlockOwner extends FileName {
  backup: string;
  segment: number;
  ino: number;
}

/**
 * For each of `blocks`, the file that maps it in the newest backup that does (backups
 * newest first). Backups that cannot be opened are skipped (listed in `unreadable`).
 */
export async function backupOwnersOf(
  backups: readonly BackupInfo[],
  blocks: ReadonlySet<number>,
): Promise<{ owners: Map<number, BackupBlockOwner>; unreadable: string[] }> {
  const owners = new Map<number, BackupBlockOwner>();
  const unreadable: string[] = [];
  if (!blocks.size) return { owners, unreadable };
  for (const b of backups) {
    let snap: MetadataSnapshot;
    try {
      snap = MetadataSnapshot.open(b.dir);
    } catch {
      unreadable.push(b.name);
      continue;
    }
    try {
      // Matches first, names after: reading other tables inside a range iteration would disturb it.
      const found: [number, number, number][] = [];
      for (const { key, value } of snap.table('bmap').range([0], [Number.MAX_SAFE_INTEGER])) {
        let ref;
        try {
          ref = unpackBlockRef(value);
        } catch {
          continue;
        }
        if (!isDataRef(ref) || !blocks.has(ref.block) || owners.has(ref.block)) continue;
        const [segment, ino] = key as number[];
        found.push([ref.block, segment, ino]);
      }
      if (found.length) {
        const namer = new FileNamer(snap);
        for (const [block, segment, ino] of found) if (!owners.has(block)) owners.set(block, { backup: b.name, segment, ino, ...namer.name(segment, ino) });
      }
    } catch {
      unreadable.push(b.name);
    } finally {
      await snap.close();
    }
  }
  return { owners, unreadable };
}

/** Groups block owners by file: 'layer:path' → blocks, in a stable order. */
export function groupByFile(owners: Iterable<[number, FileName & { backup?: string }]>): { layer: string; path: string; backup?: string; blocks: number[] }[] {
  const files = new Map<string, { layer: string; path: string; backup?: string; blocks: number[] }>();
  for (const [block, o] of owners) {
    const k = `${o.layer}\0${o.path}`;
    const f = files.get(k) ?? { layer: o.layer, path: o.path, ...(o.backup ? { backup: o.backup } : {}), blocks: [] };
    f.blocks.push(block);
    files.set(k, f);
  }
  return [...files.values()].sort((a, b) => (a.layer + a.path < b.layer + b.path ? -1 : 1));
}
