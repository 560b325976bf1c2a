/**
 * The operations table itself (fuse-operations.ts), called as a transport calls it: the
 * rules no byte layout or path is needed for. kernel-transport.test.ts and
 * path-transport.test.ts drive the same table through each transport.
 */
import { constants as fsConstants } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { dmfsError } from '../../../src/errors';
import {
  createFuseOperations, errnoFor, NO_FEATURES, RENAME_NOREPLACE, ROOT_NODE_ID, type CallerContext, type FuseOperations,
  type FuseOperationsOptions,
} from '../../../src/fs/fuse-operations';
import { S_IFREG } from '../../../src/store/layer-store';
import { MemoryLayerFs } from '../../support/memory-layer-fs';

const E = osConstants.errno;
const root: CallerContext = { uid: 0, gid: 0, pid: 1, umask: 0o022 };
const alice: CallerContext = { uid: 1000, gid: 1000, pid: 2, umask: 0o022 };
const CAP = 'security.capability';
const ALL_FEATURES = { writebackCache: true, killPrivileges: true, cacheSymlinks: true, posixAcl: true };

function table(layer: MemoryLayerFs, opts: Partial<FuseOperationsOptions> = {}): FuseOperations {
  return createFuseOperations(layer, {
    blockSizeBytes: 4096, entryTimeoutS: 2, attrTimeoutS: 3, negativeTimeoutS: 4, keepCache: true, cacheDirs: true,
    writebackCache: false, ...opts,
  });
}

async function setuidFile(ops: FuseOperations): Promise<{ node: number; fh: number }> {
  const { entry, open } = await ops.create(root, ROOT_NODE_ID, 'f', 0o6755, fsConstants.O_RDWR);
  await ops.setattr(root, entry.nodeId, { mode: 0o6755 });
  await ops.setxattr(root, entry.nodeId, CAP, Buffer.from([1, 0, 0, 2]), 0);
  return { node: entry.nodeId, fh: open.fh };
}

describe('fuse operations: init', () => {
  it('uses the writeback cache only when offered, wanted and the layer is writable; never what was not offered', () => {
    expect(table(new MemoryLayerFs(), { writebackCache: true, posixAcl: true }).init(ALL_FEATURES)).toEqual(ALL_FEATURES);
    expect(table(new MemoryLayerFs(), { writebackCache: true }).init(ALL_FEATURES).posixAcl).toBe(false);
    expect(table(new MemoryLayerFs(), { writebackCache: false }).init(ALL_FEATURES).writebackCache).toBe(false);
    expect(table(new MemoryLayerFs({ readOnly: true }), { writebackCache: true }).init(ALL_FEATURES).writebackCache).toBe(false);
    expect(table(new MemoryLayerFs(), { writebackCache: true }).init(NO_FEATURES)).toEqual(NO_FEATURES);
  });
});

describe('fuse operations: privileges on write and setattr', () => {
  it('with killPrivileges, a write drops security.capability and killSuidgid clears setuid and (group-executable) setgid', async () => {
    const layer = new MemoryLayerFs();
    const ops = table(layer);
    ops.init(ALL_FEATURES);
    const { node, fh } = await setuidFile(ops);
    await ops.write(root, node, fh, Buffer.from('x'), 0, false);
    expect(await ops.getxattr(root, node, CAP)).toBeNull();
    expect((await ops.getattr(root, node)).mode & 0o7777).toBe(0o6755);
    await ops.write(alice, node, fh, Buffer.from('y'), 1, true);
    expect((await ops.getattr(root, node)).mode & 0o7777).toBe(0o755);
  });

  it('without killPrivileges (the kernel clears them itself), a write leaves security.capability to the kernel', async () => {
    const ops = table(new MemoryLayerFs());
    ops.init(NO_FEATURES);
    const { node, fh } = await setuidFile(ops);
    await ops.write(root, node, fh, Buffer.from('x'), 0, false);
    expect((await ops.getxattr(root, node, CAP))?.length).toBe(4);
  });

  it('a kill with no other change (chown f -1 -1) clears a regular file only; with a change, any node', async () => {
    const ops = table(new MemoryLayerFs());
    const { node } = await setuidFile(ops);
    const dir = await ops.mkdir(root, ROOT_NODE_ID, 'd', 0o2775);
    expect((await ops.setattr(root, dir.nodeId, {}, true)).mode & 0o7777).toBe(0o2775);
    expect((await ops.setattr(root, node, {}, true)).mode & 0o7777).toBe(0o755);
    expect((await ops.setattr(root, dir.nodeId, { uid: 7 }, true)).mode & 0o7777).toBe(0o775);
  });

  it('setattr reads the clock once for "now" and masks the mode to permission bits', async () => {
    let ticks = 0n;
    const ops = table(new MemoryLayerFs(), { nowNs: () => 1_000n + ticks++ });
    const { node } = await setuidFile(ops);
    const a = await ops.setattr(root, node, { atime: 'now', mtime: 'now', mode: S_IFREG | 0o640 });
    expect([a.atimeNs, a.mtimeNs, a.mode]).toEqual([1_000n, 1_000n, S_IFREG | 0o640]);
  });
});

describe('fuse operations: entries, handles and errors', () => {
  it('entries carry the cache policy; an absent name is a negative entry, or NOT_FOUND without a negative timeout', async () => {
    const layer = new MemoryLayerFs();
    const ops = table(layer);
    const d = await ops.mkdir(root, ROOT_NODE_ID, 'd', 0o755);
    expect(d).toMatchObject({ entryTimeoutS: 2, attrTimeoutS: 3 });
    expect(await ops.lookup(root, ROOT_NODE_ID, 'none')).toEqual({ nodeId: 0, attr: null, entryTimeoutS: 4, attrTimeoutS: 0 });
    await expect(table(layer, { negativeTimeoutS: 0 }).lookup(root, ROOT_NODE_ID, 'none')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(ops.nodeIdOf(layer.rootIno)).toBe(ROOT_NODE_ID);
    expect(ops.cache).toMatchObject({ attrTimeoutS: 3, keepCache: true, cacheDirs: true });
  });

  it('open and opendir say what the kernel may keep; handles name their node until released', async () => {
    const ops = table(new MemoryLayerFs(), { keepCache: false, cacheDirs: true });
    const { entry, open } = await ops.create(root, ROOT_NODE_ID, 'f', 0o644, fsConstants.O_RDWR);
    expect(open).toMatchObject({ keepCache: false, cacheDir: false });
    expect(ops.opendir(root, ROOT_NODE_ID, 0)).toMatchObject({ keepCache: true, cacheDir: true });
    expect(ops.handleNode(open.fh)).toBe(entry.nodeId);
    expect(ops.isOpen(entry.nodeId)).toBe(true);
    await ops.release(root, entry.nodeId, open.fh);
    expect(ops.handleNode(open.fh)).toBeUndefined();
    expect(ops.isOpen(entry.nodeId)).toBe(false);
  });

  it('readdir stops before the first entry that does not fit', async () => {
    const ops = table(new MemoryLayerFs());
    for (const n of ['a', 'b', 'c']) await ops.mknod(root, ROOT_NODE_ID, n, S_IFREG | 0o644, 0);
    const { fh } = ops.opendir(root, ROOT_NODE_ID, 0);
    let room = 3;
    const page = await ops.readdir(root, ROOT_NODE_ID, fh, 1, true, () => room-- > 0);
    expect(page.entries.map((e) => e.name)).toEqual(['..', 'a', 'b']);
    expect(page.plus!.map((e) => e?.nodeId ?? null)).toEqual([null, expect.any(Number), expect.any(Number)]);
  });

  it('flush is NOT_IMPLEMENTED (ENOSYS); unknown rename flags are INVALID; forget holds nothing', async () => {
    const ops = table(new MemoryLayerFs());
    expect(() => ops.flush(root, ROOT_NODE_ID, 1)).toThrow(expect.objectContaining({ code: 'NOT_IMPLEMENTED' }));
    expect(errnoFor(dmfsError('NOT_IMPLEMENTED', 'x'))).toBe(E.ENOSYS);
    await ops.mknod(root, ROOT_NODE_ID, 'a', S_IFREG | 0o644, 0);
    await expect(ops.rename(root, ROOT_NODE_ID, 'a', ROOT_NODE_ID, 'b', 1 << 2)).rejects.toMatchObject({ code: 'INVALID' });
    await ops.rename(root, ROOT_NODE_ID, 'a', ROOT_NODE_ID, 'b', RENAME_NOREPLACE);
    expect(ops.forget(ROOT_NODE_ID, 1)).toBeUndefined();
  });

  it('errno: a DmfsError by its code, a system error by its name, anything else EIO and reported', () => {
    const seen: unknown[] = [];
    const ops = table(new MemoryLayerFs(), { onUnexpected: (err) => seen.push(err) });
    expect(ops.errno(dmfsError('POOL_FULL', 'x'))).toBe(E.ENOSPC);
    expect(seen).toEqual([]);
    expect(ops.errno(Object.assign(new Error('io'), { code: 'EIO' }))).toBe(E.EIO);
    expect(ops.errno(new TypeError('bug'))).toBe(E.EIO);
    expect(seen).toHaveLength(2);
  });
});

describe('fuse operations: a table taking over a live mount (daemon worker restart)', () => {
  it('serves handles its predecessor opened: writes and reads by node, an unknown release is a no-op, an unknown directory handle lists afresh', async () => {
    const layer = new MemoryLayerFs();
    const before = table(layer);
    before.init(NO_FEATURES);
    const { entry, open } = await before.create(root, ROOT_NODE_ID, 'f', 0o644, fsConstants.O_RDWR);
    await before.mkdir(root, ROOT_NODE_ID, 'd', 0o755);
    const dirFh = before.opendir(root, ROOT_NODE_ID, 0).fh;
    // The new worker's table on the same layer knows none of these handles.
    const after = table(layer);
    after.init(NO_FEATURES);
    await after.write(root, entry.nodeId, open.fh, Buffer.from('kept'), 0, false);
    const buf = Buffer.alloc(8);
    expect(await after.read(root, entry.nodeId, open.fh, buf, 0)).toBe(4);
    expect(buf.subarray(0, 4).toString()).toBe('kept');
    await expect(after.release(root, entry.nodeId, open.fh)).resolves.toBeUndefined();
    expect(after.openHandles).toBe(0);
    const page = await after.readdir(root, ROOT_NODE_ID, dirFh, 0, false);
    expect(page.entries.map((e) => e.name).sort()).toEqual(['.', '..', 'd', 'f']);
    after.releasedir(root, ROOT_NODE_ID, dirFh);
  });

  it('hands out handles from a random start, so a successor does not reuse its predecessor\'s numbers', async () => {
    const fhs = await Promise.all([1, 2, 3].map(async () => {
      const ops = table(new MemoryLayerFs());
      ops.init(NO_FEATURES);
      return (await ops.create(root, ROOT_NODE_ID, 'f', 0o644, fsConstants.O_RDWR)).open.fh;
    }));
    expect(new Set(fhs).size).toBe(3);
    for (const fh of fhs) expect(fh).toBeGreaterThan(0);
  });
});
