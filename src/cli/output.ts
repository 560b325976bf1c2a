import { Pool } from '../api';
import type { ThinPoolOpenOptions } from '../pool/thin-pool';
import type { CommandContext } from './command';

/** Opens the pool at ctx.root for the duration of fn, closing it whatever happens. */
export async function withPool<T>(
  ctx: CommandContext,
  fn: (pool: Pool) => Promise<T>,
  openOptions: ThinPoolOpenOptions = {},
): Promise<T> {
  const pool = await Pool.open(ctx.root, openOptions);
  try {
    return await fn(pool);
  } finally {
    await pool.close();
  }
}

export function printJson(ctx: CommandContext, value: unknown): void {
  ctx.stdout.write(JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2) + '\n');
}

/** Plain left-aligned columns, header first. */
export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('   ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

export function stringOpt(ctx: CommandContext, name: string): string | undefined {
  const v = ctx.opts[name];
  return typeof v === 'string' ? v : undefined;
}

export function listOpt(ctx: CommandContext, name: string): string[] {
  const v = ctx.opts[name];
  return Array.isArray(v) ? v : typeof v === 'string' ? [v] : [];
}
