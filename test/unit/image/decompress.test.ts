import * as zlib from 'node:zlib';
import { decompress, detectCompression, ZstdFramer } from '../../../src/image/decompress';
import { chunked, codeOf, sh } from './helpers/tar-helpers';

async function collect(src: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of src) parts.push(c);
  return Buffer.concat(parts);
}

const sample = Buffer.from(Array.from({ length: 200_000 }, (_, i) => `line ${i % 977} ${i}\n`).join(''));

describe('decompress', () => {
  test('plain passes through', async () => {
    expect((await collect(decompress(chunked(sample)))).equals(sample)).toBe(true);
  });

  test('gzip, including multi-member streams', async () => {
    const gz = Buffer.concat([zlib.gzipSync(sample.subarray(0, 1000)), zlib.gzipSync(sample.subarray(1000))]);
    expect(detectCompression(gz)).toBe('gzip');
    expect((await collect(decompress(chunked(gz)))).equals(sample)).toBe(true);
  });

  test('zstd from the zstd tool, levels 1 and 19, checksum on and off, multi-frame', async () => {
    for (const args of [['-1'], ['-19', '--no-check'], ['-3', '--check']]) {
      const zst = sh('zstd', [...args, '-c', '-q'], { input: sample });
      expect(detectCompression(zst)).toBe('zstd');
      expect((await collect(decompress(chunked(zst)))).equals(sample)).toBe(true);
    }
    const two = Buffer.concat([sh('zstd', ['-c', '-q'], { input: sample.subarray(0, 5) }), sh('zstd', ['-c', '-q'], { input: sample.subarray(5) })]);
    expect((await collect(decompress(chunked(two)))).equals(sample)).toBe(true);
  });

  test('zstd skippable frames are skipped', async () => {
    const skippable = Buffer.alloc(8 + 5);
    skippable.writeUInt32LE(0x184d2a50, 0);
    skippable.writeUInt32LE(5, 4);
    const zst = Buffer.concat([skippable, sh('zstd', ['-c', '-q'], { input: sample })]);
    expect((await collect(decompress(chunked(zst)))).equals(sample)).toBe(true);
  });

  test('truncated gzip and zstd are BAD_IMAGE', async () => {
    const gz = zlib.gzipSync(sample);
    expect(await codeOf(collect(decompress(chunked(gz.subarray(0, gz.length - 100)))))).toBe('BAD_IMAGE');
    const zst = sh('zstd', ['-c', '-q'], { input: sample });
    expect(await codeOf(collect(decompress(chunked(zst.subarray(0, zst.length - 10)))))).toBe('BAD_IMAGE');
  });

  test('corrupt gzip is BAD_IMAGE', async () => {
    const gz = Buffer.from(zlib.gzipSync(sample));
    for (let i = 100; i < 200; i++) gz[i] ^= 0x55;
    expect(await codeOf(collect(decompress(chunked(gz))))).toBe('BAD_IMAGE');
  });

  test('gzip bomb: output past the limit fails, and memory stays bounded', async () => {
    // 1 GiB of zeros compresses to ~1 MiB; never hold it.
    const zeros = Buffer.alloc(1 << 20);
    const gz = zlib.createGzip({ level: 9 });
    const parts: Buffer[] = [];
    gz.on('data', (c: Buffer) => parts.push(c));
    for (let i = 0; i < 1024; i++) gz.write(zeros);
    await new Promise<void>((resolve) => gz.end(resolve));
    const bomb = Buffer.concat(parts);
    expect(bomb.length).toBeLessThan(2 << 20);
    const before = process.memoryUsage().rss;
    let peak = before;
    const run = async (): Promise<void> => {
      for await (const c of decompress(chunked(bomb), { maxOutputBytes: 256 << 20 })) {
        void c;
        peak = Math.max(peak, process.memoryUsage().rss);
      }
    };
    expect(await codeOf(run())).toBe('BAD_IMAGE');
    expect(peak - before).toBeLessThan(200 << 20);
  });

  test('zstd bomb made of RLE blocks is cut at the limit', async () => {
    const zst = sh('zstd', ['-19', '-c', '-q'], { input: Buffer.alloc(64 << 20) });
    expect(zst.length).toBeLessThan(64 * 1024);
    expect(await codeOf(collect(decompress(chunked(zst), { maxOutputBytes: 8 << 20 })))).toBe('BAD_IMAGE');
  });

  test('zstd frame asking for a huge window is refused before decoding', async () => {
    // Frame header: magic, descriptor (no single segment, no checksum), window byte for 2 GiB.
    const frame = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, (31 - 10) << 3, 0x01, 0x00, 0x00]);
    expect(await codeOf(collect(decompress(chunked(frame))))).toBe('BAD_IMAGE');
    const framer = new ZstdFramer(1 << 27);
    expect(() => framer.feed(frame)).toThrow(expect.objectContaining({ code: 'BAD_IMAGE' }));
  });

  test('bzip2 and xz are NOT_SUPPORTED', async () => {
    expect(await codeOf(collect(decompress(chunked(Buffer.from('BZh91AY&SY')))))).toBe('NOT_SUPPORTED');
    expect(await codeOf(collect(decompress(chunked(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0, 1, 2])))))).toBe('NOT_SUPPORTED');
  });
});
