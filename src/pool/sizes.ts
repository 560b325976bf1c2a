import { dmfsError } from '../errors';

const UNIT: Record<string, number> = {
  '': 1, B: 1,
  K: 1024, KB: 1024, KIB: 1024,
  M: 1024 ** 2, MB: 1024 ** 2, MIB: 1024 ** 2,
  G: 1024 ** 3, GB: 1024 ** 3, GIB: 1024 ** 3,
  T: 1024 ** 4, TB: 1024 ** 4, TIB: 1024 ** 4,
};

/**
 * Parses a size as Docker's units do ("10G", "64K", "512MiB", "4096"): binary multiples,
 * case-insensitive. Throws BAD_OPTION naming `what` on anything else.
 */
export function parseSizeBytes(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? UNIT[m[2].toUpperCase()] : undefined;
  if (!m || unit === undefined) {
    throw dmfsError('BAD_OPTION', `${what}: '${text}' is not a size (examples: 4096, 64K, 10G)`);
  }
  const bytes = Math.floor(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw dmfsError('BAD_OPTION', `${what}: '${text}' is out of range`);
  return bytes;
}

/** 1536 → "1.5 KiB"; figures as `docker info` printed them, binary units. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${bytes} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`;
}
