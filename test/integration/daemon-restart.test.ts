/**
 * Restarts break nothing: the daemon's worker is killed with -9 again and again while 4
 * readers hash files and 2 writers append and fsync through one mount. The clients see no
 * error (no ENOTCONN, no EIO, no hang), every acknowledged write is there, and `dmfs check`
 * is clean after every round. CI runs 5 rounds; DMFS_RESTART_ROUNDS=50 runs the issue's 50.
 */
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { DMFS_BIN, ensureBuiltDist } from '../support/built-dist';
import { cliFor, describeFuse, run, sh, shq, tempDir } from '../support/fuse-harness';

const ROUNDS = Number(process.env.DMFS_RESTART_ROUNDS ?? 5);

describeFuse('dmfs daemon: kill -9 of the worker breaks no client', () => {
  let root: string;
  let work: string;
  const { dmfs, dmfsOk, json } = cliFor(DMFS_BIN, () => root);

  beforeAll(async () => {
    ensureBuiltDist();
    root = tempDir('restart-pool');
    work = tempDir('restart-work');
    await dmfsOk('pool create --size 8G');
    await dmfsOk('create c1');
    await dmfsOk('daemon start');
  }, 300_000);

  afterAll(async () => {
    await dmfs('daemon stop');
    await sh(`for m in $(grep -o ' ${work}/[^ ]* fuse.dmfs ' /proc/self/mounts | cut -d' ' -f2); do fusermount -uz "$m"; done`);
    await sh(`rm -rf ${shq(work)} ${shq(root)}`);
  });

  it(`${ROUNDS} rounds of kill -9 while 4 readers hash and 2 writers fsync: no client error, nothing acknowledged lost`, async () => {
    const first = await json('daemon status');
    expect(first.supervisorPid).toEqual(expect.any(Number)); // a supervisor keeps the descriptors
    const mp = `${work}/m`;
    await dmfsOk(`mount c1 ${mp}`);
    await run(`for i in 1 2 3 4; do head -c 3000000 /dev/urandom > ${mp}/data$i; done && cd ${mp} && sha256sum data* > ${work}/sums`);
    const stop = `${work}/stop`;
    // Readers check the hashes; writers append a numbered line with fsync and record it as
    // acknowledged only once dd returned success. Every failure prints ERR.
    const script = `
      cd ${mp}
      for r in 1 2 3 4; do ( while [ ! -e ${stop} ]; do sha256sum --quiet -c ${work}/sums || echo "ERR reader $r"; done ) & done
      for w in 1 2; do ( i=0; while [ ! -e ${stop} ]; do i=$((i+1)); printf 'w%d %d\\n' $w $i | dd of=${mp}/log$w oflag=append conv=notrunc,fsync status=none 2>&1 && echo $i > ${work}/ack$w || echo "ERR writer $w at $i"; done ) & done
      wait`;
    const load = spawn('bash', ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    load.stdout!.on('data', (d) => (out += d));
    load.stderr!.on('data', (d) => (out += d));
    const finished = new Promise<number>((r) => load.on('exit', (c) => r(c ?? 1)));
    const gaps: number[] = [];
    try {
      let pid = first.pid as number;
      for (let round = 1; round <= ROUNDS; round++) {
        await new Promise((r) => setTimeout(r, 1500));
        const t0 = Date.now();
        process.kill(pid, 'SIGKILL');
        let s: any = null;
        while (Date.now() - t0 < 30_000) {
          s = await json('daemon status').catch(() => null);
          if (s && s.pid !== pid) break;
          await new Promise((r) => setTimeout(r, 20));
        }
        gaps.push(Date.now() - t0);
        expect(s).toMatchObject({ restarts: round, mounts: [expect.objectContaining({ mountpoint: mp, layer: 'c1' })] });
        pid = s.pid;
        expect(await json('check')).toMatchObject({ ok: true, problems: [] });
      }
    } finally {
      await fsp.writeFile(stop, '');
      expect(await finished).toBe(0);
    }
    // eslint-disable-next-line no-console
    console.log(`kill -9 to a new worker answering: ${gaps.map((g) => `${g} ms`).join(', ')}`);
    expect(out).toBe('');
    for (const w of [1, 2]) {
      const acked = Number((await fsp.readFile(`${work}/ack${w}`, 'utf8')).trim());
      expect(acked).toBeGreaterThan(ROUNDS);
      const lines = (await fsp.readFile(path.join(mp, `log${w}`), 'utf8')).trimEnd().split('\n');
      // Every acknowledged line is there, in order (a last one in flight may follow).
      expect(lines.slice(0, acked)).toEqual(Array.from({ length: acked }, (_, i) => `w${w} ${i + 1}`));
    }
    expect(await run(`cd ${mp} && sha256sum --quiet -c ${work}/sums && echo same`)).toBe('same\n');
    expect(await json(`umount ${mp}`)).toMatchObject({ flushed: true });
    expect(await json('check')).toMatchObject({ ok: true, problems: [] });
  }, 600_000);
});
