'use strict';
// The data every system under test sees: a Debian rootfs (debootstrap minbase, or a
// generated tree of the same shape when no Debian mirror answers) and large files of
// pseudo-random bytes. Built once into the cache directory and reused across runs.
const fs = require('node:fs');
const path = require('node:path');
const { run, tryRun, rng, writeRandomFile, MiB } = require('./util');

const SUITE = 'bookworm';

/** The Debian mirror apt is configured with (deb822 or one-line format), else deb.debian.org. */
function aptMirror() {
  const candidates = [];
  const dir = '/etc/apt/sources.list.d';
  try {
    for (const f of fs.readdirSync(dir)) if (/\.(sources|list)$/.test(f)) candidates.push(path.join(dir, f));
  } catch {
    /* none */
  }
  candidates.unshift('/etc/apt/sources.list');
  for (const f of candidates) {
    let text;
    try {
      text = fs.readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    const uri = text.match(/^URIs:\s*(\S*\/debian)\/?\s*$/m) ?? text.match(/^deb\s+(?:\[[^\]]*\]\s+)?(\S*\/debian)\/?\s+\S+/m);
    if (uri) return uri[1];
  }
  return 'http://deb.debian.org/debian';
}

function countTree(dir) {
  let entries = 0;
  let apparentBytes = 0;
  const stack = [dir];
  while (stack.length) {
    const d = stack.pop();
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      entries++;
      const p = path.join(d, e.name);
      if (e.isDirectory()) stack.push(p);
      else if (e.isFile()) apparentBytes += fs.lstatSync(p).size;
    }
  }
  return { entries, apparentBytes };
}

/** debootstrap --variant=minbase into dir; true on success. */
function debootstrap(dir, log) {
  if (!tryRun('sh', ['-c', 'command -v debootstrap'])) {
    log('debootstrap missing: apt-get install -y debootstrap');
    tryRun('timeout', ['300', 'apt-get', 'install', '-y', '-q', 'debootstrap'], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  }
  if (!tryRun('sh', ['-c', 'command -v debootstrap'])) return false;
  const mirror = aptMirror();
  log(`debootstrap --variant=minbase ${SUITE} from ${mirror} (once; cached)`);
  fs.rmSync(dir, { recursive: true, force: true });
  const out = tryRun('timeout', ['900', 'debootstrap', '--variant=minbase', SUITE, dir, mirror]);
  if (out === null) {
    log('debootstrap failed (mirror unreachable?); generating a rootfs-like tree instead');
    fs.rmSync(dir, { recursive: true, force: true });
    return false;
  }
  return true;
}

/**
 * A generated tree shaped like a Debian minbase rootfs: ~785 directories 3-7 deep,
 * ~5,330 files, ~650 symlinks, a few hard links; file sizes log-normal with the median
 * (2.2 KiB) and 90th percentile (51 KiB) of bookworm minbase, capped at 48 MiB.
 */
function generateTree(dir, seed = 6800) {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const rand = rng(seed);
  const gauss = () => Math.sqrt(-2 * Math.log(rand() || 1e-12)) * Math.cos(2 * Math.PI * rand());
  const dirs = [dir];
  const top = ['bin', 'etc', 'lib', 'usr', 'var', 'sbin', 'opt', 'srv', 'root', 'home', 'tmp', 'run', 'boot', 'mnt', 'media'];
  for (const t of top) {
    fs.mkdirSync(path.join(dir, t));
    dirs.push(path.join(dir, t));
  }
  while (dirs.length < 785) {
    const parent = dirs[Math.floor(Math.pow(rand(), 0.7) * dirs.length)];
    if (parent.split('/').length - dir.split('/').length >= 7) continue;
    const p = path.join(parent, `d${dirs.length.toString(36)}`);
    fs.mkdirSync(p);
    dirs.push(p);
  }
  const chunk = Buffer.alloc(MiB);
  const files = [];
  for (let i = 0; i < 5330; i++) {
    const size = Math.min(48 * MiB, Math.round(2176 * Math.exp(2.48 * gauss())));
    const p = path.join(dirs[1 + Math.floor(rand() * (dirs.length - 1))], `f${i.toString(36)}.${['so', 'conf', 'txt', 'gz', 'py', 'pm', ''][i % 7]}`);
    const fd = fs.openSync(p, 'w', rand() < 0.2 ? 0o755 : 0o644);
    for (let off = 0; off < size; off += MiB) {
      for (let k = 0; k < Math.min(MiB, size - off); k += 4) chunk.writeUInt32LE((rand() * 4294967296) >>> 0, k);
      fs.writeSync(fd, chunk, 0, Math.min(MiB, size - off));
    }
    fs.closeSync(fd);
    files.push(p);
  }
  for (let i = 0; i < 650; i++) {
    const target = files[Math.floor(rand() * files.length)];
    fs.symlinkSync(path.relative(dirs[0], target), path.join(dirs[1 + Math.floor(rand() * (dirs.length - 1))], `l${i.toString(36)}`));
  }
  for (let i = 0; i < 4; i++) fs.linkSync(files[i * 97], path.join(dirs[1], `h${i}`));
  fs.writeFileSync(path.join(dir, 'etc', 'os-release'), 'ID=generated\n');
}

/**
 * The rootfs: { dir, tar, source, entries, apparentBytes }. Cached under cacheDir
 * (rootfs/, rootfs.tar, rootfs.json); rebuilt when missing.
 */
function ensureRootfs(cacheDir, log) {
  fs.mkdirSync(cacheDir, { recursive: true });
  const dir = path.join(cacheDir, 'rootfs');
  const tar = path.join(cacheDir, 'rootfs.tar');
  const meta = path.join(cacheDir, 'rootfs.json');
  if (fs.existsSync(meta) && fs.existsSync(tar) && fs.existsSync(dir)) return { dir, tar, ...JSON.parse(fs.readFileSync(meta, 'utf8')) };
  let source;
  if (debootstrap(dir, log)) source = `debootstrap --variant=minbase ${SUITE} (${aptMirror()})`;
  else {
    generateTree(dir);
    source = 'generated rootfs-like tree (bench/lib/dataset.js generateTree: minbase shape and size distribution)';
  }
  // Numeric owners; the tar is what the metadata workload extracts.
  run('tar', ['--numeric-owner', '-cf', tar, '-C', dir, '.']);
  const { entries, apparentBytes } = countTree(dir);
  const info = { source, entries, apparentBytes };
  fs.writeFileSync(meta, JSON.stringify(info, null, 2) + '\n');
  return { dir, tar, ...info };
}

/** A file of sizeBytes pseudo-random bytes in the cache (reused when the size matches). */
function ensureRandomFile(cacheDir, name, sizeBytes, seed) {
  const file = path.join(cacheDir, name);
  let ok = false;
  try {
    ok = fs.statSync(file).size === sizeBytes;
  } catch {
    ok = false;
  }
  if (!ok) writeRandomFile(file, sizeBytes, seed);
  return file;
}

module.exports = { ensureRootfs, ensureRandomFile, countTree, aptMirror };
