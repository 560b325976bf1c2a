/**
 * Real containerd (Debian's 1.6) and runc on dmfs: a private containerd (its own root,
 * state, sockets and config; test/support/containerd-host.js) loads `dmfs snapshotter` as
 * the proxy snapshotter `dmfs`. An image built here (busybox-static, one layer) is imported,
 * containers run on it as root and as uid 65534, `ctr snapshot` is checked against
 * `dmfs ls`, containerd is restarted under a running container, an image is pulled from a
 * local registry through the fast path, and after everything is removed the pool is as it
 * was: no mounts, `dmfs check` clean, the space back.
 *
 * Needs root, /dev/fuse, containerd, runc, busybox (static) and docker-registry, which
 * `node scripts/setup.js` installs; under CI=true nothing skips.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DMFS_BIN, ensureBuiltDist } from '../support/built-dist';
import { REGISTRY_BIN, startRegistry, type RunningRegistry } from '../support/registry-harness';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const host = require('../support/containerd-host.js');

const PROBLEM: string | null = host.containerdProblem() ?? (fs.existsSync('/dev/fuse') ? null : '/dev/fuse is missing') ?? (fs.existsSync(REGISTRY_BIN) ? null : 'docker-registry is missing');
if (PROBLEM && process.env.CI !== 'true') {
  // eslint-disable-next-line no-console
  console.warn(`containerd: skipping (${PROBLEM}; run node scripts/setup.js as root)`);
}
const maybe = !PROBLEM || process.env.CI === 'true' ? describe : describe.skip;

const IMAGE = 'docker.io/library/dmfs-busybox:1';
/** The same layer, its config saying User 65534:65534 (ctr 1.6's run has no --user). */
const NOBODY_IMAGE = 'docker.io/library/dmfs-busybox:nobody';
const NS = 'test';

interface LsLayer {
  name: string;
  kind: string;
  parent: string | null;
  exclusiveBytes: number;
  mounts: { mountpoint: string; readOnly: boolean }[];
  labels: Record<string, string>;
  containerd?: { namespace: string; key: string; kind: string; parent: string };
}

maybe('containerd with the dmfs snapshotter', () => {
  let work: string;
  let root: string;
  let socket: string;
  let snapshotter: { stop(): Promise<void>; pid: number };
  let ctd: {
    address: string;
    start(): Promise<void>;
    stop(): Promise<void>;
    ctr(args: string[], o?: { ns?: string }): { status: number | null; stdout: string; stderr: string };
    ctrOk(args: string[], o?: { ns?: string }): string;
    cleanupNamespace(ns?: string): void;
  };
  let archive: string;
  let nobodyArchive: string;
  let baselineUsedBytes: number;

  const dmfs = (args: string[]): string => execFileSync(process.execPath, [DMFS_BIN, ...args, '--root', root], { encoding: 'utf8' });
  const dmfsJson = <T>(args: string[]): T => JSON.parse(dmfs([...args, '--json'])) as T;
  const snapshotLayers = (): LsLayer[] => dmfsJson<LsLayer[]>(['ls']).filter((l) => l.containerd);
  /** containerd removes backend snapshots in its garbage collector, after the command returned: wait for it. */
  const eventually = async (what: string, check: () => boolean, timeoutMs = 15_000): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      if (Date.now() > deadline) throw new Error(`${what}: still not so after ${timeoutMs} ms`);
      await host.sleep(100);
    }
  };
  const run = (args: string[], ns = NS) => ctd.ctr(['run', '--rm', '--snapshotter', 'dmfs', ...args], { ns });

  beforeAll(async () => {
    ensureBuiltDist();
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-containerd-'));
    root = path.join(work, 'pool');
    execFileSync(process.execPath, [DMFS_BIN, 'pool', 'create', '--root', root, '--size', '4G'], { stdio: 'ignore' });
    baselineUsedBytes = dmfsJson<{ dataSpaceUsedBytes: number }>(['info']).dataSpaceUsedBytes;
    socket = path.join(work, 'dmfs-snapshotter.sock');
    snapshotter = await host.startSnapshotter(root, socket, path.join(work, 'snapshotter.log'));
    ctd = new host.PrivateContainerd(path.join(work, 'containerd'), socket);
    await ctd.start();
    const tree = host.buildBusyboxTree(path.join(work, 'tree'));
    archive = host.buildOciArchive(tree, IMAGE, work).archive;
    nobodyArchive = host.buildOciArchive(tree, NOBODY_IMAGE, work, { user: '65534:65534' }).archive;
  }, 180_000);

  afterAll(async () => {
    if (!work) return;
    for (const ns of [NS, 'pulled']) ctd?.cleanupNamespace(ns);
    await ctd?.stop();
    await snapshotter?.stop();
    host.unmountUnder(work);
    fs.rmSync(work, { recursive: true, force: true });
  }, 120_000);

  test('ctr image import --snapshotter dmfs unpacks the layer into a committed dmfs image layer', () => {
    const out = ctd.ctrOk(['image', 'import', '--snapshotter', 'dmfs', archive], { ns: NS });
    expect(out).toContain(IMAGE);
    const committed = snapshotLayers().filter((l) => l.containerd!.kind === 'committed');
    expect(committed).toHaveLength(1);
    expect(committed[0].kind).toBe('image');
    expect(committed[0].containerd!.namespace).toBe(NS);
    expect(committed[0].labels['dmfs.chain_id']).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(committed[0].exclusiveBytes).toBeGreaterThan(1024 * 1024); // the busybox binary
    // The unpack mount is gone once committed.
    expect(host.mountsUnder(path.join(root, 'snapshots'))).toEqual([]);
  });

  test('a container creates, reads and deletes files, lower files too, and its exit code comes through', async () => {
    const r = run([IMAGE, 'c-root', 'sh', '-c', [
      'set -e',
      'echo hello > /tmp/new; test "$(cat /tmp/new)" = hello',
      'mkdir -p /srv/a/b; cp /etc/passwd /srv/a/b/p; cmp /etc/passwd /srv/a/b/p',
      'cat /etc/motd',
      'rm /etc/motd; test ! -e /etc/motd',
      'rm /tmp/new; test ! -e /tmp/new',
      'id -u',
      'exit 7',
    ].join('\n')]);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('built by the dmfs containerd test\n0\n');
    expect(r.status).toBe(7);
    // The image is untouched: the next container sees /etc/motd and none of the first one's files.
    const again = run([IMAGE, 'c-root2', 'sh', '-c', 'cat /etc/motd; test ! -e /srv/a']);
    expect(again.stdout).toBe('built by the dmfs containerd test\n');
    expect(again.status).toBe(0);
    // --rm removed the containers' snapshots: only the image's is left.
    await eventually('the containers\' snapshots removed', () => snapshotLayers().length === 1);
    expect(snapshotLayers().map((l) => l.containerd!.kind)).toEqual(['committed']);
  });

  test('as uid 65534 the kernel checks permissions: /tmp is writable, /root and /etc are not', () => {
    ctd.ctrOk(['image', 'import', '--snapshotter', 'dmfs', nobodyArchive], { ns: NS });
    const r = run([NOBODY_IMAGE, 'c-nobody', 'sh', '-c', [
      'id -u',
      'echo x > /tmp/mine && ls -ln /tmp/mine | awk \'{print $3}\'',
      'echo x > /root/no 2>/dev/null && echo wrote-root',
      'rm /etc/passwd 2>/dev/null && echo removed-passwd',
      'cat /etc/passwd | head -1',
      'exit 0',
    ].join('\n')]);
    expect(r.stdout).toBe('65534\n65534\nroot:x:0:0:root:/root:/bin/sh\n');
    expect(r.status).toBe(0);
  });

  test('ctr snapshot ls / info / usage / mounts / commit / rm agree with dmfs ls', async () => {
    const ls = ctd.ctrOk(['snapshot', '--snapshotter', 'dmfs', 'ls'], { ns: NS });
    const imageKey = ls.split('\n').slice(1).map((l) => l.split(/\s+/)[0]).find((k) => k.startsWith('sha256:'))!;
    // containerd's key is the last part of dmfs's (containerd keeps NAMESPACE/SEQ/KEY in its backend).
    const committedLayer = snapshotLayers().find((l) => l.containerd!.key.endsWith(`/${imageKey}`))!;
    expect(committedLayer).toMatchObject({ kind: 'image', containerd: { kind: 'committed', namespace: NS } });

    ctd.ctrOk(['snapshot', '--snapshotter', 'dmfs', 'prepare', 'work-1', imageKey], { ns: NS });
    const active = snapshotLayers().find((l) => l.containerd!.key.endsWith('/work-1'))!;
    expect(active.kind).toBe('container');
    expect(active.parent).toBe(committedLayer.name);
    expect(active.mounts).toHaveLength(1);
    const mounts = ctd.ctrOk(['snapshot', '--snapshotter', 'dmfs', 'mounts', '/mnt/target', 'work-1'], { ns: NS });
    const source = active.mounts[0].mountpoint;
    expect(mounts.trim()).toBe(`mount -t bind ${source} /mnt/target -o rbind,rw`);
    expect(fs.statSync(path.dirname(source)).mode & 0o777).toBe(0o700);
    fs.mkdirSync(path.join(source, 'newdir'));
    fs.unlinkSync(path.join(source, 'etc', 'group'));
    const fd = fs.openSync(path.join(source, 'data.bin'), 'w');
    fs.writeSync(fd, Buffer.alloc(256 * 1024, 7));
    fs.fsyncSync(fd); // data and metadata committed: the figures below are final
    fs.closeSync(fd);

    const info = JSON.parse(ctd.ctrOk(['snapshot', '--snapshotter', 'dmfs', 'info', 'work-1'], { ns: NS }));
    expect(info).toMatchObject({ Kind: 'Active', Parent: imageKey });
    const usage = ctd.ctrOk(['snapshot', '--snapshotter', 'dmfs', 'usage', '--b', 'work-1'], { ns: NS });
    const [usageKey, sizeText, inodesText] = usage.trim().split('\n')[1].trim().split(/\s+/);
    expect(usageKey).toBe('work-1');
    expect(Number(inodesText)).toBeGreaterThanOrEqual(3); // data.bin, newdir, /etc (a whiteout in it)
    const activeNow = snapshotLayers().find((l) => l.name === active.name)!;
    expect(Number(sizeText)).toBe(activeNow.exclusiveBytes);
    expect(activeNow.exclusiveBytes).toBeGreaterThanOrEqual(256 * 1024);

    ctd.ctrOk(['snapshot', '--snapshotter', 'dmfs', 'commit', 'saved-1', 'work-1'], { ns: NS });
    await eventually('work-1 committed', () => !snapshotLayers().some((l) => l.containerd!.key.endsWith('/work-1')));
    const saved = snapshotLayers().find((l) => l.containerd!.key.endsWith('/saved-1'))!;
    expect(saved).toMatchObject({ kind: 'image', parent: committedLayer.name, mounts: [] });
    expect(saved.exclusiveBytes).toBeGreaterThanOrEqual(256 * 1024);
    expect(snapshotLayers().some((l) => l.containerd!.key.endsWith('/work-1'))).toBe(false);
    expect(host.mountsUnder(source)).toEqual([]);
    expect(JSON.parse(ctd.ctrOk(['snapshot', '--snapshotter', 'dmfs', 'info', 'saved-1'], { ns: NS }))).toMatchObject({ Kind: 'Committed', Parent: imageKey });

    // A view: read-only, on the committed snapshot just made; it sees the commit's files, not /etc/group.
    ctd.ctrOk(['snapshot', '--snapshotter', 'dmfs', 'view', 'look-1', 'saved-1'], { ns: NS });
    const view = snapshotLayers().find((l) => l.containerd!.key.endsWith('/look-1'))!;
    expect(view.mounts).toEqual([expect.objectContaining({ readOnly: true })]);
    const viewRoot = view.mounts[0].mountpoint;
    expect(fs.readFileSync(path.join(viewRoot, 'data.bin')).equals(Buffer.alloc(256 * 1024, 7))).toBe(true);
    expect(fs.existsSync(path.join(viewRoot, 'etc', 'group'))).toBe(false);
    expect(() => fs.writeFileSync(path.join(viewRoot, 'x'), 'x')).toThrow(expect.objectContaining({ code: 'EROFS' }));

    // Removing a parent first is refused (containerd: failed precondition); children first works.
    const refused = ctd.ctr(['snapshot', '--snapshotter', 'dmfs', 'rm', 'saved-1'], { ns: NS });
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toMatch(/precondition|children/i);
    ctd.ctrOk(['snapshot', '--snapshotter', 'dmfs', 'rm', 'look-1'], { ns: NS });
    await eventually('the view unmounted', () => host.mountsUnder(viewRoot).length === 0);
    ctd.ctrOk(['snapshot', '--snapshotter', 'dmfs', 'rm', 'saved-1'], { ns: NS });
    const left = ctd.ctrOk(['snapshot', '--snapshotter', 'dmfs', 'ls'], { ns: NS }).trim().split('\n').slice(1).map((l) => l.split(/\s+/)[0]);
    expect(left).toContain(imageKey);
    expect(left.filter((k) => ['work-1', 'saved-1', 'look-1'].includes(k))).toEqual([]);
    const ours = (l: LsLayer) => /\/(work-1|saved-1|look-1)$/.test(l.containerd!.key);
    await eventually('dmfs ls no longer shows work-1, saved-1, look-1', () => !snapshotLayers().some(ours));
    expect(snapshotLayers().map((l) => l.containerd!.key)).toContain(committedLayer.containerd!.key);
  });

  test('a running container keeps working across a restart of containerd', async () => {
    ctd.ctrOk(['run', '-d', '--snapshotter', 'dmfs', IMAGE, 'long', 'sh', '-c', 'while true; do echo tick >> /tmp/log; sleep 0.1; done'], { ns: NS });
    await host.sleep(500);
    await ctd.stop();
    await host.sleep(1000);
    await ctd.start();
    const count = () => Number(ctd.ctrOk(['task', 'exec', '--exec-id', `e${Date.now()}`, 'long', 'sh', '-c', 'wc -l < /tmp/log'], { ns: NS }).trim());
    const before = count();
    await host.sleep(600);
    expect(count()).toBeGreaterThan(before);
    expect(ctd.ctrOk(['task', 'exec', '--exec-id', 'write', 'long', 'sh', '-c', 'echo ok > /tmp/after; cat /tmp/after'], { ns: NS })).toBe('ok\n');
    ctd.ctrOk(['task', 'kill', '-s', 'SIGKILL', 'long'], { ns: NS });
    for (let i = 0; i < 50 && ctd.ctr(['task', 'delete', 'long'], { ns: NS }).status !== 0; i++) await host.sleep(100);
    ctd.ctrOk(['container', 'rm', 'long'], { ns: NS });
  }, 120_000);

  // ctr 1.6's pull unpacks through Image.Unpack, which sends no containerd.io/snapshot.ref: the
  // fast path (ALREADY_EXISTS) is what CRI, nerdctl and dockerd's pulls reach; it is tested
  // against the metadata store's exact requests in test/unit/snapshotter.
  test('pull from a local registry into another namespace; containers run on the pulled image', async () => {
    const registry: RunningRegistry = await startRegistry(path.join(work, 'registry'));
    try {
      const ref = `${registry.host}/dmfs/busybox:1`;
      ctd.ctrOk(['image', 'tag', IMAGE, ref], { ns: NS });
      ctd.ctrOk(['image', 'push', '--plain-http', ref], { ns: NS });
      const before = snapshotLayers();
      const out = ctd.ctrOk(['image', 'pull', '--plain-http', '--snapshotter', 'dmfs', ref], { ns: 'pulled' });
      expect(out).toContain('done');
      const added = snapshotLayers().filter((l) => !before.some((b) => b.name === l.name));
      expect(added).toHaveLength(1);
      expect(added[0]).toMatchObject({ kind: 'image', parent: 'base' });
      expect(added[0].containerd).toMatchObject({ namespace: 'pulled', kind: 'committed' });
      expect(added[0].labels['dmfs.chain_id']).toBe(before.find((b) => b.containerd!.key.endsWith(added[0].labels['dmfs.chain_id']))!.labels['dmfs.chain_id']);
      const r = run([ref, 'c-pulled', 'sh', '-c', 'cat /etc/motd'], 'pulled');
      expect(r.stdout).toBe('built by the dmfs containerd test\n');
      expect(r.status).toBe(0);
    } finally {
      await registry.stop();
    }
  }, 120_000);

  test('once containers and images are removed: no snapshots, no mounts, dmfs check clean, the space back', async () => {
    for (const ns of [NS, 'pulled']) {
      ctd.cleanupNamespace(ns);
      for (const img of ctd.ctrOk(['image', 'ls', '-q'], { ns }).split('\n').filter(Boolean)) ctd.ctrOk(['image', 'rm', '--sync', img], { ns });
    }
    for (let i = 0; i < 100 && snapshotLayers().length; i++) await host.sleep(100);
    expect(snapshotLayers()).toEqual([]);
    expect(host.mountsUnder(path.join(root, 'snapshots'))).toEqual([]);
    expect(fs.readdirSync(path.join(root, 'snapshots'))).toEqual([]);
    const check = dmfsJson<{ ok: boolean }>(['check']);
    expect(check.ok).toBe(true);
    expect(dmfsJson<{ dataSpaceUsedBytes: number }>(['info']).dataSpaceUsedBytes).toBe(baselineUsedBytes);
  }, 60_000);
});

interface DaemonStatusJson {
  pid: number;
  supervisorPid: number | null;
  restarts: number;
  mounts: { mountpoint: string; layer: string; readOnly: boolean }[];
  services: { name: string; state: string; error: string | null; detail: { socket?: string; snapshotMounts?: number } }[];
}

/**
 * The same containerd talking to the snapshotter the pool's daemon hosts (no `dmfs
 * snapshotter` process): a container doing file I/O on its dmfs rootfs keeps working while
 * the daemon's worker is killed with -9 (the new worker takes the snapshot mount over and
 * binds the snapshotter socket again) and while containerd restarts, and its exit code
 * comes through.
 */
maybe('containerd with the snapshotter the pool daemon hosts', () => {
  let work: string;
  let root: string;
  let socket: string;
  let archive: string;
  let ctd: InstanceType<typeof host.PrivateContainerd>;

  const dmfsRun = (args: string[]) => spawnSync(process.execPath, [DMFS_BIN, ...args, '--root', root], { encoding: 'utf8', timeout: 120_000 });
  const dmfsJson = <T>(args: string[]): T => {
    const r = dmfsRun([...args, '--json']);
    if (r.status !== 0) throw new Error(`dmfs ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  };
  const status = () => dmfsJson<DaemonStatusJson>(['daemon', 'status']);
  const snapshotter = (s: DaemonStatusJson) => s.services.find((x) => x.name === 'containerd-snapshotter');
  const eventually = async <T>(what: string, probe: () => T | null | undefined | false, timeoutMs = 30_000): Promise<T> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let last: unknown = null;
      try {
        const v = probe();
        if (v) return v;
      } catch (err) {
        last = err;
      }
      if (Date.now() > deadline) throw new Error(`${what}: still not so after ${timeoutMs} ms${last ? ` (${String(last)})` : ''}`);
      await host.sleep(100);
    }
  };
  /** Lines the container's loop has logged: each one a file written and read back. */
  const rounds = () => Number(ctd.ctrOk(['task', 'exec', '--exec-id', `n${Date.now()}`, 'io', 'sh', '-c', 'wc -l < /log'], { ns: NS }).trim());

  beforeAll(async () => {
    ensureBuiltDist();
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-containerd-daemon-'));
    root = path.join(work, 'pool');
    execFileSync(process.execPath, [DMFS_BIN, 'pool', 'create', '--root', root, '--size', '2G'], { stdio: 'ignore' });
    const started = dmfsRun(['daemon', 'start']);
    if (started.status !== 0) throw new Error(`dmfs daemon start failed: ${started.stderr}`);
    socket = path.join(root, 'run', 'containerd-snapshotter.sock');
    ctd = new host.PrivateContainerd(path.join(work, 'containerd'), socket);
    await ctd.start();
    const tree = host.buildBusyboxTree(path.join(work, 'tree'));
    archive = host.buildOciArchive(tree, IMAGE, work).archive;
  }, 180_000);

  afterAll(async () => {
    if (!work) return;
    ctd?.cleanupNamespace(NS);
    await ctd?.stop();
    dmfsRun(['daemon', 'stop']);
    host.unmountUnder(work);
    fs.rmSync(work, { recursive: true, force: true });
  }, 120_000);

  test('the daemon serves the snapshots API on POOL/run/containerd-snapshotter.sock (0600); dmfs snapshotter refuses, naming it', () => {
    const s = status();
    expect(s.supervisorPid).toEqual(expect.any(Number));
    expect(snapshotter(s)).toMatchObject({ state: 'running', error: null, detail: { socket, snapshotMounts: 0 } });
    const st = fs.statSync(socket);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    const refused = dmfsRun(['snapshotter', '--json']);
    expect(refused.status).toBe(1);
    expect(JSON.parse(refused.stdout)).toMatchObject({ error: { code: 'POOL_LOCKED' } });
    expect(JSON.parse(refused.stdout).error.message).toContain(socket);
    expect(ctd.ctrOk(['plugins', 'ls'])).toMatch(/io\.containerd\.snapshotter\.v1\s+dmfs\s+\S+\s+ok/);
  });

  test('a container doing file I/O survives kill -9 of the daemon\'s worker and a containerd restart; its exit code comes through', async () => {
    ctd.ctrOk(['image', 'import', '--snapshotter', 'dmfs', archive], { ns: NS });
    // Each round writes a file, reads it back and logs the round; a wrong read-back or a failed
    // write ends the loop with exit 1 (the test then sees 1, not 42).
    const loop = [
      'i=0',
      'while [ ! -e /stop ]; do',
      '  i=$((i+1)); f=/w$((i % 16))',
      '  echo "round $i" > $f || { echo "write failed at $i" >> /errors; exit 1; }',
      '  [ "$(cat $f)" = "round $i" ] || { echo "read back wrong at $i" >> /errors; exit 1; }',
      '  echo $i >> /log',
      '  sleep 0.05',
      'done',
      'exit 42',
    ].join('\n');
    ctd.ctrOk(['run', '-d', '--snapshotter', 'dmfs', IMAGE, 'io', 'sh', '-c', loop], { ns: NS });
    const before = status();
    const [mount] = before.mounts;
    expect(before.mounts).toHaveLength(1);
    expect(path.dirname(mount.mountpoint)).toBe(path.join(root, 'snapshots'));
    expect(mount.readOnly).toBe(false);
    expect(snapshotter(before)!.detail.snapshotMounts).toBe(1);
    await eventually('the container logging rounds', () => rounds() > 3);

    // kill -9 of the worker: the supervisor starts a new one, which takes the mount over and serves the socket again.
    process.kill(before.pid, 'SIGKILL');
    const after = await eventually('a new worker serving', () => {
      const s = status();
      return s.pid !== before.pid && snapshotter(s)?.state === 'running' ? s : null;
    });
    expect(after).toMatchObject({ supervisorPid: before.supervisorPid, restarts: 1, mounts: [expect.objectContaining({ mountpoint: mount.mountpoint, layer: mount.layer })] });
    expect(snapshotter(after)!.detail).toEqual({ socket, snapshotMounts: 1 });
    const n1 = rounds();
    await eventually('rounds after the worker restart', () => rounds() > n1 + 3);
    // containerd reaches the new worker on the same path: the snapshot is there, and a new container runs.
    await eventually('ctr snapshot ls through the new worker', () => ctd.ctr(['snapshot', '--snapshotter', 'dmfs', 'ls'], { ns: NS }).stdout.includes('io'));
    const other = ctd.ctr(['run', '--rm', '--snapshotter', 'dmfs', IMAGE, 'after-restart', 'sh', '-c', 'echo x > /x && cat /x /etc/motd'], { ns: NS });
    expect(other).toMatchObject({ status: 0, stdout: 'x\nbuilt by the dmfs containerd test\n' });

    // containerd restarted under the running container: the container goes on, containerd finds it and its snapshot.
    await ctd.stop();
    await host.sleep(500);
    await ctd.start();
    const n2 = rounds();
    await eventually('rounds after the containerd restart', () => rounds() > n2 + 3);
    expect(ctd.ctrOk(['snapshot', '--snapshotter', 'dmfs', 'ls'], { ns: NS })).toContain('io');
    expect(ctd.ctrOk(['task', 'exec', '--exec-id', 'errors', 'io', 'sh', '-c', 'cat /errors 2>/dev/null; true'], { ns: NS })).toBe('');
    // No round was lost or repeated across both restarts: /log holds 1, 2, 3, ... in order.
    expect(ctd.ctrOk(['task', 'exec', '--exec-id', 'gaps', 'io', 'awk', 'NR != $1 { print "gap at " NR ": " $0; exit }', '/log'], { ns: NS })).toBe('');

    // The loop ends on /stop with 42: the exit code comes through containerd.
    ctd.ctrOk(['task', 'exec', '--exec-id', 'stop', 'io', 'touch', '/stop'], { ns: NS });
    await eventually('the task stopped', () => /\bio\s+\d+\s+STOPPED\b/.test(ctd.ctrOk(['task', 'ls'], { ns: NS })));
    // ctr 1.6's `task delete` exits 0 and reports the task's exit code on stderr.
    const deleted = ctd.ctr(['task', 'delete', 'io'], { ns: NS });
    expect(deleted.status).toBe(0);
    expect(deleted.stderr).toMatch(/task io exit with non-zero exit code 42\b/);
    ctd.ctrOk(['container', 'rm', 'io'], { ns: NS });
    await eventually('the snapshot unmounted', () => status().mounts.length === 0);
    expect(host.mountsUnder(path.join(root, 'snapshots'))).toEqual([]);
  }, 240_000);
});
