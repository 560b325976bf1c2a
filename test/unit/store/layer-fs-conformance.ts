import { S_IFCHR, S_IFIFO, S_IFREG, type LayerFs } from '../../../src/store/layer-store';

/**
 * The LayerFs conformance suite (containerd testsuite style): every implementation of
 * the contract runs it. `make()` returns a fresh writable layer and a way to dispose of it.
 */
export function layerFsConformance(name: string, make: () => Promise<{ fs: LayerFs; dispose: () => Promise<void> }>): void {
  describe(`LayerFs conformance: ${name}`, () => {
    let fs: LayerFs;
    let dispose: () => Promise<void>;
    beforeEach(async () => {
      ({ fs, dispose } = await make());
    });
    afterEach(async () => {
      await dispose();
    });
    const file = (dir: number, n: string, mode = 0o644) => fs.mknod(dir, n, { mode: S_IFREG | mode, uid: 0, gid: 0 });
    const dir = (parent: number, n: string) => fs.mkdir(parent, n, { mode: 0o755, uid: 0, gid: 0 });

    test('root is a 0755 directory', async () => {
      const root = await fs.getattr(fs.rootIno);
      expect(root.kind).toBe('dir');
      expect(root.mode & 0o7777).toBe(0o755);
    });

    test('create, lookup, readdir, EXISTS, NOT_FOUND', async () => {
      const a = await file(fs.rootIno, 'a');
      expect(a.kind).toBe('file');
      expect(a.nlink).toBe(1);
      expect((await fs.lookup(fs.rootIno, 'a'))!.ino).toBe(a.ino);
      expect(await fs.lookup(fs.rootIno, 'missing')).toBeNull();
      await expect(file(fs.rootIno, 'a')).rejects.toMatchObject({ code: 'EXISTS' });
      await expect(fs.resolve('/missing/x')).rejects.toMatchObject({ code: 'NOT_FOUND' });
      await expect(fs.resolve('/a/x')).rejects.toMatchObject({ code: 'NOT_DIR' });
      expect((await fs.readdir(fs.rootIno)).map((e) => e.name)).toContain('a');
    });

    test('names: 255 bytes ok, 256 bytes NAME_TOO_LONG, slash INVALID', async () => {
      await file(fs.rootIno, 'n'.repeat(255));
      await expect(file(fs.rootIno, 'n'.repeat(256))).rejects.toMatchObject({ code: 'NAME_TOO_LONG' });
      await expect(file(fs.rootIno, 'a/b')).rejects.toMatchObject({ code: 'INVALID' });
    });

    test('read/write: holes read as zeros, short read at EOF, sparse extension', async () => {
      const a = await file(fs.rootIno, 'a');
      await fs.write(a.ino, Buffer.from('hello'), 200000);
      const attr = await fs.getattr(a.ino);
      expect(attr.sizeBytes).toBe(200005);
      const buf = Buffer.alloc(10, 0xff);
      expect(await fs.read(a.ino, buf, 199998)).toBe(7);
      expect(buf.subarray(0, 7)).toEqual(Buffer.from([0, 0, 104, 101, 108, 108, 111]));
      expect(await fs.read(a.ino, Buffer.alloc(4), 1000)).toBe(4);
      expect(await fs.read(a.ino, Buffer.alloc(4), 300000)).toBe(0);
    });

    test('st_blocks follows allocation: a sparse file reports what is mapped, not its size', async () => {
      const a = await file(fs.rootIno, 'sparse');
      await fs.write(a.ino, Buffer.alloc(65536, 1), 10 * 1024 * 1024);
      const attr = await fs.getattr(a.ino);
      expect(attr.sizeBytes).toBe(10 * 1024 * 1024 + 65536);
      expect(attr.blocks512).toBeGreaterThan(0);
      expect(attr.blocks512).toBeLessThanOrEqual(2 * 128);
      await fs.setattr(a.ino, { sizeBytes: 0 });
      expect((await fs.getattr(a.ino)).blocks512).toBe(0);
      const b = await file(fs.rootIno, 'dense');
      await fs.write(b.ino, Buffer.alloc(1024 * 1024, 1), 0);
      expect((await fs.getattr(b.ino)).blocks512).toBe(2048);
    });

    test('truncate down zeroes the cut part when extended again', async () => {
      const a = await file(fs.rootIno, 'a');
      await fs.write(a.ino, Buffer.alloc(150000, 9), 0);
      await fs.setattr(a.ino, { sizeBytes: 70000 });
      await fs.setattr(a.ino, { sizeBytes: 150000 });
      const buf = Buffer.alloc(150000);
      await fs.read(a.ino, buf, 0);
      expect(buf.subarray(0, 70000).every((b) => b === 9)).toBe(true);
      expect(buf.subarray(70000).every((b) => b === 0)).toBe(true);
    });

    test('mkdir nlink, rmdir NOT_EMPTY, unlink IS_DIR, rmdir NOT_DIR', async () => {
      const d = await dir(fs.rootIno, 'd');
      expect(d.nlink).toBe(2);
      const before = (await fs.getattr(fs.rootIno)).nlink;
      await dir(d.ino, 'sub');
      expect((await fs.getattr(d.ino)).nlink).toBe(3);
      await expect(fs.rmdir(fs.rootIno, 'd')).rejects.toMatchObject({ code: 'NOT_EMPTY' });
      await expect(fs.unlink(fs.rootIno, 'd')).rejects.toMatchObject({ code: 'IS_DIR' });
      await file(fs.rootIno, 'f');
      await expect(fs.rmdir(fs.rootIno, 'f')).rejects.toMatchObject({ code: 'NOT_DIR' });
      await fs.rmdir(d.ino, 'sub');
      await fs.rmdir(fs.rootIno, 'd');
      expect((await fs.getattr(fs.rootIno)).nlink).toBe(before - 1);
    });

    test('hard links share the inode and count links', async () => {
      const a = await file(fs.rootIno, 'a');
      await fs.write(a.ino, Buffer.from('x'), 0);
      const l = await fs.link(a.ino, fs.rootIno, 'b');
      expect(l.ino).toBe(a.ino);
      expect(l.nlink).toBe(2);
      await fs.unlink(fs.rootIno, 'a');
      const b = (await fs.lookup(fs.rootIno, 'b'))!;
      expect(b.nlink).toBe(1);
      expect(b.sizeBytes).toBe(1);
      const d = await dir(fs.rootIno, 'd');
      await expect(fs.link(d.ino, fs.rootIno, 'dl')).rejects.toMatchObject({ code: 'NOT_PERMITTED' });
    });

    test('rename: over a file, non-empty directory moves with its subtree, into itself is INVALID, flags', async () => {
      const a = await file(fs.rootIno, 'a');
      await file(fs.rootIno, 'b');
      await fs.rename(fs.rootIno, 'a', fs.rootIno, 'b');
      expect((await fs.lookup(fs.rootIno, 'b'))!.ino).toBe(a.ino);
      expect(await fs.lookup(fs.rootIno, 'a')).toBeNull();
      const d = await dir(fs.rootIno, 'd');
      const inner = await file(d.ino, 'inner');
      const e = await dir(fs.rootIno, 'e');
      await fs.rename(fs.rootIno, 'd', e.ino, 'd2');
      expect((await fs.resolve('/e/d2/inner')).ino).toBe(inner.ino);
      expect((await fs.getattr(e.ino)).nlink).toBe(3);
      await expect(fs.rename(fs.rootIno, 'e', d.ino, 'x')).rejects.toMatchObject({ code: 'INVALID' });
      await file(fs.rootIno, 'c');
      await expect(fs.rename(fs.rootIno, 'b', fs.rootIno, 'c', { noReplace: true })).rejects.toMatchObject({ code: 'EXISTS' });
      const c = (await fs.lookup(fs.rootIno, 'c'))!;
      await fs.rename(fs.rootIno, 'b', fs.rootIno, 'c', { exchange: true });
      expect((await fs.lookup(fs.rootIno, 'b'))!.ino).toBe(c.ino);
      expect((await fs.lookup(fs.rootIno, 'c'))!.ino).toBe(a.ino);
      await expect(fs.rename(fs.rootIno, 'b', fs.rootIno, 'e')).rejects.toMatchObject({ code: 'IS_DIR' });
      await dir(fs.rootIno, 'f');
      await file((await fs.resolve('/f')).ino, 'x');
      await expect(fs.rename(fs.rootIno, 'e', fs.rootIno, 'f')).rejects.toMatchObject({ code: 'NOT_EMPTY' });
    });

    test('symlinks, fifos, device nodes', async () => {
      const s = await fs.symlink(fs.rootIno, 's', '../target/x', { uid: 5, gid: 6 });
      expect(s.kind).toBe('symlink');
      expect(s.sizeBytes).toBe(11);
      expect(await fs.readlink(s.ino)).toBe('../target/x');
      const p = await fs.mknod(fs.rootIno, 'p', { mode: S_IFIFO | 0o600, uid: 0, gid: 0 });
      expect(p.kind).toBe('fifo');
      const c = await fs.mknod(fs.rootIno, 'null', { mode: S_IFCHR | 0o666, uid: 0, gid: 0, rdev: (1 << 8) | 3 });
      expect(c.kind).toBe('chardev');
      expect(c.rdev).toBe(259);
    });

    test('setattr: mode keeps setuid bits, owners, nanosecond timestamps', async () => {
      const a = await file(fs.rootIno, 'a');
      const t = 1_600_000_000_123_456_789n;
      const r = await fs.setattr(a.ino, { mode: 0o4755, uid: 1000, gid: 1001, mtimeNs: t, atimeNs: t + 1n });
      expect(r.mode & 0o7777).toBe(0o4755);
      expect(r.kind).toBe('file');
      expect([r.uid, r.gid]).toEqual([1000, 1001]);
      const back = await fs.getattr(a.ino);
      expect(back.mtimeNs).toBe(t);
      expect(back.atimeNs).toBe(t + 1n);
    });

    test('xattrs: set, get, list, create/replace flags, remove', async () => {
      const a = await file(fs.rootIno, 'a');
      const cap = Buffer.from('0100000200200000000000000000000000000000', 'hex');
      await fs.setxattr(a.ino, 'security.capability', cap);
      await fs.setxattr(a.ino, 'user.k', Buffer.from('v'));
      await fs.setxattr(a.ino, 'trusted.t', Buffer.from('1'));
      expect(await fs.getxattr(a.ino, 'security.capability')).toEqual(cap);
      expect((await fs.listxattr(a.ino)).sort()).toEqual(['security.capability', 'trusted.t', 'user.k']);
      await expect(fs.setxattr(a.ino, 'user.k', Buffer.from('w'), { create: true })).rejects.toMatchObject({ code: 'XATTR_EXISTS' });
      await expect(fs.setxattr(a.ino, 'user.none', Buffer.from('w'), { replace: true })).rejects.toMatchObject({ code: 'NO_XATTR' });
      await fs.removexattr(a.ino, 'user.k');
      expect(await fs.getxattr(a.ino, 'user.k')).toBeNull();
      await expect(fs.removexattr(a.ino, 'user.k')).rejects.toMatchObject({ code: 'NO_XATTR' });
    });

    test('an unlinked file stays readable while retained', async () => {
      const a = await file(fs.rootIno, 'a');
      await fs.write(a.ino, Buffer.from('still here'), 0);
      fs.retain(a.ino);
      await fs.unlink(fs.rootIno, 'a');
      expect(await fs.lookup(fs.rootIno, 'a')).toBeNull();
      const buf = Buffer.alloc(10);
      expect(await fs.read(a.ino, buf, 0)).toBe(10);
      expect(buf.toString()).toBe('still here');
      await fs.write(a.ino, Buffer.from('!'), 10);
      await fs.release(a.ino);
    });

    test('statfs reports sane figures', async () => {
      const s = await fs.statfs();
      expect(s.blockSizeBytes).toBeGreaterThan(0);
      expect(s.totalBlocks).toBeGreaterThan(0);
      expect(s.freeBlocks).toBeLessThanOrEqual(s.totalBlocks);
      expect(s.nameMaxBytes).toBe(255);
    });
  });
}
