"""Keep asynchronous signals away from hauler's own threads.

Python runs signal handlers on the main thread only. A process-directed signal (SIGTERM,
SIGINT...) that the kernel hands to one of hauler's threads instead sets the handler's flag
but leaves a main thread sleeping in a system call unaware of it until the call returns.
hauler's native threads block these signals (in Rust); its Python threads call this first.
"""

import signal

# Faults a thread raises on itself must stay deliverable to it.
_SYNCHRONOUS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}


def block_async_signals() -> None:
    """Block every asynchronous signal in the calling thread (no-op where unsupported)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _SYNCHRONOUS)
