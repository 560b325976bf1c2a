/**
 * Coherent mounts (issue 13): the daemon serves several mounts of one layer, one
 * read-write and any number read-only, from the layer's one open LayerFs, and invalidates
 * the read-only mounts' kernel caches (FUSE notifications) when the read-write one
 * changes the layer. Each check first reads through the read-only mount, so that its
 * kernel holds the old names, attributes and pages (kept for an hour otherwise).
 * Real mounts through the CLI, ordinary tools.
 */
import { DMFS_BIN, ensureBuiltDist } from '../support/built-dist';
import { cliFor, describeFuse, run, sh, shq, tempDir } from '../support/fuse-harness';

describeFuse('dmfs daemon: several mounts of one layer stay coherent', () => {
  let root: string;
  let work: string;
  let a: string;
  let b: string;
  let b2: string;
  const { dmfs, dmfsOk, json } = cliFor(DMFS_BIN, () => root);
  /** A refused command's error (code and message) from its --json answer. */
  const refused = async (args: string): Promise<{ code: string; message: string }> => {
    const r = await dmfs(`${args} --json`);
    expect(r.code).toBe(1);
    return JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}').error;
  };

  beforeAll(async () => {
    ensureBuiltDist();
    root = tempDir('coherent-pool');
    work = tempDir('coherent-work');
    [a, b, b2] = [`${work}/a`, `${work}/b`, `${work}/b2`];
    await dmfsOk('pool create --size 1G');
    await dmfsOk('create img --image');
    await dmfsOk('create c1 --from img');
    await dmfsOk('create c2 --from img');
    await dmfsOk('daemon start');
  }, 300_000);

  afterAll(async () => {
    await dmfs('daemon stop');
    await sh(`for m in $(grep -o ' ${work}/[^ ]* fuse.dmfs ' /proc/self/mounts | cut -d' ' -f2); do fusermount -uz "$m"; done`);
    await sh(`rm -rf ${shq(work)} ${shq(root)}`);
  });

  it('mounts a container read-write and twice read-only from the daemon; a second writer is refused', async () => {
    const { pid } = await json('daemon status');
    const ma = await json(`mount c1 ${a}`);
    const mb = await json(`mount c1 ${b} --ro`);
    const mb2 = await json(`mount c1 ${b2} --ro`);
    expect([ma.readOnly, mb.readOnly, mb2.readOnly]).toEqual([false, true, true]);
    for (const m of [ma, mb, mb2]) expect(m).toMatchObject({ pid, servedBy: 'daemon', transport: 'kernel' });
    const second = await refused(`mount c1 ${work}/a2`);
    expect(second.code).toBe('LAYER_IN_USE');
    expect(second.message).toContain(a);
    expect((await sh(`echo x > ${b}/refused`)).stderr).toMatch(/Read-only file system/);
  });

  it('data: a write, an append, an overwrite in place and a truncate through A read back at once through B, also from cached pages', async () => {
    await run(`echo one > ${a}/f`);
    expect(await run(`cat ${b}/f ${b2}/f`)).toBe('one\none\n');
    await run(`echo two >> ${a}/f`);
    expect(await run(`cat ${b}/f; stat -c %s ${b}/f`)).toBe('one\ntwo\n8\n');
    // Same size: only the page invalidation can show it.
    await run(`printf ONE | dd of=${a}/f conv=notrunc status=none`);
    expect(await run(`cat ${b}/f ${b2}/f`)).toBe('ONE\ntwo\nONE\ntwo\n');
    await run(`truncate -s 3 ${a}/f`);
    expect(await run(`cat ${b}/f; echo; stat -c %s ${b}/f`)).toBe('ONE\n3\n');
    // A 4 KiB block in the middle of a 3 MiB file the read-only mount has in its page cache.
    await run(`head -c 3000000 /dev/urandom > ${a}/big && sha256sum ${b}/big > /dev/null`);
    await run(`head -c 4096 /dev/urandom | dd of=${a}/big bs=4096 seek=300 conv=notrunc status=none`);
    const sums = (await run(`sha256sum ${a}/big ${b}/big`)).split('\n').map((l) => l.split(' ')[0]);
    expect(sums[0]).toBe(sums[1]);
  });

  it('names: create, mkdir, symlink, link, rename, unlink and rmdir through A are seen at once by ls and stat through B', async () => {
    expect(await run(`ls ${b}`)).toBe('big\nf\n');
    expect((await sh(`stat ${b}/later`)).code).not.toBe(0); // a negative entry, cached for an hour
    await run(`mkdir ${a}/d && touch ${a}/d/x ${a}/later && ln -s f ${a}/l && ln ${a}/f ${a}/hard`);
    expect(await run(`ls ${b}; ls ${b}/d; stat -c '%h %N' ${b}/f ${b}/l`)).toBe(`big\nd\nf\nhard\nl\nlater\nx\n2 '${b}/f'\n1 '${b}/l' -> 'f'\n`);
    await run(`mv ${a}/d/x ${a}/y`);
    expect(await run(`ls ${b}/d; ls ${b}`)).toBe('big\nd\nf\nhard\nl\nlater\ny\n');
    await run(`rm ${a}/y ${a}/hard && rmdir ${a}/d`);
    expect(await run(`ls ${b2}; stat -c %h ${b}/f`)).toBe('big\nf\nl\nlater\n1\n');
    expect((await sh(`stat ${b}/y`)).code).not.toBe(0);
    // A rename over a name B had cached: B sees the new file under it.
    await run(`cat ${b}/later && echo new > ${a}/n && mv ${a}/n ${a}/later`);
    expect(await run(`cat ${b}/later`)).toBe('new\n');
  });

  it('attributes and xattrs: chmod, chown, utimes, setfattr and removal through A are seen at once through B', async () => {
    expect(await run(`stat -c '%a %u' ${b}/f`)).toBe('644 0\n');
    await run(`chmod 600 ${a}/f && chown 123 ${a}/f && touch -d @1000000000 ${a}/f && setfattr -n user.k -v v1 ${a}/f`);
    expect(await run(`stat -c '%a %u %Y' ${b}/f; getfattr -n user.k --only-values ${b}/f`)).toBe('600 123 1000000000\nv1');
    await run(`setfattr -x user.k ${a}/f`);
    expect((await sh(`getfattr -n user.k ${b}/f`)).stderr).toMatch(/No such attribute/);
  });

  it('a file open through B stays readable after A unlinks it', async () => {
    await run(`echo kept > ${a}/keep && stat ${b}/keep > /dev/null`); // known to B, no pages cached: the read reaches the store
    expect(await run(`exec 3<${b}/keep; rm ${a}/keep; ls ${b}; cat <&3`)).toBe('big\nf\nl\nlater\nkept\n');
  });

  it('after a restart of the worker every mount is taken over, still coherent', async () => {
    const before = await json('daemon status');
    await run(`cat ${b}/f`);
    process.kill(before.pid, 'SIGKILL');
    let status = before;
    for (let i = 0; i < 200 && (status.pid === before.pid || status.mounts?.length !== 3); i++) {
      await new Promise((r) => setTimeout(r, 100));
      const s = await dmfs('daemon status --json');
      if (s.code === 0) status = JSON.parse(s.stdout);
    }
    expect(status.pid).not.toBe(before.pid);
    expect(status.mounts.map((m: { mountpoint: string; readOnly: boolean }) => [m.mountpoint, m.readOnly]).sort()).toEqual([[a, false], [b, true], [b2, true]]);
    await run(`echo after > ${a}/f && touch ${a}/after-restart`);
    expect(await run(`cat ${b}/f; ls ${b2}`)).toBe('after\nafter-restart\nbig\nf\nl\nlater\n');
  });

  it('a read-write mount after read-only ones is refused with what to do; unmounting leaves the others serving', async () => {
    await dmfsOk(`mount c2 ${work}/c2-ro --ro`);
    const r = await refused(`mount c2 ${work}/c2-rw`);
    expect(r.code).toBe('LAYER_IN_USE');
    expect(r.message).toMatch(/read-write mount has to come first/);
    await dmfsOk(`umount ${work}/c2-ro`);

    await dmfsOk(`umount ${b2}`);
    await run(`echo last > ${a}/f`);
    expect(await run(`cat ${b}/f`)).toBe('last\n');
    await dmfsOk(`umount ${a}`);
    expect(await run(`cat ${b}/f`)).toBe('last\n');
    await dmfsOk(`umount ${b}`);
    expect((await json('daemon status')).mounts).toEqual([]);
    // Unmounted everywhere: the layer is free again for a writer, and the pool is sound.
    await dmfsOk(`mount c1 ${a}`);
    expect(await run(`cat ${a}/f`)).toBe('last\n');
    await dmfsOk(`umount ${a}`);
    await dmfsOk('daemon stop');
    expect(await json('check')).toMatchObject({ ok: true });
  });
});
