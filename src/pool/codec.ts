import { Packr } from 'msgpackr';
import { dmfsError } from '../errors';
import { blockIo } from '../native';

/**
 * The one msgpackr instance for every record on disk. Records are plain maps (no
 * msgpackr record extension) so a dump is self-describing; each record type carries a
 * version field `v` and has exactly one pack/unpack pair next to its type.
 *
 * Framing: msgpack bytes followed by their CRC-32C (4 bytes, little-endian), so a
 * damaged record is reported as METADATA_CORRUPT instead of being decoded as garbage.
 */
export const recordCodec = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

/** Counters and ids stored bare: 6 bytes little-endian (safe integers up to 2^48). */
export function packUint48(n: number): Buffer {
  const b = Buffer.alloc(6);
  b.writeUIntLE(n, 0, 6);
  return b;
}

export function unpackUint48(raw: Buffer | undefined): number {
  if (!raw) return 0;
  // Bare counters carry no CRC: a value of the wrong length is damage, not a RangeError.
  if (raw.length !== 6) throw dmfsError('METADATA_CORRUPT', `metadata counter of ${raw.length} bytes, not 6`);
  return raw.readUIntLE(0, 6);
}

export function packRecord(value: unknown): Buffer {
  const body = recordCodec.pack(value);
  const out = Buffer.allocUnsafe(body.length + 4);
  body.copy(out);
  out.writeUInt32LE(blockIo.crc32c(body), body.length);
  return out;
}

export function unpackRecord<T>(bytes: Uint8Array): T {
  const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.length < 5) throw dmfsError('METADATA_CORRUPT', `metadata record of ${buf.length} bytes is too short`);
  const body = buf.subarray(0, buf.length - 4);
  const stored = buf.readUInt32LE(buf.length - 4);
  if (blockIo.crc32c(body) !== stored) throw dmfsError('METADATA_CORRUPT', 'metadata record fails its checksum');
  try {
    return recordCodec.unpack(body) as T;
  } catch (err) {
    throw dmfsError('METADATA_CORRUPT', `metadata record does not decode: ${(err as Error).message}`, err);
  }
}
