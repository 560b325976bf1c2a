/**
 * The metadata gate through real CLI processes: every command on a pool whose data.mdb
 * has a damaged page exits 1 with METADATA_CORRUPT (no signal, no stack trace) and leaves
 * the file as it was; `check` walks the file even when a stamp claims it sound; a clean
 * command leaves a stamp that matches the file it leaves.
 */
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ensureBuiltDist, DMFS_BIN } from '../../support/built-dist';
import { STAMP_FILE } from '../../../src/pool/metadata-gate';
import { verifyMetadataFile } from '../../../src/pool/metadata-verify';

const PS = 4096;
let root: string;

function dmfs(...args: string[]) {
  const r = spawnSync(process.execPath, [DMFS_BIN, ...args, '--root', root], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

function usedBytes(file: string, pages: number): Buffer {
  const b = Buffer.alloc(pages * PS);
  const fd = fs.openSync(file, 'r');
  fs.readSync(fd, b, 0, b.length, 0);
  fs.closeSync(fd);
  return b;
}

beforeAll(() => {
  ensureBuiltDist();
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-gate-'));
  expect(dmfs('pool', 'create', '--size', '1G').code).toBe(0);
  expect(dmfs('create', 'c1').code).toBe(0);
});

afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

test('a clean command leaves a stamp matching the file it leaves', () => {
  expect(dmfs('ls').code).toBe(0);
  const file = path.join(root, 'metadata', 'data.mdb');
  const stamp = JSON.parse(fs.readFileSync(path.join(root, 'metadata', STAMP_FILE), 'utf8'));
  const st = fs.statSync(file, { bigint: true });
  const report = verifyMetadataFile(file);
  expect(stamp).toMatchObject({ sizeBytes: Number(st.size), mtimeNs: st.mtimeNs.toString(), ctimeNs: st.ctimeNs.toString(), txnids: report.metas.map((m) => m.txnid) });
});

test('a damaged page: every command says METADATA_CORRUPT and what to do, exit 1, file untouched; check ignores a forged stamp', () => {
  const file = path.join(root, 'metadata', 'data.mdb');
  const report = verifyMetadataFile(file, { roles: true });
  const victim = report.roles!.findIndex((r) => r === 'layers');
  expect(victim).toBeGreaterThan(1);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, crypto.randomBytes(PS), 0, PS, victim * PS);
  fs.closeSync(fd);
  const before = usedBytes(file, report.lastPgno + 1);

  for (const args of [['ls'], ['info'], ['inspect', 'c1'], ['create', 'c2'], ['rm', 'c1'], ['diff', 'c1'], ['check']]) {
    const r = dmfs(...args, '--json');
    expect({ args, code: r.code, signal: r.signal }).toEqual({ args, code: 1, signal: null });
    expect(r.stderr).not.toMatch(/internal error|\n\s+at /);
    const out = JSON.parse(r.stdout) as { error: { code: string; message: string } };
    expect(out.error.code).toBe('METADATA_CORRUPT');
    expect(out.error.message).toContain(`page ${victim} (layers)`);
    expect(out.error.message).toContain('dmfs check --repair --from-backup');
  }
  expect(usedBytes(file, report.lastPgno + 1).equals(before)).toBe(true);

  // A stamp that matches the damaged file (as after bit rot under an unchanged ctime): check walks anyway.
  const st = fs.statSync(file, { bigint: true });
  fs.writeFileSync(
    path.join(root, 'metadata', STAMP_FILE),
    JSON.stringify({ v: 1, dev: Number(st.dev), ino: Number(st.ino), sizeBytes: Number(st.size), mtimeNs: st.mtimeNs.toString(), ctimeNs: st.ctimeNs.toString(), txnids: verifyMetadataFile(file).metas.map((m) => m.txnid) }),
  );
  const r = dmfs('check', '--json');
  expect(r.code).toBe(1);
  expect(JSON.parse(r.stdout).error.code).toBe('METADATA_CORRUPT');
});
