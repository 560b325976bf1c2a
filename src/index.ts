/** dmfs Node API. */
export { Pool, type PoolCreateOptions, type PoolInfo } from './api';
export * from './store/layer-store';
export { DmfsError, type ErrorCode, errnoOf, isDmfsError } from './errors';
export type { CheckReport, CheckProblem } from './store/check';
export { parseSizeBytes, formatBytes } from './pool/sizes';
