'use strict';
// Drives dmfs as a user would: the CLI (node bin/dmfs.js) for pools, layers and mounts;
// the Node API (dist/) only to build image layers when `dmfs import` is not available.
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { run, timeMsSync, MiB, prngFill } = require('./util');

// The dmfs tree under test: this checkout, or another one (bench/run.js --dmfs DIR) to
// compare two builds on one machine.
let ROOT = path.join(__dirname, '..', '..');
let BIN = path.join(ROOT, 'bin', 'dmfs.js');

function useTree(dir) {
  ROOT = path.resolve(dir);
  BIN = path.join(ROOT, 'bin', 'dmfs.js');
}

class Dmfs {
  /**
   * @param {string} root pool directory
   * @param {{ cpuProfDir?: string }} opts cpuProfDir: CPU profiles of the mount daemons go
   *   there (bench/lib/cpu-prof-preload.js, preloaded through NODE_OPTIONS, which the
   *   daemon inherits from `dmfs mount`).
   */
  constructor(root, opts = {}) {
    this.root = root;
    this.env = { ...process.env };
    if (opts.cpuProfDir) {
      this.env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} --require ${path.join(__dirname, 'cpu-prof-preload.js')}`.trim();
      this.env.DMFS_BENCH_CPU_PROF_DIR = opts.cpuProfDir;
    }
    this.mounts = new Set();
  }

  /** Runs `dmfs ARGS --root ROOT`; returns stdout (parsed with --json). */
  cli(args, { json = false } = {}) {
    const full = [BIN, ...args, '--root', this.root, ...(json ? ['--json'] : [])];
    const out = run(process.execPath, full, { env: this.env });
    return json ? JSON.parse(out) : out;
  }

  /** Wall time of one CLI call, with its output. */
  timedCli(args, opts) {
    let out;
    const ms = timeMsSync(() => {
      out = this.cli(args, opts);
    });
    return { ms, out };
  }

  static hasImportCommand() {
    const r = spawnSync(process.execPath, [BIN, 'import', '--help'], { encoding: 'utf8' });
    return r.status === 0;
  }

  poolCreate(sizeArg, opts = []) {
    fs.mkdirSync(this.root, { recursive: true });
    return this.cli(['pool', 'create', '--size', sizeArg, ...opts.flatMap((o) => ['--opt', o])]);
  }

  poolDestroy() {
    for (const m of [...this.mounts]) this.umount(m, { ignoreErrors: true });
    try {
      this.cli(['pool', 'destroy', '--force']);
    } catch {
      /* already gone */
    }
    fs.rmSync(this.root, { recursive: true, force: true });
  }

  info() {
    return this.cli(['info'], { json: true });
  }

  inspect(name) {
    return this.cli(['inspect', name], { json: true });
  }

  /** `dmfs create NAME --from PARENT`: { ms (CLI wall), createMs (inside the CLI, pool open..close) }. */
  create(name, from) {
    const { ms, out } = this.timedCli(['create', name, '--from', from], { json: true });
    return { ms, createMs: out.createMs };
  }

  /** `dmfs mount NAME MNT` (returns once the mount is live): wall ms. */
  mount(name, mnt) {
    fs.mkdirSync(mnt, { recursive: true });
    const { ms } = this.timedCli(['mount', name, mnt]);
    this.mounts.add(mnt);
    return ms;
  }

  /** `dmfs umount MNT` (flushes, waits for the daemon): wall ms. */
  umount(mnt, { ignoreErrors = false } = {}) {
    try {
      const { ms } = this.timedCli(['umount', mnt]);
      this.mounts.delete(mnt);
      return ms;
    } catch (err) {
      if (!ignoreErrors) throw err;
      spawnSync('umount', ['-l', mnt]);
      this.mounts.delete(mnt);
      return NaN;
    }
  }

  rm(...names) {
    return this.cli(['rm', ...names]);
  }

  /** The daemon pid of a mount (from its run record), or null. */
  daemonPid(mnt) {
    const runDir = path.join(this.root, 'run');
    try {
      for (const f of fs.readdirSync(runDir)) {
        if (!f.endsWith('.json')) continue;
        try {
          const rec = JSON.parse(fs.readFileSync(path.join(runDir, f), 'utf8'));
          if (rec.mountpoint === path.resolve(mnt)) return rec.pid;
        } catch {
          /* not a record */
        }
      }
    } catch {
      /* no run dir */
    }
    return null;
  }

  /**
   * An image layer NAME holding the tree at srcDir: `dmfs import` when the CLI has it,
   * else the Node API (createLayer building → write → sealLayer). Returns how.
   */
  async importTree(srcDir, name) {
    if (Dmfs.hasImportCommand()) {
      this.cli(['import', srcDir, '--name', name]);
      return 'dmfs import';
    }
    await this.withPool((pool) => buildImageFromTree(pool, srcDir, name, 'base'));
    return 'the Node API (dmfs import not available)';
  }

  /** An image layer NAME on image PARENT holding the tree at srcDir (Node API: import makes layers on base only). */
  async addImageLayer(srcDir, name, parent) {
    await this.withPool((pool) => buildImageFromTree(pool, srcDir, name, parent));
  }

  /** nr container layers on parent through the Node API, in one process. */
  async createMany(prefix, nr, parent) {
    await this.withPool(async (pool) => {
      for (let i = 0; i < nr; i++) await pool.store.createLayer(`${prefix}${i}`, { kind: 'container', parent });
    });
  }

  /** An image layer NAME with nrFiles files of fileBytes pseudo-random bytes each, through the Node API. */
  async buildRandomImage(name, nrFiles, fileBytes, seed) {
    await this.withPool(async (pool) => {
      const { S_IFREG } = api();
      await pool.store.createLayer(name, { kind: 'image', building: true });
      const lfs = await pool.store.openLayer(name);
      const dir = await lfs.mkdir(lfs.rootIno, 'data', { mode: 0o755, uid: 0, gid: 0 });
      const chunk = Buffer.alloc(MiB);
      for (let i = 0; i < nrFiles; i++) {
        const f = await lfs.mknod(dir.ino, `f${i}.bin`, { mode: S_IFREG | 0o644, uid: 0, gid: 0 });
        for (let off = 0; off < fileBytes; off += MiB) {
          prngFill(chunk, seed + i * 100003 + off / MiB);
          await lfs.write(f.ino, chunk.subarray(0, Math.min(MiB, fileBytes - off)), off);
        }
      }
      await lfs.close();
      await pool.store.sealLayer(name);
    });
  }

  async withPool(fn) {
    const { Pool } = api();
    const pool = await Pool.open(this.root);
    try {
      return await fn(pool);
    } finally {
      await pool.close();
    }
  }
}

function api() {
  // eslint-disable-next-line global-require
  return require(path.join(ROOT, 'dist'));
}

/**
 * Copies a directory tree into a new image layer with the Node API: every entry type,
 * mode, owner, ns timestamps, hard links (by source inode). Extended attributes are not
 * copied (Node has no xattr call); a minbase rootfs has none.
 */
async function buildImageFromTree(pool, srcDir, name, parent) {
  const { S_IFREG, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK } = api();
  await pool.store.createLayer(name, { kind: 'image', parent, building: true });
  const lfs = await pool.store.openLayer(name);
  const links = new Map();
  const buf = Buffer.alloc(MiB);
  const attrs = (st) => ({ mode: Number(st.mode) & 0o7777, uid: Number(st.uid), gid: Number(st.gid), atimeNs: st.atimeNs, mtimeNs: st.mtimeNs });
  async function copyDir(src, dirIno) {
    const names = fs.readdirSync(src).sort();
    for (const n of names) {
      const p = path.join(src, n);
      const st = fs.lstatSync(p, { bigint: true });
      const owner = { uid: Number(st.uid), gid: Number(st.gid) };
      const mode = Number(st.mode);
      const key = `${st.dev}:${st.ino}`;
      if (st.isDirectory()) {
        const existing = await lfs.lookup(dirIno, n);
        const d = existing && existing.kind === 'dir' ? existing : await lfs.mkdir(dirIno, n, { mode: mode & 0o7777, ...owner });
        await copyDir(p, d.ino);
        await lfs.setattr(d.ino, attrs(st));
      } else if (st.isSymbolicLink()) {
        const l = await lfs.symlink(dirIno, n, fs.readlinkSync(p), owner);
        await lfs.setattr(l.ino, { atimeNs: st.atimeNs, mtimeNs: st.mtimeNs });
      } else if (!st.isDirectory() && st.nlink > 1n && links.has(key)) {
        await lfs.link(links.get(key), dirIno, n);
      } else if (st.isFile()) {
        const f = await lfs.mknod(dirIno, n, { mode: S_IFREG | (mode & 0o7777), ...owner });
        const fd = fs.openSync(p, 'r');
        try {
          for (let off = 0; ; ) {
            const got = fs.readSync(fd, buf, 0, buf.length, off);
            if (got <= 0) break;
            await lfs.write(f.ino, buf.subarray(0, got), off);
            off += got;
          }
        } finally {
          fs.closeSync(fd);
        }
        await lfs.setattr(f.ino, attrs(st));
        if (st.nlink > 1n) links.set(key, f.ino);
      } else {
        const type = st.isCharacterDevice() ? S_IFCHR : st.isBlockDevice() ? S_IFBLK : st.isFIFO() ? S_IFIFO : S_IFSOCK;
        const node = await lfs.mknod(dirIno, n, { mode: type | (mode & 0o7777), ...owner, rdev: Number(st.rdev) });
        await lfs.setattr(node.ino, attrs(st));
        if (st.nlink > 1n) links.set(key, node.ino);
      }
    }
  }
  await copyDir(srcDir, lfs.rootIno);
  const rootSt = fs.lstatSync(srcDir, { bigint: true });
  await lfs.setattr(lfs.rootIno, attrs(rootSt));
  await lfs.close();
  await pool.store.sealLayer(name);
}

module.exports = { Dmfs, useTree, tree: () => ROOT };
