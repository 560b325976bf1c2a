/**
 * Choosing the FUSE transport: the kernel one (dmfs speaks /dev/fuse itself) as root with
 * the native addon, libfuse 2 through fuse-native otherwise, and 'auto' falling back to
 * libfuse 2 when the kernel transport cannot mount (here: no mount(8) on PATH).
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { transportFromEnv } from '../../src/fs/mount-service';
import { describeFuse, mountLayer, run, tempDir } from '../support/fuse-harness';
import { MemoryLayerFs } from '../support/memory-layer-fs';

test('DMFS_FUSE_TRANSPORT is auto, kernel or libfuse2; anything else is BAD_CONFIG', () => {
  // Unset here whatever this run sets (transportFromEnv(undefined) reads the variable).
  const saved = process.env.DMFS_FUSE_TRANSPORT;
  delete process.env.DMFS_FUSE_TRANSPORT;
  try {
    expect(transportFromEnv(undefined)).toBe('auto');
  } finally {
    if (saved !== undefined) process.env.DMFS_FUSE_TRANSPORT = saved;
  }
  expect(transportFromEnv('')).toBe('auto');
  expect(transportFromEnv('kernel')).toBe('kernel');
  expect(transportFromEnv('libfuse2')).toBe('libfuse2');
  expect(() => transportFromEnv('fuse3')).toThrow(expect.objectContaining({ code: 'BAD_CONFIG' }));
});

describeFuse('FUSE transport selection', () => {
  it('auto uses the kernel transport as root; the mount serves and logs it', async () => {
    const m = await mountLayer(new MemoryLayerFs(), undefined, { transport: 'auto' });
    try {
      expect(m.service.transport).toBe('kernel');
      await run(`echo hi > ${m.mnt}/f && ln ${m.mnt}/f ${m.mnt}/g`);
      // One kernel inode for both names: the link count is right through either at once.
      expect(await run(`stat -c '%h %i' ${m.mnt}/f ${m.mnt}/g | sort -u`)).toMatch(/^2 \d+\n$/);
    } finally {
      await m.unmount();
    }
    expect(m.log.join('\n')).toMatch(/kernel transport/);
    expect(m.log.join('\n')).toMatch(/FUSE requests: \{.*"LINK":1/);
  });

  describe('without mount(8) on PATH', () => {
    const savedPath = process.env.PATH;
    let bin: string;
    beforeAll(async () => {
      // Every tool but mount(8): fusermount (libfuse 2) and the shell stay reachable.
      bin = tempDir('nomount-path');
      for (const dir of (savedPath ?? '').split(':').filter(Boolean)) {
        for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
          if (name === 'mount') continue;
          await fsp.symlink(path.join(dir, name), path.join(bin, name)).catch(() => undefined);
        }
      }
    });
    afterEach(() => {
      process.env.PATH = savedPath;
      delete process.env.DMFS_FUSE_MOUNT;
    });

    it('root mounts with mount(2) from the serving process: no mount(8) needed', async () => {
      process.env.PATH = bin;
      const m = await mountLayer(new MemoryLayerFs(), undefined, { transport: 'kernel' });
      process.env.PATH = savedPath;
      try {
        expect(m.service.transport).toBe('kernel');
        await run(`echo hi > ${m.mnt}/f`);
        expect(await run(`cat ${m.mnt}/f && grep " ${m.mnt} " /proc/self/mounts | cut -d' ' -f3`)).toBe('hi\nfuse.dmfs\n');
      } finally {
        await m.unmount();
      }
    });

    // DMFS_FUSE_MOUNT=mount8 makes mount(8) the only way, so that its absence fails the kernel mount.
    it('auto falls back to libfuse 2 and says why', async () => {
      process.env.PATH = bin;
      process.env.DMFS_FUSE_MOUNT = 'mount8';
      const m = await mountLayer(new MemoryLayerFs(), undefined, { transport: 'auto' });
      process.env.PATH = savedPath;
      try {
        expect(m.service.transport).toBe('libfuse2');
        expect(m.log.join('\n')).toMatch(/kernel FUSE transport failed \(.*mount\(8\).*\); using libfuse 2/);
        await run(`echo hi > ${m.mnt}/f`);
        expect(await run(`cat ${m.mnt}/f`)).toBe('hi\n');
      } finally {
        await m.unmount();
      }
    });

    it('kernel, asked for explicitly, fails with MOUNT_FAILED and leaves nothing mounted', async () => {
      process.env.PATH = bin;
      process.env.DMFS_FUSE_MOUNT = 'mount8';
      const mnt = path.join(tempDir('nomount'), 'm');
      await fsp.mkdir(mnt);
      await expect(mountLayer(new MemoryLayerFs(), mnt, { transport: 'kernel' })).rejects.toMatchObject({ code: 'MOUNT_FAILED' });
      process.env.PATH = savedPath;
      expect(await run(`grep -c " ${mnt} " /proc/self/mounts || true`)).toBe('0\n');
    });
  });
});
