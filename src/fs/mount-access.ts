/**
 * Who may enter a mount and what it grants them: the defaults of `dmfs mount`, the daemon
 * and Pool.connect (MountService itself keeps ext4's behaviour for in-process callers).
 *
 * As root a container's processes run as many users (nobody, _apt, a service account), so
 * a layer mounts `allow_other,default_permissions`, as fuse-overlayfs does as root: the
 * kernel then checks every access against the files' modes. Since other local users can
 * reach such a mount, it must not hand them root: setuid/setgid bits are ignored (nosuid)
 * and device nodes cannot be opened (nodev) unless asked for with --suid / --dev; a
 * container runtime that needs them asks, or bind-mounts under a 0700 directory.
 * Not root, other users get in only with --allow-other (fusermount3 needs
 * user_allow_other), and fusermount forces nosuid,nodev whatever is asked.
 */
import { dmfsError } from '../errors';

export interface MountAccess {
  allowOther: boolean;
  suid: boolean;
  dev: boolean;
}

export interface MountAccessWish {
  allowOther?: boolean;
  suid?: boolean;
  dev?: boolean;
}

export function mountAccessFor(wish: MountAccessWish, uid: number = process.getuid?.() ?? -1): MountAccess {
  const root = uid === 0;
  if (!root && (wish.suid || wish.dev)) {
    throw dmfsError('NOT_PERMITTED', `--suid and --dev need root (fusermount3 mounts every user's FUSE mount nosuid,nodev); mount as root, or leave them out`);
  }
  return { allowOther: wish.allowOther ?? root, suid: Boolean(wish.suid), dev: Boolean(wish.dev) };
}
