import fc from 'fast-check';
import { isDmfsError } from '../../../src/errors';
import { S_IFREG, type LayerFs, type Ino } from '../../../src/store/layer-store';
import { Pool } from '../../../src/api';
import { tempPool } from '../../support/temp-pool';

/**
 * Property test: random operation sequences over a 3-layer chain (image, image,
 * container) against an in-memory model of the merged tree. After every layer, and after
 * reopening the pool, the tree read through LayerFs equals the model.
 */

type ModelInode = { kind: 'file'; data: Buffer } | { kind: 'dir' } | { kind: 'symlink'; target: string };

class Model {
  inodes = new Map<number, ModelInode>();
  /** path ('' = root, '/a/b') → inode id */
  paths = new Map<string, number>();
  private nextId = 2;
  constructor() {
    this.inodes.set(1, { kind: 'dir' });
    this.paths.set('', 1);
  }
  clone(): Model {
    const m = new Model();
    m.inodes = new Map([...this.inodes].map(([k, v]) => [k, v.kind === 'file' ? { kind: 'file', data: Buffer.from(v.data) } : { ...v }]));
    m.paths = new Map(this.paths);
    m.nextId = this.nextId;
    return m;
  }
  add(path: string, node: ModelInode): void {
    const id = this.nextId++;
    this.inodes.set(id, node);
    this.paths.set(path, id);
  }
  dirs(): string[] {
    return [...this.paths].filter(([, id]) => this.inodes.get(id)!.kind === 'dir').map(([p]) => p).sort();
  }
  files(): string[] {
    return [...this.paths].filter(([, id]) => this.inodes.get(id)!.kind === 'file').map(([p]) => p).sort();
  }
  all(): string[] {
    return [...this.paths.keys()].filter((p) => p !== '').sort();
  }
  children(dir: string): string[] {
    return this.all().filter((p) => p.startsWith(dir + '/') && !p.slice(dir.length + 1).includes('/'));
  }
  nlink(id: number): number {
    return [...this.paths.values()].filter((x) => x === id).length;
  }
}

type Op =
  | { op: 'mkdir'; dir: number; name: number }
  | { op: 'write'; file: number; newName: number; create: boolean; offset: number; length: number; byte: number }
  | { op: 'truncate'; file: number; size: number }
  | { op: 'unlink'; file: number }
  | { op: 'rmdir'; dir: number }
  | { op: 'rename'; src: number; dir: number; name: number }
  | { op: 'symlink'; dir: number; name: number }
  | { op: 'link'; file: number; dir: number; name: number };

const BS = 64 * 1024;
const offsetArb = fc.oneof(fc.integer({ min: 0, max: 3 * BS }), fc.constantFrom(0, BS - 1, BS, 2 * BS - 3, 32 * 1024 - 1, 32 * 1024));
const lengthArb = fc.oneof(fc.integer({ min: 1, max: 80 * 1024 }), fc.constantFrom(1, BS, 2 * BS, 32 * 1024 + 1));

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant('mkdir' as const), dir: fc.nat(), name: fc.nat(6) }),
  fc.record({ op: fc.constant('write' as const), file: fc.nat(), newName: fc.nat(8), create: fc.boolean(), offset: offsetArb, length: lengthArb, byte: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ op: fc.constant('truncate' as const), file: fc.nat(), size: fc.oneof(fc.integer({ min: 0, max: 3 * BS }), fc.constantFrom(0, BS, BS + 1, 100)) }),
  fc.record({ op: fc.constant('unlink' as const), file: fc.nat() }),
  fc.record({ op: fc.constant('rmdir' as const), dir: fc.nat() }),
  fc.record({ op: fc.constant('rename' as const), src: fc.nat(), dir: fc.nat(), name: fc.nat(8) }),
  fc.record({ op: fc.constant('symlink' as const), dir: fc.nat(), name: fc.nat(8) }),
  fc.record({ op: fc.constant('link' as const), file: fc.nat(), dir: fc.nat(), name: fc.nat(8) }),
);

function split(path: string): [string, string] {
  const i = path.lastIndexOf('/');
  return [path.slice(0, i), path.slice(i + 1)];
}

async function dirIno(fs: LayerFs, path: string): Promise<Ino> {
  return path === '' ? fs.rootIno : (await fs.resolve(path)).ino;
}

/** Applies op to both; the model decides what must succeed. */
async function apply(fs: LayerFs, m: Model, op: Op): Promise<void> {
  const dirs = m.dirs();
  const files = m.files();
  const all = m.all();
  const pick = <T,>(list: T[], i: number): T | undefined => (list.length ? list[i % list.length] : undefined);
  switch (op.op) {
    case 'mkdir': {
      const dir = pick(dirs, op.dir)!;
      const path = `${dir}/d${op.name}`;
      if (m.paths.has(path)) {
        await expect(fs.mkdir(await dirIno(fs, dir), `d${op.name}`, { mode: 0o755, uid: 0, gid: 0 })).rejects.toMatchObject({ code: 'EXISTS' });
        return;
      }
      await fs.mkdir(await dirIno(fs, dir), `d${op.name}`, { mode: 0o755, uid: 0, gid: 0 });
      m.add(path, { kind: 'dir' });
      return;
    }
    case 'write': {
      let path = pick(files, op.file);
      if (op.create || !path) {
        const dir = pick(dirs, op.file)!;
        path = `${dir}/f${op.newName}`;
        if (!m.paths.has(path)) {
          await fs.mknod(await dirIno(fs, dir), `f${op.newName}`, { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
          m.add(path, { kind: 'file', data: Buffer.alloc(0) });
        }
      }
      const node = m.inodes.get(m.paths.get(path)!)!;
      if (node.kind !== 'file') return;
      const data = Buffer.alloc(op.length, op.byte);
      data[0] = (op.byte * 7) & 0xff;
      await fs.write((await fs.resolve(path)).ino, data, op.offset);
      const end = op.offset + op.length;
      if (end > node.data.length) node.data = Buffer.concat([node.data, Buffer.alloc(end - node.data.length)]);
      data.copy(node.data, op.offset);
      return;
    }
    case 'truncate': {
      const path = pick(files, op.file);
      if (!path) return;
      const node = m.inodes.get(m.paths.get(path)!)! as { kind: 'file'; data: Buffer };
      await fs.setattr((await fs.resolve(path)).ino, { sizeBytes: op.size });
      node.data = op.size <= node.data.length ? Buffer.from(node.data.subarray(0, op.size)) : Buffer.concat([node.data, Buffer.alloc(op.size - node.data.length)]);
      return;
    }
    case 'unlink': {
      const path = pick([...files, ...all.filter((p) => m.inodes.get(m.paths.get(p)!)!.kind === 'symlink')], op.file);
      if (!path) return;
      const [dir, name] = split(path);
      await fs.unlink(await dirIno(fs, dir), name);
      m.paths.delete(path);
      return;
    }
    case 'rmdir': {
      const path = pick(dirs.filter((d) => d !== ''), op.dir);
      if (!path) return;
      const [dir, name] = split(path);
      if (m.children(path).length) {
        await expect(fs.rmdir(await dirIno(fs, dir), name)).rejects.toMatchObject({ code: 'NOT_EMPTY' });
        return;
      }
      await fs.rmdir(await dirIno(fs, dir), name);
      m.paths.delete(path);
      return;
    }
    case 'rename': {
      const src = pick(all, op.src);
      if (!src) return;
      const dstDir = pick(dirs, op.dir)!;
      const srcId = m.paths.get(src)!;
      const srcNode = m.inodes.get(srcId)!;
      const name = srcNode.kind === 'dir' ? `d${op.name}` : `f${op.name}`;
      const dst = `${dstDir}/${name}`;
      const [sDir, sName] = split(src);
      const call = async () => fs.rename(await dirIno(fs, sDir), sName, await dirIno(fs, dstDir), name);
      if (dst === src || (srcNode.kind === 'dir' && (dst + '/').startsWith(src + '/'))) {
        if (dst !== src) await expect(call()).rejects.toMatchObject({ code: 'INVALID' });
        else await call();
        return;
      }
      const dstId = m.paths.get(dst);
      if (dstId !== undefined) {
        if (dstId === srcId) {
          await call();
          return;
        }
        const dstNode = m.inodes.get(dstId)!;
        if (srcNode.kind === 'dir' && dstNode.kind !== 'dir') return void (await expect(call()).rejects.toMatchObject({ code: 'NOT_DIR' }));
        if (srcNode.kind !== 'dir' && dstNode.kind === 'dir') return void (await expect(call()).rejects.toMatchObject({ code: 'IS_DIR' }));
        if (dstNode.kind === 'dir' && m.children(dst).length) return void (await expect(call()).rejects.toMatchObject({ code: 'NOT_EMPTY' }));
      }
      await call();
      const moved = [...m.paths].filter(([p]) => p === src || p.startsWith(src + '/'));
      for (const [p] of moved) m.paths.delete(p);
      for (const [p] of [...m.paths].filter(([p]) => p === dst || p.startsWith(dst + '/'))) m.paths.delete(p);
      for (const [p, id] of moved) m.paths.set(dst + p.slice(src.length), id);
      return;
    }
    case 'symlink': {
      const dir = pick(dirs, op.dir)!;
      const path = `${dir}/s${op.name}`;
      if (m.paths.has(path)) return;
      await fs.symlink(await dirIno(fs, dir), `s${op.name}`, `target-${op.name}`, { uid: 0, gid: 0 });
      m.add(path, { kind: 'symlink', target: `target-${op.name}` });
      return;
    }
    case 'link': {
      const src = pick(files, op.file);
      if (!src) return;
      const dir = pick(dirs, op.dir)!;
      const path = `${dir}/f${op.name}`;
      if (m.paths.has(path)) return;
      await fs.link((await fs.resolve(src)).ino, await dirIno(fs, dir), `f${op.name}`);
      m.paths.set(path, m.paths.get(src)!);
      return;
    }
  }
}

async function compare(fs: LayerFs, m: Model): Promise<void> {
  const seen: string[] = [];
  const inoOf = new Map<number, number>();
  const walk = async (dir: string, ino: Ino): Promise<void> => {
    for (const e of await fs.readdir(ino)) {
      const path = `${dir}/${e.name}`;
      seen.push(path);
      const id = m.paths.get(path);
      expect({ path, present: id !== undefined }).toEqual({ path, present: true });
      const node = m.inodes.get(id!)!;
      const attr = await fs.getattr(e.ino);
      expect({ path, kind: attr.kind }).toEqual({ path, kind: node.kind });
      // Same model inode ↔ same dmfs inode.
      if (inoOf.has(id!)) expect(inoOf.get(id!)).toBe(e.ino);
      inoOf.set(id!, e.ino);
      if (node.kind === 'file') {
        expect({ path, size: attr.sizeBytes, nlink: attr.nlink }).toEqual({ path, size: node.data.length, nlink: m.nlink(id!) });
        const buf = Buffer.alloc(node.data.length + 10);
        const n = await fs.read(e.ino, buf, 0);
        expect(n).toBe(node.data.length);
        expect(buf.subarray(0, n).equals(node.data)).toBe(true);
      } else if (node.kind === 'symlink') {
        expect(await fs.readlink(e.ino)).toBe(node.target);
      } else {
        await walk(path, e.ino);
      }
    }
  };
  await walk('', fs.rootIno);
  expect(seen.sort()).toEqual(m.all());
}

const opsArb = fc.array(opArb, { minLength: 1, maxLength: 25 });

test('3-layer chain matches the in-memory model', async () => {
  await fc.assert(
    fc.asyncProperty(opsArb, opsArb, opsArb, async (ops1, ops2, ops3) => {
      const { pool, root, remove } = await tempPool({ sizeBytes: 256 * 1024 ** 2, options: ['dm.min_free_space=0'] });
      let p: Pool = pool;
      try {
        const m = new Model();
        const layers: [string, 'image' | 'container', Op[]][] = [['l1', 'image', ops1], ['l2', 'image', ops2], ['c', 'container', ops3]];
        let parent = 'base';
        const snapshots: [string, Model][] = [];
        for (const [name, kind, ops] of layers) {
          await p.store.createLayer(name, { parent, kind, ...(kind === 'image' ? { building: true } : {}) });
          const fs = await p.store.openLayer(name);
          for (const op of ops) {
            try {
              await apply(fs, m, op);
            } catch (err) {
              if (isDmfsError(err)) throw new Error(`op ${JSON.stringify(op)} failed: ${err.code} ${err.message}`);
              throw err;
            }
          }
          await compare(fs, m);
          await fs.close();
          if (kind === 'image') await p.store.sealLayer(name);
          snapshots.push([name, m.clone()]);
          parent = name;
        }
        await p.close();
        p = await Pool.open(root);
        for (const [name, snap] of snapshots) {
          const fs = await p.store.openLayer(name, { readOnly: true });
          await compare(fs, snap);
          await fs.close();
        }
        const report = await p.check();
        expect(report.problems).toEqual([]);
      } finally {
        if (p !== pool) await p.close().catch(() => undefined);
        await remove();
      }
    }),
    { numRuns: Number(process.env.DMFS_PROPERTY_RUNS ?? 40) },
  );
});
