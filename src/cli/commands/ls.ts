import { formatBytes } from '../../pool/sizes';
import type { Command } from '../command';
import { formatTable, printJson } from '../output';
import { withDaemonOrPool } from '../daemon-route';

export const command: Command = {
  name: 'ls',
  summary: 'list layers: name, id, kind, parent, created, sizes, mounts',
  usage: '[--json]',
  options: [],
  minArgs: 0,
  maxArgs: 0,
  async run(ctx) {
    const layers = await withDaemonOrPool(ctx, (daemon) => daemon.listLayers(), (pool) => pool.store.listLayers());
    if (ctx.json) {
      printJson(ctx, layers);
      return 0;
    }
    const rows = layers.map((l) => [
      l.name,
      String(l.id),
      l.state === 'building' ? 'image (building)' : l.deferredRemoval ? `${l.kind} (removal deferred)` : l.kind,
      l.parent ?? '-',
      new Date(l.createdMs).toISOString().replace(/\.\d+Z$/, 'Z'),
      formatBytes(l.sizeLimitBytes),
      formatBytes(l.exclusiveBytes),
      formatBytes(l.sharedBytes),
      l.mounts.map((m) => `${m.mountpoint}${m.readOnly ? ' (ro)' : ''}`).join(', ') || '-',
    ]);
    ctx.stdout.write(formatTable(['NAME', 'ID', 'KIND', 'PARENT', 'CREATED', 'VIRTUAL SIZE', 'EXCLUSIVE', 'SHARED', 'MOUNTED AT'], rows));
    return 0;
  },
};
