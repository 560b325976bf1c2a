import {
  AclTag, aclAfterChmod, aclIsModeOnly, aclPermissionBits, decodeAcl, encodeAcl, inheritAcl, type AclEntry,
} from '../../../src/store/posix-acl';

const U = 0xffffffff;
/** user::rw-, user:1000:rwx, group::r--, mask::rwx, other::r-- (what `setfacl -m u:1000:rwx` on a 0644 file leaves). */
const NAMED: AclEntry[] = [
  { tag: AclTag.USER_OBJ, perm: 6, id: U }, { tag: AclTag.USER, perm: 7, id: 1000 }, { tag: AclTag.GROUP_OBJ, perm: 4, id: U },
  { tag: AclTag.MASK, perm: 7, id: U }, { tag: AclTag.OTHER, perm: 4, id: U },
];
/** The same ACL as the kernel hands it over (version 2, entries sorted by tag). */
const NAMED_HEX = '02000000' + '01000600ffffffff' + '02000700e8030000' + '04000400ffffffff' + '10000700ffffffff' + '20000400ffffffff';

describe('POSIX ACL xattr codec', () => {
  it('decodes and encodes the kernel form byte for byte, sorting entries by tag then id', () => {
    expect(decodeAcl(Buffer.from(NAMED_HEX, 'hex'))).toEqual(NAMED);
    expect(encodeAcl([...NAMED].reverse()).toString('hex')).toBe(NAMED_HEX);
    expect(decodeAcl(Buffer.from('02000000', 'hex'))).toEqual([]);
  });

  it('refuses what is not an ACL: wrong version, ragged length, unknown tag, missing base entries or mask', () => {
    const bad = ['01000000', '0200000001', '02000000' + '40000700ffffffff', '02000000' + '01000600ffffffff',
      '02000000' + '01000600ffffffff02000700e803000004000400ffffffff20000400ffffffff'];
    for (const hex of bad) expect(() => decodeAcl(Buffer.from(hex, 'hex'))).toThrow(expect.objectContaining({ code: 'INVALID' }));
  });
});

describe('POSIX ACL semantics (as ext4 applies them)', () => {
  it('the mode bits of an access ACL take the mask, not the owning group, as group bits', () => {
    expect(aclPermissionBits(NAMED)).toBe(0o674);
    expect(aclIsModeOnly(NAMED)).toBe(false);
    const base = NAMED.filter((e) => e.tag !== AclTag.USER && e.tag !== AclTag.MASK);
    expect(aclIsModeOnly(base)).toBe(true);
    expect(aclPermissionBits(base)).toBe(0o644);
  });

  it('chmod rewrites owner, mask (not the owning group) and other; named entries stay', () => {
    const after = aclAfterChmod(NAMED, 0o640);
    expect(after.find((e) => e.tag === AclTag.USER_OBJ)?.perm).toBe(6);
    expect(after.find((e) => e.tag === AclTag.MASK)?.perm).toBe(4);
    expect(after.find((e) => e.tag === AclTag.GROUP_OBJ)?.perm).toBe(4);
    expect(after.find((e) => e.tag === AclTag.OTHER)?.perm).toBe(0);
    expect(after.find((e) => e.tag === AclTag.USER)?.perm).toBe(7);
    expect(aclPermissionBits(after)).toBe(0o640);
  });

  it('a new node inherits the default ACL limited by its mode; directories also keep it as their default', () => {
    const file = inheritAcl(NAMED, 0o666, false);
    expect(file.permissionBits).toBe(0o664);
    expect(file.access?.find((e) => e.tag === AclTag.USER)?.perm).toBe(7);
    expect(file.access?.find((e) => e.tag === AclTag.MASK)?.perm).toBe(6);
    expect(file.default).toBeNull();
    const dir = inheritAcl(NAMED, 0o777, true);
    expect(dir.permissionBits).toBe(0o674);
    expect(dir.default).toEqual(NAMED);
    const plain = inheritAcl(NAMED.filter((e) => e.tag !== AclTag.USER && e.tag !== AclTag.MASK), 0o600, false);
    expect(plain).toEqual({ permissionBits: 0o600, access: null, default: null });
  });
});
