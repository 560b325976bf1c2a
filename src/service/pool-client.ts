/**
 * What a caller of a pool does through the daemon when one runs, or in its own process
 * when none does (Pool.connect): the same calls and results either way.
 */
import type { LayerInfo } from '../store/layer-store';
import type { CreateLayerRequest, MountRequest, MountResult, UnmountRequest, UnmountResult } from './control-protocol';

export interface PoolClient {
  /** True when the pool's daemon serves these calls (its mounts outlive this process). */
  readonly viaDaemon: boolean;
  createLayer(req: CreateLayerRequest): Promise<LayerInfo>;
  listLayers(): Promise<LayerInfo[]>;
  /** Mounts and resolves once the mount is live (listable). */
  mount(req: MountRequest): Promise<MountResult>;
  /** Unmounts; unless lazy, resolves once synced and committed. NOT_MOUNTED when this server does not serve it. */
  unmount(req: UnmountRequest): Promise<UnmountResult>;
  /** Lets go: a local client unmounts what it serves and closes the pool; a daemon's mounts stay. */
  close(): Promise<void>;
}
