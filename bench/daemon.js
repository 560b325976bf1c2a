#!/usr/bin/env node
'use strict';
// One service per pool (dmfs daemon) against a process per mount, and against overlayfs and
// fuse-overlayfs, in one run (issue 13's targets):
//   - memory of N mounted containers on one image: total RSS and PSS of every dmfs process
//     (/proc/PID/smaps_rollup), mount processes of their own vs the one daemon;
//   - create -> mounted -> listable (readdir of the new mount answers): median through the
//     Node API (Pool.connect, served by the daemon), through CLI processes (dmfs create +
//     dmfs mount, with and without the daemon), and the peers' mkdir + mount + readdir.
//
//   node bench/daemon.js [--count 100] [--rounds 20] [--dir /var/tmp/dmfs-bench-daemon] [--json FILE]
//   (after npm run build; root, /dev/fuse; fuse-overlayfs optional)
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { run, tryRun, median, loadAvg, MiB } = require('./lib/util');

const REPO = path.join(__dirname, '..');
const CLI = path.join(REPO, 'bin', 'dmfs.js');
const { Pool } = require(path.join(REPO, 'dist', 'api.js'));

function parseArgs(argv) {
  const o = { count: 100, rounds: 20, dir: '/var/tmp/dmfs-bench-daemon', json: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--count') o.count = Number(argv[++i]);
    else if (a === '--rounds') o.rounds = Number(argv[++i]);
    else if (a === '--dir') o.dir = argv[++i];
    else if (a === '--json') o.json = argv[++i];
    else throw new Error(`unknown option ${a} (--count N, --rounds N, --dir DIR, --json FILE)`);
  }
  return o;
}

function memoryOf(pid) {
  const text = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kb = (f) => Number(new RegExp(`^${f}:\\s+(\\d+) kB`, 'm').exec(text)[1]) * 1024;
  return { rss: kb('Rss'), pss: kb('Pss') };
}

function sumMemory(pids) {
  return pids.reduce((acc, pid) => {
    const m = memoryOf(pid);
    return { rss: acc.rss + m.rss, pss: acc.pss + m.pss };
  }, { rss: 0, pss: 0 });
}

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

function main() {
  const o = parseArgs(process.argv.slice(2));
  if (process.getuid() !== 0) throw new Error('needs root (mounts)');
  spawnSync('bash', ['-c', `for m in $(grep -o ' ${o.dir}/[^ ]* \\(fuse[^ ]*\\|overlay\\) ' /proc/self/mounts | cut -d' ' -f2); do umount -l "$m"; done`]);
  fs.rmSync(o.dir, { recursive: true, force: true });
  fs.mkdirSync(o.dir, { recursive: true });
  const root = path.join(o.dir, 'pool');
  const mnt = path.join(o.dir, 'mnt');
  const dmfs = (...args) => run(process.execPath, [CLI, ...args, '--root', root]);
  dmfs('pool', 'create', '--size', '20G');
  dmfs('import', path.join(REPO, 'examples', 'rootfs'), '--name', 'img');
  const results = { loadAverageStart: loadAvg(), count: o.count, rounds: o.rounds };
  console.log(`load average ${results.loadAverageStart}; ${o.count} containers, ${o.rounds} rounds`);

  // 1. Today's shape: a process per mount (no daemon runs).
  const cliNoDaemon = [];
  const pids = [];
  for (let i = 0; i < o.count; i++) {
    const mp = path.join(mnt, `p${i}`);
    const t0 = nowMs();
    dmfs('create', `p${i}`, '--from', 'img');
    pids.push(JSON.parse(dmfs('mount', `p${i}`, mp, '--json')).pid);
    fs.readdirSync(mp);
    if (i < o.rounds) cliNoDaemon.push(nowMs() - t0);
  }
  results.perMountProcesses = { processes: new Set(pids).size, ...sumMemory(pids) };
  console.log(`process per mount: ${pids.length} processes, RSS ${(results.perMountProcesses.rss / MiB).toFixed(0)} MiB, PSS ${(results.perMountProcesses.pss / MiB).toFixed(0)} MiB`);
  for (let i = 0; i < o.count; i++) dmfs('umount', path.join(mnt, `p${i}`));
  results.cliNoDaemonMs = median(cliNoDaemon);

  // 2. One daemon serves them all.
  dmfs('daemon', 'start');
  const status = JSON.parse(dmfs('daemon', 'status', '--json'));
  // The worker serves; the supervisor (when there is one) keeps the descriptors: both count.
  const daemonPids = [status.pid, status.supervisorPid].filter((p) => p !== null);
  return (async () => {
    const client = await Pool.connect(root);
    if (!client.viaDaemon) throw new Error('Pool.connect did not reach the daemon');
    const api = [];
    for (let i = 0; i < o.count; i++) {
      const mp = path.join(mnt, `d${i}`);
      const t0 = nowMs();
      await client.createLayer({ name: `d${i}`, parent: 'img' });
      await client.mount({ layer: `d${i}`, mountpoint: mp });
      fs.readdirSync(mp);
      api.push(nowMs() - t0);
    }
    results.apiViaDaemonMs = median(api);
    results.daemon = { processes: daemonPids.length, ...sumMemory(daemonPids) };
    console.log(`one daemon: ${o.count} mounts, RSS ${(results.daemon.rss / MiB).toFixed(0)} MiB, PSS ${(results.daemon.pss / MiB).toFixed(0)} MiB`);
    const cliDaemon = [];
    for (let i = 0; i < o.rounds; i++) {
      const mp = path.join(mnt, `k${i}`);
      const t0 = nowMs();
      dmfs('create', `k${i}`, '--from', 'img');
      dmfs('mount', `k${i}`, mp);
      fs.readdirSync(mp);
      cliDaemon.push(nowMs() - t0);
    }
    results.cliViaDaemonMs = median(cliDaemon);
    for (let i = 0; i < o.count; i++) await client.unmount({ mountpoint: path.join(mnt, `d${i}`) });
    for (let i = 0; i < o.rounds; i++) await client.unmount({ mountpoint: path.join(mnt, `k${i}`) });
    await client.close();
    dmfs('daemon', 'stop');

    // 3. Peers: a fresh upper on the same lower directory, mounted and listed.
    const lower = path.join(REPO, 'examples', 'rootfs');
    for (const kind of ['overlayfs', 'fuse-overlayfs']) {
      if (kind === 'fuse-overlayfs' && !tryRun('which', ['fuse-overlayfs'])) continue;
      const samples = [];
      for (let i = 0; i < o.rounds; i++) {
        const base = path.join(o.dir, kind, String(i));
        const mp = path.join(base, 'm');
        const t0 = nowMs();
        for (const d of ['upper', 'work', 'm']) fs.mkdirSync(path.join(base, d), { recursive: true });
        const opts = `lowerdir=${lower},upperdir=${base}/upper,workdir=${base}/work`;
        if (kind === 'overlayfs') run('mount', ['-t', 'overlay', 'overlay', '-o', opts, mp]);
        else run('fuse-overlayfs', ['-o', opts, mp]);
        fs.readdirSync(mp);
        samples.push(nowMs() - t0);
        run('umount', [mp]);
      }
      results[`${kind}Ms`] = median(samples);
    }
    results.loadAverageEnd = loadAvg();
    const f = (x) => (Number.isFinite(x) ? `${x.toFixed(1)} ms` : '-');
    const mem = (m) => `${(m.rss / MiB).toFixed(0)} MiB / ${(m.pss / MiB).toFixed(0)} MiB`;
    console.log('');
    console.log(`| figure | dmfs daemon | dmfs, process per mount | overlayfs | fuse-overlayfs |`);
    console.log(`| --- | --- | --- | --- | --- |`);
    console.log(`| ${o.count} mounted containers: total RSS / PSS of dmfs processes | ${mem(results.daemon)} (${results.daemon.processes} process${results.daemon.processes === 1 ? '' : 'es'}: worker${results.daemon.processes > 1 ? ' + supervisor' : ''}) | ${mem(results.perMountProcesses)} (${results.perMountProcesses.processes} processes) | - | - |`);
    console.log(`| create -> mounted -> listable, Node API (median of ${o.count}) | ${f(results.apiViaDaemonMs)} | - | ${f(results.overlayfsMs)} | ${f(results['fuse-overlayfsMs'])} |`);
    console.log(`| create -> mounted -> listable, CLI processes (dmfs create + dmfs mount, median of ${o.rounds}) | ${f(results.cliViaDaemonMs)} | ${f(results.cliNoDaemonMs)} | | |`);
    console.log(`load average: ${results.loadAverageStart} at the start, ${results.loadAverageEnd} at the end`);
    if (o.json) fs.writeFileSync(o.json, JSON.stringify(results, null, 2) + '\n');
    fs.rmSync(o.dir, { recursive: true, force: true });
  })();
}

Promise.resolve().then(main).catch((err) => {
  console.error(err.stack || String(err));
  process.exitCode = 1;
});
