/**
 * Differential testing against ext4 (test/integration/posix-*.test.ts): an ext4 directory
 * as the oracle, a dmfs container layer mounted with allow_other (so that an unprivileged
 * uid reaches it and the kernel's default_permissions decide), and the syscall probe of
 * posix-probe.ts run in both. Each suite runs with privilege 'root' (the mount served by
 * this process, the probe's base identity root) and 'user' (the mount made and served by
 * `dmfs mount` as an unprivileged user, the probe's base identity that user on both sides:
 * posix-user-mount.ts).
 *
 * Everything that touches a mount served by this process runs in a child process,
 * asynchronously (see fuse-harness.ts).
 */
import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { Pool } from '../../src/api';
import { importImage } from '../../src/image/importer';
import { MountService, type FuseTransport } from '../../src/fs/mount-service';
import type { LayerFs } from '../../src/store/layer-store';
import { run, sh, shq, tempDir } from './fuse-harness';
import type { ProbeCase } from './posix-cases';
import { writeProbe } from './posix-probe';
import { baseIdentity, giveRootFilesTo, mountAsUser, testUser, type Privilege } from './posix-user-mount';

export const GiB = 2 ** 30;

/** The system Python (a pyenv shim on PATH may not serve other uids). */
export const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

/** A directory that any uid can traverse (mkdtemp makes 0700 ones). */
export function openTempDir(prefix: string): string {
  const dir = tempDir(prefix);
  chmodSync(dir, 0o755);
  return dir;
}

/** Removes temporary directories, never through a mount that is still there. */
export async function removeDirs(...dirs: string[]): Promise<void> {
  for (const d of dirs) {
    const mounted = (await sh(`grep -qs ' ${d}/' /proc/mounts || grep -qs ' ${d} ' /proc/mounts`)).code === 0;
    if (mounted) continue;
    await sh(`rm -rf ${shq(d)}`);
  }
}

export interface Oracle {
  /** An empty directory on ext4, traversable by every uid. */
  dir: string;
  /** `stat -f -c %T` of it: 'ext2/ext3' when it is ext4. */
  fsType: string;
  cleanup(): Promise<void>;
}

/**
 * An ext4 directory: /var/tmp or /tmp when they are ext4, else a loop-mounted ext4 image.
 * When none can be had the test still runs on what there is, and says so.
 */
export async function ext4Oracle(): Promise<Oracle> {
  for (const base of ['/var/tmp', '/tmp']) {
    const t = (await sh(`stat -f -c %T ${base}`)).stdout.trim();
    if (t === 'ext2/ext3') {
      const dir = path.join(base, `dmfs-posix-oracle-${process.pid}-${Math.random().toString(36).slice(2, 8)}`);
      mkdirSync(dir, { mode: 0o755 });
      chmodSync(dir, 0o755);
      return { dir, fsType: t, cleanup: async () => void (await sh(`rm -rf ${dir}`)) };
    }
  }
  const work = openTempDir('ext4img');
  const dir = path.join(work, 'mnt');
  const r = await sh(`truncate -s 2G ${work}/ext4.img && mkfs.ext4 -q -F ${work}/ext4.img && mkdir ${dir} && mount -o loop ${work}/ext4.img ${dir} && chmod 755 ${dir}`);
  if (r.code === 0) {
    return { dir, fsType: 'ext2/ext3', cleanup: async () => void (await sh(`umount ${dir}; rm -rf ${work}`)) };
  }
  const fallback = openTempDir('oracle');
  const fsType = (await sh(`stat -f -c %T ${fallback}`)).stdout.trim();
  // eslint-disable-next-line no-console
  console.warn(`no ext4 directory here (tmp is ${fsType}; loop mount failed: ${r.stderr.trim()}): the oracle is ${fsType}`);
  return { dir: fallback, fsType, cleanup: async () => void (await sh(`rm -rf ${fallback}`)) };
}

export interface PosixMount {
  mnt: string;
  /** The serving side's log lines so far (this process's MountService, or the daemon's log file). */
  readonly log: string[];
  close(): Promise<void>;
}

/**
 * Mounts a layer with allow_other (default_permissions is always on), served by this
 * process through `transport` (default: DMFS_FUSE_TRANSPORT). close() unmounts, closes the
 * pool and removes the mountpoint, the pool and `extraDirs`.
 */
export async function mountForAll(pool: Pool, layer: LayerFs, extraDirs: string[] = [], transport?: FuseTransport): Promise<PosixMount & { pool: Pool; service: MountService }> {
  const mntParent = openTempDir('posix-mnt');
  const mnt = path.join(mntParent, 'm');
  mkdirSync(mnt, { mode: 0o755 });
  const log: string[] = [];
  const service = await MountService.start({
    layer,
    mountpoint: mnt,
    transport,
    allowOther: true,
    watchIntervalMs: 200,
    // eslint-disable-next-line no-console
    log: (l) => (log.push(l), /unexpected/.test(l) && console.error(l)),
  });
  return {
    mnt,
    pool,
    service,
    log,
    async close() {
      const r = await service.stop('test done');
      await pool.close();
      await removeDirs(mntParent, pool.root, ...extraDirs);
      if (r.error) throw r.error;
    },
  };
}

/**
 * Layer `layer` of the (closed) pool at poolRoot mounted for every uid by the test user's
 * `dmfs mount`, through `transport`; close() also removes the pool and `extraDirs`.
 */
async function mountForAllAsUser(poolRoot: string, layer: string, transport: 'kernel' | 'libfuse2', extraDirs: string[] = []): Promise<PosixMount> {
  const mntParent = openTempDir('posix-mnt');
  const user = testUser();
  const m = await mountAsUser(user, poolRoot, layer, path.join(mntParent, 'm'), transport);
  // A layer's root is 0:0 0755 whoever made the pool (thin-layer-store.ts): hand it to the
  // user (root's chown through allow_other), as the ext4 oracle directory is.
  const own = await sh(`chown ${user.uid}:${user.gid} ${shq(m.mnt)}`);
  if (own.code !== 0) {
    await m.close();
    throw new Error(`chown of the mount's root to ${user.name} failed: ${own.stderr}`);
  }
  return {
    mnt: m.mnt,
    get log() {
      return m.log;
    },
    async close() {
      await m.close();
      await removeDirs(mntParent, poolRoot, ...extraDirs);
    },
  };
}

/** Which transport a 'user' mount is made with: the one named, else the non-root default. */
function userTransport(transport?: FuseTransport): 'kernel' | 'libfuse2' {
  return transport === 'libfuse2' ? 'libfuse2' : 'kernel';
}

/** A fresh pool with one container layer on the base, mounted for every uid. */
export async function mountFreshContainer(transport?: FuseTransport, privilege: Privilege = 'root'): Promise<PosixMount> {
  const pool = await Pool.create({ root: openTempDir('posix-pool'), sizeBytes: 16 * GiB });
  await pool.store.createLayer('c', { parent: 'base', kind: 'container', sizeLimitBytes: 12 * GiB });
  if (privilege === 'root') return mountForAll(pool, await pool.store.openLayer('c'), [], transport);
  await pool.close();
  return mountForAllAsUser(pool.root, 'c', userTransport(transport));
}

/**
 * An image chain built the way users build one: `tree` (a shell script run in an empty
 * host directory) imported as a directory (`dmfs import DIR`), then a second image layer
 * built through a mount that runs `overlay` (a shell script, e.g. setfattr), sealed; a
 * container on top, mounted for every uid, both through `transport`. The oracle directory
 * gets the same two scripts. With privilege 'user' the scripts still run as root (an image
 * as root pulls it), then what root made is given to the test user on both sides (other
 * owners stay), and the container is mounted by that user's `dmfs mount`.
 */
export async function mountImageContainer(tree: string, overlay: string, oracleDir: string, transport?: FuseTransport, privilege: Privilege = 'root'): Promise<PosixMount> {
  const srcParent = openTempDir('posix-tree');
  const src = path.join(srcParent, 'tree');
  mkdirSync(src, { mode: 0o755 });
  // Never spawn with cwd inside a mount this process serves: libuv's spawn waits for the
  // child's exec, and the child's chdir waits for this event loop. `cd` in the script.
  await run(`cd ${src}\n${tree}`);
  const user = privilege === 'user' ? testUser() : null;
  if (user) await run(giveRootFilesTo(user, src));
  await run(`cp -a ${src}/. ${oracleDir}/ && chmod 755 ${oracleDir}`);
  // cp's reads moved the source's atimes (relatime) after it had copied them: put them back,
  // so that the import records the atimes the oracle has.
  await run(`cd ${oracleDir} && find . -mindepth 1 ! -type l -exec touch -a -r {} ${src}/{} \\;`);
  await run(`cd ${oracleDir}\n${overlay}`);
  if (user) await run(giveRootFilesTo(user, oracleDir));

  const pool = await Pool.create({ root: openTempDir('posix-pool'), sizeBytes: 16 * GiB });
  await importImage(pool.store, src, { name: 'img1' });
  await pool.store.createLayer('img2', { parent: 'img1', kind: 'image', building: true });
  const buildParent = openTempDir('posix-build');
  const buildMnt = path.join(buildParent, 'm');
  mkdirSync(buildMnt, { mode: 0o755 });
  const building = await MountService.start({ layer: await pool.store.openLayer('img2'), mountpoint: buildMnt, transport });
  try {
    await run(`cd ${buildMnt}\n${overlay}`);
    if (user) await run(giveRootFilesTo(user, buildMnt));
  } finally {
    const r = await building.stop('image built');
    if (r.error) throw r.error;
  }
  await pool.store.sealLayer('img2');
  await pool.store.createLayer('c', { parent: 'img2', kind: 'container', sizeLimitBytes: 12 * GiB });
  if (!user) return mountForAll(pool, await pool.store.openLayer('c'), [srcParent, buildParent], transport);
  await pool.close();
  return mountForAllAsUser(pool.root, 'c', userTransport(transport), [srcParent, buildParent]);
}

export type ProbeResults = Record<string, string[]>;

/**
 * Runs the probe over cases with `root` as the directory of the fresh case directories, as
 * the base identity `base` (see posix-probe.ts).
 */
export function runProbe(root: string, cases: ProbeCase[], base: [number, number] = [0, 0], timeoutMs = 60_000): Promise<ProbeResults> {
  if (PYTHON !== '/usr/bin/python3' && spawnSync(PYTHON, ['-c', '']).status !== 0) {
    return Promise.reject(new Error('python3 runs the POSIX probe (posix-probe.ts) and is not installed: apt-get install python3-minimal'));
  }
  const work = openTempDir('posix-probe');
  const probe = writeProbe(work);
  const spec = path.join(work, 'cases.json');
  writeFileSync(spec, JSON.stringify({ cases, base }));
  return new Promise((resolve, reject) => {
    execFile(PYTHON, [probe, root, spec], { maxBuffer: 64 << 20, timeout: timeoutMs, env: { ...process.env, LC_ALL: 'C.UTF-8' } }, (err, stdout, stderr) => {
      void removeDirs(work);
      if (err) reject(new Error(`probe failed in ${root}: ${err.message}\n${stderr}`));
      else resolve(JSON.parse(stdout) as ProbeResults);
    });
  });
}

/** One line per step, `step => result`, so that a failing comparison reads like a transcript. */
export function transcript(c: ProbeCase, results: string[] | undefined): string[] {
  return c.steps.map((s, i) => `${JSON.stringify(s).slice(0, 120)} => ${results?.[i] ?? '(not run)'}`);
}

/**
 * One test per case: the dmfs transcript must equal ext4's. Cases listed in `known` are
 * known differences, run as `test.failing` under their report row (they start failing
 * the day dmfs behaves like ext4: then move them out of `known`). POSIX_SHOW_KNOWN=1 runs
 * them as plain tests instead, to read the difference.
 */
export function defineProbeTests(cases: ProbeCase[], known: Record<string, string>, results: () => { ext4: ProbeResults; dmfs: ProbeResults }): void {
  for (const c of cases) {
    const row = known[c.name];
    const body = () => {
      const { ext4, dmfs } = results();
      expect(transcript(c, dmfs[c.name])).toEqual(transcript(c, ext4[c.name]));
    };
    // POSIX_SHOW_KNOWN=1 runs the known differences as plain tests, to read their transcripts.
    if (row && process.env.POSIX_SHOW_KNOWN !== '1') test.failing(`${c.name} [known difference, report row ${row}]`, body);
    else test(c.name, body);
  }
}

/** What a probe session holds once its beforeAll has run. */
export interface ProbeSession {
  oracle: Oracle;
  m: PosixMount;
  ext4: ProbeResults;
  dmfs: ProbeResults;
}

/**
 * Registers the beforeAll/afterAll of a differential suite: an ext4 oracle directory, a
 * dmfs mount from `mount`, the probe of `cases` on both (side by side, or one after the
 * other when the cases share one tree) as the base identity of `privilege` (the oracle
 * directory owned by it), and the clean-up.
 */
export function probeSession(cases: ProbeCase[], mount: (oracle: Oracle) => Promise<PosixMount>, opts: { sequential?: boolean; privilege?: Privilege } = {}): ProbeSession {
  const s = {} as ProbeSession;
  const base = baseIdentity(opts.privilege ?? 'root');
  beforeAll(async () => {
    s.oracle = await ext4Oracle();
    chownSync(s.oracle.dir, ...base);
    s.m = await mount(s.oracle);
    if (opts.sequential) {
      s.ext4 = await runProbe(s.oracle.dir, cases, base);
      s.dmfs = await runProbe(s.m.mnt, cases, base);
    } else {
      [s.ext4, s.dmfs] = await Promise.all([runProbe(s.oracle.dir, cases, base), runProbe(s.m.mnt, cases, base)]);
    }
  }, 120_000);
  afterAll(async () => {
    await s.m?.close();
    await s.oracle?.cleanup();
  });
  return s;
}
