import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import {
  command,
  checkFuseDevice,
  checkFusermount,
  checkKernel,
  checkLibfuse,
  checkTransport,
  checkNative,
  checkReflink,
  checkRootFilesystem,
  findLibfuse2,
  formatReport,
  fsTypeOf,
  nearestExisting,
  runDoctor,
  type DoctorReport,
} from '../../../../src/cli/commands/doctor';
import { fallbackBlockIo } from '../../../../src/native';
import type { CommandContext } from '../../../../src/cli/command';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dmfs-doctor-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function runCommand(root: string, json: boolean): Promise<{ code: number; out: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  stdout.on('data', (d: Buffer) => (out += d.toString()));
  const ctx: CommandContext = { args: [], opts: { json }, root, json, stdout, stderr };
  const code = (await command.run(ctx)) ?? 0;
  return { code, out };
}

describe('dmfs doctor', () => {
  test('--json prints one object whose ok follows the FUSE checks; exit code matches', async () => {
    const { code, out } = await runCommand(tmp, true);
    const lines = out.trim().split('\n');
    expect(lines).toHaveLength(1);
    const report = JSON.parse(lines[0]) as DoctorReport;
    expect(report.root).toBe(tmp);
    expect(report.checks.map((c) => c.id)).toEqual(['fuse.device', 'fuse.transport', 'fuse.library', 'fuse.fusermount', 'native', 'kernel', 'root.filesystem', 'root.space', 'root.reflink']);
    const fuseOk = report.checks.filter((c) => c.essential).every((c) => c.status === 'ok');
    // libfuse.so.2 is essential only where mounts go through fuse-native (not root, or no addon).
    const kernelTransport = report.checks.find((c) => c.id === 'fuse.transport')!.status === 'ok';
    expect(report.checks.filter((c) => c.essential).map((c) => c.id)).toEqual(
      kernelTransport ? ['fuse.device', 'fuse.fusermount'] : ['fuse.device', 'fuse.library', 'fuse.fusermount'],
    );
    expect(report.ok).toBe(fuseOk);
    expect(code).toBe(fuseOk ? 0 : 1);
    for (const c of report.checks) {
      expect(['ok', 'missing', 'warn']).toContain(c.status);
      if (c.status !== 'ok') expect(typeof c.hint).toBe('string');
    }
    expect(report.checks.find((c) => c.id === 'kernel')?.detail).toBe(os.release());
    // The probe leaves nothing behind.
    expect(fs.readdirSync(tmp)).toEqual([]);
  });

  test('human output: one line per check, status first, then a summary line', async () => {
    const { code, out } = await runCommand(tmp, false);
    const lines = out.trimEnd().split('\n');
    expect(lines).toHaveLength(10);
    for (const line of lines.slice(0, 9)) expect(line).toMatch(/^(ok|missing|warn) +\S/);
    expect(lines[9]).toMatch(code === 0 ? /FUSE is usable/ : /FUSE is not usable/);
  });

  test('a pool root that does not exist yet is checked at its nearest existing parent', async () => {
    const root = path.join(tmp, 'not', 'yet');
    expect(nearestExisting(root)).toBe(tmp);
    const fsCheck = checkRootFilesystem(root);
    expect(fsCheck.detail).toContain(`${tmp} (pool root ${root} not created yet)`);
    const report = await runDoctor(root);
    expect(report.checks.find((c) => c.id === 'root.filesystem')?.detail).toContain('not created yet');
    expect(fs.existsSync(path.join(tmp, 'not'))).toBe(false);
  });

  test('missing FUSE pieces are reported with what to do, and fail the run', () => {
    const dev = checkFuseDevice(path.join(tmp, 'no-fuse'));
    expect(dev).toMatchObject({ status: 'missing', essential: true });
    expect(dev.hint).toMatch(/modprobe fuse|--device/);
    const notChar = path.join(tmp, 'plain-file');
    fs.writeFileSync(notChar, '');
    expect(checkFuseDevice(notChar).status).toBe('missing');
    fs.rmSync(notChar);
    expect(checkLibfuse(null, true)).toMatchObject({ status: 'missing', essential: true });
    expect(checkLibfuse(null, true).hint).toMatch(/libfuse2/);
    expect(checkLibfuse(null, false)).toMatchObject({ status: 'warn', essential: false });
    expect(checkTransport({ transport: 'kernel', reason: 'root: mount(8)' })).toMatchObject({ status: 'ok', essential: false, detail: expect.stringMatching(/^kernel: .*root: mount\(8\)/) });
    expect(checkTransport({ transport: 'libfuse2', reason: 'no addon' })).toMatchObject({ status: 'warn', essential: false, detail: expect.stringMatching(/fuse-native.*no addon/) });
    // DMFS_FUSE_TRANSPORT=kernel where it cannot mount: nothing mounts, so it fails the run.
    expect(checkTransport({ transport: 'none', reason: 'asked for kernel' })).toMatchObject({ status: 'missing', essential: true });
    const r = checkFusermount(path.join(tmp, 'empty-path'));
    // The usual system dirs are searched too, so this host's fusermount may still be found.
    const onHost = ['/usr/bin', '/bin', '/usr/sbin', '/sbin', '/usr/local/bin'].some(
      (d) => fs.existsSync(path.join(d, 'fusermount')) || fs.existsSync(path.join(d, 'fusermount3')),
    );
    expect(r.status).toBe(onHost ? 'ok' : 'missing');
    // A non-root user needs it setuid root: a plain executable named fusermount is not enough.
    const bin = path.join(tmp, 'bin');
    fs.mkdirSync(bin);
    fs.writeFileSync(path.join(bin, 'fusermount'), '#!/bin/sh\n', { mode: 0o755 });
    fs.writeFileSync(path.join(bin, 'fusermount3'), '#!/bin/sh\n', { mode: 0o755 });
    expect(checkFusermount(bin, 1000)).toMatchObject({ status: 'missing', essential: true, detail: expect.stringMatching(/not setuid root/) });
    expect(checkFusermount(bin, 0)).toMatchObject({ status: 'ok', detail: `${bin}/fusermount, ${bin}/fusermount3` });
    fs.rmSync(bin, { recursive: true });
    const report: DoctorReport = { ok: false, root: tmp, fuse: { transport: 'kernel', reason: 'root' }, checks: [dev] };
    expect(formatReport(report)).toMatch(/^missing +FUSE device .* -> .*modprobe fuse/m);
  });

  test('ldconfig output is parsed for libfuse.so.2 only', () => {
    const out = [
      '\tlibfuse3.so.3 (libc6,x86-64) => /lib/x86_64-linux-gnu/libfuse3.so.3',
      '\tlibfuse.so.2 (libc6,x86-64) => /lib/x86_64-linux-gnu/libfuse.so.2',
    ].join('\n');
    expect(findLibfuse2(out)).toBe('/lib/x86_64-linux-gnu/libfuse.so.2');
    expect(findLibfuse2('\tlibfuse3.so.3 (libc6,x86-64) => /lib/x86_64-linux-gnu/libfuse3.so.3\n')).toBeNull();
  });

  test('native, kernel and reflink checks never count as essential', async () => {
    const n = checkNative(fallbackBlockIo);
    expect(n).toMatchObject({ status: 'warn', essential: false });
    expect(n.detail).toContain('fallback');
    expect(checkKernel('4.19.0-1')).toMatchObject({ status: 'warn', essential: false });
    expect(checkKernel('6.1.0-18-amd64')).toMatchObject({ status: 'ok' });
    expect(await checkReflink(tmp, fallbackBlockIo)).toMatchObject({ status: 'warn', essential: false });
  });

  test('the file system type agrees with stat -f', () => {
    const { execFileSync } = require('node:child_process') as typeof import('node:child_process');
    const statName = execFileSync('stat', ['-f', '-c', '%T', tmp], { encoding: 'utf8' }).trim();
    const ours = fsTypeOf(tmp);
    // stat calls ext4 'ext2/ext3'; mountinfo names it exactly.
    if (statName === 'ext2/ext3') expect(ours).toMatch(/^ext[234]$/);
    else expect(ours).toBe(statName);
  });
});
