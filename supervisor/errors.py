"""Errors raised by the supervisor: one tree, so callers can catch the whole package at once.

SupervisorError
  ├ SpawnError        child could not be exec'd (argv, cwd, permissions, no fds left)
  ├ PortInUse         a configured port is held by another process or booked for another instance
  ├ VenvError         a virtualenv could not be built (the message ends with the tool's output)
  ├ DependencyFailed  a dependency ended in a state that can never satisfy its condition
  ├ RollFailed        a replacement never became ready; the roll stopped
  ├ OrderInterrupted  an order (restart, scale, reload …) was cancelled by shutdown
  ├ TargetError       a CLI/API target names no service or instance
  ├ AlreadyRunning    another daemon owns this project's state directory
  ├ UnsafeDirectory   a state or socket directory that is not (or cannot be made) private
  └ ControlError      bad request on the control socket, or no daemon to talk to
      ├ NoDaemon      no daemon answers on the socket
      └ WrongDaemon   the daemon on the socket serves another config file

IllegalTransition is not in the tree on purpose: it is a bug in Corral (an instance state change
the transition table does not allow), never a user error, and it derives from AssertionError.
"""

from __future__ import annotations


class SupervisorError(Exception):
    """Base class for supervisor errors."""


class SpawnError(SupervisorError):
    """A child process could not be started."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        # The daemon, not the program, is short of something (fds, memory, pids): try again
        # later, and do not count it against the instance's crash limit.
        self.transient = transient


class PortInUse(SupervisorError):
    """A configured port is held by another process or booked for another instance."""


class VenvError(SupervisorError):
    """A virtualenv could not be built; the message ends with the tool's last output lines."""


class DependencyFailed(SupervisorError):
    """A dependency ended in a state that can never satisfy its condition."""


class RollFailed(SupervisorError):
    """A replacement never became ready; the roll stopped there."""


class OrderInterrupted(SupervisorError):
    """An order was cancelled because the daemon is shutting down."""


class TargetError(SupervisorError):
    """A target (`service` or `service.N`) that matches nothing."""


class AlreadyRunning(SupervisorError):
    """Another daemon holds the lock on this state directory."""


class ControlError(SupervisorError):
    """The control API refused a request, or no daemon answered."""


class UnsafeDirectory(SupervisorError):
    """A directory we would keep secrets in is a symlink, someone else's, or shared."""


class NoDaemon(ControlError):
    """Nothing answers on the control socket."""


class WrongDaemon(ControlError):
    """The daemon on the socket serves a different config file than the one asked for."""


class IllegalTransition(AssertionError):
    """An instance state change that the transition table forbids: a bug in Corral."""
