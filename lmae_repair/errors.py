"""One exception type for problems the user can fix, and the `--debug` switch.

Commands catch `LmaeError` and print its message on one line instead of a traceback, so every
message must name the file (or option) and the problem. Anything else that goes wrong with one
pair is turned into a one-line message too (`unexpected`), so that one odd file cannot stop a
run over a whole dataset; `--debug` (which sets `DEBUG["on"]`) lets those exceptions through
with their tracebacks instead.
"""

import os
import signal
import threading

DEBUG = {"on": False}
INTERRUPTED = {"on": False, "signal": signal.SIGINT}


def watch_interrupts():
    """Remember a Ctrl-C or a SIGTERM (`INTERRUPTED`) before raising KeyboardInterrupt as usual:
    some library code swallows the exception (an interrupted lazy import left PyTorch
    half-imported and the run went on, failing pairs), and the per-pair error handlers check the
    flag (`pair_error`, `complete.Completer`) to stop the run instead. SIGTERM (`kill`, a job
    scheduler's time limit) takes the same way out, so it too says what was kept and how to go
    on, where Python's default would end the process without a word.

    Returns what gives the process back as it was (the handlers before, the flag off), for the end
    of the command: run in a notebook's kernel (`app([...], standalone_mode=False)`), the handlers
    had stayed, so a SIGTERM to the idle kernel raised KeyboardInterrupt in it instead of ending
    it, and after an interrupted command every later error of a pair in library code
    (`pair_error`) became a KeyboardInterrupt."""
    INTERRUPTED.update(on=False, signal=signal.SIGINT)  # a new command (tests run several in one process)
    if threading.current_thread() is not threading.main_thread():
        return lambda: INTERRUPTED.update(on=False)

    def on_interrupt(signum, frame):
        INTERRUPTED.update(on=True, signal=signum)
        raise KeyboardInterrupt

    before = {signum: signal.signal(signum, on_interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}

    def give_back() -> None:
        INTERRUPTED.update(on=False)
        for signum, handler in before.items():
            if handler is not None:  # None: a handler not installed from Python, which cannot be put back
                signal.signal(signum, handler)

    return give_back


def worker_ends_quietly_on_sigterm(worker_id: int) -> None:
    """`worker_init_fn` of the loader workers: a SIGTERM sent to the whole process group (`timeout`,
    Slurm, `docker stop`) ends a worker at once and without a word, as a clean exit; the main
    process, which gets the signal too, says what was kept. Killed by the signal, a worker was
    reported by PyTorch with a traceback while the main process shut the loader down (and one
    left running printed its queue threads' tracebacks as the main process stopped reading)."""

    def end(signum, frame):
        os._exit(0)

    signal.signal(signal.SIGTERM, end)


def interrupt_exit_code() -> int:
    """The shell's convention for a process ended by a signal: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + int(INTERRUPTED["signal"])


def signal_that_ended_workers(exc: BaseException) -> int | None:
    """SIGTERM or SIGINT where `exc` is PyTorch's report of a data-loading worker ended by it: a
    signal sent to the whole process group (`timeout`, Slurm, `docker stop`, Ctrl-C) reaches the
    workers too, and their end may be noticed before the signal's own handler runs here."""
    seen = set()
    while exc is not None and id(exc) not in seen:  # "exited unexpectedly", raised from the report itself
        seen.add(id(exc))
        text = str(exc) if isinstance(exc, RuntimeError) else ""
        if "DataLoader worker" in text and "killed by signal" in text:
            name = text.rsplit("signal: ", 1)[-1].strip(" .").split(":")[0]  # "Terminated" (glibc), "Terminated: 15" (macOS)
            return {"Terminated": signal.SIGTERM, "Interrupt": signal.SIGINT}.get(name)
        exc = exc.__cause__ or exc.__context__
    return None


def stop_if_interrupted(exc: BaseException) -> None:
    """Raise KeyboardInterrupt in place of `exc` when a Ctrl-C came before it (see above)."""
    if INTERRUPTED["on"]:
        raise KeyboardInterrupt from exc


class LmaeError(Exception):
    """A user-facing error: bad input, bad option, unreadable or mismatched file."""


class RankError(LmaeError):
    """Under torchrun, an error of this process alone (its place in the job, its GPU): printed by
    the process that meets it, where those every process meets alike are printed once (`cli.fail`)."""


def unexpected(context: str, exc: BaseException) -> str:
    """One line for an exception nobody anticipated, naming what was being done."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{context}: unexpected {type(exc).__name__}{': ' + text if text else ''} (rerun with --debug for the traceback)"


def pair_error(context: str, exc: Exception) -> str:
    """The one-line message for a pair that failed with `exc`: an LmaeError's own message, any
    other exception as `unexpected`, or that exception raised again under --debug."""
    stop_if_interrupted(exc)
    if isinstance(exc, LmaeError):
        return str(exc)
    if DEBUG["on"]:
        raise exc
    return unexpected(context, exc)
