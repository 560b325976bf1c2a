/**
 * The real CLI in a child process (`bin/dmfs.js` on the compiled dist/), with its exit
 * code, output and, through `/usr/bin/time -f %M`, its peak resident set size.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { DMFS_BIN, ensureBuiltDist } from '../../../support/built-dist';

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
  /** Peak RSS of the process in KiB, when measured. */
  maxRssKiB: number | null;
  /** User plus system CPU seconds of the process, when measured (steadier than wall time on a busy host). */
  cpuSeconds: number | null;
  elapsedMs: number;
}

export const TIME_BIN = '/usr/bin/time';
export const canMeasureRss = fs.existsSync(TIME_BIN);

let built = false;

/** Runs `dmfs ARGS --root ROOT`; `measure` wraps it in /usr/bin/time for the peak RSS. */
export function dmfs(root: string, args: string[], opts: { measure?: boolean; timeoutMs?: number } = {}): CliRun {
  if (!built) {
    ensureBuiltDist();
    built = true;
  }
  const argv = [process.execPath, DMFS_BIN, ...args, '--root', root];
  const rssMarker = 'dmfs-test-max-rss-kib=';
  const [cmd, cmdArgs] = opts.measure ? [TIME_BIN, ['-f', `${rssMarker}%M %U %S`, ...argv]] : [argv[0], argv.slice(1)];
  const t0 = Date.now();
  const r = spawnSync(cmd, cmdArgs, { encoding: 'utf8', maxBuffer: 1 << 30, timeout: opts.timeoutMs ?? 120_000 });
  const elapsedMs = Date.now() - t0;
  if (r.error) throw r.error;
  let stderr = r.stderr;
  let maxRssKiB: number | null = null;
  let cpuSeconds: number | null = null;
  const at = stderr.lastIndexOf(rssMarker);
  if (opts.measure && at >= 0) {
    const [rss, user, sys] = stderr.slice(at + rssMarker.length).trim().split(/\s+/).map(Number);
    maxRssKiB = rss;
    cpuSeconds = user + sys;
    stderr = stderr.slice(0, at);
  }
  return { code: r.status ?? -1, stdout: r.stdout, stderr, maxRssKiB, cpuSeconds, elapsedMs };
}
