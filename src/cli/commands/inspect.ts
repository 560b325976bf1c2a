import { formatBytes } from '../../pool/sizes';
import type { Command } from '../command';
import { printJson, withPool } from '../output';

export const command: Command = {
  name: 'inspect',
  summary: 'show one layer: kind, state, chain, labels, sizes, mounts',
  usage: 'NAME [--json]',
  options: [],
  minArgs: 1,
  maxArgs: 1,
  async run(ctx) {
    const { info, chain } = await withPool(ctx, async (pool) => {
      const info = await pool.store.getLayer(ctx.args[0]);
      const chain: string[] = [info.name];
      for (let cur = info.parent; cur; cur = (await pool.store.getLayer(cur)).parent) chain.push(cur);
      return { info, chain };
    });
    if (ctx.json) {
      printJson(ctx, { ...info, chain });
      return 0;
    }
    const lines = [
      `Name:          ${info.name}`,
      `Id:            ${info.id}`,
      `Kind:          ${info.kind} (${info.state})`,
      `Parent:        ${info.parent ?? '-'}`,
      `Chain:         ${chain.join(' -> ')}`,
      `Created:       ${new Date(info.createdMs).toISOString()}`,
      `Virtual size:  ${formatBytes(info.sizeLimitBytes)}`,
      `Exclusive:     ${formatBytes(info.exclusiveBytes)}`,
      `Shared:        ${formatBytes(info.sharedBytes)}`,
      `Children:      ${info.children.join(', ') || '-'}`,
      `Mounts:        ${info.mounts.map((m) => `${m.mountpoint} (pid ${m.pid}${m.readOnly ? ', ro' : ''})`).join(', ') || '-'}`,
      `Labels:        ${Object.entries(info.labels).map(([k, v]) => `${k}=${v}`).join(', ') || '-'}`,
      ...(info.deferredRemoval ? ['Removal:       deferred until the last unmount'] : []),
    ];
    ctx.stdout.write(lines.join('\n') + '\n');
    return 0;
  },
};
