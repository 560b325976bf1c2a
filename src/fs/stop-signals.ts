/**
 * How a long-lived dmfs process (a mount process, the pool daemon, its supervisor) treats
 * signals: SIGINT and SIGTERM ask it to stop; SIGHUP is ignored (a daemon has no terminal).
 */

/** Installs the handlers; returns their remover. */
export function onStopSignals(stop: (sig: NodeJS.Signals) => void): () => void {
  const onHup = () => undefined;
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.on('SIGHUP', onHup);
  return () => {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    process.off('SIGHUP', onHup);
  };
}
