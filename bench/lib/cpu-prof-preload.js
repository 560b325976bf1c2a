'use strict';
// CPU profile of the dmfs mount daemon, for `bench/run.js --cpu-prof DIR`.
//
// `node --cpu-prof` cannot ride in NODE_OPTIONS, and `dmfs mount` starts its daemon
// itself, so this file is preloaded instead (NODE_OPTIONS=--require THIS_FILE): in the
// daemon only (argv has --dmfs-mount-daemon) it starts the V8 sampling profiler and
// writes DIR/daemon-PID-TIME.cpuprofile when the process exits (the in-thread inspector
// session answers synchronously, so the 'exit' handler can stop and write). Open the file
// in Chrome DevTools or summarize it with bench/profile-summary.js.
const dir = process.env.DMFS_BENCH_CPU_PROF_DIR;
if (dir && process.argv.some((a) => a === '--dmfs-mount-daemon')) {
  const fs = require('node:fs');
  const path = require('node:path');
  const inspector = require('node:inspector');
  const session = new inspector.Session();
  session.connect();
  const intervalUs = Number(process.env.DMFS_BENCH_CPU_PROF_INTERVAL_US) || 250;
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: intervalUs });
  session.post('Profiler.start');
  let written = false;
  const write = () => {
    if (written) return;
    written = true;
    session.post('Profiler.stop', (err, res) => {
      if (err || !res) return;
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, `daemon-${process.pid}-${Date.now()}.cpuprofile`), JSON.stringify(res.profile));
    });
  };
  process.on('exit', write);
}
