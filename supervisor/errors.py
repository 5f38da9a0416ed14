"""Errors raised by the supervisor.

SupervisorError
  ├ SpawnError        child could not be exec'd (argv, cwd, permissions)
  ├ TargetError       a CLI/API target names no service or instance
  ├ AlreadyRunning    another daemon owns this project's state directory
  ├ UnsafeDirectory   a state or socket directory that is not (or cannot be made) private
  └ ControlError      bad request on the control socket, or no daemon to talk to
      ├ NoDaemon      no daemon answers on the socket
      └ WrongDaemon   the daemon on the socket serves another config file
"""

from __future__ import annotations


class SupervisorError(Exception):
    """Base class for supervisor errors."""


class SpawnError(SupervisorError):
    """A child process could not be started."""


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
