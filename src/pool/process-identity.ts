import * as fs from 'node:fs';

/** A process as recorded in metadata: pid plus its start time, so a reused pid is not mistaken for a live owner. */
export interface ProcessIdentity {
  pid: number;
  /** Field 22 of /proc/PID/stat (clock ticks since boot); 0 when unknown. */
  startTicks: number;
}

/** Start time of a running process; null when it does not exist or is a zombie (dead, not yet reaped). */
export function processStartTicks(pid: number): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z' || fields[0] === 'X') return null;
    return Number(fields[19]);
  } catch {
    return null;
  }
}

export function currentProcess(): ProcessIdentity {
  return { pid: process.pid, startTicks: processStartTicks(process.pid) ?? 0 };
}

export function isProcessAlive(p: ProcessIdentity): boolean {
  const ticks = processStartTicks(p.pid);
  if (ticks === null) return false;
  return p.startTicks === 0 || ticks === p.startTicks;
}
