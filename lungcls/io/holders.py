"""Who holds a lease, and whether that process still runs.

A holder is named by host, pid and run id (nothing about the data). The kernel boot and PID
namespace it ran in (`process_space`) let another process on the same machine see for sure
that a holder killed with `kill -9` is gone, and take its lease at once instead of after its
ttl; a holder elsewhere is never judged gone (hostnames alone repeat across containers).
"""

from __future__ import annotations

import os
import socket

from lungcls.io.records import Part


class LeaseHolder(Part):
    """Who holds a lease: enough to find the process, nothing about the data.

    `process_space` names the kernel boot and PID namespace the pid belongs to: an acquirer
    in the same one can see whether the holder still runs, and need not wait out the ttl of
    a holder killed with `kill -9` (hostnames alone repeat across containers)."""

    host: str
    pid: int
    run_id: str
    process_space: str | None = None

    def is_gone(self) -> bool:
        """True only when this process can tell for sure that the holder no longer runs."""
        if self.process_space is None or self.process_space != process_space():
            return False
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[-1].split()[0]
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return state in ("Z", "X")  # killed, not yet reaped by its parent

    def describe(self) -> str:
        return f"run {self.run_id} (pid {self.pid} on {self.host})"


def process_space() -> str | None:
    """This process's kernel boot and PID namespace (Linux), or None where /proc cannot say."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot_id}:{namespace}"


def this_process(run_id: str) -> LeaseHolder:
    """The holder this process is, for `run_id`."""
    return LeaseHolder(
        host=socket.gethostname(), pid=os.getpid(), run_id=run_id, process_space=process_space()
    )
