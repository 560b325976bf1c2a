import { dmfsError } from '../errors';
import type { Table, TableKey } from './metadata-env';

/**
 * A table a read-only environment does not have: LMDB creates a named table only in a
 * writable transaction, so a pool written by an older build and opened read-only (its
 * file system is read-only) lacks the tables added since. It reads as empty, which is
 * what a writable open would have created; writing it is POOL_READ_ONLY.
 */
export class AbsentTable implements Table {
  constructor(private readonly name: string) {}

  get(_key: TableKey): Buffer | undefined {
    return undefined;
  }

  has(_key: TableKey): boolean {
    return false;
  }

  put(_key: TableKey, _value: Buffer): void {
    throw dmfsError('POOL_READ_ONLY', `table ${this.name} cannot be created: the pool is read-only`);
  }

  del(_key: TableKey): void {
    this.put(_key, Buffer.alloc(0));
  }

  range(_start: TableKey, _end: TableKey): Iterable<{ key: TableKey; value: Buffer }> {
    return [];
  }

  keys(_start: TableKey, _end: TableKey): Iterable<TableKey> {
    return [];
  }

  count(_start: TableKey, _end: TableKey): number {
    return 0;
  }

  allKeys(): Iterable<TableKey> {
    return [];
  }
}
