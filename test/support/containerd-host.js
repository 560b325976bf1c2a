'use strict';
// A private containerd for tests and benchmarks: its own --root, --state, gRPC and ttrpc
// sockets and config file under one directory (never the host's containerd), with dmfs's
// snapshotter loaded as the proxy plugin `dmfs`; the dmfs snapshotter as a child process;
// `ctr` against it; and OCI image archives built from a directory tree with tar.
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const { spawn, spawnSync } = require('node:child_process');

const REPO = path.resolve(__dirname, '..', '..');
const DMFS_BIN = path.join(REPO, 'bin', 'dmfs.js');

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function commandExists(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** Why containerd cannot run here (null when it can): the set-up installs containerd, runc and busybox-static. */
function containerdProblem() {
  for (const cmd of ['containerd', 'ctr', 'runc', 'containerd-shim-runc-v2']) if (!commandExists(cmd)) return `${cmd} is missing (mount-helpers/setup-host installs containerd and runc)`;
  if (process.getuid?.() !== 0) return 'containerd needs root';
  return null;
}

async function waitFor(what, check, timeoutMs, logFile) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) {
      const log = logFile && fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').split('\n').slice(-30).join('\n') : '';
      throw new Error(`${what} did not happen within ${timeoutMs} ms\n${log}`);
    }
    await sleep(50);
  }
}

function waitExit(child, timeoutMs) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), timeoutMs);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

/** `dmfs snapshotter --root ROOT --socket SOCKET` as a child; resolves once it listens. */
async function startSnapshotter(root, socket, logFile) {
  const out = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, [DMFS_BIN, 'snapshotter', '--root', root, '--socket', socket], {
    stdio: ['ignore', out, out],
    env: { ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '16' },
  });
  fs.closeSync(out);
  let exited = false;
  child.once('exit', () => (exited = true));
  await waitFor('the dmfs snapshotter listening', () => {
    if (exited) throw new Error(`dmfs snapshotter exited\n${fs.readFileSync(logFile, 'utf8')}`);
    return fs.readFileSync(logFile, 'utf8').includes(`listening on ${socket}`);
  }, 60_000, logFile);
  return {
    child,
    pid: child.pid,
    /** SIGTERM, then wait: the snapshotter unmounts every snapshot before it exits. */
    async stop() {
      if (exited) return;
      child.kill('SIGTERM');
      if (!(await waitExit(child, 30_000))) {
        child.kill('SIGKILL');
        await waitExit(child, 5_000);
      }
    },
  };
}

/** Writes DIR/config.toml: private root, state and sockets, the CRI plugin off, the dmfs proxy snapshotter. */
function writeConfig(dir, snapshotterSocket) {
  const toml = [
    'version = 2',
    `root = ${JSON.stringify(path.join(dir, 'root'))}`,
    `state = ${JSON.stringify(path.join(dir, 'state'))}`,
    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
    '',
    '[grpc]',
    `  address = ${JSON.stringify(path.join(dir, 'containerd.sock'))}`,
    '',
    '[ttrpc]',
    `  address = ${JSON.stringify(path.join(dir, 'containerd.sock.ttrpc'))}`,
    '',
    '[debug]',
    `  address = ${JSON.stringify(path.join(dir, 'debug.sock'))}`,
    '',
    '[proxy_plugins]',
    '  [proxy_plugins.dmfs]',
    '    type = "snapshot"',
    `    address = ${JSON.stringify(snapshotterSocket)}`,
    '',
  ].join('\n');
  const file = path.join(dir, 'config.toml');
  fs.writeFileSync(file, toml);
  return file;
}

/** A containerd of its own under dir (config, root, state, sockets, log); start() resolves once it answers. */
class PrivateContainerd {
  constructor(dir, snapshotterSocket) {
    this.dir = dir;
    fs.mkdirSync(dir, { recursive: true });
    this.config = writeConfig(dir, snapshotterSocket);
    this.address = path.join(dir, 'containerd.sock');
    this.logFile = path.join(dir, 'containerd.log');
    this.child = null;
  }

  async start() {
    const out = fs.openSync(this.logFile, 'a');
    this.child = spawn('containerd', ['--config', this.config, '--address', this.address, '--root', path.join(this.dir, 'root'), '--state', path.join(this.dir, 'state')], { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    const child = this.child;
    await waitFor('containerd answering', () => {
      if (child.exitCode !== null) throw new Error(`containerd exited ${child.exitCode}\n${fs.readFileSync(this.logFile, 'utf8').slice(-3000)}`);
      return spawnSync('ctr', ['-a', this.address, 'version'], { stdio: 'ignore', timeout: 5000 }).status === 0;
    }, 60_000, this.logFile);
  }

  /** SIGTERM (containers keep running under their shims), then wait. */
  async stop() {
    if (!this.child) return;
    const child = this.child;
    this.child = null;
    child.kill('SIGTERM');
    if (!(await waitExit(child, 20_000))) {
      child.kill('SIGKILL');
      await waitExit(child, 5_000);
    }
  }

  /**
   * `ctr -a ADDRESS -n NS ARGS`: { status, stdout, stderr } (never throws). `run` and
   * `task exec` get this containerd's own runc root and FIFO directory (ctr's defaults are
   * under /run/containerd, shared with the host's).
   */
  ctr(args, { ns = 'test', input, timeoutMs = 300_000 } = {}) {
    const own = ['--fifo-dir', path.join(this.dir, 'fifo')];
    if (args[0] === 'run') args = ['run', '--runc-root', path.join(this.dir, 'runc'), ...own, ...args.slice(1)];
    else if (args[0] === 'task' && args[1] === 'exec') args = ['task', 'exec', ...own, ...args.slice(2)];
    const r = spawnSync('ctr', ['-a', this.address, '-n', ns, ...args], { encoding: 'utf8', input, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
    return { status: r.status, stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + (r.error ? String(r.error) : '') };
  }

  /** ctr that must succeed: its stdout. */
  ctrOk(args, opts) {
    const r = this.ctr(args, opts);
    if (r.status !== 0) throw new Error(`ctr ${args.join(' ')} exited ${r.status}: ${r.stderr}${r.stdout}`);
    return r.stdout;
  }

  /** Kills every task of namespace ns and removes its containers (tear-down). */
  cleanupNamespace(ns = 'test') {
    for (const line of this.ctr(['task', 'ls', '-q'], { ns }).stdout.split('\n').filter(Boolean)) {
      this.ctr(['task', 'kill', '-s', 'SIGKILL', line], { ns });
      this.ctr(['task', 'delete', '-f', line], { ns });
    }
    for (const line of this.ctr(['container', 'ls', '-q'], { ns }).stdout.split('\n').filter(Boolean)) this.ctr(['container', 'rm', line], { ns });
  }
}

function sha256File(file) {
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(1 << 20);
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/**
 * An OCI image archive (what `ctr image import` takes) of one uncompressed layer holding
 * `tree` (numeric owners as on disk), named `name` (`io.containerd.image.name`), its
 * processes run as `user` (the config's User, e.g. '65534:65534') when given. Returns
 * { archive, diffId, sizeBytes }.
 */
function buildOciArchive(tree, name, workDir, { user = '' } = {}) {
  const layout = path.join(workDir, 'layout');
  const blobs = path.join(layout, 'blobs', 'sha256');
  fs.rmSync(layout, { recursive: true, force: true });
  fs.mkdirSync(blobs, { recursive: true });
  const layerTar = path.join(workDir, 'layer.tar');
  const tar = spawnSync('tar', ['--numeric-owner', '--xattrs', '-cf', layerTar, '-C', tree, '.'], { encoding: 'utf8' });
  if (tar.status !== 0) throw new Error(`tar failed: ${tar.stderr}`);
  const layerHex = sha256File(layerTar);
  const layerBytes = fs.statSync(layerTar).size;
  fs.renameSync(layerTar, path.join(blobs, layerHex));
  const put = (obj) => {
    const data = Buffer.from(JSON.stringify(obj));
    const hex = crypto.createHash('sha256').update(data).digest('hex');
    fs.writeFileSync(path.join(blobs, hex), data);
    return { digest: `sha256:${hex}`, size: data.length };
  };
  const config = put({
    architecture: process.arch === 'arm64' ? 'arm64' : 'amd64',
    os: 'linux',
    config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['sh'], WorkingDir: '/', ...(user ? { User: user } : {}) },
    rootfs: { type: 'layers', diff_ids: [`sha256:${layerHex}`] },
    history: [{ created_by: 'dmfs test: tar of a tree' }],
  });
  const manifest = put({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: `sha256:${layerHex}`, size: layerBytes }],
  });
  fs.writeFileSync(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  fs.writeFileSync(path.join(layout, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': name.split(':').pop() } }],
  }));
  const archive = path.join(workDir, `image-${crypto.createHash('sha256').update(name).digest('hex').slice(0, 8)}.tar`);
  const pack = spawnSync('tar', ['-cf', archive, '-C', layout, '.'], { encoding: 'utf8' });
  if (pack.status !== 0) throw new Error(`tar failed: ${pack.stderr}`);
  return { archive, diffId: `sha256:${layerHex}`, sizeBytes: layerBytes };
}

/** A busybox-static root file system: /bin/busybox and a link per applet, /etc/passwd with nobody, /tmp 1777. */
function buildBusyboxTree(dir) {
  const busybox = spawnSync('sh', ['-c', 'command -v busybox'], { encoding: 'utf8' }).stdout.trim();
  if (!busybox) throw new Error('busybox is missing (mount-helpers/setup-host installs busybox-static)');
  fs.rmSync(dir, { recursive: true, force: true });
  for (const d of ['bin', 'etc', 'tmp', 'root', 'proc', 'sys', 'dev', 'home', 'var/tmp']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  fs.chmodSync(path.join(dir, 'tmp'), 0o1777);
  fs.copyFileSync(busybox, path.join(dir, 'bin', 'busybox'));
  fs.chmodSync(path.join(dir, 'bin', 'busybox'), 0o755);
  const applets = spawnSync(busybox, ['--list'], { encoding: 'utf8' }).stdout.split('\n').filter((a) => /^[a-z0-9_.[-]+$/.test(a) && a !== 'busybox');
  for (const a of applets) fs.symlinkSync('busybox', path.join(dir, 'bin', a));
  fs.writeFileSync(path.join(dir, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n');
  fs.writeFileSync(path.join(dir, 'etc', 'group'), 'root:x:0:\nnogroup:x:65534:\n');
  fs.writeFileSync(path.join(dir, 'etc', 'motd'), 'built by the dmfs containerd test\n');
  return dir;
}

/** Every mount whose source or mountpoint lies under dir (from /proc/self/mountinfo). */
function mountsUnder(dir) {
  const out = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length < 5) continue;
    const mp = f[4].replace(/\\040/g, ' ');
    if (mp === dir || mp.startsWith(dir + '/')) out.push(mp);
  }
  return out;
}

/** Lazily detaches every mount under dir, deepest first (tear-down after a failure). */
function unmountUnder(dir) {
  for (const mp of mountsUnder(dir).sort((a, b) => b.length - a.length)) spawnSync('umount', ['-l', mp], { stdio: 'ignore' });
}

module.exports = {
  containerdProblem, startSnapshotter, PrivateContainerd, buildOciArchive, buildBusyboxTree, mountsUnder, unmountUnder, sleep, DMFS_BIN,
};
