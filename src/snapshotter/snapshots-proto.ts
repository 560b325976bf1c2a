/**
 * The wire side of containerd's snapshots API: the service definition loaded from our own
 * .proto files (proto/ at the package root, shipped beside dist/), the messages as plain
 * objects, and DmfsError codes as the gRPC status codes containerd maps back to its errdefs
 * (NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, INVALID_ARGUMENT, ...).
 */
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { isDmfsError, type ErrorCode } from '../errors';
import type { SnapshotInfo, SnapshotKind } from './snapshot-records';

/** proto/ at the package root: the same path from src/snapshotter (ts-jest) and dist/snapshotter. */
export const PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
const SNAPSHOTS_PROTO = 'containerd/services/snapshots/v1/snapshots.proto';

export interface WireMount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export interface WireTimestamp {
  seconds: number;
  nanos: number;
}

export interface WireInfo {
  name: string;
  parent: string;
  kind: 'UNKNOWN' | 'VIEW' | 'ACTIVE' | 'COMMITTED';
  created_at: WireTimestamp | null;
  updated_at: WireTimestamp | null;
  labels: Record<string, string>;
}

let cached: grpc.ServiceDefinition | null = null;

/** The Snapshots service definition (loaded once). */
export function snapshotsServiceDefinition(): grpc.ServiceDefinition {
  if (cached) return cached;
  const def = protoLoader.loadSync(SNAPSHOTS_PROTO, {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    arrays: true,
    objects: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    containerd: { services: { snapshots: { v1: { Snapshots: grpc.ServiceClientConstructor } } } };
  };
  cached = pkg.containerd.services.snapshots.v1.Snapshots.service;
  return cached;
}

/** A client of the service (tests, `dmfs` tooling); `address` is `unix:///path` or host:port. */
export function snapshotsClient(address: string): grpc.Client & Record<string, (...args: unknown[]) => unknown> {
  const Ctor = grpc.makeGenericClientConstructor(snapshotsServiceDefinition(), 'Snapshots');
  return new Ctor(address, grpc.credentials.createInsecure()) as grpc.Client & Record<string, (...args: unknown[]) => unknown>;
}

const WIRE_KIND: Record<SnapshotKind, WireInfo['kind']> = { active: 'ACTIVE', view: 'VIEW', committed: 'COMMITTED' };

function timestamp(ms: number): WireTimestamp {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 };
}

export function wireInfo(s: SnapshotInfo): WireInfo {
  return {
    name: s.key,
    parent: s.parent,
    kind: WIRE_KIND[s.kind],
    created_at: timestamp(s.createdMs),
    updated_at: timestamp(s.updatedMs),
    labels: s.labels,
  };
}

/** Bind mount of a snapshot's own dmfs mount: dmfs does the copy-on-write, nothing goes on top. */
export function bindMount(mountpoint: string, readOnly: boolean): WireMount[] {
  return [{ type: 'bind', source: mountpoint, target: '', options: ['rbind', readOnly ? 'ro' : 'rw'] }];
}

const STATUS_OF: Partial<Record<ErrorCode, grpc.status>> = {
  NOT_FOUND: grpc.status.NOT_FOUND,
  LAYER_NOT_FOUND: grpc.status.NOT_FOUND,
  EXISTS: grpc.status.ALREADY_EXISTS,
  LAYER_EXISTS: grpc.status.ALREADY_EXISTS,
  WRONG_LAYER_KIND: grpc.status.FAILED_PRECONDITION,
  LAYER_HAS_CHILDREN: grpc.status.FAILED_PRECONDITION,
  LAYER_IN_USE: grpc.status.FAILED_PRECONDITION,
  READ_ONLY_LAYER: grpc.status.FAILED_PRECONDITION,
  INVALID: grpc.status.INVALID_ARGUMENT,
  USAGE: grpc.status.INVALID_ARGUMENT,
  NAME_TOO_LONG: grpc.status.INVALID_ARGUMENT,
  POOL_FULL: grpc.status.RESOURCE_EXHAUSTED,
  LAYER_FULL: grpc.status.RESOURCE_EXHAUSTED,
  NOT_SUPPORTED: grpc.status.UNIMPLEMENTED,
  NOT_IMPLEMENTED: grpc.status.UNIMPLEMENTED,
  POOL_READ_ONLY: grpc.status.FAILED_PRECONDITION,
};

/** A thrown value as the gRPC error a handler answers with: the code containerd maps, and the message with the dmfs code in front. */
export function grpcError(err: unknown): grpc.ServiceError {
  const known = isDmfsError(err);
  const code = known ? STATUS_OF[err.code] ?? grpc.status.UNKNOWN : grpc.status.INTERNAL;
  const message = known ? `${err.code}: ${err.message}` : `dmfs internal error: ${(err as Error)?.message ?? String(err)}`;
  return Object.assign(new Error(message), { code, details: message, metadata: new grpc.Metadata() }) as grpc.ServiceError;
}
