/**
 * Content digests as OCI writes them (`sha256:<64 hex>`), and a stream tap that
 * hashes and counts bytes as they go by.
 */
import { createHash, Hash } from 'node:crypto';
import { dmfsError } from '../errors';

export interface ParsedDigest {
  algorithm: 'sha256' | 'sha512';
  hex: string;
}

const HEX_LENGTH = { sha256: 64, sha512: 128 } as const;

/** Parses and validates a digest; the hex part is safe to use as a file name. */
export function parseDigest(digest: unknown, what = 'digest'): ParsedDigest {
  if (typeof digest !== 'string') throw dmfsError('BAD_IMAGE', `${what} is not a string`);
  const m = /^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$/.exec(digest);
  if (!m) throw dmfsError('BAD_IMAGE', `${what} ${JSON.stringify(digest.slice(0, 100))} is not a digest`);
  const algorithm = m[1];
  if (algorithm !== 'sha256' && algorithm !== 'sha512') {
    throw dmfsError('NOT_SUPPORTED', `${what}: digest algorithm ${algorithm} is not supported`);
  }
  if (!new RegExp(`^[a-f0-9]{${HEX_LENGTH[algorithm]}}$`).test(m[2])) {
    throw dmfsError('BAD_IMAGE', `${what} ${JSON.stringify(digest.slice(0, 140))} is not a valid ${algorithm} digest`);
  }
  return { algorithm, hex: m[2] };
}

export function sha256Hex(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** OCI ChainID: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)). */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    out.push(out.length === 0 ? d : `sha256:${sha256Hex(`${out[out.length - 1]} ${d}`)}`);
  }
  return out;
}

/** Hashes and counts what flows through `tap` (only counts, made with `hashing` false: digest() then throws). */
export class DigestTap {
  private readonly hash: Hash | null;
  sizeBytes = 0;
  private result: string | null = null;

  constructor(readonly algorithm: 'sha256' | 'sha512' = 'sha256', hashing = true) {
    this.hash = hashing ? createHash(algorithm) : null;
  }

  async *tap(source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    for await (const chunk of source) {
      this.update(chunk);
      yield chunk;
    }
  }

  update(chunk: Buffer): void {
    this.hash?.update(chunk);
    this.sizeBytes += chunk.length;
  }

  /** `algorithm:hex` of everything seen; call once the stream is done. */
  digest(): string {
    if (this.hash === null) throw new Error('DigestTap: made to count only');
    if (this.result === null) this.result = `${this.algorithm}:${this.hash.digest('hex')}`;
    return this.result;
  }
}
