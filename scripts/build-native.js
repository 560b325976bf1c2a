#!/usr/bin/env node
'use strict';
// Builds the Rust addon (native/) into native/dmfs_native.node. Run by scripts/postinstall.js
// and by hand. Offline and locked: the crate has no dependencies and crates.io is not used.
//
// Fails soft: without cargo, or when the build or the load check fails, it prints one line
//   dmfs: native addon not built (REASON); using the TypeScript fallback
// and exits 0, since dmfs works without the addon. With DMFS_NATIVE=required it exits 1
// instead (and shows cargo's output). DMFS_NATIVE=off skips the build.
// Skips the build when dmfs_native.node is newer than every source of the crate.
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const nativeDir = path.join(__dirname, '..', 'native');
const outFile = path.join(nativeDir, 'dmfs_native.node');
const targetDir = path.join(nativeDir, 'target');
const logFile = path.join(targetDir, 'build-native.log');
const required = process.env.DMFS_NATIVE === 'required';

function fail(reason, detail) {
  if (required) {
    if (detail) process.stderr.write(detail.endsWith('\n') ? detail : `${detail}\n`);
    process.stderr.write(`dmfs: native addon not built (${reason}) and DMFS_NATIVE=required\n`);
    process.exit(1);
  }
  process.stderr.write(`dmfs: native addon not built (${reason}); using the TypeScript fallback\n`);
  process.exit(0);
}

/** Newest modification time (ms) of the crate's sources: manifest, lock, build config, src/. */
function newestSourceMtimeMs() {
  let newest = 0;
  const visit = (p) => {
    let st;
    try {
      st = fs.statSync(p);
    } catch {
      return;
    }
    if (st.isDirectory()) {
      for (const e of fs.readdirSync(p)) visit(path.join(p, e));
    } else {
      newest = Math.max(newest, st.mtimeMs);
    }
  };
  for (const p of ['Cargo.toml', 'Cargo.lock', 'build.rs', '.cargo', 'src']) visit(path.join(nativeDir, p));
  return newest;
}

function findCargo() {
  const candidates = [process.env.CARGO, 'cargo', path.join(os.homedir(), '.cargo', 'bin', 'cargo')].filter(Boolean);
  for (const c of candidates) {
    const r = spawnSync(c, ['--version'], { encoding: 'utf8' });
    if (r.status === 0) return c;
  }
  return null;
}

function libName() {
  if (process.platform === 'darwin') return 'libdmfs_native.dylib';
  if (process.platform === 'win32') return 'dmfs_native.dll';
  return 'libdmfs_native.so';
}

function main() {
  if (process.env.DMFS_NATIVE === 'off') fail('DMFS_NATIVE=off');
  if (!fs.existsSync(path.join(nativeDir, 'Cargo.toml'))) fail('native/Cargo.toml missing');
  if (process.platform !== 'linux') fail(`the addon supports Linux only, this is ${process.platform}`);

  try {
    if (fs.statSync(outFile).mtimeMs > newestSourceMtimeMs()) return; // up to date
  } catch {
    // not built yet
  }

  const cargo = findCargo();
  if (!cargo) fail('cargo not found; install Rust to build it');

  const r = spawnSync(cargo, ['build', '--release', '--offline', '--locked'], {
    cwd: nativeDir,
    encoding: 'utf8',
    env: { ...process.env, CARGO_TARGET_DIR: targetDir },
    maxBuffer: 64 * 1024 * 1024,
  });
  const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  fs.mkdirSync(targetDir, { recursive: true });
  fs.writeFileSync(logFile, output);
  if (r.error) fail(`cargo could not run: ${r.error.message}`);
  if (r.status !== 0) fail(`cargo build failed, see ${path.relative(process.cwd(), logFile)}`, output);

  const built = path.join(targetDir, 'release', libName());
  if (!fs.existsSync(built)) fail(`cargo produced no ${libName()}`);

  // Check it loads in a fresh node before putting it where the loader looks.
  const tmp = path.join(nativeDir, `dmfs_native.tmp-${process.pid}.node`);
  fs.copyFileSync(built, tmp);
  const check = spawnSync(process.execPath, ['-e', 'const a = require(process.argv[1]); if (typeof a.copyRange !== "function") throw new Error("no copyRange export")', tmp], { encoding: 'utf8' });
  if (check.status !== 0) {
    fs.rmSync(tmp, { force: true });
    const first = (check.stderr || '').split('\n').find((l) => /Error/.test(l)) || `exit ${check.status}`;
    fail(`the built addon does not load: ${first.trim()}`, check.stderr);
  }
  fs.renameSync(tmp, outFile);
  process.stderr.write(`dmfs: native addon built: ${path.relative(process.cwd(), outFile)}\n`);
}

main();
