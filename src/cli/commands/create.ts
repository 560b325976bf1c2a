import { dmfsError } from '../../errors';
import { parseSizeBytes } from '../../pool/sizes';
import type { Command } from '../command';
import { listOpt, printJson, stringOpt } from '../output';
import { withDaemonOrPool } from '../daemon-route';

export function parseLabels(pairs: string[]): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const p of pairs) {
    const eq = p.indexOf('=');
    if (eq <= 0) throw dmfsError('USAGE', `label '${p}' is not KEY=VALUE`);
    labels[p.slice(0, eq)] = p.slice(eq + 1);
  }
  return labels;
}

export const command: Command = {
  name: 'create',
  summary: 'create a container layer (or, with --image, an empty image layer) on a parent',
  usage: 'NAME [--from PARENT] [--size SIZE] [--image] [--label K=V...]',
  description: 'O(1): nothing of the parent is copied. The default parent is the base device.',
  options: [
    { name: 'from', type: 'string', valueName: 'PARENT', description: 'parent layer (default: base)' },
    { name: 'size', type: 'string', valueName: 'SIZE', description: 'virtual size limit (default: dm.basesize)' },
    { name: 'image', type: 'boolean', description: 'create a committed, read-only image layer instead of a container' },
    { name: 'label', type: 'string', multiple: true, valueName: 'K=V', description: 'label' },
  ],
  minArgs: 1,
  maxArgs: 1,
  async run(ctx) {
    const size = stringOpt(ctx, 'size');
    const started = process.hrtime.bigint();
    const req = {
      name: ctx.args[0],
      kind: ctx.opts.image ? ('image' as const) : ('container' as const),
      parent: stringOpt(ctx, 'from') ?? 'base',
      labels: parseLabels(listOpt(ctx, 'label')),
      ...(size !== undefined ? { sizeLimitBytes: parseSizeBytes(size, '--size') } : {}),
    };
    const info = await withDaemonOrPool(ctx, (daemon) => daemon.createLayer(req), (pool) => pool.store.createLayer(req.name, req));
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (ctx.json) printJson(ctx, { ...info, createMs: ms });
    else ctx.stdout.write(`Created ${info.kind} ${info.name} (id ${info.id}) on ${info.parent} in ${ms.toFixed(1)} ms.\nNext: dmfs mount ${info.name} MOUNTPOINT\n`);
    return 0;
  },
};
