/**
 * The snapshotter's mounts served in this process: one MountService (fs/mount-service.ts)
 * per snapshot, each on a layer the store opens for it. allow_other with
 * default_permissions, so a container's processes of any uid get in and the kernel checks
 * modes as on ext4.
 */
import { promises as fsp } from 'node:fs';
import { MountService } from '../fs/mount-service';
import { probeMountpoint, unmountFuse } from '../fs/mount-table';
import { dmfsError } from '../errors';
import type { LayerStore } from '../store/layer-store';
import type { SnapshotMountHost } from './snapshotter-service';

export class StoreMountHost implements SnapshotMountHost {
  private readonly services = new Map<string, MountService>();

  constructor(private readonly store: LayerStore, private readonly log: (line: string) => void = () => undefined) {}

  async mount(layerName: string, mountpoint: string, opts: { readOnly: boolean }): Promise<void> {
    const serving = this.services.get(mountpoint);
    if (serving && !serving.layer.readOnly === !opts.readOnly && (await probeMountpoint(mountpoint)) === 'dir') return;
    if (serving) await this.unmount(mountpoint);
    if ((await probeMountpoint(mountpoint)) === 'dead') await unmountFuse(mountpoint, { lazy: true });
    const state = await probeMountpoint(mountpoint);
    if (state === 'dead') throw dmfsError('MOUNT_FAILED', `${mountpoint} is a dead mount that could not be detached`);
    if (state === 'not-dir') throw dmfsError('NOT_DIR', `${mountpoint} is not a directory`);
    if (state === 'missing') await fsp.mkdir(mountpoint, { recursive: true, mode: 0o755 });
    const layer = await this.store.openLayer(layerName, { readOnly: opts.readOnly, mountpoint });
    let service: MountService;
    try {
      service = await MountService.start({ layer, mountpoint, allowOther: true, log: this.log });
    } catch (err) {
      await layer.close().catch(() => undefined);
      throw err;
    }
    this.services.set(mountpoint, service);
    void service.stopped.then((r) => {
      if (this.services.get(mountpoint) === service) this.services.delete(mountpoint);
      if (r.reason === 'unmounted') this.log(`${mountpoint} was unmounted from outside; it is mounted again when containerd asks for it`);
    });
  }

  async unmount(mountpoint: string): Promise<void> {
    const service = this.services.get(mountpoint);
    if (!service) return;
    const result = await service.stop('snapshot unmounted');
    this.services.delete(mountpoint);
    if (result.error) throw dmfsError('IO_ERROR', `unmounting ${mountpoint} failed: ${result.error.message}`, result.error);
  }

  /** Unmounts everything this host serves. */
  async unmountAll(): Promise<void> {
    for (const mp of [...this.services.keys()]) await this.unmount(mp).catch((err) => this.log((err as Error).message));
  }
}
