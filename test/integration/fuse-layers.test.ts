/**
 * Layer chains through FUSE: images built through a mount, sealed, a container on top;
 * whiteouts, opaque directories, renamed lower directories, hard links across the chain,
 * block-level copy-on-write, read-only image mounts and the size limit. All mounts are
 * served by this process against one real pool; every access is by child processes.
 */
import { Pool } from '../../src/api';
import { describeFuse, fuseTransports, mountLayer, run, sh, tempDir, type InProcessMount } from '../support/fuse-harness';

const MiB = 2 ** 20;

for (const transport of fuseTransports()) describeFuse(`layer chains through FUSE (${transport} transport)`, () => {
  let pool: Pool;
  const mounts: InProcessMount[] = [];
  let host: string;

  async function mount(name: string, opts: { readOnly?: boolean } = {}): Promise<InProcessMount> {
    const layer = await pool.store.openLayer(name, { readOnly: opts.readOnly });
    const m = await mountLayer(layer, undefined, { transport });
    mounts.push(m);
    return m;
  }

  async function unmount(m: InProcessMount): Promise<void> {
    mounts.splice(mounts.indexOf(m), 1);
    await m.unmount();
  }

  beforeAll(async () => {
    pool = await Pool.create({ root: tempDir('chain-pool'), sizeBytes: 8 * 2 ** 30 });
    host = tempDir('chain-host');
    await run(`head -c ${10 * MiB} /dev/urandom > ${host}/big.bin`);

    // Image 1, built through a mount of the building layer.
    await pool.store.createLayer('img1', { parent: 'base', kind: 'image', building: true });
    let m = await mount('img1');
    await run(`
      cd ${m.mnt}
      mkdir -p etc lib/mods keep gone opq/old-sub moved/inner
      echo 'box' > etc/hostname
      echo 'root:x:0:0::/root:/bin/sh' > etc/passwd
      cp ${host}/big.bin lib/big.bin
      echo a > lib/mods/a.ko && echo b > lib/mods/b.ko
      echo shared > keep/original && ln keep/original keep/second-name
      echo 1 > gone/file1 && echo 2 > gone/file2
      echo old > opq/old-file && echo deeper > opq/old-sub/x
      echo m1 > moved/inner/m1 && echo top > moved/top
      echo doomed > etc/doomed
      printf '#!/bin/sh\\n' > lib/tool && chmod 4755 lib/tool
      setfattr -n user.origin -v img1 etc/hostname
      touch -d '2005-05-05 05:05:05.555555555' etc/passwd
    `);
    await unmount(m);
    await pool.store.sealLayer('img1');

    // Image 2 on image 1: deletes (whiteouts), an opaque directory, a new file.
    await pool.store.createLayer('img2', { parent: 'img1', kind: 'image', building: true });
    m = await mount('img2');
    await run(`
      cd ${m.mnt}
      rm etc/doomed
      rm -rf opq && mkdir opq && echo new > opq/new-file
      echo img2 > etc/added-in-img2
    `);
    await unmount(m);
    await pool.store.sealLayer('img2');
    await pool.store.createLayer('c1', { parent: 'img2', kind: 'container' });
  });

  afterAll(async () => {
    for (const m of [...mounts].reverse()) await m.unmount().catch(() => undefined);
    await pool?.close();
  });

  it('a committed image mounts read-only: every kind of write fails with EROFS', async () => {
    const img = await mount('img2');
    expect(await run(`grep ' ${img.mnt} ' /proc/self/mountinfo`)).toMatch(/ ro,/);
    expect(await run(`cat ${img.mnt}/etc/hostname ${img.mnt}/opq/new-file`)).toBe('box\nnew\n');
    const attempts = [
      `echo x > ${img.mnt}/etc/hostname`,
      `echo x >> ${img.mnt}/etc/new`,
      `touch ${img.mnt}/etc/hostname`,
      `touch -m -d '2000-01-01' ${img.mnt}/etc/passwd`,
      `setfattr -n user.x -v 1 ${img.mnt}/etc/hostname`,
      `setfattr -x user.origin ${img.mnt}/etc/hostname`,
      `mkdir ${img.mnt}/newdir`,
      `rm ${img.mnt}/etc/passwd`,
      `rmdir ${img.mnt}/keep`,
      `mv ${img.mnt}/etc/passwd ${img.mnt}/etc/p2`,
      `chmod 600 ${img.mnt}/etc/passwd`,
      `chown 1:1 ${img.mnt}/etc/passwd`,
      `truncate -s 0 ${img.mnt}/etc/passwd`,
      `ln ${img.mnt}/etc/passwd ${img.mnt}/etc/hl`,
      `ln -s x ${img.mnt}/etc/sl`,
      `mkfifo ${img.mnt}/fifo`,
      `dd if=/dev/zero of=${img.mnt}/lib/big.bin bs=4k count=1 conv=notrunc status=none`,
    ];
    for (const cmd of attempts) {
      const r = await sh(cmd);
      expect({ cmd, failed: r.code !== 0, erofs: /Read-only file system/.test(r.stderr) }).toEqual({ cmd, failed: true, erofs: true });
    }
    expect(await run(`sha256sum < ${img.mnt}/lib/big.bin`)).toBe(await run(`sha256sum < ${host}/big.bin`));
    await unmount(img);
  });

  it('the container sees the merged chain: whiteouts hide, opaque directories hide everything below', async () => {
    const c = await mount('c1');
    expect(await run(`ls ${c.mnt}/etc`)).toBe('added-in-img2\nhostname\npasswd\n');
    expect(await run(`ls -A ${c.mnt}/opq`)).toBe('new-file\n');
    expect(await run(`getfattr -n user.origin --only-values ${c.mnt}/etc/hostname`)).toBe('img1');
    expect(await run(`stat -c '%a %y' ${c.mnt}/lib/tool ${c.mnt}/etc/passwd`)).toBe('4755 ' + (await run(`stat -c '%y' ${c.mnt}/lib/tool`)).trim() + '\n644 2005-05-05 05:05:05.555555555 +0000\n');
    await unmount(c);
  });

  it('deleting lower files and directories, recreating them, listing the parent', async () => {
    const c = await mount('c1');
    await run(`rm ${c.mnt}/etc/passwd && rm -rf ${c.mnt}/gone`);
    expect(await run(`ls ${c.mnt}/etc; ls ${c.mnt}`)).toBe('added-in-img2\nhostname\netc\nkeep\nlib\nmoved\nopq\n');
    expect((await sh(`cat ${c.mnt}/etc/passwd`)).stderr).toMatch(/No such file/);
    await run(`echo 'recreated' > ${c.mnt}/etc/passwd && mkdir ${c.mnt}/gone && echo fresh > ${c.mnt}/gone/file3`);
    expect(await run(`cat ${c.mnt}/etc/passwd; ls ${c.mnt}/gone`)).toBe('recreated\nfile3\n'); // lower file1/file2 stay hidden
    expect(await run(`ls ${c.mnt}/etc`)).toBe('added-in-img2\nhostname\npasswd\n');
    // The images below are untouched (mounted at the same time, read-only).
    const img = await mount('img2');
    expect(await run(`cat ${img.mnt}/etc/passwd; ls ${img.mnt}/gone`)).toBe('root:x:0:0::/root:/bin/sh\nfile1\nfile2\n');
    await unmount(img);
    await unmount(c);
  });

  it('renaming a lower directory moves its whole tree without copying', async () => {
    const c = await mount('c1');
    await run(`mv ${c.mnt}/moved ${c.mnt}/lib/renamed`);
    expect(await run(`cd ${c.mnt}/lib/renamed && find . -type f | sort && cat inner/m1 top`)).toBe('./inner/m1\n./top\nm1\ntop\n');
    expect((await sh(`ls ${c.mnt}/moved`)).code).not.toBe(0);
    await run(`echo more >> ${c.mnt}/lib/renamed/inner/m1`);
    expect(await run(`cat ${c.mnt}/lib/renamed/inner/m1`)).toBe('m1\nmore\n');
    await unmount(c);
  });

  it('hard links across the chain: same st_ino, exact st_nlink, one content', async () => {
    const c = await mount('c1');
    await run(`ln ${c.mnt}/keep/original ${c.mnt}/etc/third-name`);
    const lines = (await run(`stat -c '%i %h' ${c.mnt}/keep/original ${c.mnt}/keep/second-name ${c.mnt}/etc/third-name`)).trim().split('\n');
    expect(new Set(lines).size).toBe(1);
    expect(lines[0].split(' ')[1]).toBe('3');
    await run(`echo changed > ${c.mnt}/keep/second-name`);
    expect(await run(`cat ${c.mnt}/keep/original ${c.mnt}/etc/third-name`)).toBe('changed\nchanged\n');
    await run(`rm ${c.mnt}/keep/original`);
    expect((await run(`stat -c '%h' ${c.mnt}/etc/third-name`)).trim()).toBe('2');
    await unmount(c);
  });

  it('a 4 KiB write into a large lower file changes only that range (block copy-on-write)', async () => {
    const c = await mount('c1');
    await run(`head -c 4096 /dev/urandom > ${host}/patch && cp ${host}/big.bin ${host}/expected`);
    await run(`dd if=${host}/patch of=${host}/expected bs=4096 seek=1000 conv=notrunc status=none`);
    await run(`dd if=${host}/patch of=${c.mnt}/lib/big.bin bs=4096 seek=1000 conv=notrunc status=none`);
    expect(await run(`sha256sum < ${c.mnt}/lib/big.bin`)).toBe(await run(`sha256sum < ${host}/expected`));
    const info = await pool.store.getLayer('c1');
    expect(info.exclusiveBytes).toBeLessThan(2 * MiB); // not the whole 10 MiB file
    const img = await mount('img2');
    expect(await run(`sha256sum < ${img.mnt}/lib/big.bin`)).toBe(await run(`sha256sum < ${host}/big.bin`));
    await unmount(img);
    await unmount(c);
  });

  it('a container mounted with readOnly refuses writes; the same container opens read-write afterwards', async () => {
    const ro = await mount('c1', { readOnly: true });
    const r = await sh(`echo x > ${ro.mnt}/etc/hostname`);
    expect(r.stderr).toMatch(/Read-only file system/);
    await unmount(ro);
    const rw = await mount('c1');
    await run(`echo rw-again > ${rw.mnt}/etc/hostname`);
    await unmount(rw);
  });

  it('writes past the layer size limit fail promptly with ENOSPC/EFBIG, and the layer stays usable', async () => {
    await pool.store.createLayer('small', { parent: 'img2', kind: 'container', sizeLimitBytes: 32 * MiB });
    const c = await mount('small');
    const t0 = Date.now();
    const many = await sh(`cd ${c.mnt} && for i in 1 2 3 4 5 6 7 8; do head -c ${8 * MiB} /dev/zero > f$i || exit 1; done`);
    const one = await sh(`dd if=/dev/zero of=${c.mnt}/huge bs=1M count=64 status=none`);
    const elapsedMs = Date.now() - t0;
    expect(many.code).not.toBe(0);
    expect(many.stderr).toMatch(/No space left on device/);
    expect(one.code).not.toBe(0);
    expect(one.stderr).toMatch(/No space left on device|File too large/);
    expect(elapsedMs).toBeLessThan(20_000);
    await run(`rm -f ${c.mnt}/f* ${c.mnt}/huge && echo ok > ${c.mnt}/after`);
    expect(await run(`cat ${c.mnt}/after`)).toBe('ok\n');
    await unmount(c);
  });
});
