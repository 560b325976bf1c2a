/**
 * Streaming tar reader: POSIX ustar, pax (`x` and `g` headers: long names and link
 * names, sizes, ids, nanosecond times, `SCHILY.xattr.*`, `LIBARCHIVE.xattr.*`), GNU
 * long names and links (`L`/`K`), GNU sparse files (old `S` headers and pax formats
 * 0.0, 0.1 and 1.0), v7 headers.
 *
 * Untrusted input: every header checksum is verified (unsigned, or the historic signed
 * sum), every numeric field is parsed strictly, metadata records (pax, long names,
 * sparse maps) are bounded in size, names must be valid UTF-8, and a short read
 * anywhere is a `BAD_IMAGE` "truncated" error. End of archive is two zero blocks. Like
 * Go's archive/tar (Docker, containerd), an archive that stops at an entry boundary is
 * accepted: input ending where a header would start, after a lone zero block, or after
 * the last entry's content with its padding short (`umoci insert` writes layers without
 * end-of-archive blocks). Each such end is reported once through `onWarning`; an end
 * inside a header, a pending extended header or an entry's content stays "truncated".
 * Nothing here interprets paths: see `entry-path.ts` for that.
 *
 * Memory: one header, the pending metadata records (bounded by `maxMetaBytes`) and the
 * reader's chunk buffer. Bodies stream: each item's `body` must be iterated before the
 * generator is advanced, or it is skipped.
 */
import { dmfsError, DmfsError } from '../errors';
import { ByteReader } from './byte-reader';
import {
  bad,
  TAR_BLOCK_BYTES,
  checkSparse,
  cString,
  decodeLibarchiveXattrName,
  decodeUtf8,
  isZeroBlock,
  parseNumericField,
  parsePaxRecords,
  parsePaxTime,
  paxDecimal,
  toId,
  toSafeCount,
  truncated,
  verifyChecksum,
  type PaxRecord,
} from './tar-fields';

export type TarEntryType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'chardev' | 'blockdev' | 'fifo';

/** One data segment of a sparse file: `[offsetBytes, offsetBytes + sizeBytes)` holds data, the rest is a hole. */
export interface SparseSegment {
  offsetBytes: number;
  sizeBytes: number;
}

export interface TarEntry {
  type: TarEntryType;
  /** The entry name as stored (after pax / GNU long name substitution), not normalised. */
  path: string;
  /** Hard link target path (as stored) or symlink target; '' otherwise. */
  linkPath: string;
  /** Permission bits including setuid/setgid/sticky (`& 0o7777`). */
  mode: number;
  uid: number;
  gid: number;
  uname: string;
  gname: string;
  /** Logical size of the file content (the real size for a sparse file); 0 for non-files. */
  sizeBytes: number;
  mtimeNs: bigint;
  /** From a pax `atime` record, else null. */
  atimeNs: bigint | null;
  devMajor: number;
  devMinor: number;
  /** Extended attributes from `SCHILY.xattr.*` / `LIBARCHIVE.xattr.*`, in archive order. */
  xattrs: Map<string, Buffer>;
  /** Data segments of a sparse file in ascending order; null for a dense file. */
  sparse: SparseSegment[] | null;
  /** Offset of this entry's first header (including pax / long-name headers) in the archive. */
  headerOffsetBytes: number;
  /** Offset of the stored data (after a sparse 1.0 map) in the archive. */
  dataOffsetBytes: number;
}

/** A piece of file content at a logical offset. Dense files yield ascending contiguous chunks from 0. */
export interface TarChunk {
  offsetBytes: number;
  data: Buffer;
}

export interface TarItem {
  entry: TarEntry;
  /** Content of a `file` entry; empty for the others. Iterate at most once, before advancing. */
  body: AsyncIterable<TarChunk>;
}

export interface TarReaderOptions {
  /** Largest pax header, GNU long name/link or sparse map accepted. Default 1 MiB. */
  maxMetaBytes?: number;
  /** Most sparse segments per entry. Default 1,048,576. */
  maxSparseSegments?: number;
  /**
   * Told once, with a one-line message, when the archive ends without its two
   * end-of-archive zero blocks but at an entry boundary (accepted, see above).
   */
  onWarning?: (message: string) => void;
}

const DEFAULT_MAX_META_BYTES = 1 << 20;
const DEFAULT_MAX_SPARSE_SEGMENTS = 1 << 20;


interface BodyState {
  /** Archive data bytes of the current entry not yet consumed. */
  remainingBytes: number;
  /** Padding after the data up to the next block boundary. */
  paddingBytes: number;
  iterated: boolean;
  current: boolean;
}

/**
 * Reads entries from a tar stream (already decompressed). The generator throws
 * `BAD_IMAGE` for corrupt or truncated input and `NOT_SUPPORTED` for multi-volume
 * archives. Closing the generator early does not drain the source.
 */
export async function* readTar(
  source: AsyncIterable<Buffer | Uint8Array> | ByteReader,
  opts: TarReaderOptions = {},
): AsyncGenerator<TarItem> {
  const r = source instanceof ByteReader ? source : ByteReader.from(source);
  const maxMetaBytes = opts.maxMetaBytes ?? DEFAULT_MAX_META_BYTES;
  const maxSparseSegments = opts.maxSparseSegments ?? DEFAULT_MAX_SPARSE_SEGMENTS;
  const endedEarly = (what: string, offsetBytes: number): void => {
    opts.onWarning?.(`tar: archive ends ${what} without end-of-archive blocks (at byte ${offsetBytes}); accepted`);
  };

  let body: BodyState | null = null;
  const globalPax = new Map<string, Buffer>();
  let pax: PaxRecord[] | null = null;
  let longName: Buffer | null = null;
  let longLink: Buffer | null = null;
  let metaOffset = -1;

  const readData = async (sizeBytes: number, offsetBytes: number): Promise<Buffer> => {
    const data = await r.readExact(sizeBytes);
    if (data.length < sizeBytes) throw truncated(r.positionBytes);
    const pad = (TAR_BLOCK_BYTES - (sizeBytes % TAR_BLOCK_BYTES)) % TAR_BLOCK_BYTES;
    if ((await r.skip(pad)) < pad) throw truncated(r.positionBytes);
    void offsetBytes;
    return data;
  };
  const readMeta = async (sizeBytes: number, what: string, offsetBytes: number): Promise<Buffer> => {
    if (sizeBytes > maxMetaBytes) throw bad(`${what} of ${sizeBytes} bytes exceeds the limit of ${maxMetaBytes}`, offsetBytes);
    return readData(sizeBytes, offsetBytes);
  };

  for (;;) {
    if (body) {
      body.current = false;
      const rest = body.remainingBytes;
      if ((await r.skip(rest)) < rest) throw truncated(r.positionBytes);
      const pad = body.paddingBytes;
      body = null;
      const padded = await r.skip(pad);
      if (padded < pad) {
        // The input ended inside the padding: every byte of the last entry is here.
        endedEarly("after the last entry's content", r.positionBytes);
        return;
      }
    }
    const offsetBytes = r.positionBytes;
    const block = await r.readExact(TAR_BLOCK_BYTES);
    const pendingMeta = pax !== null || longName !== null || longLink !== null;
    if (block.length === 0) {
      if (pendingMeta) throw truncated(offsetBytes);
      endedEarly('at an entry boundary', offsetBytes);
      return;
    }
    if (block.length < TAR_BLOCK_BYTES) throw truncated(offsetBytes);
    if (isZeroBlock(block)) {
      const next = await r.readExact(TAR_BLOCK_BYTES);
      if (next.length > 0 && next.length < TAR_BLOCK_BYTES) throw truncated(r.positionBytes);
      if (next.length > 0 && !isZeroBlock(next)) throw bad('a zero block inside the archive', offsetBytes);
      if (pendingMeta) throw bad('extended header without an entry at the end of the archive', offsetBytes);
      if (next.length === 0) endedEarly('after one zero block', offsetBytes);
      return;
    }
    verifyChecksum(block, offsetBytes);

    const typeflag = String.fromCharCode(block[156]);
    const magic = block.toString('latin1', 257, 263);
    const isUstar = magic === 'ustar\0';
    const isGnu = magic === 'ustar ';
    const rawSize = toSafeCount(parseNumericField(block, 124, 136, 'size', offsetBytes), 'entry size', offsetBytes);
    if (metaOffset < 0) metaOffset = offsetBytes;

    switch (typeflag) {
      case 'x': {
        if (pax !== null) throw bad('two pax headers for one entry', offsetBytes);
        pax = parsePaxRecords(await readMeta(rawSize, 'pax header', offsetBytes), offsetBytes);
        continue;
      }
      case 'g': {
        const records = parsePaxRecords(await readMeta(rawSize, 'pax global header', offsetBytes), offsetBytes);
        for (const rec of records) {
          if (rec.value.length === 0) globalPax.delete(rec.key);
          else globalPax.set(rec.key, Buffer.from(rec.value));
        }
        metaOffset = -1;
        continue;
      }
      case 'L': {
        if (longName !== null) throw bad('two GNU long names for one entry', offsetBytes);
        longName = cString(await readMeta(rawSize, 'GNU long name', offsetBytes), 0, rawSize);
        continue;
      }
      case 'K': {
        if (longLink !== null) throw bad('two GNU long link names for one entry', offsetBytes);
        longLink = cString(await readMeta(rawSize, 'GNU long link name', offsetBytes), 0, rawSize);
        continue;
      }
      case 'V': {
        // GNU volume label: no file.
        if ((await r.skip(roundUp(rawSize))) < roundUp(rawSize)) throw truncated(r.positionBytes);
        metaOffset = -1;
        continue;
      }
      case 'M':
        throw dmfsError('NOT_SUPPORTED', `tar: multi-volume archives are not supported (at byte ${offsetBytes})`);
      case 'N':
        throw dmfsError('NOT_SUPPORTED', `tar: old GNU long-name ('N') entries are not supported (at byte ${offsetBytes})`);
      default:
        break;
    }

    // Records that apply: global defaults, then this entry's pax records (later wins).
    const rec = new Map<string, Buffer>(globalPax);
    const sparseOffsets: number[] = [];
    const sparseSizes: number[] = [];
    const xattrs = new Map<string, Buffer>();
    const applyXattr = (key: string, value: Buffer): void => {
      if (key.startsWith('SCHILY.xattr.')) {
        const name = key.slice('SCHILY.xattr.'.length);
        if (name.length === 0) throw bad('empty xattr name', offsetBytes);
        xattrs.set(name, Buffer.from(value));
      } else if (key.startsWith('LIBARCHIVE.xattr.')) {
        const name = decodeLibarchiveXattrName(key.slice('LIBARCHIVE.xattr.'.length), offsetBytes);
        if (name.length === 0) throw bad('empty xattr name', offsetBytes);
        xattrs.set(name, Buffer.from(value.toString('latin1'), 'base64'));
      }
    };
    for (const [k, v] of globalPax) applyXattr(k, v);
    for (const p of pax ?? []) {
      if (p.key === 'GNU.sparse.offset') {
        sparseOffsets.push(toSafeCount(paxDecimal(p.value, p.key, offsetBytes), p.key, offsetBytes));
        if (sparseOffsets.length > maxSparseSegments) throw bad('too many sparse segments', offsetBytes);
      } else if (p.key === 'GNU.sparse.numbytes') {
        sparseSizes.push(toSafeCount(paxDecimal(p.value, p.key, offsetBytes), p.key, offsetBytes));
      } else {
        rec.set(p.key, p.value);
      }
      applyXattr(p.key, p.value);
    }

    // Name.
    let pathBytes: Buffer;
    const pathRecord = rec.get('GNU.sparse.name') ?? (pax ? pax.find((p) => p.key === 'path')?.value : undefined);
    if (pathRecord !== undefined) pathBytes = pathRecord;
    else if (longName !== null) pathBytes = longName;
    else {
      const name = cString(block, 0, 100);
      const prefix = isUstar ? cString(block, 345, 500) : Buffer.alloc(0);
      pathBytes = prefix.length > 0 ? Buffer.concat([prefix, Buffer.from('/'), name]) : name;
    }
    const path = decodeUtf8(pathBytes, 'entry name', offsetBytes);
    if (path.length === 0) throw bad('entry with an empty name', offsetBytes);

    let linkBytes: Buffer;
    const linkRecord = pax?.find((p) => p.key === 'linkpath')?.value;
    if (linkRecord !== undefined) linkBytes = linkRecord;
    else if (longLink !== null) linkBytes = longLink;
    else linkBytes = cString(block, 157, 257);
    const linkPath = decodeUtf8(linkBytes, 'link name', offsetBytes);

    let type: TarEntryType;
    let hasData = false;
    let isOldSparse = false;
    switch (typeflag) {
      case '0':
      case '7':
        type = 'file';
        hasData = true;
        break;
      case '\0':
        type = path.endsWith('/') ? 'dir' : 'file';
        hasData = type === 'file';
        break;
      case '1':
        type = 'hardlink';
        break;
      case '2':
        type = 'symlink';
        break;
      case '3':
        type = 'chardev';
        break;
      case '4':
        type = 'blockdev';
        break;
      case '5':
        type = 'dir';
        break;
      case '6':
        type = 'fifo';
        break;
      case 'D':
        type = 'dir'; // GNU dumpdir: its data (a listing) is skipped.
        break;
      case 'S':
        if (!isGnu) throw bad("sparse ('S') entry without a GNU header", offsetBytes);
        type = 'file';
        hasData = true;
        isOldSparse = true;
        break;
      default:
        // POSIX: an unknown type is read as a regular file.
        type = 'file';
        hasData = true;
        break;
    }
    if ((type === 'hardlink' || type === 'symlink') && linkPath.length === 0) {
      throw bad(`${type} "${path}" without a target`, offsetBytes);
    }

    let storedBytes = rawSize;
    const paxSize = rec.get('size');
    if (paxSize !== undefined) storedBytes = toSafeCount(paxDecimal(paxSize, 'size', offsetBytes), 'entry size', offsetBytes);
    if (typeflag === 'D') {
      // Skip the dumpdir listing below, as data without a body.
    } else if (!hasData) storedBytes = 0;

    const mode = toSafeCount(parseNumericField(block, 100, 108, 'mode', offsetBytes) & 0o7777n, 'mode', offsetBytes);
    let uid = toId(parseNumericField(block, 108, 116, 'uid', offsetBytes), 'uid', offsetBytes);
    let gid = toId(parseNumericField(block, 116, 124, 'gid', offsetBytes), 'gid', offsetBytes);
    const paxUid = rec.get('uid');
    if (paxUid !== undefined) uid = toId(paxDecimal(paxUid, 'uid', offsetBytes), 'uid', offsetBytes);
    const paxGid = rec.get('gid');
    if (paxGid !== undefined) gid = toId(paxDecimal(paxGid, 'gid', offsetBytes), 'gid', offsetBytes);

    let mtimeNs = parseNumericField(block, 136, 148, 'mtime', offsetBytes) * 1_000_000_000n;
    const paxMtime = rec.get('mtime');
    if (paxMtime !== undefined) mtimeNs = parsePaxTime(paxMtime.toString('latin1'), 'mtime', offsetBytes);
    const paxAtime = rec.get('atime');
    const atimeNs = paxAtime !== undefined ? parsePaxTime(paxAtime.toString('latin1'), 'atime', offsetBytes) : null;

    const uname = decodeUtf8(rec.get('uname') ?? cString(block, 265, 297), 'uname', offsetBytes);
    const gname = decodeUtf8(rec.get('gname') ?? cString(block, 297, 329), 'gname', offsetBytes);
    let devMajor = 0;
    let devMinor = 0;
    if (type === 'chardev' || type === 'blockdev') {
      devMajor = toId(parseNumericField(block, 329, 337, 'devmajor', offsetBytes), 'devmajor', offsetBytes);
      devMinor = toId(parseNumericField(block, 337, 345, 'devminor', offsetBytes), 'devminor', offsetBytes);
      const pMaj = rec.get('SCHILY.devmajor');
      const pMin = rec.get('SCHILY.devminor');
      if (pMaj !== undefined) devMajor = toId(paxDecimal(pMaj, 'devmajor', offsetBytes), 'devmajor', offsetBytes);
      if (pMin !== undefined) devMinor = toId(paxDecimal(pMin, 'devminor', offsetBytes), 'devminor', offsetBytes);
    }

    // Sparse files.
    let sparse: SparseSegment[] | null = null;
    let sizeBytes = type === 'file' ? storedBytes : 0;
    let mapBytes = 0; // PAX 1.0: bytes of the map at the start of the data area.
    const sparseMajor = rec.get('GNU.sparse.major')?.toString('latin1');
    if (isOldSparse) {
      sparse = [];
      const pushSeg = (buf: Buffer, at: number): void => {
        const off = parseNumericField(buf, at, at + 12, 'sparse offset', offsetBytes);
        const num = parseNumericField(buf, at + 12, at + 24, 'sparse numbytes', offsetBytes);
        if (off === 0n && num === 0n && buf[at] === 0) return;
        if (sparse!.length >= maxSparseSegments) throw bad('too many sparse segments', offsetBytes);
        sparse!.push({
          offsetBytes: toSafeCount(off, 'sparse offset', offsetBytes),
          sizeBytes: toSafeCount(num, 'sparse size', offsetBytes),
        });
      };
      for (let i = 0; i < 4; i++) pushSeg(block, 386 + i * 24);
      sizeBytes = toSafeCount(parseNumericField(block, 483, 495, 'realsize', offsetBytes), 'sparse real size', offsetBytes);
      let extended = block[482] !== 0;
      while (extended) {
        const ext = await r.readExact(TAR_BLOCK_BYTES);
        if (ext.length < TAR_BLOCK_BYTES) throw truncated(r.positionBytes);
        for (let i = 0; i < 21; i++) pushSeg(ext, i * 24);
        extended = ext[504] !== 0;
      }
    } else if (sparseMajor === '1') {
      const minor = rec.get('GNU.sparse.minor')?.toString('latin1');
      if (minor !== '0') throw dmfsError('NOT_SUPPORTED', `tar: GNU sparse format 1.${minor} is not supported`);
      const real = rec.get('GNU.sparse.realsize');
      if (real === undefined) throw bad('GNU sparse 1.0 entry without GNU.sparse.realsize', offsetBytes);
      sizeBytes = toSafeCount(paxDecimal(real, 'GNU.sparse.realsize', offsetBytes), 'sparse real size', offsetBytes);
      // The map is a list of decimal numbers, one a line, padded to a block.
      const numbers: number[] = [];
      let count = -1;
      let text = '';
      while (count < 0 || numbers.length < 1 + 2 * count) {
        if (mapBytes >= maxMetaBytes) throw bad('GNU sparse map too large', offsetBytes);
        if (mapBytes + TAR_BLOCK_BYTES > storedBytes) throw bad('GNU sparse map exceeds the entry', offsetBytes);
        const blk = await r.readExact(TAR_BLOCK_BYTES);
        if (blk.length < TAR_BLOCK_BYTES) throw truncated(r.positionBytes);
        mapBytes += TAR_BLOCK_BYTES;
        text += blk.toString('latin1');
        let nl: number;
        while ((count < 0 || numbers.length < 1 + 2 * count) && (nl = text.indexOf('\n')) >= 0) {
          const line = text.slice(0, nl);
          text = text.slice(nl + 1);
          if (!/^[0-9]{1,16}$/.test(line)) throw bad('malformed GNU sparse map', offsetBytes);
          numbers.push(Number(line));
          if (count < 0) {
            count = numbers[0];
            if (count > maxSparseSegments) throw bad('too many sparse segments', offsetBytes);
          }
        }
        const needMore = count < 0 || numbers.length < 1 + 2 * count;
        if (needMore && (text.length > 32 || text.includes('\0'))) throw bad('malformed GNU sparse map', offsetBytes);
      }
      sparse = [];
      for (let i = 0; i < count; i++) {
        sparse.push({ offsetBytes: numbers[1 + 2 * i], sizeBytes: numbers[2 + 2 * i] });
      }
      storedBytes -= mapBytes;
    } else if (rec.has('GNU.sparse.map') || sparseOffsets.length > 0 || rec.has('GNU.sparse.size')) {
      const real = rec.get('GNU.sparse.size');
      if (real === undefined) throw bad('GNU sparse entry without GNU.sparse.size', offsetBytes);
      sizeBytes = toSafeCount(paxDecimal(real, 'GNU.sparse.size', offsetBytes), 'sparse real size', offsetBytes);
      sparse = [];
      const map = rec.get('GNU.sparse.map');
      if (map !== undefined) {
        // Format 0.1: "offset,size,offset,size,...".
        const text = map.toString('latin1');
        const parts = text.length === 0 ? [] : text.split(',');
        if (parts.length % 2 !== 0 || parts.length / 2 > maxSparseSegments) throw bad('malformed GNU.sparse.map', offsetBytes);
        for (let i = 0; i < parts.length; i += 2) {
          if (!/^[0-9]{1,16}$/.test(parts[i]) || !/^[0-9]{1,16}$/.test(parts[i + 1])) {
            throw bad('malformed GNU.sparse.map', offsetBytes);
          }
          sparse.push({ offsetBytes: Number(parts[i]), sizeBytes: Number(parts[i + 1]) });
        }
      } else {
        // Format 0.0: repeated GNU.sparse.offset / GNU.sparse.numbytes records.
        if (sparseOffsets.length !== sparseSizes.length) throw bad('unpaired GNU sparse records', offsetBytes);
        for (let i = 0; i < sparseOffsets.length; i++) {
          sparse.push({ offsetBytes: sparseOffsets[i], sizeBytes: sparseSizes[i] });
        }
      }
    }
    if (sparse) {
      if (type !== 'file') throw bad('sparse map on a non-file entry', offsetBytes);
      checkSparse(sparse, sizeBytes, storedBytes, offsetBytes);
    }

    const entry: TarEntry = {
      type,
      path,
      linkPath: type === 'hardlink' || type === 'symlink' ? linkPath : '',
      mode,
      uid,
      gid,
      uname,
      gname,
      sizeBytes,
      mtimeNs,
      atimeNs,
      devMajor,
      devMinor,
      xattrs,
      sparse,
      headerOffsetBytes: metaOffset,
      dataOffsetBytes: r.positionBytes,
    };
    pax = null;
    longName = null;
    longLink = null;
    metaOffset = -1;

    const state: BodyState = {
      remainingBytes: storedBytes,
      paddingBytes: (TAR_BLOCK_BYTES - ((storedBytes + mapBytes) % TAR_BLOCK_BYTES)) % TAR_BLOCK_BYTES,
      iterated: false,
      current: true,
    };
    body = state;
    yield { entry, body: type === 'file' ? bodyOf(r, state, sparse) : emptyBody() };
  }
}

function roundUp(n: number): number {
  return Math.ceil(n / TAR_BLOCK_BYTES) * TAR_BLOCK_BYTES;
}

async function* emptyBody(): AsyncGenerator<TarChunk> {
  // A non-file entry has no content.
}

async function* bodyOf(r: ByteReader, state: BodyState, sparse: SparseSegment[] | null): AsyncGenerator<TarChunk> {
  if (state.iterated) throw dmfsError('INVALID', 'tar: an entry body can be read only once');
  state.iterated = true;
  const segments = sparse ?? [{ offsetBytes: 0, sizeBytes: state.remainingBytes }];
  for (const seg of segments) {
    let done = 0;
    while (done < seg.sizeBytes) {
      if (!state.current) throw dmfsError('INVALID', 'tar: entry body read after the reader moved on');
      const data = await r.readSome(Math.min(seg.sizeBytes - done, 1 << 20));
      if (data.length === 0) throw truncated(r.positionBytes);
      state.remainingBytes -= data.length;
      yield { offsetBytes: seg.offsetBytes + done, data };
      done += data.length;
    }
  }
}
