#!/usr/bin/env node
'use strict';
/**
 * Patches the installed fuse-native 2.2.6 and rebuilds its binding in place.
 *
 * Why a patch and not only workarounds from outside: three defects live in the C
 * binding and cannot be reached from JavaScript.
 *   1. utimens hands the atime where the mtime belongs and converts both to ms, so
 *      UTIME_NOW / UTIME_OMIT and nanoseconds are lost before JS sees them.
 *   2. stat/statfs values cross as 32-bit ints and ms timestamps: st_ino, f_blocks and
 *      friends are truncated, and st_mtim loses its nanoseconds.
 *   3. The caller's uid/gid/pid (fuse_get_context) never reach JS, so a file created by a
 *      non-root user through `allow_other` would be owned by the daemon's user.
 * The rest is handled from outside by src/fs (timeout: false, big_writes/use_ino and
 * friends appended to the fsname option string, file handles kept below 2^31, libfuse's
 * `.fuse_hidden*` rename for open-unlinked files served from a handle -> inode map).
 *
 * What the patch changes (PATCH_VERSION below; src/fs/fuse-adapter.ts checks it):
 *   fuse-native.c
 *   - stat array (Uint32Array(23)): mode, uid, gid, size lo/hi, dev, nlink, ino lo/hi,
 *     rdev lo/hi, blksize, blocks lo/hi, atime sec lo/hi (two's complement int64),
 *     atime nsec, mtime sec lo/hi, mtime nsec, ctime sec lo/hi, ctime nsec.
 *   - statfs array (Uint32Array(17)): bsize, frsize, blocks lo/hi, bfree lo/hi,
 *     bavail lo/hi, files lo/hi, ffree lo/hi, favail lo/hi, fsid, flag, namemax.
 *   - utimens: (path, atimeSec, atimeNsec, mtimeSec, mtimeNsec) exactly as libfuse gives
 *     them; nsec may be UTIME_NOW or UTIME_OMIT (flag_utime_omit_ok set, else libfuse
 *     silently drops `touch -m`/`touch -a`, which change one time only).
 *   - mknod: dev as a 64-bit number.
 *   - each thread-local block starts with uid, gid, pid, umask of the calling process
 *     (exported offset `dmfs_ctx_offset`), read by index.js into `fuse.context`.
 *   - a failed fuse_new no longer leaves a dead mount behind.
 *   - `fuse_native_loop_done(thread)`: 1 once the session loop has returned, i.e. the
 *     kernel connection is gone (after an unmount, a lazy one once the last file closed).
 *   index.js
 *   - loads only build/Release/fuse.node (never the stock prebuild) and checks its
 *     `dmfs_patch` export; getStatArray/getStatfsArray take a prepared Uint32Array.
 *   - fgetattr calls ops.fgetattr (stock code calls getattr and drops the handle).
 *   - getxattr/listxattr answer ERANGE when the caller's buffer is too small (stock code
 *     returns a length larger than the buffer it filled).
 *   - `loopDone()`: whether the session has ended (the service polls it).
 *   - `detach()`: releases the native handles after the mount was unmounted from outside
 *     (stock `close()` always runs `fusermount -uz`, a lazy unmount).
 *
 * Idempotent: files carry a `dmfs-patch <version>` marker; the originals are kept as
 * `*.dmfs-orig` and re-patched from those when the version changes. The binding is
 * rebuilt when build/Release/fuse.node is missing, older than the sources, or reports
 * another patch version.
 *
 * Usage: node scripts/patch-fuse-native.js [--check] [--strict] [--dir DIR]
 *   --check   print a JSON status and exit 0 when patched+built+loadable, else 1
 *   --strict  exit non-zero on any failure (default: warn and exit 0, so `npm install`
 *             of dmfs still succeeds on hosts without a compiler; mounting then reports
 *             FUSE_UNAVAILABLE with the reason)
 */
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const PATCH_VERSION = 3;
const FUSE_NATIVE_VERSION = '2.2.6';
const MARKER = `dmfs-patch ${PATCH_VERSION}`;
const MARKER_RE = /dmfs-patch (\d+)/;
const ORIG_SUFFIX = '.dmfs-orig';

/** Each edit: exact `find` text that must occur exactly once, and its replacement. */
const C_EDITS = [
  {
    what: 'marker and stddef',
    find: '#define FUSE_USE_VERSION 29\n',
    replace: `/* ${MARKER}: see dmfs scripts/patch-fuse-native.js */\n#define FUSE_USE_VERSION 29\n#include <stddef.h>\n#include <stdint.h>\n`,
  },
  {
    what: 'caller context captured per call',
    find: '  fuse_thread_locals_t *l = get_thread_locals();\\\n  l->op = op_##name;\\\n',
    replace:
      '  fuse_thread_locals_t *l = get_thread_locals();\\\n' +
      '  {\\\n' +
      '    struct fuse_context *dmfs_fc = fuse_get_context();\\\n' +
      '    l->ctx_uid = dmfs_fc->uid;\\\n' +
      '    l->ctx_gid = dmfs_fc->gid;\\\n' +
      '    l->ctx_pid = (uint32_t) dmfs_fc->pid;\\\n' +
      '    l->ctx_umask = dmfs_fc->umask;\\\n' +
      '  }\\\n' +
      '  l->op = op_##name;\\\n',
  },
  {
    what: 'int64 argv helper',
    find: '// Opcodes\n',
    replace:
      '#define FUSE_INT64_ARGV(n, pos)\\\n' +
      '  napi_create_int64(env, (int64_t) (n), &(argv[pos]));\n\n' +
      'static const uint32_t dmfs_patch = ' + PATCH_VERSION + ';\n\n' +
      '// Opcodes\n',
  },
  {
    what: 'thread locals: context fields first',
    find: 'typedef struct {\n  napi_ref self;\n\n  // Opcode\n',
    replace:
      'typedef struct {\n' +
      '  // dmfs: caller of the current operation (fuse_get_context), read by index.js\n' +
      '  uint32_t ctx_uid;\n' +
      '  uint32_t ctx_gid;\n' +
      '  uint32_t ctx_pid;\n' +
      '  uint32_t ctx_umask;\n' +
      '  napi_ref self;\n\n' +
      '  // Opcode\n',
  },
  {
    what: 'thread locals: full timespecs for utimens',
    find: '  size_t atime;\n  size_t mtime;\n',
    replace: '  struct timespec times[2];\n',
  },
  {
    what: 'timespec from (sec lo, sec hi, nsec)',
    find:
      'static void uint32s_to_timespec (struct timespec* ts, uint32_t** ints) {\n' +
      '  uint64_t ms = uint32s_to_uint64(ints);\n' +
      '  ts->tv_sec = ms / 1000;\n' +
      '  ts->tv_nsec = (ms % 1000) * 1000000;\n' +
      '}\n\n' +
      'static uint64_t timespec_to_uint64 (const struct timespec* ts) {\n' +
      '  uint64_t ms = (ts->tv_sec * 1000) + (ts->tv_nsec / 1000000);\n' +
      '  return ms;\n' +
      '}\n',
    replace:
      'static void uint32s_to_timespec (struct timespec* ts, uint32_t** ints) {\n' +
      '  ts->tv_sec = (time_t) (int64_t) uint32s_to_uint64(ints);\n' +
      '  ts->tv_nsec = *((*ints)++);\n' +
      '}\n',
  },
  {
    what: 'stat: 64-bit ino/rdev, ns timestamps',
    find:
      '  stat->st_nlink = *ints++;\n' +
      '  stat->st_ino = *ints++;\n' +
      '  stat->st_rdev = *ints++;\n' +
      '  stat->st_blksize = *ints++;\n',
    replace:
      '  stat->st_nlink = *ints++;\n' +
      '  stat->st_ino = uint32s_to_uint64(&ints);\n' +
      '  stat->st_rdev = uint32s_to_uint64(&ints);\n' +
      '  stat->st_blksize = *ints++;\n',
  },
  {
    what: 'statfs: 64-bit counts',
    find:
      '  statvfs->f_blocks = *ints++;\n' +
      '  statvfs->f_bfree = *ints++;\n' +
      '  statvfs->f_bavail = *ints++;\n' +
      '  statvfs->f_files = *ints++;\n' +
      '  statvfs->f_ffree = *ints++;\n' +
      '  statvfs->f_favail = *ints++;\n',
    replace:
      '  statvfs->f_blocks = uint32s_to_uint64(&ints);\n' +
      '  statvfs->f_bfree = uint32s_to_uint64(&ints);\n' +
      '  statvfs->f_bavail = uint32s_to_uint64(&ints);\n' +
      '  statvfs->f_files = uint32s_to_uint64(&ints);\n' +
      '  statvfs->f_ffree = uint32s_to_uint64(&ints);\n' +
      '  statvfs->f_favail = uint32s_to_uint64(&ints);\n',
  },
  {
    what: 'utimens: both times, exact',
    find:
      'FUSE_METHOD_VOID(utimens, 5, 0, (const char *path, const struct timespec tv[2]), {\n' +
      '  l->path = path;\n' +
      '  l->atime = timespec_to_uint64(&tv[0]);\n' +
      '  l->mtime = timespec_to_uint64(&tv[1]);\n' +
      '}, {\n' +
      '  napi_create_string_utf8(env, l->path, NAPI_AUTO_LENGTH, &(argv[2]));\n' +
      '  FUSE_UINT64_TO_INTS_ARGV(l->atime, 3)\n' +
      '  FUSE_UINT64_TO_INTS_ARGV(l->atime, 5)\n' +
      '})\n',
    replace:
      'FUSE_METHOD_VOID(utimens, 5, 0, (const char *path, const struct timespec tv[2]), {\n' +
      '  l->path = path;\n' +
      '  l->times[0] = tv[0];\n' +
      '  l->times[1] = tv[1];\n' +
      '}, {\n' +
      '  napi_create_string_utf8(env, l->path, NAPI_AUTO_LENGTH, &(argv[2]));\n' +
      '  FUSE_INT64_ARGV(l->times[0].tv_sec, 3)\n' +
      '  FUSE_INT64_ARGV(l->times[0].tv_nsec, 4)\n' +
      '  FUSE_INT64_ARGV(l->times[1].tv_sec, 5)\n' +
      '  FUSE_INT64_ARGV(l->times[1].tv_nsec, 6)\n' +
      '})\n',
  },
  {
    what: 'mknod: 64-bit dev',
    find: '  napi_create_uint32(env, l->dev, &(argv[4]));\n',
    replace: '  FUSE_INT64_ARGV(l->dev, 4)\n',
  },
  {
    what: 'utimens gets UTIME_NOW/UTIME_OMIT and single times (libfuse drops atime-only or mtime-only changes otherwise)',
    find: '  struct fuse_operations ops = { };\n',
    replace: '  struct fuse_operations ops = { };\n  ops.flag_utime_omit_ok = 1;\n',
  },
  {
    what: 'no dead mount when fuse_new fails',
    find: '  struct fuse *fuse = fuse_new(ch, &args, &ops, sizeof(struct fuse_operations), ft);\n',
    replace:
      '  struct fuse *fuse = fuse_new(ch, &args, &ops, sizeof(struct fuse_operations), ft);\n' +
      '  if (fuse == NULL) {\n' +
      '    fuse_unmount(mnt, ch);\n' +
      '    napi_throw_error(env, "fuse failed", "fuse_new failed (bad mount option?)");\n' +
      '    return NULL;\n' +
      '  }\n',
  },
  {
    what: 'loop-done flag in the session struct',
    find: '  uv_sem_t sem;\n} fuse_thread_t;\n',
    replace: '  uv_sem_t sem;\n  // dmfs: set once fuse_loop_mt has returned (the kernel connection is gone)\n  int dmfs_loop_done;\n} fuse_thread_t;\n',
  },
  {
    what: 'loop-done flag set when the session ends',
    find: '  fuse_destroy(ft->fuse);\n\n  return NULL;\n}\n',
    replace:
      '  fuse_destroy(ft->fuse);\n' +
      '  __atomic_store_n(&ft->dmfs_loop_done, 1, __ATOMIC_SEQ_CST);\n\n' +
      '  return NULL;\n' +
      '}\n\n' +
      'NAPI_METHOD(fuse_native_loop_done) {\n' +
      '  NAPI_ARGV(1)\n' +
      '  NAPI_ARGV_BUFFER_CAST(fuse_thread_t *, ft, 0);\n' +
      '  uint32_t done = (uint32_t) __atomic_load_n(&ft->dmfs_loop_done, __ATOMIC_SEQ_CST);\n' +
      '  NAPI_RETURN_UINT32(done)\n' +
      '}\n',
  },
  {
    what: 'export patch version and context offset',
    find: '  NAPI_EXPORT_SIZEOF(fuse_thread_t)\n',
    replace:
      '  NAPI_EXPORT_SIZEOF(fuse_thread_t)\n' +
      '  NAPI_EXPORT_UINT32(dmfs_patch)\n' +
      '  NAPI_EXPORT_FUNCTION(fuse_native_loop_done)\n' +
      '  NAPI_EXPORT_OFFSETOF(fuse_thread_locals_t, ctx_uid)\n',
  },
];

const JS_EDITS = [
  {
    what: 'load only the patched build',
    find: "const binding = require('node-gyp-build')(__dirname)\n",
    replace:
      `// ${MARKER}: see dmfs scripts/patch-fuse-native.js\n` +
      `const DMFS_PATCH = ${PATCH_VERSION}\n` +
      "const binding = require('./build/Release/fuse.node')\n" +
      'if (binding.dmfs_patch !== DMFS_PATCH) {\n' +
      "  throw new Error('fuse-native binding is not the dmfs-patched build (patch ' + binding.dmfs_patch + ', want ' + DMFS_PATCH + '): run node scripts/patch-fuse-native.js')\n" +
      '}\n' +
      'const CTX_OFFSET = binding.offsetof_fuse_thread_locals_t_ctx_uid\n' +
      "if (typeof CTX_OFFSET !== 'number') throw new Error('fuse-native binding lacks the dmfs context offset')\n",
  },
  {
    what: 'caller context before each op',
    find:
      "        const funcName = `_op_${name}`\n" +
      '        if (!self[funcName] || !self._implemented.has(op)) return boundSignal(-1, ...defaults)\n',
    replace:
      "        const funcName = `_op_${name}`\n" +
      '        if (!self[funcName] || !self._implemented.has(op)) return boundSignal(-1, ...defaults)\n' +
      '        self.context = readContext(nativeHandler)\n',
  },
  {
    what: 'fgetattr forwards the handle',
    find:
      '    this.ops.getattr(path, (err, stat) => {\n' +
      '      if (err) return signal(err)\n' +
      '      return signal(0, getStatArray(stat))\n' +
      '    })\n' +
      '  }\n\n' +
      '  _op_access',
    replace:
      '    this.ops.fgetattr(path, fd, (err, stat) => {\n' +
      '      if (err) return signal(err, getStatArray())\n' +
      '      return signal(0, getStatArray(stat))\n' +
      '    })\n' +
      '  }\n\n' +
      '  _op_access',
  },
  {
    what: 'utimens: raw sec/nsec pairs',
    find:
      '  _op_utimens (signal, path, atimeLow, atimeHigh, mtimeLow, mtimeHigh) {\n' +
      '    const atime = getDoubleArg(atimeLow, atimeHigh)\n' +
      '    const mtime = getDoubleArg(mtimeLow, mtimeHigh)\n' +
      '    this.ops.utimens(path, atime, mtime, err => {\n',
    replace:
      '  _op_utimens (signal, path, atimeSec, atimeNsec, mtimeSec, mtimeNsec) {\n' +
      '    this.ops.utimens(path, atimeSec, atimeNsec, mtimeSec, mtimeNsec, err => {\n',
  },
  {
    what: 'getxattr: ERANGE on a short buffer',
    find:
      '        if (!value) return signal(IS_OSX ? -93 : -61, valueBuf.buffer)\n' +
      '        value.copy(valueBuf)\n',
    replace:
      '        if (!value) return signal(IS_OSX ? -93 : -61, valueBuf.buffer)\n' +
      '        if (valueBuf.length && value.length > valueBuf.length) return signal(-34, valueBuf.buffer)\n' +
      '        value.copy(valueBuf)\n',
  },
  {
    what: 'listxattr: ERANGE on a short buffer',
    find:
      '        let ptr = 0\n' +
      '        for (const name of list) {\n',
    replace:
      '        let need = 0\n' +
      '        for (const name of list) need += Buffer.byteLength(name) + 1\n' +
      '        if (need > listBuf.length) return signal(-34, listBuf.buffer)\n' +
      '        let ptr = 0\n' +
      '        for (const name of list) {\n',
  },
  {
    what: 'detach after an external unmount',
    find: '  // Public API\n\n  mount (cb) {\n',
    replace:
      '  // Public API\n\n' +
      '  // dmfs: true once the FUSE session has ended (unmounted and every file closed).\n' +
      '  loopDone () {\n' +
      '    return !!this._thread && binding.fuse_native_loop_done(this._thread) === 1\n' +
      '  }\n\n' +
      '  // dmfs: release the native handles once the mount is gone (unmounted by the caller).\n' +
      '  detach () {\n' +
      '    if (this._detached || !this._thread) return\n' +
      '    this._detached = true\n' +
      '    binding.fuse_native_unmount(this.mnt, this._thread)\n' +
      '  }\n\n' +
      '  mount (cb) {\n',
  },
  {
    what: 'export patch version',
    find: 'module.exports = Fuse\n',
    replace: 'Fuse.DMFS_PATCH = DMFS_PATCH\n\nmodule.exports = Fuse\n',
  },
  {
    what: 'stat/statfs arrays: new layout, prepared arrays pass through',
    find: 'function getStatfsArray (statfs) {\n',
    replace:
      'const IS_LE = os.endianness() === \'LE\'\n\n' +
      'function readContext (l) {\n' +
      '  const at = CTX_OFFSET\n' +
      '  if (IS_LE) return { uid: l.readUInt32LE(at), gid: l.readUInt32LE(at + 4), pid: l.readUInt32LE(at + 8), umask: l.readUInt32LE(at + 12) }\n' +
      '  return { uid: l.readUInt32BE(at), gid: l.readUInt32BE(at + 4), pid: l.readUInt32BE(at + 8), umask: l.readUInt32BE(at + 12) }\n' +
      '}\n\n' +
      '// dmfs layout: see scripts/patch-fuse-native.js. A Uint32Array is taken as prepared.\n' +
      'function getStatfsArray (statfs) {\n' +
      '  if (statfs instanceof Uint32Array) return statfs\n' +
      '  const ints = new Uint32Array(17)\n' +
      '  ints[0] = (statfs && statfs.bsize) || 0\n' +
      '  ints[1] = (statfs && statfs.frsize) || 0\n' +
      '  setDoubleInt(ints, 2, (statfs && statfs.blocks) || 0)\n' +
      '  setDoubleInt(ints, 4, (statfs && statfs.bfree) || 0)\n' +
      '  setDoubleInt(ints, 6, (statfs && statfs.bavail) || 0)\n' +
      '  setDoubleInt(ints, 8, (statfs && statfs.files) || 0)\n' +
      '  setDoubleInt(ints, 10, (statfs && statfs.ffree) || 0)\n' +
      '  setDoubleInt(ints, 12, (statfs && statfs.favail) || 0)\n' +
      '  ints[14] = (statfs && statfs.fsid) || 0\n' +
      '  ints[15] = (statfs && statfs.flag) || 0\n' +
      '  ints[16] = (statfs && statfs.namemax) || 0\n' +
      '  return ints\n' +
      '}\n\n' +
      'function getStatArray (stat) {\n' +
      '  if (stat instanceof Uint32Array) return stat\n' +
      '  const ints = new Uint32Array(23)\n' +
      '  ints[0] = (stat && stat.mode) || 0\n' +
      '  ints[1] = (stat && stat.uid) || 0\n' +
      '  ints[2] = (stat && stat.gid) || 0\n' +
      '  setDoubleInt(ints, 3, (stat && stat.size) || 0)\n' +
      '  ints[5] = (stat && stat.dev) || 0\n' +
      '  ints[6] = (stat && stat.nlink) || 1\n' +
      '  setDoubleInt(ints, 7, (stat && stat.ino) || 0)\n' +
      '  setDoubleInt(ints, 9, (stat && stat.rdev) || 0)\n' +
      '  ints[11] = (stat && stat.blksize) || 0\n' +
      '  setDoubleInt(ints, 12, (stat && stat.blocks) || 0)\n' +
      '  setTime(ints, 14, stat && stat.atime)\n' +
      '  setTime(ints, 17, stat && stat.mtime)\n' +
      '  setTime(ints, 20, stat && stat.ctime)\n' +
      '  return ints\n' +
      '}\n\n' +
      'function setTime (ints, idx, t) {\n' +
      '  const ms = toDateMS(t)\n' +
      '  const sec = Math.floor(ms / 1000)\n' +
      '  setDoubleInt(ints, idx, sec)\n' +
      '  ints[idx + 2] = Math.round((ms - sec * 1000) * 1e6)\n' +
      '}\n\n' +
      'function getStatfsArrayStock (statfs) {\n',
  },
  {
    what: 'setDoubleInt: negative values as two\'s complement',
    find:
      'function setDoubleInt (arr, idx, num) {\n' +
      '  arr[idx] = num % 4294967296\n' +
      '  arr[idx + 1] = (num - arr[idx]) / 4294967296\n' +
      '}\n',
    replace:
      'function setDoubleInt (arr, idx, num) {\n' +
      '  const high = Math.floor(num / 4294967296)\n' +
      '  arr[idx] = num - high * 4294967296\n' +
      '  arr[idx + 1] = high >>> 0\n' +
      '}\n',
  },
  {
    what: 'stock getStatArray renamed (unused)',
    find: 'function getStatArray (stat) {\n  const ints = new Uint32Array(18)\n',
    replace: 'function getStatArrayStock (stat) {\n  const ints = new Uint32Array(18)\n',
  },
];

/** Applies edits to text; throws when an anchor is missing or ambiguous (another fuse-native version). */
function applyEdits(text, edits, fileName) {
  let out = text;
  for (const edit of edits) {
    const first = out.indexOf(edit.find);
    if (first < 0) throw new Error(`${fileName}: anchor for "${edit.what}" not found (not fuse-native ${FUSE_NATIVE_VERSION}?)`);
    if (out.indexOf(edit.find, first + 1) >= 0) throw new Error(`${fileName}: anchor for "${edit.what}" is not unique`);
    out = out.slice(0, first) + edit.replace + out.slice(first + edit.find.length);
  }
  return out;
}

function markerVersion(text) {
  const m = MARKER_RE.exec(text.slice(0, 2000));
  return m ? Number(m[1]) : null;
}

const FILES = [
  { name: 'fuse-native.c', edits: C_EDITS },
  { name: 'index.js', edits: JS_EDITS },
];

/** Patches the sources in dir; returns true when something changed. Idempotent. */
function patchSources(dir) {
  const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
  if (pkg.version !== FUSE_NATIVE_VERSION) {
    throw new Error(`fuse-native ${pkg.version} found; the dmfs patch is written for ${FUSE_NATIVE_VERSION}`);
  }
  let changed = false;
  for (const file of FILES) {
    const target = path.join(dir, file.name);
    const orig = target + ORIG_SUFFIX;
    const current = fs.readFileSync(target, 'utf8');
    const version = markerVersion(current);
    if (version === PATCH_VERSION) continue;
    let source = current;
    if (version !== null) {
      if (!fs.existsSync(orig)) throw new Error(`${target} carries dmfs-patch ${version} but ${orig} is missing: reinstall fuse-native`);
      source = fs.readFileSync(orig, 'utf8');
    } else if (!fs.existsSync(orig)) {
      fs.writeFileSync(orig, current);
    }
    const patched = applyEdits(source, file.edits, file.name);
    const tmp = `${target}.dmfs-tmp`;
    fs.writeFileSync(tmp, patched);
    fs.renameSync(tmp, target);
    changed = true;
  }
  return changed;
}

function bindingPath(dir) {
  return path.join(dir, 'build', 'Release', 'fuse.node');
}

/** True when the build output is missing or older than the patched sources. */
function needsBuild(dir) {
  const out = bindingPath(dir);
  if (!fs.existsSync(out)) return true;
  const builtMs = fs.statSync(out).mtimeMs;
  return fs.statSync(path.join(dir, 'fuse-native.c')).mtimeMs > builtMs;
}

/** npm bundles node-gyp; find it without touching the network. */
function findNodeGyp() {
  const candidates = [];
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  candidates.push(
    path.join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    path.join(prefix, 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    '/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js',
    '/usr/local/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js',
    '/usr/share/nodejs/node-gyp/bin/node-gyp.js',
  );
  for (const c of candidates) if (c && fs.existsSync(c)) return c;
  return null;
}

function nodeDirArgs() {
  // Node headers: prefer the local install (npm config nodedir, /usr for Debian's nodejs)
  // so no download is needed; node-gyp falls back to its own cache otherwise.
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  for (const dir of [process.env.npm_config_nodedir, prefix, '/usr', '/usr/local']) {
    if (dir && fs.existsSync(path.join(dir, 'include', 'node', 'node_api.h'))) return [`--nodedir=${dir}`];
  }
  return [];
}

function build(dir) {
  const gyp = findNodeGyp();
  if (!gyp) throw new Error('node-gyp not found (it ships with npm); install npm or node-gyp');
  const missing = ['make', 'g++', 'python3'].filter((tool) => !onPath(tool));
  if (missing.length) throw new Error(`cannot build fuse-native: missing ${missing.join(', ')} (apt-get install g++ make python3)`);
  const r = spawnSync(process.execPath, [gyp, 'rebuild', ...nodeDirArgs()], {
    cwd: dir,
    encoding: 'utf8',
    env: { ...process.env, npm_config_loglevel: 'error' },
  });
  if (r.status !== 0) {
    const tail = `${r.stdout || ''}${r.stderr || ''}`.split('\n').slice(-25).join('\n');
    throw new Error(`node-gyp rebuild of fuse-native failed:\n${tail}`);
  }
}

function onPath(name) {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    if (!dir) continue;
    try {
      fs.accessSync(path.join(dir, name), fs.constants.X_OK);
      return true;
    } catch { /* next */ }
  }
  return false;
}

/** Loads the binding in a child (a failed dlopen must not take this process down). */
function probeLoad(dir) {
  const code = `const F = require(${JSON.stringify(dir)}); process.stdout.write(String(F.DMFS_PATCH))`;
  const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8' });
  if (r.status === 0 && r.stdout.trim() === String(PATCH_VERSION)) return { ok: true, reason: null };
  const err = (r.stderr || '').split('\n').find((l) => /Error|error/.test(l)) || r.stderr || `exit ${r.status}`;
  let reason = err.trim();
  if (/libfuse\.so\.2/.test(r.stderr || '')) reason = 'libfuse.so.2 is missing: apt-get install libfuse2';
  return { ok: false, reason };
}

function findFuseNative(projectRoot) {
  try {
    return path.dirname(require.resolve('fuse-native/package.json', { paths: [projectRoot] }));
  } catch {
    return null;
  }
}

/** Cheap status without loading the binding (for scripts/setup.js). */
function status(dir) {
  if (!dir || !fs.existsSync(path.join(dir, 'package.json'))) return { present: false, patched: false, built: false };
  const patched = FILES.every((f) => markerVersion(fs.readFileSync(path.join(dir, f.name), 'utf8')) === PATCH_VERSION);
  return { present: true, patched, built: patched && !needsBuild(dir) };
}

function ensure(dir, log) {
  const changed = patchSources(dir);
  if (changed) log(`fuse-native: applied dmfs-patch ${PATCH_VERSION}`);
  let probe = needsBuild(dir) ? { ok: false, reason: 'not built' } : probeLoad(dir);
  if (!probe.ok && probe.reason !== 'not built' && !/libfuse\.so\.2/.test(probe.reason)) {
    log(`fuse-native: existing build unusable (${probe.reason}); rebuilding`);
  }
  if (!probe.ok && !/libfuse\.so\.2/.test(probe.reason)) {
    const t0 = Date.now();
    build(dir);
    log(`fuse-native: built ${path.relative(process.cwd(), bindingPath(dir)) || bindingPath(dir)} in ${Date.now() - t0} ms`);
    probe = probeLoad(dir);
  }
  if (!probe.ok) throw new Error(`fuse-native does not load: ${probe.reason}`);
}

function main(argv) {
  const check = argv.includes('--check');
  const strict = argv.includes('--strict');
  const dirIdx = argv.indexOf('--dir');
  const projectRoot = path.resolve(__dirname, '..');
  const dir = dirIdx >= 0 ? path.resolve(argv[dirIdx + 1]) : findFuseNative(projectRoot);
  const log = (msg) => process.stderr.write(`${msg}\n`);

  if (check) {
    const s = status(dir);
    const probe = s.built ? probeLoad(dir) : { ok: false, reason: s.present ? 'not patched/built' : 'fuse-native not installed' };
    process.stdout.write(`${JSON.stringify({ dir, ...s, loads: probe.ok, reason: probe.reason })}\n`);
    return probe.ok ? 0 : 1;
  }
  if (!dir) {
    log('fuse-native: not installed (npm install first)');
    return strict ? 1 : 0;
  }
  try {
    ensure(dir, log);
    return 0;
  } catch (err) {
    log(`fuse-native: ${err.message}`);
    if (strict) return 1;
    log('fuse-native: continuing without FUSE; `dmfs mount` will report why. Run `npm run setup` to fix.');
    return 0;
  }
}

module.exports = { PATCH_VERSION, applyEdits, patchSources, status, findFuseNative, C_EDITS, JS_EDITS };

if (require.main === module) process.exitCode = main(process.argv.slice(2));
