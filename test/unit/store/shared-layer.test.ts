/**
 * SharedLayer (store/shared-layer.ts): several handles on one open layer, as the daemon's
 * coherent mounts use it. Read-only handles refuse changes; each change is reported to
 * the other handles (not to the one that made it) in the terms of LayerEdit; open counts
 * are shared; claims are coherent; the last close closes the layer.
 */
import { Pool } from '../../../src/api';
import { S_IFREG, type LayerFs } from '../../../src/store/layer-store';
import { SharedLayer, type LayerEdit } from '../../../src/store/shared-layer';
import { tempPool } from '../../support/temp-pool';

describe('SharedLayer: one open layer, several mounts', () => {
  let pool: Pool;
  let remove: () => Promise<void>;
  beforeEach(async () => {
    ({ pool, remove } = await tempPool({ sizeBytes: 256 * 1024 ** 2 }));
    await pool.store.createLayer('img', { kind: 'image' });
    await pool.store.createLayer('c1', { kind: 'container', parent: 'img' });
  });
  afterEach(async () => remove());

  async function shareC1(): Promise<{ shared: SharedLayer; rw: LayerFs; ro: LayerFs; seenByRo: LayerEdit[]; seenByRw: LayerEdit[] }> {
    const shared = new SharedLayer(await pool.store.openLayer('c1', { mountpoint: '/mnt/a' }));
    const seenByRo: LayerEdit[] = [];
    const seenByRw: LayerEdit[] = [];
    const rw = shared.handle({ readOnly: false, onPeerEdits: (e) => seenByRw.push(...e) });
    const ro = shared.handle({ readOnly: true, onPeerEdits: (e) => seenByRo.push(...e) });
    await rw.claimMount!('/mnt/a');
    await ro.claimMount!('/mnt/b');
    return { shared, rw, ro, seenByRo, seenByRw };
  }

  test('a read-only handle refuses every change; the other handles are told of each change, the changer is not', async () => {
    const { rw, ro, seenByRo, seenByRw } = await shareC1();
    expect(ro.readOnly).toBe(true);
    const root = rw.rootIno;
    const f = await rw.mknod(root, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    await expect(ro.write(f.ino, Buffer.from('x'), 0)).rejects.toMatchObject({ code: 'READ_ONLY_LAYER' });
    await expect(ro.unlink(root, 'f')).rejects.toMatchObject({ code: 'READ_ONLY_LAYER' });
    await expect(ro.setxattr(f.ino, 'user.k', Buffer.from('v'))).rejects.toMatchObject({ code: 'READ_ONLY_LAYER' });
    await rw.write(f.ino, Buffer.from('hello'), 10);
    await rw.setattr(f.ino, { mode: 0o600 });
    await rw.setattr(f.ino, { sizeBytes: 3 });
    await rw.setxattr(f.ino, 'user.k', Buffer.from('v'));
    await rw.link(f.ino, root, 'g');
    await rw.unlink(root, 'g'); // f still has a link: the name and the link count
    await rw.rename(root, 'f', root, 'h');
    await rw.unlink(root, 'h'); // its last link
    expect(seenByRo).toEqual([
      { kind: 'name', dirIno: root, name: 'f' },
      { kind: 'data', ino: f.ino, offsetBytes: 10, lengthBytes: 5 },
      { kind: 'attr', ino: f.ino },
      { kind: 'data', ino: f.ino, offsetBytes: 0, lengthBytes: 0 },
      { kind: 'attr', ino: f.ino },
      { kind: 'name', dirIno: root, name: 'g' }, { kind: 'attr', ino: f.ino },
      { kind: 'name', dirIno: root, name: 'g' }, { kind: 'attr', ino: f.ino },
      { kind: 'name', dirIno: root, name: 'f' }, { kind: 'name', dirIno: root, name: 'h' }, { kind: 'attr', ino: f.ino },
      { kind: 'deleted', dirIno: root, name: 'h', ino: f.ino },
    ]);
    expect(seenByRw).toEqual([]);
    // Refused changes and failed ones report nothing.
    seenByRo.length = 0;
    await expect(rw.unlink(root, 'absent')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(seenByRo).toEqual([]);
    const d = await rw.mkdir(root, 'd', { mode: 0o755, uid: 0, gid: 0 });
    await rw.rmdir(root, 'd');
    expect(seenByRo).toEqual([{ kind: 'name', dirIno: root, name: 'd' }, { kind: 'deleted', dirIno: root, name: 'd', ino: d.ino }]);
    await ro.close();
    await rw.close();
  });

  test('a file open through one handle stays readable after another unlinks it (one set of open counts)', async () => {
    const { rw, ro } = await shareC1();
    const f = await rw.mknod(rw.rootIno, 'f', { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
    await rw.write(f.ino, Buffer.from('kept'), 0);
    ro.retain(f.ino);
    await rw.unlink(rw.rootIno, 'f');
    const buf = Buffer.alloc(4);
    expect(await ro.read(f.ino, buf, 0)).toBe(4);
    expect(buf.toString()).toBe('kept');
    await ro.release(f.ino);
    await ro.close();
    await rw.close();
  });

  test('claims through handles are coherent: one open layer may be mounted read-write and read-only; other opens are still refused', async () => {
    const { shared, rw, ro } = await shareC1();
    expect((await pool.store.getLayer('c1')).mounts).toEqual([{ pid: process.pid, mountpoint: '/mnt/a', readOnly: false }]);
    // A separate open cannot be kept coherent with these mounts.
    await expect(pool.store.openLayer('c1', { readOnly: true, mountpoint: '/mnt/c' })).rejects.toMatchObject({ code: 'LAYER_IN_USE' });
    // Without `coherent` the same open cannot take a second mount either (a mount process's rule).
    await expect(shared.layer.claimMount!('/mnt/c')).rejects.toMatchObject({ code: 'LAYER_IN_USE' });
    // A handle's close releases its own claims; the layer stays open for the others.
    await rw.close();
    expect(shared.closed).toBe(false);
    expect(shared.users).toBe(1);
    expect((await pool.store.getLayer('c1')).mounts.map((m) => m.mountpoint)).toEqual(['/mnt/b']);
    await ro.close();
    expect(shared.closed).toBe(true);
  });

  test('the last handle to close closes the layer; a writable handle needs a writable layer', async () => {
    let lastClosed = 0;
    const shared = new SharedLayer(await pool.store.openLayer('c1', { readOnly: true, mountpoint: '/mnt/b' }), () => lastClosed++);
    expect(() => shared.handle({ readOnly: false })).toThrow(expect.objectContaining({ code: 'READ_ONLY_LAYER' }));
    const a = shared.handle({ readOnly: true });
    const b = shared.handle({ readOnly: true });
    await a.claimMount!('/mnt/b');
    await b.claimMount!('/mnt/b2');
    await a.close();
    await a.close(); // idempotent
    expect(lastClosed).toBe(0);
    expect((await pool.store.getLayer('c1')).mounts.map((m) => m.mountpoint)).toEqual(['/mnt/b2']);
    await b.close();
    expect(lastClosed).toBe(1);
    expect(shared.closed).toBe(true);
    expect((await pool.store.getLayer('c1')).mounts).toEqual([]);
    // Closed for good: nothing is open any more, so a writer may open it.
    await (await pool.store.openLayer('c1')).close();
  });
});
