/**
 * POSIX ACLs of a mounted layer, for the operations table (fuse-operations.ts). With
 * FUSE_POSIX_ACL the kernel checks access and default ACLs itself (default_permissions)
 * from the system.posix_acl_* xattrs it reads here, and leaves to the file system what
 * ext4 does in fs/posix_acl.c: the mode an access ACL implies, chmod rewriting the ACL,
 * and new nodes inheriting their directory's default ACL (with FUSE_DONT_MASK the umask is
 * the file system's too, as it applies only where no default ACL does).
 *
 * Not enforced (libfuse 2, whose kernel connection has no FUSE_POSIX_ACL, and non-root
 * mounts without allow_other, where default_permissions would take rights the mounting
 * user has today): setting an ACL is refused (NOT_SUPPORTED, so cp -a / tar fall back to
 * chmod), removing one succeeds as on ext4 for a file without one, and the kernel applies
 * the umask.
 */
import { dmfsError, isDmfsError } from '../errors';
import type { Ino, LayerFs } from '../store/layer-store';
import { S_IFDIR, S_IFMT } from '../store/layer-store';
import {
  ACL_ACCESS_XATTR, ACL_DEFAULT_XATTR, aclAfterChmod, aclIsModeOnly, aclPermissionBits, decodeAcl, encodeAcl, inheritAcl,
  POSIX_ACL_XATTRS,
} from '../store/posix-acl';
import { S_ISGID } from './posix-rules';

export { POSIX_ACL_XATTRS };

export interface NewNodeAcl {
  /** Full st_mode of the new node. */
  mode: number;
  /** Inherited ACLs to create the node with (see NewNodeOptions.xattrs). */
  xattrs?: Record<string, Buffer>;
}

export class PosixAcls {
  /** enforced: the kernel enforces stored ACLs and leaves the umask here (FuseFeatures.posixAcl). */
  constructor(private readonly layer: LayerFs, readonly enforced: boolean) {}

  static isAclName(name: string): boolean {
    return POSIX_ACL_XATTRS.has(name);
  }

  /**
   * Mode and ACLs of a node made with `mode` (type bits included) in dirIno: under a default
   * ACL the node inherits it and the umask does not apply; else the umask does.
   */
  async forNewNode(dirIno: Ino, mode: number, umask: number): Promise<NewNodeAcl> {
    if (!this.enforced) return { mode };
    const raw = await this.layer.getxattr(dirIno, ACL_DEFAULT_XATTR);
    const parentDefault = raw ? decodeAcl(raw) : [];
    if (parentDefault.length === 0) return { mode: mode & ~(umask & 0o777) };
    const inherited = inheritAcl(parentDefault, mode & 0o777, (mode & S_IFMT) === S_IFDIR);
    const xattrs: Record<string, Buffer> = {};
    if (inherited.access) xattrs[ACL_ACCESS_XATTR] = encodeAcl(inherited.access);
    if (inherited.default) xattrs[ACL_DEFAULT_XATTR] = encodeAcl(inherited.default);
    return { mode: (mode & ~0o777) | inherited.permissionBits, xattrs };
  }

  /**
   * setxattr of an ACL name. An access ACL sets the mode it implies in the same transaction,
   * and is not stored when it says no more than the mode (then a stored one is removed).
   * killSgid: the kernel says the caller is neither in the file's group nor CAP_FSETID
   * (FUSE_SETXATTR_ACL_KILL_SGID): setgid goes, as posix_acl_update_mode does.
   */
  async set(ino: Ino, name: string, value: Buffer, killSgid: boolean): Promise<void> {
    if (!this.enforced) throw dmfsError('NOT_SUPPORTED', 'POSIX ACLs are not enforced on this mount (libfuse 2, or a non-root mount without --allow-other); use chmod');
    const entries = decodeAcl(value);
    if (name === ACL_DEFAULT_XATTR) {
      await this.layer.setxattr(ino, name, value);
      return;
    }
    const attr = await this.layer.getattr(ino);
    const mode = (attr.mode & 0o7000 & ~(killSgid ? S_ISGID : 0)) | aclPermissionBits(entries);
    if (!aclIsModeOnly(entries)) {
      await this.layer.setxattr(ino, name, value, { mode });
      return;
    }
    await this.removeIfPresent(ino, name);
    await this.layer.setattr(ino, { mode });
  }

  /** removexattr of an ACL name: succeeds when there is none, as on ext4. */
  async remove(ino: Ino, name: string): Promise<void> {
    if (this.layer.readOnly) throw dmfsError('READ_ONLY_LAYER', 'read-only layer');
    if (!this.enforced) return;
    await this.removeIfPresent(ino, name);
  }

  /** After a chmod to `mode`: a stored access ACL takes the new owner, mask (or group) and other bits. */
  async afterChmod(ino: Ino, mode: number): Promise<void> {
    if (!this.enforced) return;
    const raw = await this.layer.getxattr(ino, ACL_ACCESS_XATTR);
    if (!raw) return;
    const next = encodeAcl(aclAfterChmod(decodeAcl(raw), mode));
    if (!next.equals(raw)) await this.layer.setxattr(ino, ACL_ACCESS_XATTR, next, { mode: mode & 0o7777 });
  }

  private async removeIfPresent(ino: Ino, name: string): Promise<void> {
    try {
      await this.layer.removexattr(ino, name);
    } catch (err) {
      if (!(isDmfsError(err) && err.code === 'NO_XATTR')) throw err;
    }
  }
}
