import { spawn, type ChildProcess } from 'node:child_process';
import type { LayerFs } from '../../src/store/layer-store';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const { applyOp } = require('./crash-ops.js');

export type CrashOp = Record<string, unknown> & { k: number; name: string; to?: string };

/**
 * Runs a crash-workload writer (it prints "BEGIN <op>" and "ACK <k>"), calls `kill`
 * after killAfterMs, and resolves with the ops begun and the last acknowledged k once
 * the writer has exited. `expectSignal` makes an exit by anything else an error.
 * `fromFirstOp` counts killAfterMs from the writer's first BEGIN instead of its spawn, so
 * a slow start (Node and the pool opening on a loaded machine) does not eat the workload.
 */
export function runCrashWriter(
  args: string[],
  killAfterMs: number,
  kill: (child: ChildProcess) => void,
  opts: { expectSignal?: NodeJS.Signals; fromFirstOp?: boolean } = {},
): Promise<{ ops: CrashOp[]; acked: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const ops: CrashOp[] = [];
    let acked = -1;
    let buf = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.startsWith('BEGIN ')) {
          if (opts.fromFirstOp && !ops.length) timer = setTimeout(() => kill(child), killAfterMs);
          ops.push(JSON.parse(line.slice(6)));
        } else if (line.startsWith('ACK ')) acked = Number(line.slice(4));
      }
    });
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    let timer = opts.fromFirstOp ? undefined : setTimeout(() => kill(child), killAfterMs);
    const guard = setTimeout(() => child.kill('SIGKILL'), killAfterMs + 30000);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(guard);
      if (opts.expectSignal && signal !== opts.expectSignal) return reject(new Error(`writer exited early (${code}): ${stderr}`));
      resolve({ ops, acked });
    });
  });
}

/**
 * Checks a layer against every acknowledged op: names and contents exact. The op in
 * flight at the kill may or may not have landed, so the names it touches are skipped.
 */
export async function expectAcknowledgedState(layer: LayerFs, ops: CrashOp[], acked: number, label: string): Promise<void> {
  const model = new Map<string, Buffer>();
  for (const op of ops) if (op.k <= acked) applyOp(model, op);
  const inflight = ops.find((op) => op.k === acked + 1);
  const touched = new Set<string>(inflight ? [inflight.name, inflight.to ?? ''] : []);
  for (const [name, content] of model) {
    if (touched.has(name)) continue;
    const a = await layer.lookup(layer.rootIno, name);
    expect({ label, name, size: a?.sizeBytes }).toEqual({ label, name, size: content.length });
    const back = Buffer.alloc(content.length);
    await layer.read(a!.ino, back, 0);
    expect({ label, name, same: back.equals(content) }).toEqual({ label, name, same: true });
  }
  const names = (await layer.readdir(layer.rootIno)).map((e) => e.name).filter((n) => !touched.has(n));
  expect({ label, names: names.sort() }).toEqual({ label, names: [...model.keys()].filter((n) => !touched.has(n)).sort() });
}
