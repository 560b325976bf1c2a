/**
 * `dmfs mount` / `dmfs umount`, the mount(8) helper and the daemon life cycle, driven as a
 * user would: separate processes, real mounts, `umount`/`fusermount -u`/`kill -9` from
 * outside, remounts in fresh processes. Needs the compiled CLI (scripts/setup.js builds
 * dist/ when it is stale; it runs here first).
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { describeFuse, run, sh, shq, tempDir, waitProcessGone } from '../support/fuse-harness';

const REPO = path.resolve(__dirname, '..', '..');
const CLI = path.join(REPO, 'bin', 'dmfs.js');

describeFuse('dmfs mount / umount (CLI, daemon, mount helper)', () => {
  let root: string;
  let work: string;
  const dmfs = (args: string) => sh(`node ${CLI} ${args} --root ${shq(root)}`);
  const dmfsOk = async (args: string): Promise<string> => {
    const r = await dmfs(args);
    if (r.code !== 0) throw new Error(`dmfs ${args} failed (${r.code}):\n${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  const json = async <T = Record<string, unknown>>(args: string): Promise<T> => JSON.parse(await dmfsOk(`${args} --json`)) as T;
  const isMounted = async (mp: string) => (await sh(`grep -q ' ${mp} fuse.dmfs ' /proc/self/mounts`)).code === 0;
  const waitGone = waitProcessGone;
  const runFiles = () => (existsSync(path.join(root, 'run')) ? readdirSync(path.join(root, 'run')).filter((f) => f.endsWith('.json') && !f.endsWith('.exit.json')) : []);

  beforeAll(async () => {
    await run(`node ${path.join(REPO, 'scripts', 'setup.js')} --quiet`, { timeoutMs: 600_000 });
    root = tempDir('cli-pool');
    work = tempDir('cli-work');
    await dmfsOk('pool create --size 8G');
    await dmfsOk('create ctr');
    await dmfsOk('create img --image');
  }, 600_000);

  afterAll(async () => {
    await sh(`for m in $(grep -o ' ${work}/[^ ]* fuse.dmfs ' /proc/self/mounts | cut -d' ' -f2); do fusermount -uz "$m"; done`);
  });

  it('mounts in the background, returns once live, and umount flushes so a fresh process reads the same bytes', async () => {
    const mp = `${work}/a/not/yet/there`;
    const t0 = Date.now();
    const m = await json<{ layer: string; mountpoint: string; readOnly: boolean; pid: number; log: string }>(`mount ctr ${mp}`);
    const mountMs = Date.now() - t0;
    // eslint-disable-next-line no-console
    console.log(`dmfs mount (CLI to live mount): ${mountMs} ms`);
    expect(m).toMatchObject({ layer: 'ctr', mountpoint: mp, readOnly: false });
    expect(await isMounted(mp)).toBe(true); // live when the command returns
    expect(await run(`ps -o ppid= -p ${m.pid}`)).not.toContain(String(process.pid)); // detached
    expect(runFiles()).toHaveLength(1);
    const ls = await json<{ layers?: unknown[] } | unknown[]>('ls');
    expect(JSON.stringify(ls)).toContain(mp);

    await run(`head -c 3000000 /dev/urandom > ${work}/payload && cp ${work}/payload ${mp}/payload && mkdir ${mp}/d && echo hi > ${mp}/d/f`);
    const u = await json<{ flushed: boolean; pid: number }>(`umount ${mp}`);
    expect(u).toMatchObject({ flushed: true, pid: m.pid });
    expect(await isMounted(mp)).toBe(false);
    expect(await waitGone(m.pid, 1000)).toBe(true);
    expect(runFiles()).toHaveLength(0);

    const again = await json<{ pid: number }>(`mount ctr ${mp}`);
    expect(again.pid).not.toBe(m.pid);
    expect(await run(`sha256sum < ${mp}/payload; cat ${mp}/d/f`)).toBe(`${(await run(`sha256sum < ${work}/payload`)).trim()}\nhi\n`);
    await dmfsOk(`umount ${mp}`);
  });

  it('an image layer mounts read-only; --ro makes a container read-only', async () => {
    const mi = await json<{ readOnly: boolean }>(`mount img ${work}/img`);
    expect(mi.readOnly).toBe(true);
    expect((await sh(`touch ${work}/img/x`)).stderr).toMatch(/Read-only file system/);
    const mc = await json<{ readOnly: boolean }>(`mount ctr ${work}/ctr-ro --ro`);
    expect(mc.readOnly).toBe(true);
    expect((await sh(`setfattr -n user.a -v 1 ${work}/ctr-ro/payload`)).stderr).toMatch(/Read-only file system/);
    await dmfsOk(`umount ${work}/img`);
    await dmfsOk(`umount ${work}/ctr-ro`);
  });

  it('several layers mounted at once, while other commands keep working', async () => {
    await dmfsOk(`mount ctr ${work}/m1`);
    await dmfsOk(`mount img ${work}/m2`);
    await dmfsOk('create ctr2 --from img'); // a new container on a mounted image
    await dmfsOk(`mount ctr2 ${work}/m3`);
    expect((await sh(`node ${CLI} mount ctr ${work}/m4 --root ${root}`)).stderr).toMatch(/in use|already open/i); // one writer per container
    await run(`echo 2 > ${work}/m3/f && cat ${work}/m1/d/f`);
    const ls = await dmfsOk('ls');
    for (const mp of ['m1', 'm2', 'm3']) expect(ls).toContain(`${work}/${mp}`);
    for (const mp of ['m1', 'm2', 'm3']) await dmfsOk(`umount ${work}/${mp}`);
  });

  it('refuses a second mount on a live mountpoint', async () => {
    await dmfsOk(`mount ctr ${work}/twice`);
    const r = await dmfs(`mount img ${work}/twice`);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/already a dmfs mount/);
    await dmfsOk(`umount ${work}/twice`);
  });

  it('umount from outside (umount, fusermount -u) leaves the pool consistent and the daemon exits by itself', async () => {
    for (const tool of ['umount', 'fusermount -u']) {
      const mp = `${work}/outside`;
      const m = await json<{ pid: number }>(`mount ctr ${mp}`);
      await run(`echo "${tool}" > ${mp}/by-outside-tool && sync`);
      await run(`${tool} ${mp}`);
      expect(await waitGone(m.pid)).toBe(true);
      expect(runFiles()).toHaveLength(0);
      await dmfsOk('check');
      await dmfsOk(`mount ctr ${mp}`);
      expect(await run(`cat ${mp}/by-outside-tool`)).toBe(`${tool}\n`);
      await dmfsOk(`umount ${mp}`);
    }
  });

  it('a killed daemon leaves a dead mount: mount and umount recover it, fsynced data survives', async () => {
    const mp = `${work}/dead`;
    let m = await json<{ pid: number }>(`mount ctr ${mp}`);
    await run(`head -c 200000 /dev/urandom > ${work}/synced && dd if=${work}/synced of=${mp}/synced conv=fsync status=none`);
    await run(`kill -9 ${m.pid}`);
    expect(await waitGone(m.pid)).toBe(true);
    expect((await sh(`stat ${mp}`)).stderr).toMatch(/Transport endpoint is not connected/);
    const again = await json<{ recovered: boolean; pid: number }>(`mount ctr ${mp}`);
    expect(again.recovered).toBe(true);
    expect(await run(`cmp ${work}/synced ${mp}/synced && echo same`)).toBe('same\n');

    // Same through umount: kill, then `dmfs umount` detaches the dead mount.
    m = again;
    await run(`kill -9 ${m.pid}`);
    expect(await waitGone(m.pid)).toBe(true);
    const u = await json<{ recovered: boolean }>(`umount ${mp}`);
    expect(u.recovered).toBe(true);
    expect(await isMounted(mp)).toBe(false);
    expect(runFiles()).toHaveLength(0);
    await dmfsOk('check');
  });

  it('a stale pid file (dead owner) is cleaned up by the next mount', async () => {
    const mp = `${work}/stale`;
    const m = await json<{ pid: number }>(`mount ctr ${mp}`);
    await dmfsOk(`umount ${mp}`);
    // Forge the record of a daemon that no longer exists.
    const { mountRunPaths, writeMountRecord } = await import('../../src/fs/mount-table');
    const rec = mountRunPaths(path.join(root, 'run'), mp).record;
    await writeMountRecord(rec, { version: 1, pid: m.pid, startTicks: 1, layer: 'ctr', mountpoint: mp, readOnly: false, root, startedMs: 0, log: '' });
    const again = await json<{ pid: number }>(`mount ctr ${mp}`);
    expect(again.pid).not.toBe(m.pid);
    await dmfsOk(`umount ${mp}`);
    expect(runFiles()).toHaveLength(0);
  });

  it('umount of a busy mount fails and leaves it mounted; --lazy detaches and the daemon finishes at the last close', async () => {
    const mp = `${work}/busy`;
    const m = await json<{ pid: number }>(`mount ctr ${mp}`);
    await run(`echo hold > ${mp}/held`);
    const holder = spawn('bash', ['-c', `exec 3< ${mp}/held && echo open && read -t 60 line`], { stdio: ['pipe', 'pipe', 'ignore'] });
    await new Promise((r) => holder.stdout.once('data', r)); // the file is open
    const r = await dmfs(`umount ${mp}`);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/busy/);
    expect(await isMounted(mp)).toBe(true);
    expect(await run(`cat ${mp}/held`)).toBe('hold\n');

    const lazy = await json<{ flushed: boolean | null }>(`umount ${mp} --lazy`);
    expect(lazy.flushed).toBeNull();
    expect(await isMounted(mp)).toBe(false);
    await new Promise((r) => setTimeout(r, 1500));
    expect((await sh(`kill -0 ${m.pid}`)).code).toBe(0); // still serving the open file
    holder.stdin.end('\n');
    await new Promise((r) => holder.once('exit', r));
    expect(await waitGone(m.pid)).toBe(true);
    expect(runFiles()).toHaveLength(0);
  });

  it('--foreground serves until SIGTERM, then unmounts and commits', async () => {
    const mp = `${work}/fg`;
    const child = spawn('node', [CLI, 'mount', 'ctr', mp, '--foreground', '--root', root, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d) => {
        out += String(d);
        if (out.includes('\n')) resolve(out.split('\n')[0]);
      });
      child.once('exit', (code) => reject(new Error(`foreground mount exited ${code}`)));
    });
    expect(JSON.parse(line)).toMatchObject({ layer: 'ctr', mountpoint: mp, pid: child.pid });
    await run(`echo foreground > ${mp}/fg-file`);
    child.kill('SIGTERM');
    const code = await new Promise((r) => child.once('exit', r));
    expect(code).toBe(0);
    expect(await isMounted(mp)).toBe(false);
    await dmfsOk(`mount ctr ${mp}`);
    expect(await run(`cat ${mp}/fg-file`)).toBe('foreground\n');
    await dmfsOk(`umount ${mp}`);
  });

  it('mount -t fuse.dmfs POOLROOT:NAME and an fstab line work through mount.dmfs', async () => {
    await run(`sh ${REPO}/mount-helpers/setup-host --quiet --no-tools --install-helpers`);
    const mp = `${work}/helper`;
    await run(`mkdir -p ${mp} && mount -t fuse.dmfs ${root}:ctr ${mp} -o ro`);
    expect(await run(`grep ' ${mp} ' /proc/self/mountinfo`)).toMatch(/ ro,.* fuse\.dmfs dmfs:ctr /);
    expect(await run(`cat ${mp}/d/f`)).toBe('hi\n');
    await run(`umount ${mp}`);
    await new Promise((r) => setTimeout(r, 1500));
    const fstab = `${work}/fstab`;
    await run(`echo '${root}:ctr ${mp} fuse.dmfs defaults,noauto,nofail 0 0' > ${fstab} && mount -T ${fstab} ${mp}`);
    expect(await isMounted(mp)).toBe(true);
    await run(`echo via-fstab > ${mp}/fstab-file`);
    await dmfsOk(`umount ${mp}`);
  });

  it('dmfs rm of a mounted container is deferred until its unmount', async () => {
    await dmfsOk('create doomed');
    const mp = `${work}/doomed`;
    await dmfsOk(`mount doomed ${mp}`);
    const r = await dmfsOk('rm doomed');
    expect(r).toMatch(/deferred/);
    await run(`echo still-usable > ${mp}/f && cat ${mp}/f`);
    await dmfsOk(`umount ${mp}`);
    expect(await dmfsOk('ls')).not.toMatch(/\bdoomed\b/);
  });

  it('as root other users get in by default (allow_other), with permissions checked by the kernel, nosuid,nodev', async () => {
    const mp = `${work}/shared`;
    await run(`mkdir -p ${work} && chmod 755 ${work} $(dirname ${root})`);
    await dmfsOk(`mount ctr ${mp}`);
    await run(`cd ${mp} && echo secret > secret && chmod 600 secret && echo public > public && chmod 644 public && mkdir -p tmp && chmod 1777 tmp`);
    expect(await run(`grep ' ${mp} ' /proc/self/mountinfo`)).toMatch(/ rw,nosuid,nodev,.* - fuse\.dmfs .*default_permissions,allow_other/);
    // A container's unprivileged users (nobody, apt's _apt) can stat and run what the modes allow.
    expect(await run(`runuser -u nobody -- stat -c %F ${mp}/tmp`)).toBe('directory\n');
    await dmfsOk(`umount ${mp}`);

    await dmfsOk(`mount ctr ${mp} --allow-other`);
    expect(await run(`grep ' ${mp} ' /proc/self/mountinfo`)).toMatch(/allow_other/);
    expect(await run(`runuser -u nobody -- cat ${mp}/public`)).toBe('public\n');
    expect((await sh(`runuser -u nobody -- cat ${mp}/secret`)).stderr).toMatch(/Permission denied/);
    expect((await sh(`runuser -u nobody -- touch ${mp}/not-mine`)).stderr).toMatch(/Permission denied/);
    expect((await sh(`runuser -u nobody -- sh -c 'echo x >> ${mp}/public'`)).stderr).toMatch(/Permission denied/);
    await run(`runuser -u nobody -- sh -c 'echo mine > ${mp}/tmp/by-nobody'`);
    expect(await run(`stat -c '%U:%G %a' ${mp}/tmp/by-nobody`)).toBe('nobody:nogroup 644\n');
    await dmfsOk(`umount ${mp}`);
  });

  it('umount of something that is not a dmfs mount is an error', async () => {
    const r = await dmfs(`umount ${work}`);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/not a dmfs mount/);
  });
});
