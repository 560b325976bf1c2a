import { parseArgs } from 'node:util';
import { DmfsError, dmfsError, isDmfsError } from '../errors';
import { assertFdOutsidePool } from '../pool/pool-guard';
import { defaultPoolRoot } from '../pool/pool-paths';
import type { Command, CommandContext, OptionSpec } from './command';
import { COMMAND_LOADERS, loadCommand } from './commands/index';
import { explainUnwrappedError } from './system-errors';

/** Options every command accepts. */
export const GLOBAL_OPTIONS: OptionSpec[] = [
  { name: 'root', type: 'string', valueName: 'DIR', description: 'pool directory (default: $DMFS_ROOT, else /var/lib/dmfs as root, else $XDG_DATA_HOME/dmfs)' },
  { name: 'json', type: 'boolean', description: 'print one JSON document on stdout' },
  { name: 'help', type: 'boolean', short: 'h', description: 'show help for the command' },
];

function formatOptions(options: OptionSpec[]): string {
  return options
    .map((o) => {
      const flag = `${o.short ? `-${o.short}, ` : '    '}--${o.name}${o.type === 'string' ? ` ${o.valueName ?? 'VALUE'}` : ''}`;
      return `  ${flag.padEnd(30)} ${o.description}${o.multiple ? ' (repeatable)' : ''}`;
    })
    .join('\n');
}

export function commandHelp(cmd: Command): string {
  const parts = [`Usage: dmfs ${cmd.name} ${cmd.usage}`.trimEnd(), '', cmd.summary];
  if (cmd.description) parts.push('', cmd.description);
  parts.push('', 'Options:', formatOptions([...cmd.options, ...GLOBAL_OPTIONS]));
  return parts.join('\n') + '\n';
}

export function mainHelp(): string {
  const rows: string[] = [];
  for (const [name] of COMMAND_LOADERS) {
    const cmd = loadCommand(name);
    if (cmd) rows.push(`  ${name.padEnd(10)} ${cmd.summary}`);
  }
  return [
    'Usage: dmfs COMMAND [ARGS] [OPTIONS]',
    '',
    'dmfs: a userspace thin-snapshot filesystem. A thin pool of blocks holds a base device,',
    'image layers and container layers with block-level copy-on-write, mounted with FUSE.',
    '',
    'Commands:',
    ...rows,
    '',
    'Global options:',
    formatOptions(GLOBAL_OPTIONS),
    '',
    "Run 'dmfs COMMAND --help' for a command's options.",
    'Exit codes: 0 ok, 1 failure, 2 usage error or bad input.',
  ].join('\n') + '\n';
}

/** Parses argv for one command; throws DmfsError(USAGE) on unknown options or wrong arity. */
export function parseCommandArgs(cmd: Command, argv: string[]): { args: string[]; opts: CommandContext['opts'] } {
  const specs = [...cmd.options, ...GLOBAL_OPTIONS];
  const options: Record<string, { type: 'boolean' | 'string'; short?: string; multiple?: boolean }> = {};
  for (const o of specs) options[o.name] = { type: o.type, ...(o.short ? { short: o.short } : {}), ...(o.multiple ? { multiple: true } : {}) };
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw dmfsError('USAGE', `${(err as Error).message.replace(/\. To specify.*$/s, '')}\nRun 'dmfs ${cmd.name} --help'.`);
  }
  const args = parsed.positionals;
  if (!parsed.values.help && (args.length < cmd.minArgs || args.length > cmd.maxArgs)) {
    throw dmfsError('USAGE', `usage: dmfs ${cmd.name} ${cmd.usage}\nRun 'dmfs ${cmd.name} --help'.`);
  }
  return { args, opts: parsed.values as CommandContext['opts'] };
}

function errorJson(err: DmfsError): string {
  return JSON.stringify({ error: { code: err.code, message: err.message } });
}

/**
 * Splits argv into the command name and the arguments it gets: global options given before
 * the command (`dmfs --root DIR ls`, `dmfs --json --root=DIR pool create`) move behind it,
 * where parseCommandArgs takes them like the command's own (so they also work after the
 * command and between a sub-command's words). `name` is null when no command is named.
 */
export function splitGlobalOptions(argv: string[]): { name: string | null; rest: string[]; leading: string[] } {
  const leading: string[] = [];
  let i = 0;
  while (i < argv.length && argv[i].startsWith('-') && argv[i] !== '-' && argv[i] !== '--') {
    const a = argv[i];
    if (a === '--root') {
      if (i + 1 >= argv.length) throw dmfsError('USAGE', "option '--root DIR' needs a value. Run 'dmfs --help'.");
      leading.push(a, argv[i + 1]);
      i += 2;
    } else if (a.startsWith('--root=') || ['--json', '--help', '-h', '--version', '-v'].includes(a)) {
      leading.push(a);
      i += 1;
    } else {
      throw dmfsError('USAGE', `unknown global option '${a}' before the command (global options: --root DIR, --json, --help). Run 'dmfs --help'.`);
    }
  }
  if (argv[i] === '--') i += 1;
  const name = i < argv.length ? argv[i] : null;
  return { name, rest: name === null ? [] : [...argv.slice(i + 1), ...leading], leading };
}

/** The pool root argv names, taken as parseArgs would (last --root wins), even from argv that does not parse. */
function rootOf(argv: string[]): string {
  let root: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--') break;
    if (argv[i] === '--root' && i + 1 < argv.length) root = argv[++i];
    else if (argv[i].startsWith('--root=')) root = argv[i].slice('--root='.length);
  }
  return root ?? process.env.DMFS_ROOT ?? defaultPoolRoot();
}

/**
 * Is fd 1 a file of the pool argv names (`dmfs ls --bogus --json >> POOL/data/data-file`)?
 * Then not even the --json error document may be written there.
 */
function stdoutIsPoolFile(argv: string[]): boolean {
  try {
    assertFdOutsidePool(rootOf(argv), 1, 'standard output');
    return false;
  } catch {
    return true;
  }
}

/** 128 + SIGPIPE: a Unix tool's status when the reader of its output went away. */
export const BROKEN_PIPE_EXIT = 141;

function isBrokenPipe(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | null)?.code === 'EPIPE';
}

/**
 * Runs the CLI; returns the exit code. Catches once: DmfsError → its exit code, anything else → 1.
 * A reader that goes away (`dmfs diff X | head -1`) ends the command quietly with 141, as
 * SIGPIPE ends a C tool: stdout's EPIPE is handled here once for every command; a command
 * still writing gets the error from its next awaited write and unwinds (closing the pool).
 */
export async function main(argv: string[], io: { stdout?: NodeJS.WritableStream; stderr?: NodeJS.WritableStream } = {}): Promise<number> {
  const stdout = io.stdout ?? process.stdout;
  const stderr = io.stderr ?? process.stderr;
  let brokenPipe = false;
  const onStdoutError = (err: Error) => {
    if (isBrokenPipe(err)) brokenPipe = true;
    else stderr.write(`dmfs: cannot write standard output: ${err.message}\n`);
  };
  // A stderr that went away must not crash a command half-way either; nowhere to say so.
  const onStderrError = () => undefined;
  stdout.on('error', onStdoutError);
  stderr.on('error', onStderrError);
  try {
    const code = await run(argv, stdout, stderr, () => brokenPipe);
    return brokenPipe ? BROKEN_PIPE_EXIT : code;
  } finally {
    // The process's own streams keep the listeners: a late EPIPE from a write still
    // buffered when main returns must not become an uncaught 'error' event.
    if (io.stdout) stdout.off('error', onStdoutError);
    if (io.stderr) stderr.off('error', onStderrError);
  }
}

async function run(argv: string[], stdout: NodeJS.WritableStream, stderr: NodeJS.WritableStream, brokenPipe: () => boolean): Promise<number> {
  let split: ReturnType<typeof splitGlobalOptions>;
  try {
    split = splitGlobalOptions(argv);
  } catch (err) {
    stderr.write(`dmfs: ${(err as Error).message}\n`);
    return 2;
  }
  const { name, rest, leading } = split;
  if (name === null) {
    const has = (...flags: string[]) => leading.some((a) => flags.includes(a));
    if (has('--version', '-v')) {
      stdout.write(`${require('../../package.json').version}\n`);
      return 0;
    }
    stdout.write(mainHelp());
    return has('--help', '-h') ? 0 : 2;
  }
  if (name === 'help') {
    stdout.write(mainHelp());
    return 0;
  }
  const cmd = loadCommand(name);
  if (!cmd) {
    stderr.write(`dmfs: unknown command '${name}'. Run 'dmfs --help' for the list.\n`);
    return 2;
  }
  const wantsJson = argv.includes('--json');
  try {
    const { args, opts } = parseCommandArgs(cmd, rest);
    if (opts.help) {
      stdout.write(commandHelp(cmd));
      return 0;
    }
    const root = (opts.root as string | undefined) ?? process.env.DMFS_ROOT ?? defaultPoolRoot();
    const code = await cmd.run({ args, opts, root, json: Boolean(opts.json), stdout, stderr });
    return code ?? 0;
  } catch (err) {
    if (brokenPipe() || isBrokenPipe(err)) return BROKEN_PIPE_EXIT;
    // A DmfsError, or a host condition explained as one, is the user's to act on; anything else is a bug.
    const known = isDmfsError(err) ? err : explainUnwrappedError(err, rootOf(argv));
    if (known) {
      if (wantsJson && !(stdout === process.stdout && stdoutIsPoolFile(argv))) stdout.write(errorJson(known) + '\n');
      stderr.write(`dmfs ${name}: ${known.message}\n`);
      return known.exitCode;
    }
    stderr.write(`dmfs ${name}: internal error: ${(err as Error)?.stack ?? String(err)}\n`);
    return 1;
  }
}
