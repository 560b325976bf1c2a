import { dmfsError } from '../errors';
import type { InodeRecords } from './inode-records';
import type { LayerContext } from './layer-context';
import { S_IFMT, type Ino, type LayerFs, type XattrSetFlags } from './layer-store';
import { decodeAcl, POSIX_ACL_XATTRS } from './posix-acl';
import { nowTime } from './records';

const XATTR_NAME_MAX_BYTES = 255;
const XATTR_VALUE_MAX_BYTES = 64 * 1024;

/**
 * Extended attributes of one open layer's inodes. They live in the inode record, so a
 * change copies the record up like any other attribute change: one transaction each.
 */
export class LayerXattrs implements Pick<LayerFs, 'getxattr' | 'listxattr' | 'setxattr' | 'removexattr'> {
  constructor(
    private readonly ctx: LayerContext,
    private readonly records: InodeRecords,
  ) {}

  async getxattr(ino: Ino, name: string): Promise<Buffer | null> {
    this.ctx.assertOpen();
    const v = this.records.mustInode(ino).rec.xattrs?.[name];
    return v ? Buffer.from(v) : null;
  }

  async listxattr(ino: Ino): Promise<string[]> {
    this.ctx.assertOpen();
    return Object.keys(this.records.mustInode(ino).rec.xattrs ?? {}).sort();
  }

  async setxattr(ino: Ino, name: string, value: Buffer, flags: XattrSetFlags = {}): Promise<void> {
    this.ctx.assertWritable();
    if (!name || Buffer.byteLength(name) > XATTR_NAME_MAX_BYTES) throw dmfsError('XATTR_RANGE', 'bad xattr name');
    // POSIX ACLs are stored in their xattr form, well-formed only (the mount's kernel
    // enforces them, and exports carry them); other system.* names do not exist on ext4.
    const acl = POSIX_ACL_XATTRS.has(name);
    if (!acl && !/^(user|trusted|security)\./.test(name)) throw dmfsError('NOT_SUPPORTED', `xattr namespace of '${name}' is not supported`);
    if (value.length > XATTR_VALUE_MAX_BYTES) throw dmfsError('XATTR_RANGE', 'xattr value too large');
    if (acl) decodeAcl(value);
    this.ctx.pool.txn(() => {
      const rec = this.records.ownRecord(ino);
      const has = rec.xattrs !== undefined && name in rec.xattrs;
      if (flags.create && has) throw dmfsError('XATTR_EXISTS', `xattr ${name} exists`);
      if (flags.replace && !has) throw dmfsError('NO_XATTR', `no xattr ${name}`);
      if (flags.mode !== undefined) rec.mode = (rec.mode & S_IFMT) | (flags.mode & 0o7777);
      rec.xattrs = { ...(rec.xattrs ?? {}), [name]: Buffer.from(value) };
      rec.ctime = nowTime();
      this.records.putRecord(ino, rec);
    });
    this.ctx.markDirty();
  }

  async removexattr(ino: Ino, name: string): Promise<void> {
    this.ctx.assertWritable();
    this.ctx.pool.txn(() => {
      const rec = this.records.ownRecord(ino);
      if (!rec.xattrs || !(name in rec.xattrs)) throw dmfsError('NO_XATTR', `no xattr ${name}`);
      const next = { ...rec.xattrs };
      delete next[name];
      rec.xattrs = next;
      rec.ctime = nowTime();
      this.records.putRecord(ino, rec);
    });
    this.ctx.markDirty();
  }
}
