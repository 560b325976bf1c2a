/**
 * Shape of one CLI command module (npm's lib/commands style): static description and
 * options, and one `run`. `main()` parses, validates against `options`, and catches once.
 */
export interface OptionSpec {
  name: string;
  type: 'boolean' | 'string';
  /** Repeatable string option (values collected in order). */
  multiple?: boolean;
  short?: string;
  description: string;
  /** Shown in help, e.g. 'SIZE'. */
  valueName?: string;
}

export interface CommandContext {
  /** Positional arguments after the command name (and sub-command, if any). */
  args: string[];
  /** Parsed options; booleans false and strings undefined when absent. */
  opts: Record<string, string | boolean | string[] | undefined>;
  /** Pool root: --root, else DMFS_ROOT, else the default. */
  root: string;
  /** --json was given: print one JSON document on stdout and nothing else there. */
  json: boolean;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

export interface Command {
  name: string;
  /** One line for the command list. */
  summary: string;
  /** e.g. 'NAME MOUNTPOINT [--ro]' */
  usage: string;
  /** Paragraphs for --help. */
  description?: string;
  options: OptionSpec[];
  /** Minimum and maximum positional arguments (max Infinity for variadic). */
  minArgs: number;
  maxArgs: number;
  /** Returns the exit code (default 0). Throws DmfsError for failures. */
  run(ctx: CommandContext): Promise<number | void>;
}
