/**
 * POSIX ACLs travel through images as Docker and containerd write them: the xattr bytes
 * in PAX records `SCHILY.xattr.system.posix_acl_access` / `..._default`. `dmfs export`
 * writes them, GNU tar (--xattrs) restores them onto ext4 as ACLs getfacl reads, and
 * `dmfs import` of the export stores them back unchanged.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Pool } from '../../../src/api';
import { S_IFREG } from '../../../src/store/layer-store';
import { dmfs } from './helpers/cli-process';
import { tmpdir } from './helpers/tar-helpers';

/** user::rw-, user:1000:rwx, group::r--, mask::rwx, other::r-- */
const ACCESS_ACL = Buffer.from('02000000' + '01000600ffffffff' + '02000700e8030000' + '04000400ffffffff' + '10000700ffffffff' + '20000400ffffffff', 'hex');
/** user::rwx, group:1000:r-x, group::r-x, mask::r-x, other::--- */
const DEFAULT_ACL = Buffer.from('02000000' + '01000700ffffffff' + '04000500ffffffff' + '08000500e8030000' + '10000500ffffffff' + '20000000ffffffff', 'hex');
const hasGetfacl = spawnSync('getfacl', ['--version']).status === 0;
const isRoot = process.getuid?.() === 0;

describe('POSIX ACLs: export and import round trip', () => {
  let work: string;
  beforeAll(() => {
    work = tmpdir('acl-rt');
  });
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  function ok(root: string, args: string[]): string {
    const r = dmfs(root, args);
    if (r.code !== 0) throw new Error(`dmfs ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  }

  it('dmfs export writes SCHILY.xattr.system.posix_acl_*, and dmfs import stores the same bytes', async () => {
    const root = path.join(work, 'pool-a');
    const pool = await Pool.create({ root, sizeBytes: 1024 ** 3 });
    await pool.store.createLayer('img', { kind: 'image', building: true });
    const img = await pool.store.openLayer('img');
    const d = await img.mkdir(img.rootIno, 'shared', { mode: 0o750, uid: 0, gid: 0, xattrs: { 'system.posix_acl_default': DEFAULT_ACL } });
    const f = await img.mknod(d.ino, 'notes', { mode: S_IFREG | 0o674, uid: 0, gid: 0, xattrs: { 'system.posix_acl_access': ACCESS_ACL } });
    await img.write(f.ino, Buffer.from('shared notes\n'), 0);
    await img.close();
    await pool.store.sealLayer('img');
    await pool.close();

    const tarFile = path.join(work, 'img.tar');
    ok(root, ['export', 'img', '-o', tarFile]);
    const tar = fs.readFileSync(tarFile);
    expect(tar.includes(Buffer.concat([Buffer.from(' SCHILY.xattr.system.posix_acl_access='), ACCESS_ACL, Buffer.from('\n')]))).toBe(true);
    expect(tar.includes(Buffer.concat([Buffer.from(' SCHILY.xattr.system.posix_acl_default='), DEFAULT_ACL, Buffer.from('\n')]))).toBe(true);

    const back = path.join(work, 'pool-b');
    ok(back, ['pool', 'create', '--size', '1G']);
    ok(back, ['import', tarFile, '--name', 'again']);
    const reopened = await Pool.open(back);
    try {
      const again = await reopened.store.openLayer('again', { readOnly: true });
      const rd = await again.resolve('/shared');
      const rf = await again.resolve('/shared/notes');
      expect(await again.getxattr(rd.ino, 'system.posix_acl_default')).toEqual(DEFAULT_ACL);
      expect(await again.getxattr(rf.ino, 'system.posix_acl_access')).toEqual(ACCESS_ACL);
      expect(rf.mode & 0o7777).toBe(0o674);
      await again.close();
    } finally {
      await reopened.close();
    }

    // GNU tar restores them onto the host's file system as the ACLs they are (root: system.* xattrs).
    if (hasGetfacl && isRoot) {
      const out = path.join(work, 'unpacked');
      fs.mkdirSync(out);
      const x = spawnSync('tar', ['--xattrs', '--xattrs-include=*', '-xf', tarFile, '-C', out], { encoding: 'utf8' });
      expect(x.stderr).toBe('');
      const acl = spawnSync('getfacl', ['-nc', path.join(out, 'shared/notes')], { encoding: 'utf8' }).stdout;
      expect(acl.split('\n')).toEqual(expect.arrayContaining(['user::rw-', 'user:1000:rwx', 'group::r--', 'mask::rwx', 'other::r--']));
      const dflt = spawnSync('getfacl', ['-nc', '-d', path.join(out, 'shared')], { encoding: 'utf8' }).stdout;
      expect(dflt.split('\n')).toEqual(expect.arrayContaining(['user::rwx', 'group::r-x', 'group:1000:r-x', 'mask::r-x', 'other::---']));
    }
  }, 120_000);
});
