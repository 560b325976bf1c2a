/**
 * The libfuse 2 transport's path side (path-transport.ts) over the operations table
 * (fuse-operations.ts) and a MemoryLayerFs: paths, the dentry cache, libfuse's hidden
 * names, and the table's semantics as libfuse 2 reaches them.
 */
import { constants as fsConstants } from 'node:fs';
import type { CallerContext, PathOperations } from '../../../src/fs/fuse-adapter';
import { createFuseOperations, type FuseOperations } from '../../../src/fs/fuse-operations';
import { createPathTransport } from '../../../src/fs/path-transport';
import type { LayerFs } from '../../../src/store/layer-store';
import { S_IFDIR, S_IFIFO, S_IFMT, S_IFREG } from '../../../src/store/layer-store';
import { MemoryLayerFs } from '../../support/memory-layer-fs';

const root: CallerContext = { uid: 0, gid: 0, pid: 1, umask: 0o022 };
const alice: CallerContext = { uid: 1000, gid: 1000, pid: 2, umask: 0o022 };
const { O_RDONLY, O_WRONLY, O_RDWR } = fsConstants;
const HIDDEN = '.fuse_hidden0000000200000001';

/** The path operations and, for what only the table shows (handles, syncs, shutdown), the table. */
type LayerOperations = PathOperations & Pick<FuseOperations, 'openHandles' | 'syncCount' | 'shutdown'>;

/** What the libfuse 2 transport builds (mount-service.ts libfuse2OptionsFor): a writable layer's policy. */
function createOperations(layer: LayerFs, opts: { nowNs?: () => bigint } = {}): LayerOperations {
  const table = createFuseOperations(layer, {
    blockSizeBytes: 4096, entryTimeoutS: 1, attrTimeoutS: 0, negativeTimeoutS: 1, keepCache: false, cacheDirs: false,
    writebackCache: false, nowNs: opts.nowNs,
  });
  const path = createPathTransport(table);
  void path.init?.();
  return Object.defineProperties(path as LayerOperations, {
    openHandles: { get: () => table.openHandles },
    syncCount: { get: () => table.syncCount },
    shutdown: { value: () => table.shutdown() },
  });
}

function setup(opts: ConstructorParameters<typeof MemoryLayerFs>[0] = {}, clock?: () => bigint): { layer: MemoryLayerFs; ops: LayerOperations } {
  const layer = new MemoryLayerFs(opts);
  return { layer, ops: createOperations(layer, { nowNs: clock }) };
}

async function writeFile(ops: LayerOperations, path: string, text: string, ctx = root): Promise<void> {
  const fh = await ops.create(path, 0o644, ctx);
  await ops.write(path, fh, Buffer.from(text), 0);
  await ops.release(path, fh);
}

async function readAll(ops: LayerOperations, path: string): Promise<string> {
  const fh = await ops.open(path, O_RDONLY);
  const buf = Buffer.alloc(4096);
  const n = await ops.read(path, fh, buf, 0);
  await ops.release(path, fh);
  return buf.subarray(0, n).toString();
}

describe('operations: paths and attributes', () => {
  it('resolves the root and nested paths, and reports NOT_FOUND / NOT_DIR', async () => {
    const { ops, layer } = setup();
    expect((await ops.getattr('/')).ino).toBe(layer.rootIno);
    await ops.mkdir('/a', 0o755, root);
    await ops.mkdir('/a/b', 0o755, root);
    await writeFile(ops, '/a/b/f', 'x');
    expect((await ops.getattr('/a/b/f')).kind).toBe('file');
    await expect(ops.getattr('/a/nope')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(ops.getattr('/a/b/f/g')).rejects.toMatchObject({ code: 'NOT_DIR' });
  });

  it('accepts 255-byte names and refuses 256 with NAME_TOO_LONG, even on lookup', async () => {
    const { ops } = setup();
    const ok = 'n'.repeat(255);
    await writeFile(ops, `/${ok}`, 'x');
    expect((await ops.getattr(`/${ok}`)).kind).toBe('file');
    await expect(ops.getattr(`/${'n'.repeat(256)}`)).rejects.toMatchObject({ code: 'NAME_TOO_LONG' });
    await expect(ops.mkdir(`/${'é'.repeat(128)}`, 0o755, root)).rejects.toMatchObject({ code: 'NAME_TOO_LONG' }); // 256 bytes
  });

  it('lists . and .. with their inodes, then the entries', async () => {
    const { ops, layer } = setup();
    await ops.mkdir('/d', 0o755, root);
    await writeFile(ops, '/d/f', '');
    const d = await ops.getattr('/d');
    const list = await ops.readdir('/d');
    expect(list.map((e) => [e.name, e.ino])).toEqual([['.', d.ino], ['..', layer.rootIno], ['f', (await ops.getattr('/d/f')).ino]]);
    expect((await ops.readdir('/')).slice(0, 2).map((e) => e.ino)).toEqual([layer.rootIno, layer.rootIno]);
  });

  it('keeps resolving below a renamed directory and forgets the old path', async () => {
    const { ops } = setup();
    await ops.mkdir('/old', 0o755, root);
    await ops.mkdir('/old/sub', 0o755, root);
    await writeFile(ops, '/old/sub/f', 'data');
    await ops.getattr('/old/sub/f'); // warm the cache
    await ops.rename('/old', '/new');
    expect(await readAll(ops, '/new/sub/f')).toBe('data');
    await expect(ops.getattr('/old/sub/f')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await ops.mkdir('/old', 0o700, root); // a new directory under the old name
    expect((await ops.readdir('/old')).map((e) => e.name)).toEqual(['.', '..']);
  });

  it('sees a file replaced under a cached name', async () => {
    const { ops } = setup();
    await writeFile(ops, '/a', 'A');
    await writeFile(ops, '/b', 'B');
    await ops.getattr('/a');
    await ops.rename('/b', '/a');
    expect(await readAll(ops, '/a')).toBe('B');
    await expect(ops.getattr('/b')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});

describe('operations: creating nodes', () => {
  it('creates files owned by the caller with the type bits set', async () => {
    const { ops } = setup();
    await writeFile(ops, '/f', 'x', alice);
    const a = await ops.getattr('/f');
    expect(a.mode).toBe(S_IFREG | 0o644);
    expect([a.uid, a.gid]).toEqual([1000, 1000]);
    await ops.mknod('/p', S_IFIFO | 0o600, 0, alice);
    expect((await ops.getattr('/p')).kind).toBe('fifo');
    await ops.mknod('/plain', 0o600, 0, alice); // no type bits: a regular file
    expect(((await ops.getattr('/plain')).mode & S_IFMT)).toBe(S_IFREG);
  });

  it('inherits the group (and setgid on directories) below a setgid directory', async () => {
    const { ops } = setup();
    await ops.mkdir('/shared', 0o2775, root);
    await ops.chown('/shared', null, 50);
    await writeFile(ops, '/shared/f', 'x', alice);
    await ops.mkdir('/shared/sub', 0o755, alice);
    expect((await ops.getattr('/shared/f')).gid).toBe(50);
    const sub = await ops.getattr('/shared/sub');
    expect(sub.gid).toBe(50);
    expect(sub.mode).toBe(S_IFDIR | 0o2755);
    expect(sub.uid).toBe(1000);
  });

  it('makes symlinks and hard links', async () => {
    const { ops } = setup();
    await writeFile(ops, '/f', 'x');
    await ops.symlink('../somewhere/else', '/l', alice);
    expect(await ops.readlink('/l')).toBe('../somewhere/else');
    expect((await ops.getattr('/l')).uid).toBe(1000);
    await ops.link('/f', '/g');
    const [f, g] = [await ops.getattr('/f'), await ops.getattr('/g')];
    expect(g.ino).toBe(f.ino);
    expect(f.nlink).toBe(2);
  });
});

describe('operations: attributes', () => {
  it('sets exact times, UTIME_NOW from one clock reading, and leaves UTIME_OMIT alone', async () => {
    let ticks = 0n;
    const { ops } = setup({}, () => 1_800_000_000_000_000_007n + ticks++);
    await writeFile(ops, '/f', 'x');
    await ops.utimens('/f', 'omit', 981173106123456789n);
    let a = await ops.getattr('/f');
    expect(a.mtimeNs).toBe(981173106123456789n);
    const atimeBefore = a.atimeNs;
    expect(atimeBefore).not.toBe(981173106123456789n);
    await ops.utimens('/f', 'now', 'now');
    a = await ops.getattr('/f');
    expect(a.atimeNs).toBe(1_800_000_000_000_000_007n);
    expect(a.mtimeNs).toBe(a.atimeNs);
    await ops.utimens('/f', -315619199500000000n, 'omit');
    a = await ops.getattr('/f');
    expect(a.atimeNs).toBe(-315619199500000000n);
    expect(a.mtimeNs).toBe(1_800_000_000_000_000_007n);
  });

  it('chmod keeps the type bits and the setuid bit; chown with null leaves an id', async () => {
    const { ops } = setup();
    await writeFile(ops, '/f', 'x');
    await ops.chmod('/f', 0o104755);
    expect((await ops.getattr('/f')).mode).toBe(S_IFREG | 0o4755);
    await ops.chown('/f', 7, null);
    const a = await ops.getattr('/f');
    expect([a.uid, a.gid]).toEqual([7, 0]);
  });

  it('truncates by path and by handle', async () => {
    const { ops } = setup();
    await writeFile(ops, '/f', 'hello world');
    await ops.truncate('/f', 5);
    expect(await readAll(ops, '/f')).toBe('hello');
    const fh = await ops.open('/f', O_RDWR);
    await ops.ftruncate('/f', fh, 2);
    expect((await ops.fgetattr('/f', fh)).sizeBytes).toBe(2);
    await ops.release('/f', fh);
  });

  it('maps xattr flags and copies the value out of FUSE\'s buffer', async () => {
    const { ops } = setup();
    await writeFile(ops, '/f', 'x');
    const value = Buffer.from('v1');
    await ops.setxattr('/f', 'user.k', value, 1 /* XATTR_CREATE */);
    value.write('XX'); // FUSE reuses its buffer after we answer
    expect((await ops.getxattr('/f', 'user.k'))?.toString()).toBe('v1');
    await expect(ops.setxattr('/f', 'user.k', Buffer.from('v2'), 1)).rejects.toMatchObject({ code: 'XATTR_EXISTS' });
    await expect(ops.setxattr('/f', 'user.other', Buffer.from('v2'), 2 /* XATTR_REPLACE */)).rejects.toMatchObject({ code: 'NO_XATTR' });
    expect(await ops.listxattr('/f')).toEqual(['user.k']);
    await ops.removexattr('/f', 'user.k');
    expect(await ops.getxattr('/f', 'user.k')).toBeNull();
  });
});

describe('operations: open files', () => {
  it('reads and writes through the handle after the file was renamed', async () => {
    const { ops } = setup();
    await writeFile(ops, '/f', 'abc');
    const fh = await ops.open('/f', O_RDWR);
    await ops.rename('/f', '/g');
    await ops.write('/f', fh, Buffer.from('XY'), 1);
    await ops.release('/f', fh);
    expect(await readAll(ops, '/g')).toBe('aXY');
  });

  it('serves an unlinked open file under libfuse\'s hidden name and frees it at the last release', async () => {
    const { ops, layer } = setup();
    await ops.mkdir('/d', 0o755, root);
    await writeFile(ops, '/d/f', 'still here');
    const inodes = layer.inodeCount;
    const fh = await ops.open('/d/f', O_RDONLY);
    // What libfuse does for `rm /d/f` while it is open (no hard_remove):
    await ops.rename('/d/f', `/d/${HIDDEN}`);
    expect((await ops.readdir('/d')).map((e) => e.name)).toEqual(['.', '..']);
    expect((await ops.getattr(`/d/${HIDDEN}`)).sizeBytes).toBe(10); // fstat keeps working
    const buf = Buffer.alloc(32);
    expect(buf.subarray(0, await ops.read(`/d/${HIDDEN}`, fh, buf, 0)).toString()).toBe('still here');
    await ops.rmdir('/d'); // the hidden name does not keep the directory busy
    await ops.release(`/d/${HIDDEN}`, fh);
    await ops.unlink(`/d/${HIDDEN}`); // libfuse's cleanup after the release: a no-op now
    expect(layer.inodeCount).toBe(inodes - 2); // the file and /d are gone
    await expect(ops.getattr(`/d/${HIDDEN}`)).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('renaming over an open file keeps the old content readable through its handle', async () => {
    const { ops } = setup();
    await writeFile(ops, '/target', 'old');
    await writeFile(ops, '/new', 'new');
    const fh = await ops.open('/target', O_RDONLY);
    await ops.rename('/target', `/${HIDDEN}`); // libfuse hides the open target first
    await ops.rename('/new', '/target');
    const buf = Buffer.alloc(8);
    expect(buf.subarray(0, await ops.read('/target', fh, buf, 0)).toString()).toBe('old');
    expect(await readAll(ops, '/target')).toBe('new');
    await ops.release('/target', fh);
  });

  it('a literal rename to a hidden-looking name of a closed file is an ordinary rename', async () => {
    const { ops } = setup();
    await writeFile(ops, '/f', 'x');
    await ops.rename('/f', `/${HIDDEN}`);
    expect((await ops.readdir('/')).map((e) => e.name)).toContain(HIDDEN);
  });

  it('hands out distinct non-zero handles and releases each once', async () => {
    const { ops } = setup();
    await writeFile(ops, '/f', 'x');
    const a = await ops.open('/f', O_RDONLY);
    const b = await ops.open('/f', O_WRONLY);
    expect(a).toBeGreaterThan(0);
    expect(b).not.toBe(a);
    expect(ops.openHandles).toBe(2);
    await ops.release('/f', a);
    await ops.release('/f', a); // unknown now: ignored
    expect(ops.openHandles).toBe(1);
    await ops.release('/f', b);
  });
});

describe('operations: durability', () => {
  it('close (flush) is not a durability point; fsync always syncs', async () => {
    const { ops, layer } = setup();
    await writeFile(ops, '/f', 'x');
    const before = layer.fsyncCount;
    const r = await ops.open('/f', O_RDONLY);
    const w = await ops.open('/f', O_WRONLY);
    await ops.write('/f', w, Buffer.from('y'), 0);
    // FLUSH is not implemented (ENOSYS), as on the kernel transport: the kernel stops sending it and close(2) returns 0.
    await expect(ops.flush('/f', w)).rejects.toMatchObject({ code: 'NOT_IMPLEMENTED' });
    expect(layer.fsyncCount).toBe(before);
    await ops.fsync('/f', false, r);
    expect(layer.fsyncCount).toBe(before + 1);
    await ops.release('/f', r);
    await ops.release('/f', w);
  });

  it('shutdown releases every handle (freeing unlinked files) and syncs', async () => {
    const { ops, layer } = setup();
    await writeFile(ops, '/f', 'x');
    const inodes = layer.inodeCount;
    await ops.open('/f', O_RDONLY);
    await ops.rename('/f', `/${HIDDEN}`);
    const syncs = layer.fsyncCount;
    await ops.shutdown();
    expect(ops.openHandles).toBe(0);
    expect(layer.inodeCount).toBe(inodes - 1);
    expect(layer.fsyncCount).toBe(syncs + 1);
  });
});

describe('operations: read-only layers', () => {
  it('reads, refuses writes with READ_ONLY_LAYER, and treats fsync as a no-op', async () => {
    const rw = new MemoryLayerFs();
    const setupOps = createOperations(rw);
    await writeFile(setupOps, '/f', 'content');
    const ro = rw.withReadOnly(true);
    const ops = createOperations(ro);
    expect(await readAll(ops, '/f')).toBe('content');
    await expect(ops.open('/f', O_WRONLY)).rejects.toMatchObject({ code: 'READ_ONLY_LAYER' });
    await expect(ops.open('/f', O_RDWR)).rejects.toMatchObject({ code: 'READ_ONLY_LAYER' });
    await expect(ops.mkdir('/d', 0o755, root)).rejects.toMatchObject({ code: 'READ_ONLY_LAYER' });
    await expect(ops.create('/g', 0o644, root)).rejects.toMatchObject({ code: 'READ_ONLY_LAYER' });
    await expect(ops.utimens('/f', 'now', 'now')).rejects.toMatchObject({ code: 'READ_ONLY_LAYER' });
    await expect(ops.setxattr('/f', 'user.a', Buffer.from('1'), 0)).rejects.toMatchObject({ code: 'READ_ONLY_LAYER' });
    await expect(ops.unlink('/f')).rejects.toMatchObject({ code: 'READ_ONLY_LAYER' });
    const fh = await ops.open('/f', O_RDONLY);
    const syncs = ro.fsyncCount;
    await ops.fsync('/f', false, fh);
    expect(ro.fsyncCount).toBe(syncs);
    await ops.release('/f', fh);
  });
});
