import { formatBytes } from '../../pool/sizes';
import { snapshotOfLayer } from '../../snapshotter/snapshot-records';
import type { Command } from '../command';
import { formatTable, printJson } from '../output';
import { withDaemonOrPool } from '../daemon-route';

export const command: Command = {
  name: 'ls',
  summary: "list layers: name, id, kind, parent, created, sizes, mounts, containerd's snapshot keys",
  usage: '[--json]',
  description: [
    'Layers that hold containerd snapshots (dmfs snapshotter) also show the namespace and',
    "containerd's key; with --json each such layer has a `containerd` object: namespace, key,",
    'kind (active, view, committed) and parent key.',
  ].join('\n'),
  options: [],
  minArgs: 0,
  maxArgs: 0,
  async run(ctx) {
    const layers = await withDaemonOrPool(ctx, (daemon) => daemon.listLayers(), (pool) => pool.store.listLayers());
    const snapshots = layers.map((l) => snapshotOfLayer(l));
    if (ctx.json) {
      printJson(ctx, layers.map((l, i) => {
        const s = snapshots[i];
        return s ? { ...l, containerd: { namespace: s.namespace, key: s.key, kind: s.kind, parent: s.parent } } : l;
      }));
      return 0;
    }
    const withSnapshots = snapshots.some((s) => s !== null);
    const rows = layers.map((l, i) => [
      l.name,
      String(l.id),
      l.state === 'building' ? 'image (building)' : l.deferredRemoval ? `${l.kind} (removal deferred)` : l.kind,
      l.parent ?? '-',
      new Date(l.createdMs).toISOString().replace(/\.\d+Z$/, 'Z'),
      formatBytes(l.sizeLimitBytes),
      formatBytes(l.exclusiveBytes),
      formatBytes(l.sharedBytes),
      l.mounts.map((m) => `${m.mountpoint}${m.readOnly ? ' (ro)' : ''}`).join(', ') || '-',
      ...(withSnapshots ? [snapshots[i]?.namespace || '-', snapshots[i] ? `${snapshots[i]!.key} (${snapshots[i]!.kind})` : '-'] : []),
    ]);
    const header = ['NAME', 'ID', 'KIND', 'PARENT', 'CREATED', 'VIRTUAL SIZE', 'EXCLUSIVE', 'SHARED', 'MOUNTED AT'];
    ctx.stdout.write(formatTable(withSnapshots ? [...header, 'NAMESPACE', 'CONTAINERD KEY'] : header, rows));
    return 0;
  },
};
