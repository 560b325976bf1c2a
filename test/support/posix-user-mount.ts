/**
 * The non-root side of the differential POSIX suites: a dmfs mount made and served by
 * `dmfs mount --allow-other` (the CLI and its own daemon) run as an unprivileged user on a
 * pool that user owns, through the transport the suite names (DMFS_FUSE_TRANSPORT), and
 * the probe's base identity set to that user in the oracle and in the mount alike, so that
 * a privileged step (chown to another uid, mknod of a device, trusted.* xattrs) is EPERM on
 * both sides.
 *
 * The user needs an /etc/passwd entry (fusermount3 refuses a uid it cannot name), a uid and
 * gid that no case uses (posix-cases.ts switches to 65534, 1000 and chowns to 0..10, 1234,
 * 2000, 4321), and `user_allow_other` in /etc/fuse.conf (added by mount-helpers/setup-host)
 * for --allow-other, without which the cases' other uids could not enter the mount.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { DMFS_BIN, ensureBuiltDist } from './built-dist';
import { sh, shq, waitProcessGone } from './fuse-harness';

/** Who serves a suite's mount: root in this process (MountService), or a user through the CLI. */
export type Privilege = 'root' | 'user';

export interface TestUser {
  name: string;
  uid: number;
  gid: number;
}

/** www-data (33:33, in Debian's base-passwd), or the user DMFS_TEST_USER names. */
export function testUser(): TestUser {
  const name = process.env.DMFS_TEST_USER ?? 'www-data';
  const r = spawnSync('getent', ['passwd', name], { encoding: 'utf8' });
  const f = (r.stdout ?? '').trim().split(':');
  if (r.status !== 0 || f.length < 4) {
    throw new Error(`the non-root POSIX suites run as user ${name}, who has no /etc/passwd entry (fusermount3 refuses a uid it cannot name): set DMFS_TEST_USER to an unprivileged user with a uid no case uses`);
  }
  const user = { name, uid: Number(f[2]), gid: Number(f[3]) };
  if (user.uid === 0 || [65534, 1000].includes(user.uid) || [65534, 1000].includes(user.gid)) {
    throw new Error(`DMFS_TEST_USER=${name} (${user.uid}:${user.gid}) is root or an identity the POSIX cases switch to: pick another unprivileged user`);
  }
  return user;
}

/** Fails with what to do when a non-root --allow-other mount cannot be made here. */
export function requireUserAllowOther(fuseConf = '/etc/fuse.conf'): void {
  const conf = existsSync(fuseConf) ? readFileSync(fuseConf, 'utf8') : '';
  if (!/^\s*user_allow_other\s*$/m.test(conf)) {
    throw new Error(`the non-root POSIX suites mount with --allow-other, which fusermount3 refuses to users without 'user_allow_other' in ${fuseConf}: run mount-helpers/setup-host as root (it adds the line)`);
  }
}

/**
 * Which privileges a suite runs over: DMFS_TEST_PRIVILEGE=root|user narrows the run to one,
 * else both.
 */
export function testPrivileges(): Privilege[] {
  const p = process.env.DMFS_TEST_PRIVILEGE;
  if (p === 'root' || p === 'user') return [p];
  if (p) throw new Error(`DMFS_TEST_PRIVILEGE=${p}: use root or user`);
  return ['root', 'user'];
}

/** Gives the files root owns under dir to user, keeping their setuid/setgid bits (chown clears them). */
export function giveRootFilesTo(user: TestUser, dir: string): string {
  return `cd ${shq(dir)} && special=$(find . -perm /6000 ! -type l -uid 0 -printf '%m %p\\n') && chown -hR --from=0:0 ${user.uid}:${user.gid} . && printf '%s\\n' "$special" | while read -r m p; do [ -n "$p" ] && chmod "$m" "$p"; done; true`;
}

export interface UserMount {
  mnt: string;
  /** The daemon's log so far. */
  readonly log: string[];
  close(): Promise<void>;
}

/**
 * Mounts layer `layer` of the pool at poolRoot (chowned to user first) at mnt with
 * `dmfs mount --allow-other`, run as user with DMFS_FUSE_TRANSPORT=transport; checks that
 * the daemon reports that transport. close() unmounts with `dmfs umount` as the same user
 * and waits for the daemon to exit.
 */
export async function mountAsUser(user: TestUser, poolRoot: string, layer: string, mnt: string, transport: 'kernel' | 'libfuse2'): Promise<UserMount> {
  ensureBuiltDist();
  requireUserAllowOther();
  const chown = await sh(`chown -R ${user.uid}:${user.gid} ${shq(poolRoot)} ${shq(path.dirname(mnt))}`);
  if (chown.code !== 0) throw new Error(`chown of the pool for ${user.name} failed: ${chown.stderr}`);
  const dmfs = (args: string) =>
    sh(`setpriv --reuid ${user.uid} --regid ${user.gid} --clear-groups node ${DMFS_BIN} ${args} --root ${shq(poolRoot)}`, {
      env: { HOME: '/tmp', DMFS_FUSE_TRANSPORT: transport },
    });
  const r = await dmfs(`mount ${layer} ${shq(mnt)} --allow-other --json`);
  if (r.code !== 0) throw new Error(`dmfs mount as ${user.name} failed (${r.code}):\n${r.stdout}${r.stderr}`);
  const m = JSON.parse(r.stdout) as { pid: number; log: string; transport: string };
  if (m.transport !== transport) {
    await dmfs(`umount ${shq(mnt)}`);
    throw new Error(`dmfs mount as ${user.name} with DMFS_FUSE_TRANSPORT=${transport} was served by ${m.transport}`);
  }
  return {
    mnt,
    get log() {
      return readFileSync(m.log, 'utf8').split('\n');
    },
    async close() {
      const u = await dmfs(`umount ${shq(mnt)} --json`);
      if (u.code !== 0) {
        await sh(`fusermount3 -uz ${shq(mnt)}`);
        throw new Error(`dmfs umount as ${user.name} failed (${u.code}):\n${u.stdout}${u.stderr}`);
      }
      if (!(await waitProcessGone(m.pid))) throw new Error(`the mount daemon ${m.pid} of ${user.name} did not exit after dmfs umount`);
    },
  };
}

/** The owner the probe and the oracle directory take in a suite of this privilege. */
export function baseIdentity(privilege: Privilege): [number, number] {
  if (privilege === 'root') return [0, 0];
  const u = testUser();
  return [u.uid, u.gid];
}

export interface PosixRun {
  transport: 'kernel' | 'libfuse2';
  privilege: Privilege;
}

/** The (transport, privilege) runs of a differential suite: every transport of this run (fuseTransports) under every privilege. */
export function posixRuns(transports: ('kernel' | 'libfuse2')[]): PosixRun[] {
  return testPrivileges().flatMap((privilege) => transports.map((transport) => ({ transport, privilege })));
}

/** How a run reads in a describe() title. */
export function runLabel(r: PosixRun): string {
  return r.privilege === 'root' ? `${r.transport} transport` : `${r.transport} transport, non-root`;
}
