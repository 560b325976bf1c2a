#!/usr/bin/env node
'use strict';
/**
 * Makes this checkout runnable: host packages (mount-helpers/setup-host), node_modules in
 * step with package-lock.json, the patched fuse-native binding, the native addon, dist/.
 * Run before `npm test`, `npm run demo` and `npm run bench`; fast when nothing is to do.
 *
 *   node scripts/setup.js [--check] [--quiet]
 *     --check   change nothing; exit 1 when something is missing or stale
 *
 * As root it installs what is missing (apt). As non-root it prints what to install and
 * carries on: unit tests run anyway, FUSE tests skip and say why.
 */
const { spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const CHECK = process.argv.includes('--check');
const QUIET = process.argv.includes('--quiet');
const IS_ROOT = typeof process.getuid === 'function' && process.getuid() === 0;
const t0 = Date.now();

let problems = 0;
const log = (msg) => process.stderr.write(`setup: ${msg}\n`);
const note = (msg) => {
  if (!QUIET) log(msg);
};

function runStep(what, cmd, args, opts = {}) {
  log(`${what}: ${[cmd, ...args].join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: ROOT, stdio: 'inherit', ...opts });
  if (r.status !== 0) {
    log(`${what} failed (${r.error ? r.error.message : `exit ${r.status}`})`);
    process.exit(r.status || 1);
  }
}

// ---- 1. host packages, /dev/fuse, fusermount -------------------------------------------------
function host() {
  const script = path.join(ROOT, 'mount-helpers', 'setup-host');
  const args = [script, '--quiet'];
  if (CHECK || !IS_ROOT) args.push('--check');
  else args.push('--install-helpers');
  const r = spawnSync('sh', args, { stdio: 'inherit' });
  if (r.status === 0) return;
  if (r.status === 3) {
    problems++;
    if (!IS_ROOT && !CHECK) log('not root: continuing; FUSE tests and some benches will skip until the host is set up');
    return;
  }
  log(`host set-up failed (exit ${r.status})`);
  if (!CHECK) process.exit(r.status || 1);
  problems++;
}

// ---- 2. node_modules vs package-lock.json -----------------------------------------------------
function readJson(file) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return null;
  }
}

/** Why node_modules does not match package-lock.json, or null when it does. */
function nodeModulesStale() {
  const lock = readJson(path.join(ROOT, 'package-lock.json'));
  const hidden = readJson(path.join(ROOT, 'node_modules', '.package-lock.json'));
  if (!fs.existsSync(path.join(ROOT, 'node_modules'))) return 'node_modules is missing';
  if (!lock) return null; // no lock file: nothing to compare with
  if (!hidden) return 'node_modules was not installed by npm (no .package-lock.json)';
  const have = hidden.packages || {};
  for (const [key, want] of Object.entries(lock.packages || {})) {
    if (!key) continue;
    const got = have[key];
    if (!got) {
      // Platform-specific optional packages (other OS/CPU) are never installed.
      if (want.optional) continue;
      return `${key.replace(/^node_modules\//, '')} is not installed`;
    }
    if (want.version && got.version !== want.version) return `${key.replace(/^node_modules\//, '')} is ${got.version}, lock wants ${want.version}`;
  }
  const pkg = readJson(path.join(ROOT, 'package.json')) || {};
  const rootLock = (lock.packages && lock.packages['']) || {};
  for (const field of ['dependencies', 'devDependencies']) {
    for (const [name, range] of Object.entries(pkg[field] || {})) {
      if (!rootLock[field] || rootLock[field][name] !== range) return `package-lock.json is out of date for ${name}`;
    }
  }
  return null;
}

function nodeModules() {
  const why = nodeModulesStale();
  if (!why) return;
  if (CHECK) {
    log(`node_modules: ${why}`);
    problems++;
    return;
  }
  const lockInSync = !/out of date/.test(why) && fs.existsSync(path.join(ROOT, 'package-lock.json'));
  runStep(`node_modules (${why})`, 'npm', lockInSync ? ['ci', '--no-audit', '--no-fund'] : ['install', '--no-audit', '--no-fund']);
}

// ---- 3. patched fuse-native, native addon -----------------------------------------------------
function fuseNative() {
  const patcher = require('./patch-fuse-native.js');
  const dir = patcher.findFuseNative(ROOT);
  const st = patcher.status(dir);
  if (st.built) return;
  if (CHECK) {
    log(`fuse-native: ${st.present ? 'not patched/built' : 'not installed'}`);
    problems++;
    return;
  }
  runStep('fuse-native patch', process.execPath, [path.join(__dirname, 'patch-fuse-native.js'), '--strict']);
}

function onPath(name) {
  return (process.env.PATH || '').split(path.delimiter).some((d) => {
    try {
      fs.accessSync(path.join(d, name), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

function nativeAddon() {
  const script = path.join(__dirname, 'build-native.js');
  if (!fs.existsSync(script)) return;
  const out = path.join(ROOT, 'native', 'dmfs_native.node');
  if (fs.existsSync(out)) return;
  if (!onPath('cargo')) {
    note('native addon: not built and no cargo here; dmfs uses its TypeScript fallback');
    return;
  }
  if (CHECK) {
    log('native addon: not built');
    problems++;
    return;
  }
  // Fails soft by itself (prints why, exits 0).
  runStep('native addon', process.execPath, [script]);
}

// ---- 4. dist/ ----------------------------------------------------------------------------------
const STAMP = path.join(ROOT, 'dist', '.dmfs-build-stamp');

/** Fingerprint of what tsc compiles: every file under src/ (path, size, mtime) and the configs. */
function sourceFingerprint() {
  const h = crypto.createHash('sha256');
  const visit = (dir) => {
    let entries;
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) visit(p);
      else if (e.isFile()) {
        const st = fs.statSync(p);
        h.update(`${path.relative(ROOT, p)}\0${st.size}\0${st.mtimeMs}\n`);
      }
    }
  };
  visit(path.join(ROOT, 'src'));
  for (const f of ['tsconfig.json', 'package.json']) {
    try {
      h.update(fs.readFileSync(path.join(ROOT, f)));
    } catch { /* absent */ }
  }
  return h.digest('hex');
}

function newestSourceMtimeMs() {
  let newest = 0;
  const visit = (dir) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) visit(p);
      else newest = Math.max(newest, fs.statSync(p).mtimeMs);
    }
  };
  visit(path.join(ROOT, 'src'));
  for (const f of ['tsconfig.json', 'package.json']) newest = Math.max(newest, fs.statSync(path.join(ROOT, f)).mtimeMs);
  return newest;
}

function dist() {
  const want = sourceFingerprint();
  let have = null;
  try {
    have = fs.readFileSync(STAMP, 'utf8').trim();
  } catch { /* no stamp */ }
  const mainJs = path.join(ROOT, 'dist', 'cli', 'main.js');
  if (have === want && fs.existsSync(mainJs)) return;
  // No stamp yet (e.g. npm ci just ran `prepare`): fresh when built after every source.
  if (have === null && fs.existsSync(mainJs) && fs.statSync(mainJs).mtimeMs >= newestSourceMtimeMs()) {
    if (!CHECK) fs.writeFileSync(STAMP, `${want}\n`);
    return;
  }
  if (CHECK) {
    log('dist/: stale (npm run build)');
    problems++;
    return;
  }
  runStep('dist/ is stale', 'npm', ['run', '--silent', 'build']);
  fs.writeFileSync(STAMP, `${want}\n`);
}

host();
nodeModules();
fuseNative();
nativeAddon();
dist();
if (CHECK && problems) process.exit(1);
note(`ready (${Date.now() - t0} ms)`);
