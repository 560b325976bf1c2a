/** dmfs Node API. */
export { Pool, type PoolCreateOptions, type PoolInfo } from './api';
export * from './store/layer-store';
export { DmfsError, type ErrorCode, errnoOf, isDmfsError } from './errors';
export type { CheckReport, CheckProblem } from './store/check';
export { parseSizeBytes, formatBytes } from './pool/sizes';
export type { PullOptions, PullResult, PullLayerProgress } from './image/registry-pull';
export type { PushOptions, PushResult, PushLayerProgress, PushedLayer } from './image/registry-push';
export { parseRegistryRef, type RegistryRef } from './image/registry-ref';
export type { RegistryCredentials } from './image/registry-credentials';
export type { PoolClient } from './service/pool-client';
export type { HostedService, ServiceContext } from './service/hosted-services';
export type {
  CreateLayerRequest, DaemonStatus, MountRequest, MountResult, ServedMount, ServiceStatus, UnmountRequest, UnmountResult,
} from './service/control-protocol';
