/**
 * Each known defect of fuse-native 2.2.6, checked end to end through a real mount (the
 * patch and the adapter must keep every one of them from reaching users), on both
 * transports: the kernel one (dmfs speaks /dev/fuse itself) must not regress on them.
 */
import type { FuseTransport } from '../../src/fs/mount-service';
import { MAX_WRITE_BYTES } from '../../src/fs/kernel-session';
import type { LayerFs, StatFs } from '../../src/store/layer-store';
import { describeFuse, mountLayer as mountWith, run, sh } from '../support/fuse-harness';
import { MemoryLayerFs } from '../support/memory-layer-fs';

for (const transport of ['kernel', 'libfuse2'] as FuseTransport[]) {
  const mountLayer = (layer: LayerFs, mnt?: string, opts: { allowOther?: boolean } = {}) => mountWith(layer, mnt, { ...opts, transport });

  describeFuse(`fuse-native defects do not reach users (${transport} transport)`, () => {
    it('utimens: exact ns for atime and mtime separately, UTIME_OMIT and UTIME_NOW', async () => {
      const m = await mountLayer(new MemoryLayerFs());
      try {
        await run(`cd ${m.mnt} && touch f && touch -m -d '2001-02-03 04:05:06.123456789' f && touch -a -d '1969-07-20 20:17:40.000000001' f`);
        expect(await run(`stat -c '%y|%x' ${m.mnt}/f`)).toBe('2001-02-03 04:05:06.123456789 +0000|1969-07-20 20:17:40.000000001 +0000\n');
        const before = Date.now() / 1000;
        await run(`touch ${m.mnt}/f`); // UTIME_NOW for both
        const [mtime, atime] = (await run(`stat -c '%.9Y %.9X' ${m.mnt}/f`)).trim().split(' ').map(Number);
        expect(mtime).toBe(atime);
        expect(Math.abs(mtime - before)).toBeLessThan(5);
      } finally {
        await m.unmount();
      }
    });

    it('st_ino above 2^32 and 64-bit statfs counts arrive intact (use_ino, 64-bit layout)', async () => {
      const mem = new MemoryLayerFs({ firstIno: 2 ** 32 + 7 });
      const huge: StatFs = { blockSizeBytes: 65536, totalBlocks: 2 ** 35, freeBlocks: 2 ** 34 + 3, availBlocks: 2 ** 34, totalInodes: 2 ** 40, freeInodes: 2 ** 39, nameMaxBytes: 255 };
      const layer = new Proxy(mem, { get: (t, k, r) => (k === 'statfs' ? async () => huge : Reflect.get(t, k, r)) }) as LayerFs;
      const m = await mountLayer(layer);
      try {
        await run(`touch ${m.mnt}/a ${m.mnt}/b`);
        expect(await run(`stat -c %i ${m.mnt}/a ${m.mnt}/b`)).toBe(`${2 ** 32 + 7}\n${2 ** 32 + 8}\n`);
        expect(await run(`ls -i ${m.mnt} | awk '{print $1}'`)).toBe(`${2 ** 32 + 7}\n${2 ** 32 + 8}\n`); // readdir d_ino too
        expect(await run(`stat -f -c '%S %b %f %a %c %d' ${m.mnt}`)).toBe(`65536 ${2 ** 35} ${2 ** 34 + 3} ${2 ** 34} ${2 ** 40} ${2 ** 39}\n`);
      } finally {
        await m.unmount();
      }
    });

    it('writes arrive in large requests (big_writes), not 4 KiB at a time', async () => {
      const mem = new MemoryLayerFs();
      const sizes: number[] = [];
      const write = mem.write.bind(mem);
      mem.write = async (ino, data, off) => (sizes.push(data.length), write(ino, data, off));
      const m = await mountLayer(mem);
      try {
        await run(`dd if=/dev/zero of=${m.mnt}/f bs=1M count=8 status=none`);
        // libfuse 2 caps requests at 128 KiB; the kernel transport negotiates 1 MiB.
        const max = transport === 'kernel' ? MAX_WRITE_BYTES : 128 * 1024;
        expect(Math.max(...sizes)).toBe(max);
        expect(sizes.length).toBeLessThanOrEqual((8 << 20) / max + 2);
      } finally {
        await m.unmount();
      }
    });

    it('an operation slower than fuse-native\'s 15 s default timeout still succeeds', async () => {
      const mem = new MemoryLayerFs();
      const m = await mountLayer(mem);
      try {
        await run(`echo patient > ${m.mnt}/slow`);
        const read = mem.read.bind(mem);
        mem.read = async (ino, target, off) => {
          await new Promise((r) => setTimeout(r, 16_000));
          return read(ino, target, off);
        };
        const r = await sh(`dd if=${m.mnt}/slow bs=4k iflag=direct status=none`, { timeoutMs: 60_000 });
        expect(r).toMatchObject({ code: 0, stdout: 'patient\n' });
      } finally {
        await m.unmount();
      }
    }, 60_000);

    it('files created through the mount belong to the calling user, not the daemon', async () => {
      const m = await mountLayer(new MemoryLayerFs(), undefined, { allowOther: true });
      try {
        await run(`chmod 1777 ${m.mnt} && setpriv --reuid=4321 --regid=8765 --clear-groups sh -c 'echo hi > ${m.mnt}/mine && mkdir ${m.mnt}/dir && ln -s t ${m.mnt}/link && mkfifo ${m.mnt}/pipe'`);
        expect(await run(`stat -c '%n %u:%g' ${m.mnt}/mine ${m.mnt}/dir ${m.mnt}/link ${m.mnt}/pipe | sed 's#.*/##'`)).toBe('mine 4321:8765\ndir 4321:8765\nlink 4321:8765\npipe 4321:8765\n');
      } finally {
        await m.unmount();
      }
    });
  });
}
