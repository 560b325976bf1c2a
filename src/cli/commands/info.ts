import { formatBytes } from '../../pool/sizes';
import type { Command } from '../command';
import { printJson, withPool } from '../output';

export const command: Command = {
  name: 'info',
  summary: "pool figures, as 'docker info' showed them for devicemapper",
  usage: '[--json]',
  options: [],
  minArgs: 0,
  maxArgs: 0,
  async run(ctx) {
    const info = await withPool(ctx, (pool) => pool.info());
    if (ctx.json) {
      printJson(ctx, info);
      return 0;
    }
    const rows: [string, string][] = [
      ['Pool Name', info.poolName],
      ['Pool Blocksize', formatBytes(info.poolBlocksizeBytes)],
      ['Base Device Size', formatBytes(info.baseDeviceSizeBytes)],
      ['Backing Filesystem', info.backingFilesystem],
      ['Data Mode', info.dataMode],
      [info.dataMode === 'loop' ? 'Data file' : 'Data device', info.dataFile],
      ['Metadata file', info.metadataFile],
      ['Data Space Used', formatBytes(info.dataSpaceUsedBytes)],
      ['Data Space Total', formatBytes(info.dataSpaceTotalBytes)],
      ['Data Space Available', formatBytes(info.dataSpaceAvailableBytes)],
      ...(info.dataFileAllocatedBytes !== null ? [['Data File On Disk', formatBytes(info.dataFileAllocatedBytes)] as [string, string]] : []),
      ['Metadata Space Used', formatBytes(info.metadataSpaceUsedBytes)],
      ['Metadata Space Total', formatBytes(info.metadataSpaceTotalBytes)],
      ['Metadata Space Available', formatBytes(info.metadataSpaceAvailableBytes)],
      ['Thin Pool Minimum Free Space', `${formatBytes(info.minFreeSpaceBytes)} (${info.minFreeSpacePercent}%)`],
      ['Auto-extend', info.autoextendThresholdPercent ? `at ${info.autoextendThresholdPercent}% by ${info.autoextendPercent}%` : 'off'],
      ['Discard (blkdiscard)', String(info.blkDiscard)],
      ['Deferred Removal Enabled', String(info.deferredRemovalEnabled)],
      ['Deferred Deletion Enabled', String(info.deferredDeletionEnabled)],
      ['Deferred Deleted Device Count', String(info.deferredDeletedDeviceCount)],
      ...(info.hostFilesystem
        ? [['Host Space Available', `${formatBytes(info.hostFilesystem.freeBytes)} of ${formatBytes(info.hostFilesystem.totalBytes)} at ${info.hostFilesystem.path}` +
            (info.hostFilesystem.state === 'ok' ? '' : ` (${info.hostFilesystem.state === 'full' ? 'FULL' : 'nearly full'}: ${info.hostFilesystem.advice})`)] as [string, string]]
        : []),
      ...(info.readOnly ? [['Read-only', 'yes: the pool is on a read-only file system (read-only commands only)'] as [string, string]] : []),
      ['Metadata Backups', `${info.metadataBackupCount} (keeps ${info.metadataBackupsKept}, dmfs.metadata_backups)`],
      ['Native Block Path', info.nativeBlockPath],
      ['Layers', `${info.layers.total} (base ${info.layers.base}, images ${info.layers.images}, containers ${info.layers.containers}, building ${info.layers.building})`],
    ];
    const width = Math.max(...rows.map(([k]) => k.length));
    ctx.stdout.write(rows.map(([k, v]) => ` ${(k + ':').padEnd(width + 1)} ${v}`).join('\n') + '\n');
    return 0;
  },
};
