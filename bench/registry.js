#!/usr/bin/env node
'use strict';
// Registry pull and push against a loopback registry (docker-registry, distribution 2.8),
// each against its peers in the same run:
//   pull:  dmfs pull          vs  skopeo copy docker:// → oci: + dmfs import,  vs  skopeo copy alone
//   push:  dmfs push          vs  skopeo copy oci: → docker://  (and vs dmfs save + skopeo copy)
// The image: the bench rootfs (Debian bookworm minbase, bench/lib/dataset.js) as one gzip
// layer, as `dmfs save` writes it. Every timed step is a whole CLI process; each pull goes
// into a fresh pool (its creation not timed), each push into a fresh, empty registry, so
// nothing is skipped or mounted. Medians of --rounds (default 3).
//
//   node bench/registry.js [--rounds N] [--cache DIR] [--dir DIR] [--json FILE]
// Needs root (pool, registry), docker-registry and skopeo (node scripts/setup.js installs them).
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { run, timeMs, median, fmtBytes, loadAvg, sleep } = require('./lib/util');
const { ensureRootfs } = require('./lib/dataset');

const ROOT = path.resolve(__dirname, '..');
const DMFS = [process.execPath, path.join(ROOT, 'bin', 'dmfs.js')];
const REGISTRY_BIN = '/usr/bin/docker-registry';

function parseArgs(argv) {
  const o = { rounds: 3, cache: '/var/tmp/dmfs-bench-cache', dir: '/var/tmp/dmfs-bench-registry', json: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--rounds') o.rounds = Number(argv[++i]);
    else if (a === '--cache') o.cache = argv[++i];
    else if (a === '--dir') o.dir = argv[++i];
    else if (a === '--json') o.json = argv[++i];
    else throw new Error(`unknown option ${a} (see the head of bench/registry.js)`);
  }
  return o;
}

const log = (m) => process.stderr.write(`registry-bench: ${m}\n`);

function dmfs(root, args) {
  return run(DMFS[0], [DMFS[1], ...args, '--root', root]);
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** docker-registry on a free loopback port with its own config and empty storage in `dir`. */
async function startRegistry(dir) {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(path.join(dir, 'data'), { recursive: true });
  const port = await freePort();
  fs.writeFileSync(path.join(dir, 'config.yml'), [
    'version: 0.1', 'log:', '  level: warn', '  accesslog:', '    disabled: true',
    'storage:', '  filesystem:', `    rootdirectory: ${path.join(dir, 'data')}`,
    'http:', `  addr: 127.0.0.1:${port}`, '',
  ].join('\n'));
  const child = spawn(REGISTRY_BIN, ['serve', path.join(dir, 'config.yml')], { stdio: 'ignore' });
  for (let i = 0; i < 300; i++) {
    const up = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => (s.destroy(), resolve(true)));
      s.on('error', () => resolve(false));
    });
    if (up) break;
    await sleep(20);
  }
  return {
    host: `127.0.0.1:${port}`,
    stop: () => new Promise((resolve) => {
      child.once('exit', resolve);
      child.kill('SIGTERM');
    }),
  };
}

function freshPool(dir, name) {
  const root = path.join(dir, name);
  fs.rmSync(root, { recursive: true, force: true });
  dmfs(root, ['pool', 'create', '--size', '8G']);
  return root;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('run as root (pools, registry)');
  for (const bin of [REGISTRY_BIN, '/usr/bin/skopeo']) if (!fs.existsSync(bin)) throw new Error(`${bin} missing: node scripts/setup.js`);
  fs.mkdirSync(opts.dir, { recursive: true });
  const rootfs = ensureRootfs(opts.cache, log);
  log(`image: ${rootfs.source}, ${rootfs.entries} entries, ${fmtBytes(rootfs.apparentBytes)}`);

  // The image: imported once, saved as an OCI layout (one gzip layer).
  const srcPool = freshPool(opts.dir, 'src-pool');
  dmfs(srcPool, ['import', rootfs.tar, '--name', 'debian']);
  const layout = path.join(opts.dir, 'layout');
  fs.rmSync(layout, { recursive: true, force: true });
  const saved = JSON.parse(dmfs(srcPool, ['save', 'debian', '-o', layout, '--ref', 'latest', '--json']));
  const blobBytes = saved.layers.reduce((s, l) => s + l.sizeBytes, 0);
  log(`layout: ${saved.layers.length} layer(s), ${fmtBytes(blobBytes)} compressed`);

  const pullReg = await startRegistry(path.join(opts.dir, 'registry-pull'));
  const ref = `${pullReg.host}/bench/debian:latest`;
  run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${layout}:latest`, `docker://${ref}`]);

  const t = { pull: [], skopeoImport: [], skopeoOnly: [], push: [], skopeoPush: [], savePush: [] };
  for (let r = 0; r < opts.rounds; r++) {
    log(`round ${r + 1}/${opts.rounds} (load ${loadAvg()})`);
    let pool = freshPool(opts.dir, 'pull-pool');
    t.pull.push(await timeMs(() => dmfs(pool, ['pull', ref, '--plain-http'])));

    pool = freshPool(opts.dir, 'import-pool');
    const ociDir = path.join(opts.dir, 'skopeo-oci');
    fs.rmSync(ociDir, { recursive: true, force: true });
    t.skopeoImport.push(await timeMs(() => {
      run('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${ref}`, `oci:${ociDir}:latest`]);
      dmfs(pool, ['import', `${ociDir}:latest`]);
    }));
    fs.rmSync(ociDir, { recursive: true, force: true });
    t.skopeoOnly.push(await timeMs(() => run('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${ref}`, `oci:${ociDir}:latest`])));

    // Pushes: each into an empty registry, so every blob is sent.
    let reg = await startRegistry(path.join(opts.dir, 'registry-push'));
    t.push.push(await timeMs(() => dmfs(srcPool, ['push', 'debian', `${reg.host}/bench/pushed:latest`, '--plain-http'])));
    await reg.stop();
    reg = await startRegistry(path.join(opts.dir, 'registry-push'));
    t.skopeoPush.push(await timeMs(() => run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${layout}:latest`, `docker://${reg.host}/bench/pushed:latest`])));
    await reg.stop();
    reg = await startRegistry(path.join(opts.dir, 'registry-push'));
    const saveDir = path.join(opts.dir, 'save-layout');
    fs.rmSync(saveDir, { recursive: true, force: true });
    t.savePush.push(await timeMs(() => {
      dmfs(srcPool, ['save', 'debian', '-o', saveDir, '--ref', 'latest']);
      run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${saveDir}:latest`, `docker://${reg.host}/bench/pushed:latest`]);
    }));
    await reg.stop();
  }
  await pullReg.stop();

  const m = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, median(v)]));
  const s = (ms) => `${(ms / 1000).toFixed(2)} s`;
  const lines = [
    `image: ${rootfs.source}; ${rootfs.entries} entries, ${fmtBytes(rootfs.apparentBytes)}; 1 gzip layer of ${fmtBytes(blobBytes)}`,
    `rounds: ${opts.rounds} (medians), load ${loadAvg()}`,
    '',
    '| step | time | ratio |',
    '| --- | --- | --- |',
    `| dmfs pull | ${s(m.pull)} | |`,
    `| skopeo copy + dmfs import | ${s(m.skopeoImport)} | pull = ${(m.pull / m.skopeoImport).toFixed(2)}x (target <= 0.8x) |`,
    `| skopeo copy alone | ${s(m.skopeoOnly)} | pull = ${(m.pull / m.skopeoOnly).toFixed(2)}x |`,
    `| dmfs push | ${s(m.push)} | |`,
    `| skopeo copy oci: to the registry | ${s(m.skopeoPush)} | push = ${(m.push / m.skopeoPush).toFixed(2)}x (target <= 1.0x) |`,
    `| dmfs save + skopeo copy | ${s(m.savePush)} | push = ${(m.push / m.savePush).toFixed(2)}x |`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
  if (opts.json) fs.writeFileSync(opts.json, JSON.stringify({ rootfs, blobBytes, times: t, medians: m }, null, 2) + '\n');
}

main().catch((err) => {
  process.stderr.write(`registry-bench: ${err.stack ?? err}\n`);
  process.exitCode = 1;
});
