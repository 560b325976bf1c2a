import { Packr } from 'msgpackr';

/**
 * The one msgpackr instance for every record on disk. Records are plain maps (no
 * msgpackr record extension) so a dump is self-describing; each record type carries a
 * version field `v` and has exactly one pack/unpack pair next to its type.
 */
export const recordCodec = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

export function packRecord(value: unknown): Buffer {
  return recordCodec.pack(value);
}

export function unpackRecord<T>(bytes: Uint8Array): T {
  return recordCodec.unpack(bytes) as T;
}
