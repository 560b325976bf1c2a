/**
 * The POSIX surface through a real FUSE mount, driven by ordinary tools (coreutils, tar,
 * attr, findutils), against every LayerFs we have: the in-memory test layer and a
 * container layer of a real pool. The mount is served by this process; every access goes
 * through child processes (see fuse-harness.ts).
 */
import * as path from 'node:path';
import { Pool } from '../../src/api';
import type { FuseTransport } from '../../src/fs/mount-service';
import { describeFuse, fuseTransports, mountLayer, mountMemory, run, sh, shq, tempDir, type InProcessMount } from '../support/fuse-harness';

interface Target {
  name: string;
  mount(transport: FuseTransport): Promise<{ m: InProcessMount; close(): Promise<void> }>;
}

const GiB = 2 ** 30;

const targets: Target[] = [
  {
    name: 'memory layer',
    async mount(transport) {
      const m = await mountMemory({ sizeLimitBytes: 4 * GiB }, transport);
      return { m, close: () => m.unmount() };
    },
  },
  {
    name: 'store container layer',
    async mount(transport) {
      const pool = await Pool.create({ root: tempDir('pool'), sizeBytes: 16 * GiB });
      await pool.store.createLayer('c1', { parent: 'base', kind: 'container', sizeLimitBytes: 8 * GiB });
      const layer = await pool.store.openLayer('c1');
      const m = await mountLayer(layer, undefined, { transport });
      return {
        m,
        async close() {
          await m.unmount();
          await pool.close();
        },
      };
    },
  },
];

/** A source tree on the host file system with every kind of node, odd modes, xattrs and ns times. */
async function makeSourceTree(): Promise<string> {
  const src = path.join(tempDir('src'), 'tree');
  await run(`
    mkdir -p ${src}/dir/sub/deeper ${src}/empty
    cd ${src}
    printf 'hello\\n' > dir/a.txt
    head -c 300000 /dev/urandom > dir/sub/random.bin
    head -c 70000 /dev/urandom > dir/sub/deeper/odd-size.bin
    : > empty-file
    ln dir/a.txt dir/sub/hardlink-to-a
    ln -s ../a.txt dir/sub/rel-link
    ln -s /etc/passwd abs-link
    ln -s missing-target dangling
    mkfifo fifo
    mknod chardev c 1 3
    mknod blockdev b 7 200
    printf '#!/bin/sh\\n' > setuid-prog && chmod 4755 setuid-prog
    touch setgid-file && chmod 2750 setgid-file
    mkdir sticky && chmod 1777 sticky
    touch owned && chown 1234:5678 owned
    touch 'name with spaces' "quote'd" 'ünïcødé'
    setfattr -n user.color -v blue dir/a.txt
    setfattr -n user.bin -v 0x00ff00 dir/sub/random.bin
    setfattr -n trusted.t -v yes dir
    touch -h -d '2001-02-03 04:05:06.123456789' dir/sub/rel-link
    touch -d '1999-12-31 23:59:59.987654321' dir/a.txt
    touch -d '2020-01-01 00:00:00.000000001' dir/sub dir
  `);
  return src;
}

/** diff cannot compare fifos and devices (the listings cover them). */
const NO_SPECIAL = '-x fifo -x chardev -x blockdev';

/** One line per node: path, type+mode, owner, size (files), link count, mtime with ns. */
function listing(dir: string): Promise<string> {
  return run(`cd ${shq(dir)} && find . -mindepth 1 -printf '%p %y %#m %U:%G %n %T@ %l|' -exec sh -c 'if [ -f "$1" ] && [ ! -L "$1" ]; then stat -c %s "$1"; else echo -; fi' _ {} \\; | sort`);
}

/** Every target through every transport (fuseTransports). */
const runs = fuseTransports().flatMap((transport) => targets.map((target) => ({ target, transport })));

for (const { target, transport } of runs) {
  describeFuse(`POSIX tools on a ${target.name} (${transport} transport)`, () => {
    let mnt: string;
    let m: InProcessMount;
    let close: () => Promise<void>;
    let src: string;

    beforeAll(async () => {
      ({ m, close } = await target.mount(transport));
      mnt = m.mnt;
      src = await makeSourceTree();
    });
    afterAll(async () => {
      await close?.();
    });

    it('cp -a keeps every node kind, mode bit, owner, link, xattr and ns timestamp (diff -r, stat, getfattr)', async () => {
      await run(`cp -a ${src} ${mnt}/copy`);
      expect(await listing(`${mnt}/copy`)).toBe(await listing(src));
      await run(`diff -r --no-dereference ${NO_SPECIAL} ${src} ${mnt}/copy`);
      const xattrs = (d: string) => run(`cd ${d} && getfattr -R -h -d -m '^(user|trusted)\\.' -e hex . 2>/dev/null | awk '/^# file:/ { f = $3; next } NF { print f, $0 }' | sort`);
      expect(await xattrs(`${mnt}/copy`)).toBe(await xattrs(src));
      expect(await run(`stat -c '%y' ${mnt}/copy/dir/a.txt`)).toContain('1999-12-31 23:59:59.987654321');
      expect(await run(`stat -c '%F %t:%T' ${mnt}/copy/chardev ${mnt}/copy/blockdev ${mnt}/copy/fifo`)).toBe(
        'character special file 1:3\nblock special file 7:c8\nfifo 0:0\n',
      );
    });

    it('hardlinks share st_ino and count links; symlinks read back', async () => {
      const out = await run(`cd ${mnt}/copy && stat -c '%i %h' dir/a.txt dir/sub/hardlink-to-a`);
      const [a, b] = out.trim().split('\n');
      expect(a).toBe(b);
      expect(a.split(' ')[1]).toBe('2');
      expect(await run(`readlink ${mnt}/copy/dir/sub/rel-link; cat ${mnt}/copy/dir/sub/rel-link`)).toBe('../a.txt\nhello\n');
      await run(`cd ${mnt}/copy && ln dir/a.txt third && ln -s a.txt dir/soft`);
      expect((await run(`stat -c %h ${mnt}/copy/dir/a.txt`)).trim()).toBe('3');
      expect(await run(`cat ${mnt}/copy/dir/soft`)).toBe('hello\n');
    });

    it('tar -c of the mount and tar -x into it round-trip the tree', async () => {
      const out = tempDir('tar');
      await run(`tar -C ${mnt}/copy --xattrs --xattrs-include='user.*' -cpf ${out}/t.tar . && mkdir ${mnt}/untar && tar -C ${mnt}/untar --xattrs --xattrs-include='user.*' --numeric-owner -xpf ${out}/t.tar`);
      await run(`diff -r --no-dereference ${NO_SPECIAL} ${mnt}/copy ${mnt}/untar`);
      expect(await listing(`${mnt}/untar`)).toBe(await listing(`${mnt}/copy`));
      expect(await run(`getfattr -n user.color --only-values ${mnt}/untar/dir/a.txt`)).toBe('blue');
    });

    it('dd: partial overwrites with conv=notrunc and seek past EOF make the same bytes as on the host', async () => {
      const host = tempDir('dd');
      await run(`head -c 5000000 /dev/urandom > ${host}/base && cp ${host}/base ${mnt}/dd.bin && cp ${host}/base ${host}/dd.bin`);
      for (const dir of [host, mnt]) {
        await run(`cd ${dir} && dd if=/dev/urandom of=patch bs=1 count=0 status=none && head -c 10000 /dev/zero | tr '\\0' 'x' > patch0 || true`);
      }
      await run(`head -c 12345 /dev/urandom > ${host}/patch`);
      for (const dir of [host, mnt]) {
        await run(`dd if=${host}/patch of=${dir}/dd.bin bs=4096 seek=100 conv=notrunc status=none`);
        await run(`dd if=${host}/patch of=${dir}/dd.bin bs=512 seek=127 conv=notrunc status=none`); // straddles 64 KiB
        await run(`dd if=${host}/patch of=${dir}/dd.bin bs=1M seek=20 conv=notrunc status=none`); // past EOF: a hole
      }
      const sum = (f: string) => run(`sha256sum < ${f}`);
      expect(await sum(`${mnt}/dd.bin`)).toBe(await sum(`${host}/dd.bin`));
      expect((await run(`stat -c %s ${mnt}/dd.bin`)).trim()).toBe(String(20 * 2 ** 20 + 12345));
      await run(`cmp -n 10000000 -i 5000000:0 ${mnt}/dd.bin /dev/zero`); // the hole reads as zeros
    });

    it('a sparse file stays sparse (du) and truncate grows and shrinks it', async () => {
      await run(`dd if=/dev/urandom of=${mnt}/sparse bs=4k count=1 seek=262144 status=none`);
      expect((await run(`stat -c %s ${mnt}/sparse`)).trim()).toBe(String(2 ** 30 + 4096));
      const kib = Number((await run(`du -k ${mnt}/sparse`)).split(/\s/)[0]);
      expect(kib).toBeLessThan(1024);
      await run(`truncate -s 100 ${mnt}/sparse && truncate -s 3000 ${mnt}/sparse`);
      expect((await run(`stat -c %s ${mnt}/sparse`)).trim()).toBe('3000');
      await run(`cmp -n 2900 -i 100:0 ${mnt}/sparse /dev/zero`);
    });

    it('mv: files, non-empty directories, across directories, over an existing target', async () => {
      await run(`
        cd ${mnt} && mkdir -p mv/a/inner mv/b && echo 1 > mv/a/inner/f && echo 2 > mv/x && echo 3 > mv/y
        mv mv/x mv/b/x
        mv mv/a mv/b/a-moved
        mv mv/y mv/b/x
        mkdir mv/emptydir && mkdir -p mv/c/full && echo 4 > mv/c/full/g && mv mv/c/full mv/emptydir/
      `);
      expect(await run(`cd ${mnt}/mv && find . | sort`)).toBe(
        ['.', './b', './b/a-moved', './b/a-moved/inner', './b/a-moved/inner/f', './b/x', './c', './emptydir', './emptydir/full', './emptydir/full/g', ''].join('\n'),
      );
      expect(await run(`cat ${mnt}/mv/b/x ${mnt}/mv/b/a-moved/inner/f`)).toBe('3\n1\n');
      const r = await sh(`mkdir ${mnt}/mv/ne && touch ${mnt}/mv/ne/f && mkdir ${mnt}/mv/src && mv -T ${mnt}/mv/src ${mnt}/mv/ne`);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/not empty|exists/i);
    });

    it('mkfifo, mknod, chmod (setuid/setgid/sticky), chown, touch -d / -m -d with nanoseconds', async () => {
      await run(`
        cd ${mnt} && mkdir attrs && cd attrs
        mkfifo p && mknod c c 4 5 && touch f d1 && mkdir d
        chown 42:43 f && chmod 4711 f && chmod 2700 d && chmod 1777 d1
        touch g && chmod 4755 g && chown 7:7 g   # chown clears setuid, as on any Linux fs
        touch -d '2010-10-10 10:10:10.111111111' d1
        touch -m -d '2011-11-11 11:11:11.222222222' f
      `);
      expect(await run(`cd ${mnt}/attrs && stat -c '%n %F %a %u:%g' p c f d g`)).toBe(
        'p fifo 644 0:0\nc character special file 644 0:0\nf regular empty file 4711 42:43\nd directory 2700 0:0\ng regular empty file 755 7:7\n',
      );
      expect(await run(`stat -c '%y|%x' ${mnt}/attrs/d1`)).toBe('2010-10-10 10:10:10.111111111 +0000|2010-10-10 10:10:10.111111111 +0000\n');
      const [mtime, atime] = (await run(`stat -c '%y|%x' ${mnt}/attrs/f`)).trim().split('|');
      expect(mtime).toBe('2011-11-11 11:11:11.222222222 +0000');
      expect(atime).not.toBe(mtime); // touch -m leaves the access time (UTIME_OMIT)
      await run(`touch -a -d '2012-01-01 00:00:00.5' ${mnt}/attrs/f`);
      expect(await run(`stat -c '%y|%x' ${mnt}/attrs/f`)).toBe('2011-11-11 11:11:11.222222222 +0000|2012-01-01 00:00:00.500000000 +0000\n');
    });

    it('setfattr / getfattr, including security.capability and removal', async () => {
      await run(`cd ${mnt} && touch xa && setfattr -n user.one -v 1 xa && setfattr -n user.two -v "a longer value" xa && setfattr -n security.capability -v 0x0100000200200000000000000000000000000000 xa`);
      expect(await run(`getfattr -d -m - -e hex ${mnt}/xa | sort`)).toContain('security.capability=0x0100000200200000000000000000000000000000');
      expect(await run(`getfattr -n user.two --only-values ${mnt}/xa`)).toBe('a longer value');
      await run(`setfattr -x user.one ${mnt}/xa`);
      const r = await sh(`getfattr -n user.one ${mnt}/xa`);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/No such attribute/);
    });

    it('names of 255 bytes work, 256 fail with ENAMETOOLONG; deep paths work', async () => {
      const n255 = 'n'.repeat(255);
      await run(`cd ${mnt} && touch ${n255} && mkdir d${'m'.repeat(254)}`);
      expect((await run(`ls ${mnt} | grep -c '^nnnn'`)).trim()).toBe('1');
      const r = await sh(`touch ${mnt}/${'n'.repeat(256)}`);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/File name too long/);
      const deep = Array.from({ length: 120 }, (_, i) => `level${i}`).join('/');
      await run(`mkdir -p ${mnt}/deep/${deep} && echo bottom > ${mnt}/deep/${deep}/f`);
      expect(await run(`cat ${mnt}/deep/${deep}/f`)).toBe('bottom\n');
      expect((await run(`find ${mnt}/deep -type d | wc -l`)).trim()).toBe('121');
    });

    it('an unlinked open file stays readable and writable through its descriptor', async () => {
      const out = await run(`
        cd ${mnt} && mkdir ul && seq 1 1000 > ul/f
        exec 3< ul/f
        exec 4>> ul/g
        rm ul/f ul/g
        ls -a ul
        echo appended >&4
        wc -l <&3
        stat -L -c %s /dev/fd/3
        exec 3<&- 4>&-
        rmdir ul && echo rmdir-ok
      `);
      expect(out).toBe('.\n..\n1000\n3893\nrmdir-ok\n');
    });

    it('stat, find, du, df, sha256sum on a large file; big writes arrive in large requests', async () => {
      const host = tempDir('big');
      await run(`head -c 67108864 /dev/urandom > ${host}/big && cp ${host}/big ${mnt}/big`);
      expect(await run(`sha256sum < ${mnt}/big`)).toBe(await run(`sha256sum < ${host}/big`));
      expect((await run(`stat -c %s ${mnt}/big`)).trim()).toBe('67108864');
      expect(Number((await run(`du -k ${mnt}/big`)).split(/\s/)[0])).toBeGreaterThanOrEqual(65536);
      const df = await run(`df -P ${mnt} | tail -1`);
      expect(df).toMatch(/^dmfs:/);
      expect(await run(`stat -f -c '%l' ${mnt}`)).toBe('255\n');
      expect((await run(`find ${mnt} -name big -type f -size +60M`)).trim()).toBe(`${mnt}/big`);
      expect(await run(`grep ' ${mnt} ' /proc/self/mountinfo`)).toContain('fuse.dmfs');
    });

    it('many entries in one directory, then rm -rf of everything', async () => {
      await run(`mkdir ${mnt}/many && cd ${mnt}/many && for i in $(seq 1 1500); do : > f$i; done`);
      expect((await run(`ls ${mnt}/many | wc -l`)).trim()).toBe('1500');
      await run(`rm -rf ${mnt}/many ${mnt}/copy ${mnt}/untar`);
      expect(await run(`ls ${mnt} | grep -E '^(many|copy|untar)$' || true`)).toBe('');
    });
  });
}
