/**
 * What container images and build tools do, in a dmfs container layer and in an ext4
 * directory side by side: tar -x of a real rootfs sample, cp -a and rsync -aHAX of /etc,
 * git, make + gcc, python3 -m venv, sqlite3 (rollback journal and WAL, two processes),
 * the rename-over patterns of dpkg, sed -i and ln -sf, find -newer, du, df, stat -f.
 * A tool that is not installed is skipped with the reason printed (FUSE itself never is
 * under CI, see fuse-harness.ts). Every transport runs as root and as a non-root user: the
 * mount made and served by that user's `dmfs mount`, the tools run as that user on both
 * sides (posix-user-mount.ts), copying a copy of /etc the user owns where root copies /etc.
 * The checks that only read (listings, diff -r) run as root.
 */
import { accessSync, constants as fsConstants } from 'node:fs';
import * as path from 'node:path';
import { describeFuse, fuseTransports, run, sh, shq } from '../support/fuse-harness';
import { ext4Oracle, mountFreshContainer, openTempDir, PYTHON, removeDirs, type Oracle, type PosixMount } from '../support/posix-harness';
import { posixRuns, runLabel, testUser } from '../support/posix-user-mount';

function onPath(tool: string): boolean {
  return (process.env.PATH ?? '/usr/bin:/bin').split(':').some((d) => {
    try {
      accessSync(path.join(d, tool), fsConstants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** `it` when every tool is installed, else a skipped test that says which one is missing. */
function itWith(tools: string[], name: string, fn: () => Promise<void>, timeoutMs?: number): void {
  const missing = tools.filter((t) => !onPath(t));
  if (missing.length === 0) it(name, fn, timeoutMs);
  else {
    // eslint-disable-next-line no-console
    console.log(`skipping "${name}": ${missing.join(', ')} not installed (apt-get install ${missing.join(' ')})`);
    it.skip(name, fn);
  }
}

/** Path, type, mode, owner, link count, size (files), mtime with ns, symlink target: one line each. */
function listing(dir: string, opts: { mtimes?: boolean } = {}): Promise<string> {
  const t = opts.mtimes === false ? '' : ' %T@';
  return run(
    `cd ${shq(dir)} && { find . -mindepth 1 -type d -printf '%p %y %#m %U:%G %n${t}\\n'; find . -mindepth 1 ! -type d -printf '%p %y %#m %U:%G %n %s${t} %l\\n'; } | sort`,
  );
}

for (const { transport, privilege } of posixRuns(fuseTransports())) describeFuse(`tools in a dmfs container layer vs ext4 (${runLabel({ transport, privilege })})`, () => {
  let oracle: Oracle;
  let m: PosixMount;
  let sides: [string, string];
  let rootfs: string;
  /** What cp -a and rsync copy: /etc, or for the user a copy of it that user owns (all readable). */
  let etc = '/etc';
  let userEtcParent: string | null = null;
  const user = privilege === 'user' ? testUser() : null;
  /** Runs a tool script as the suite's user (HOME=/tmp for the user, who cannot read root's). */
  const runAs = (script: string) =>
    user ? run(`setpriv --reuid ${user.uid} --regid ${user.gid} --clear-groups env HOME=/tmp bash -c ${shq(`set -o pipefail\n${script}`)}`) : run(script);

  beforeAll(async () => {
    oracle = await ext4Oracle();
    m = await mountFreshContainer(transport, privilege);
    sides = [oracle.dir, m.mnt];
    if (user) {
      await run(`chown ${user.uid}:${user.gid} ${oracle.dir}`);
      userEtcParent = openTempDir('posix-tools-etc');
      etc = `${userEtcParent}/etc`;
      await run(`cp -a /etc ${etc} && chown -hR ${user.uid}:${user.gid} ${etc}`);
    }
    // A rootfs sample from this machine (~2,000 entries): Perl modules, time zones, /etc.
    rootfs = `${oracle.dir}/rootfs.tar`;
    const parts = ['usr/share/perl5', 'usr/share/zoneinfo/Europe', 'usr/share/zoneinfo/America', 'etc'].filter((p) => {
      try {
        accessSync(`/${p}`);
        return true;
      } catch {
        return false;
      }
    });
    // The parent directories are members too, so that every mtime comes from the archive.
    await run(`tar -C / --numeric-owner --no-recursion -cf ${rootfs} usr usr/share usr/share/zoneinfo && { tar -C / --numeric-owner -rf ${rootfs} ${parts.join(' ')} 2>/dev/null || [ $? = 1 ]; }`);
  }, 60_000);

  afterAll(async () => {
    await m?.close();
    await oracle?.cleanup();
    if (userEtcParent) await removeDirs(userEtcParent);
  });

  it('tar -xp of a rootfs sample: same tree, modes, owners, links, ns mtimes and content as on ext4', async () => {
    for (const d of sides) await runAs(`mkdir ${d}/rootfs && tar -C ${d}/rootfs --numeric-owner -xpf ${rootfs}`);
    // The user's tar cannot give files away: everything it made is the user's, on both sides.
    if (user) for (const d of sides) expect(await run(`find ${d}/rootfs ! -user ${user.uid} | wc -l`)).toBe('0\n');
    // The synthetic parents (usr, usr/share, usr/share/zoneinfo) keep the extraction time on both.
    const parentsOut = (l: string) => l.replace(/^\.\/usr(\/share(\/zoneinfo)?)? d .*$/gm, '');
    expect(parentsOut(await listing(`${m.mnt}/rootfs`))).toBe(parentsOut(await listing(`${oracle.dir}/rootfs`)));
    await run(`diff -r --no-dereference ${oracle.dir}/rootfs ${m.mnt}/rootfs`);
    // And back out: tar -c of the mount lists the same archive members as tar -c of ext4.
    const members = (d: string) => run(`tar -C ${d}/rootfs --numeric-owner -cf - etc usr/share/perl5 | tar -tvf - | sort`);
    expect(await members(m.mnt)).toBe(await members(oracle.dir));
  }, 60_000);

  it('cp -a of /etc: same listing (ns mtimes included) and content', async () => {
    for (const d of sides) await runAs(`cp -a ${etc} ${d}/etc-copy`);
    expect(await listing(`${m.mnt}/etc-copy`)).toBe(await listing(`${oracle.dir}/etc-copy`));
    await run(`diff -r --no-dereference ${oracle.dir}/etc-copy ${m.mnt}/etc-copy`);
  });

  itWith(['rsync'], 'rsync -aHAX into the mount, then a second rsync finds nothing to do', async () => {
    for (const d of sides) await runAs(`rsync -aHAX ${etc}/ ${d}/rsync-etc/ && rsync -aHAX /usr/share/zoneinfo/ ${d}/rsync-zone/`);
    expect(await listing(`${m.mnt}/rsync-etc`)).toBe(await listing(`${oracle.dir}/rsync-etc`));
    expect(await listing(`${m.mnt}/rsync-zone`)).toBe(await listing(`${oracle.dir}/rsync-zone`));
    // Sizes, ns mtimes, modes, owners, links and xattrs all came out as sent: nothing to update.
    expect(await runAs(`rsync -aHAXi ${etc}/ ${m.mnt}/rsync-etc/`)).toBe(await runAs(`rsync -aHAXi ${etc}/ ${oracle.dir}/rsync-etc/`));
  });

  itWith(['git'], 'git init, add, commit, gc, fsck, status in the mount', async () => {
    const g = (d: string) =>
      runAs(`
        mkdir ${d}/repo && cd ${d}/repo
        git init -q && git config user.email qa@example.com && git config user.name qa && git config core.fsync all 2>/dev/null || true
        cp -r /usr/share/zoneinfo/Europe . 2>/dev/null || mkdir Europe
        echo hello > README && git add -A && GIT_COMMITTER_DATE='2020-01-01T00:00:00Z' GIT_AUTHOR_DATE='2020-01-01T00:00:00Z' git commit -qm init
        echo more >> README && GIT_COMMITTER_DATE='2020-01-02T00:00:00Z' GIT_AUTHOR_DATE='2020-01-02T00:00:00Z' git commit -qam two
        git gc -q && git fsck --strict 2>&1 && git status --porcelain && git rev-parse HEAD && git count-objects -v | grep -E 'count|in-pack'
        git checkout -q HEAD~1 && cat README && git checkout -q - && git stash list
      `);
    expect(await g(m.mnt)).toBe(await g(oracle.dir));
  });

  itWith(['make', 'gcc', 'ar'], 'make + gcc: build, up-to-date check (ns mtimes), rebuild after touch, static and shared libs', async () => {
    const build = (d: string) =>
      runAs(`
        mkdir -p ${d}/cproj/src && cd ${d}/cproj
        printf '#include <stdio.h>\\nint b(void);\\nint main(void){ printf("%%d\\\\n", b()); return 0; }\\n' > src/a.c
        printf 'int b(void){ return 42; }\\n' > src/b.c
        printf 'app: a.o libb.a libb.so\\n\\t$(CC) -o $@ a.o libb.a\\nlibb.a: b.o\\n\\tar rcs $@ $^\\nlibb.so: src/b.c\\n\\t$(CC) -shared -fPIC -o $@ $<\\n%%.o: src/%%.c\\n\\t$(CC) -O1 -g -c -o $@ $<\\n' > Makefile
        make -s && ./app && make -q; echo "up-to-date=$?"
        sleep 0.02 && touch src/b.c && make -q; echo "stale=$?"
        make -s 2>&1 | wc -l && ./app && make -q; echo "up-to-date=$?"
      `);
    expect(await build(m.mnt)).toBe(await build(oracle.dir));
  });

  itWith(['python3'], 'python3 -m venv (without pip): the interpreter runs, compileall writes .pyc, imports work', async () => {
    const venv = (d: string) =>
      runAs(`
        ${PYTHON} -m venv --without-pip ${d}/venv
        mkdir -p ${d}/venv/lib/mod && printf 'X = 7\\n' > ${d}/venv/lib/mod/m.py
        ${d}/venv/bin/python -c 'import sys, os; print(sys.prefix == os.path.realpath(sys.argv[1]) or sys.prefix)' ${d}/venv
        ${d}/venv/bin/python -m compileall -q ${d}/venv/lib/mod && ls ${d}/venv/lib/mod/__pycache__ | sed 's/[0-9]//g'
        cd ${d}/venv/lib/mod && ${d}/venv/bin/python -c 'import m; print(m.X)'
        readlink ${d}/venv/bin/python
      `);
    expect(await venv(m.mnt)).toBe(await venv(oracle.dir));
  });

  itWith(['sqlite3'], 'sqlite3: rollback journal and WAL databases, a writer and a reader process, integrity_check', async () => {
    const db = (d: string) =>
      runAs(`
        mkdir ${d}/sq && cd ${d}/sq
        sqlite3 del.db "create table t(a integer primary key, b blob); with recursive n(i) as (select 1 union all select i+1 from n where i < 3000) insert into t(b) select randomblob(200) from n; pragma integrity_check; select count(*) from t;"
        sqlite3 wal.db "pragma journal_mode=wal; create table t(a, b);"
        ( for i in $(seq 1 30); do sqlite3 -cmd '.timeout 10000' wal.db "insert into t values($i, randomblob(5000));"; done ) &
        for i in $(seq 1 30); do sqlite3 -cmd '.timeout 10000' wal.db "select count(*) from t;" > /dev/null; done
        wait
        sqlite3 wal.db "pragma integrity_check; select count(*), sum(a) from t; pragma wal_checkpoint(truncate);" | head -2
        sqlite3 del.db "update t set b = zeroblob(10) where a % 2 = 0; vacuum; pragma integrity_check; select count(*) from t;"
      `);
    expect(await db(m.mnt)).toBe(await db(oracle.dir));
  });

  it('rename-over patterns: sed -i, ln -sf, install, mv -f, cp --remove-destination, dpkg-style link backup', async () => {
    const go = (d: string) =>
      runAs(`
        mkdir ${d}/ro && cd ${d}/ro
        printf 'a=1\\nb=2\\n' > conf && ln conf conf.hard && sed -i 's/b=2/b=3/' conf && cat conf conf.hard && sleep 1.1 && stat -c '%h' conf conf.hard
        ln -s conf link && ln -sf conf.hard link && readlink link
        echo v1 > bin && chmod 755 bin && echo v2 > bin.new && install -m 0755 bin.new bin && cat bin && stat -c '%a %h' bin
        echo v3 > tmp && mv -f tmp bin && cat bin && ls
        echo v4 > src && cp --remove-destination src bin && cat bin
        echo v5 > bin.dpkg-new && ln bin bin.dpkg-tmp && mv bin.dpkg-new bin && cat bin bin.dpkg-tmp && rm bin.dpkg-tmp && sleep 1.1 && stat -c %h bin
      `);
    expect(await go(m.mnt)).toBe(await go(oracle.dir));
  });

  // Under libfuse 2's path API each name of a hard link was its own kernel inode (report row
  // R2): the other name showed the old link count and content. Checked without waiting.
  test('hard-linked files: sed -i, echo >>, rm through one name; the other name at once', async () => {
    const go = (d: string) =>
      runAs(`
        mkdir ${d}/hl && cd ${d}/hl
        printf 'k=1\\n' > conf && ln conf conf.hard && stat -c %h conf.hard >/dev/null && sed -i 's/k=1/k=2/' conf && stat -c %h conf.hard
        echo one > log && ln log log.hard && cat log.hard && echo two >> log && cat log.hard && stat -c '%h %s' log.hard
        rm log && stat -c %h log.hard
      `);
    expect(await go(m.mnt)).toBe(await go(oracle.dir));
  });

  it('find -newer / -mmin, du, df and stat -f answer sensibly', async () => {
    const go = (d: string) =>
      runAs(`
        mkdir ${d}/fd && cd ${d}/fd
        touch -d '2001-01-01' old && touch -d '2001-01-01 00:00:00.5' ref && touch -d '2001-01-01 00:00:01' newer && touch now
        find . -newer ref | sort && find . -mmin -5 | sort
        head -c 1000000 /dev/zero > meg && du -b meg && du --apparent-size -k meg
      `);
    expect(await go(m.mnt)).toBe(await go(oracle.dir));
    expect(Number((await run(`du -k ${m.mnt}/fd/meg`)).split(/\s/)[0])).toBeGreaterThanOrEqual(977);
    const df = (await run(`df -P -k ${m.mnt} | tail -1`)).trim().split(/\s+/);
    expect(df[0]).toBe('dmfs:c');
    expect(Number(df[1])).toBeGreaterThan(0);
    expect(Number(df[3])).toBeGreaterThan(0);
    expect(await run(`stat -f -c '%l %a' ${m.mnt} | awk '{ print $1, ($2 > 0) }'`)).toBe('255 1\n');
    const r = await sh(`df -i ${m.mnt} | tail -1`);
    expect(r.code).toBe(0);
  });

  it('no unexpected errors were logged by the mount', () => {
    expect(m.log.filter((l) => /unexpected/.test(l))).toEqual([]);
  });
});
