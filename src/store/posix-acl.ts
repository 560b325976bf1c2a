/**
 * POSIX ACLs as Linux stores them in the xattrs system.posix_acl_access and
 * system.posix_acl_default (linux/posix_acl_xattr.h): a little-endian u32 version (2), then
 * 8-byte entries { u16 tag, u16 perm, u32 id } sorted by tag then id. The same bytes travel
 * through FUSE, the store and image tars (`SCHILY.xattr.system.posix_acl_access`).
 *
 * Pure functions of the ACL semantics ext4 applies (fs/posix_acl.c): the mode an access ACL
 * implies, an ACL that says no more than the mode (not stored), chmod rewriting the ACL, and
 * a new node inheriting its directory's default ACL.
 */
import { dmfsError } from '../errors';

export const ACL_ACCESS_XATTR = 'system.posix_acl_access';
export const ACL_DEFAULT_XATTR = 'system.posix_acl_default';
export const POSIX_ACL_XATTRS: ReadonlySet<string> = new Set([ACL_ACCESS_XATTR, ACL_DEFAULT_XATTR]);

const ACL_XATTR_VERSION = 2;
const HEADER_BYTES = 4;
const ENTRY_BYTES = 8;
const UNDEFINED_ID = 0xffffffff;

/** Entry tags. */
export const AclTag = { USER_OBJ: 0x01, USER: 0x02, GROUP_OBJ: 0x04, GROUP: 0x08, MASK: 0x10, OTHER: 0x20 } as const;

export interface AclEntry {
  tag: number;
  /** rwx as 4/2/1. */
  perm: number;
  /** uid or gid for USER / GROUP entries, else UNDEFINED_ID. */
  id: number;
}

/** The entries of an ACL xattr value; INVALID when it is not one (bad version, length, tag or missing base entry). */
export function decodeAcl(value: Buffer): AclEntry[] {
  if (value.length < HEADER_BYTES || (value.length - HEADER_BYTES) % ENTRY_BYTES !== 0 || value.readUInt32LE(0) !== ACL_XATTR_VERSION) {
    throw dmfsError('INVALID', 'not a POSIX ACL xattr value (version 2 header, then 8-byte entries)');
  }
  const entries: AclEntry[] = [];
  for (let at = HEADER_BYTES; at < value.length; at += ENTRY_BYTES) {
    const tag = value.readUInt16LE(at);
    if (!Object.values(AclTag).includes(tag as never)) throw dmfsError('INVALID', `POSIX ACL entry with unknown tag 0x${tag.toString(16)}`);
    entries.push({ tag, perm: value.readUInt16LE(at + 2) & 7, id: value.readUInt32LE(at + 4) });
  }
  // An empty ACL is what setfacl -k / -b may leave in a default ACL: nothing to check.
  if (entries.length > 0) {
    for (const tag of [AclTag.USER_OBJ, AclTag.GROUP_OBJ, AclTag.OTHER]) {
      if (!entries.some((e) => e.tag === tag)) throw dmfsError('INVALID', 'POSIX ACL without its owner, group or other entry');
    }
    const named = entries.some((e) => e.tag === AclTag.USER || e.tag === AclTag.GROUP);
    if (named && !entries.some((e) => e.tag === AclTag.MASK)) throw dmfsError('INVALID', 'POSIX ACL with named entries needs a mask entry');
  }
  return entries;
}

export function encodeAcl(entries: readonly AclEntry[]): Buffer {
  const sorted = [...entries].sort((a, b) => a.tag - b.tag || a.id - b.id);
  const out = Buffer.alloc(HEADER_BYTES + ENTRY_BYTES * sorted.length);
  out.writeUInt32LE(ACL_XATTR_VERSION, 0);
  sorted.forEach((e, i) => {
    const at = HEADER_BYTES + ENTRY_BYTES * i;
    out.writeUInt16LE(e.tag, at);
    out.writeUInt16LE(e.perm & 7, at + 2);
    out.writeUInt32LE(e.tag === AclTag.USER || e.tag === AclTag.GROUP ? e.id >>> 0 : UNDEFINED_ID, at + 4);
  });
  return out;
}

function entryOf(entries: readonly AclEntry[], tag: number): AclEntry | undefined {
  return entries.find((e) => e.tag === tag);
}

/** The rwxrwxrwx bits an access ACL implies: owner, mask (else owning group), other. */
export function aclPermissionBits(entries: readonly AclEntry[]): number {
  const group = entryOf(entries, AclTag.MASK) ?? entryOf(entries, AclTag.GROUP_OBJ);
  return ((entryOf(entries, AclTag.USER_OBJ)?.perm ?? 0) << 6) | ((group?.perm ?? 0) << 3) | (entryOf(entries, AclTag.OTHER)?.perm ?? 0);
}

/** An access ACL of only the three base entries says no more than the mode: ext4 stores none. */
export function aclIsModeOnly(entries: readonly AclEntry[]): boolean {
  return entries.every((e) => e.tag === AclTag.USER_OBJ || e.tag === AclTag.GROUP_OBJ || e.tag === AclTag.OTHER);
}

/** chmod of a node with an access ACL (posix_acl_chmod): owner, mask (else owning group) and other take the new bits. */
export function aclAfterChmod(entries: readonly AclEntry[], mode: number): AclEntry[] {
  const hasMask = entries.some((e) => e.tag === AclTag.MASK);
  return entries.map((e) => {
    if (e.tag === AclTag.USER_OBJ) return { ...e, perm: (mode >> 6) & 7 };
    if (e.tag === AclTag.MASK || (e.tag === AclTag.GROUP_OBJ && !hasMask)) return { ...e, perm: (mode >> 3) & 7 };
    if (e.tag === AclTag.OTHER) return { ...e, perm: mode & 7 };
    return e;
  });
}

export interface InheritedAcl {
  /** The new node's permission bits (the umask does not apply under a default ACL). */
  permissionBits: number;
  /** Its access ACL, null when it would say no more than the mode. */
  access: AclEntry[] | null;
  /** Directories: the parent's default ACL, inherited as is. */
  default: AclEntry[] | null;
}

/**
 * A node created with `mode` (permission bits asked for) in a directory whose default ACL
 * is `parentDefault` (posix_acl_create): the default ACL, its owner, mask (else owning
 * group) and other entries limited by the mode, becomes the node's access ACL and decides
 * its mode; a directory also keeps the default ACL.
 */
export function inheritAcl(parentDefault: readonly AclEntry[], mode: number, isDir: boolean): InheritedAcl {
  const hasMask = parentDefault.some((e) => e.tag === AclTag.MASK);
  const access = parentDefault.map((e) => {
    if (e.tag === AclTag.USER_OBJ) return { ...e, perm: e.perm & ((mode >> 6) & 7) };
    if (e.tag === AclTag.MASK || (e.tag === AclTag.GROUP_OBJ && !hasMask)) return { ...e, perm: e.perm & ((mode >> 3) & 7) };
    if (e.tag === AclTag.OTHER) return { ...e, perm: e.perm & mode & 7 };
    return { ...e };
  });
  return {
    permissionBits: aclPermissionBits(access),
    access: aclIsModeOnly(access) ? null : access,
    default: isDir ? [...parentDefault] : null,
  };
}
