import { mkdtempSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HandleTable } from '../../../src/fs/handle-table';
import { DentryCache } from '../../../src/fs/dentry-cache';
import {
  isRecordOwnerAlive,
  mountRunPaths,
  parseMountInfo,
  probeMountpoint,
  readMountRecord,
  writeMountRecord,
  type MountRecord,
} from '../../../src/fs/mount-table';
import { currentProcess } from '../../../src/pool/process-identity';

const SAMPLE = [
  '22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw,errors=remount-ro',
  '612 22 0:52 / /tmp/my\\040mnt rw,nosuid,nodev,relatime shared:300 - fuse.dmfs dmfs:web-1 rw,user_id=0,group_id=0,default_permissions,allow_other',
  '613 22 0:53 / /mnt/ro ro,nosuid,nodev,relatime - fuse.dmfs dmfs:debian ro,user_id=0,group_id=0,default_permissions',
].join('\n');

describe('parseMountInfo', () => {
  it('reads mountpoint (unescaped), fstype, source and options', () => {
    const m = parseMountInfo(SAMPLE);
    expect(m).toHaveLength(3);
    expect(m[1]).toMatchObject({ mountId: 612, mountpoint: '/tmp/my mnt', fstype: 'fuse.dmfs', source: 'dmfs:web-1' });
    expect(m[1].superOptions).toContain('allow_other');
    expect(m[2].mountOptions[0]).toBe('ro');
  });

  it('parses this machine\'s table', async () => {
    const { readMountTable } = await import('../../../src/fs/mount-table');
    const table = await readMountTable();
    expect(table.some((e) => e.mountpoint === '/')).toBe(true);
  });
});

describe('run records', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dmfs-run-'));

  it('derives distinct, stable file names per mountpoint', () => {
    const a = mountRunPaths(dir, '/mnt/a');
    expect(mountRunPaths(dir, '/mnt/a/')).toEqual(a);
    expect(mountRunPaths(dir, '/other/a').record).not.toBe(a.record);
    expect(path.dirname(a.log)).toBe(dir);
    expect(new Set([a.record, a.log, a.exit]).size).toBe(3);
  });

  it('writes and reads a record; a dead or recycled owner is not alive', async () => {
    const file = mountRunPaths(dir, '/mnt/x').record;
    const rec: MountRecord = { version: 1, ...currentProcess(), layer: 'c', mountpoint: '/mnt/x', readOnly: false, root: dir, startedMs: 1, log: '' };
    await writeMountRecord(file, rec);
    const back = await readMountRecord(file);
    expect(back).toEqual(rec);
    expect(isRecordOwnerAlive(back!)).toBe(true);
    expect(isRecordOwnerAlive({ ...rec, startTicks: rec.startTicks + 12345 })).toBe(false); // pid reused
    expect(isRecordOwnerAlive({ ...rec, pid: 2 ** 22 + 1 })).toBe(false);
    writeFileSync(file, 'garbage');
    expect(await readMountRecord(file)).toBeNull();
  });
});

describe('probeMountpoint', () => {
  it('tells missing, directory and non-directory apart', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'dmfs-probe-'));
    writeFileSync(path.join(dir, 'file'), '');
    expect(await probeMountpoint(path.join(dir, 'nope'))).toBe('missing');
    expect(await probeMountpoint(dir)).toBe('dir');
    expect(await probeMountpoint(path.join(dir, 'file'))).toBe('not-dir');
  });
});

describe('HandleTable', () => {
  it('never hands out 0, counts opens per inode, and reuses nothing still open', () => {
    const t = new HandleTable();
    const a = t.open(7, false);
    const b = t.open(7, true);
    expect(a).toBeGreaterThan(0);
    expect(b).not.toBe(a);
    expect(t.openCount(7)).toBe(2);
    expect(t.close(a)?.ino).toBe(7);
    expect(t.close(a)).toBeUndefined();
    expect(t.openCount(7)).toBe(1);
    expect(t.get(b)?.writable).toBe(true);
  });
});

describe('DentryCache', () => {
  it('stays bounded', () => {
    const c = new DentryCache(3);
    for (let i = 0; i < 10; i++) c.set(1, `n${i}`, 100 + i);
    expect(c.size).toBeLessThanOrEqual(3);
    expect(c.get(1, 'n9')).toBe(109);
  });
});
