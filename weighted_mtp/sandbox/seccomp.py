"""The seccomp filter every bwrap-isolated program runs under: a deny list, as container
runtimes use, compiled here to classic BPF (no libseccomp) and handed to ``bwrap --seccomp``.

Denied with EPERM (the rest of the kernel interface is allowed):

* the kernel keyrings: ``keyctl``, ``add_key``, ``request_key`` (the evaluator's session
  keyring is *possessed* by every process that inherits it, whatever its uid);
* other processes' memory: ``ptrace``, ``process_vm_readv/writev``, ``kcmp``,
  ``pidfd_getfd`` (the PID namespace's init runs outside this filter);
* memory that RLIMIT_AS does not count: ``memfd_create``, ``memfd_secret``, SysV
  ``shmget`` and ``msgget`` (pages held by an fd or an IPC id, not by a mapping);
* watching or blocking the shared read-only files: ``flock``, ``inotify_*``,
  ``fanotify_init``, and ``fcntl(F_NOTIFY)`` (dnotify);
* the kernel's attack surface that programs never need: ``bpf``, ``perf_event_open``,
  ``userfaultfd``, ``io_uring_*``, ``syslog``, ``open_by_handle_at``, module and kexec
  loading, and namespaces and mounts (``unshare``, ``setns``, ``mount``, the new mount API);
* any other ABI (i386 ``int 0x80``, x32): every call of a foreign architecture fails.

Supported machines: x86_64 and aarch64 (``program()`` returns None elsewhere).
"""

from __future__ import annotations

import errno
import platform
import struct

# classic BPF (linux/filter.h) and seccomp (linux/seccomp.h)
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
_NR, _ARCH, _ARG1_LOW = 0, 4, 24  # offsets in struct seccomp_data (little endian)
F_NOTIFY = 1026
X32_SYSCALL_BIT = 0x40000000

DENIED = (
    "keyctl", "add_key", "request_key", "ptrace", "process_vm_readv", "process_vm_writev",
    "kcmp", "pidfd_getfd", "memfd_create", "memfd_secret", "shmget", "msgget", "flock",
    "inotify_init", "inotify_init1", "inotify_add_watch", "fanotify_init", "bpf",
    "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "syslog", "open_by_handle_at", "name_to_handle_at", "init_module",
    "finit_module", "delete_module", "kexec_load", "kexec_file_load", "unshare", "setns",
    "mount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
)  # fmt: skip

# syscall numbers: (AUDIT_ARCH_*, {name: nr}); names a machine lacks are left out
_NEW_MOUNT_API = {
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "pidfd_getfd": 438, "memfd_secret": 447,
}  # fmt: skip
TABLES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, {
        "keyctl": 250, "add_key": 248, "request_key": 249, "ptrace": 101,
        "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "memfd_create": 319,
        "shmget": 29, "msgget": 68, "flock": 73, "inotify_init": 253, "inotify_init1": 294,
        "inotify_add_watch": 254, "fanotify_init": 300, "bpf": 321, "perf_event_open": 298,
        "userfaultfd": 323, "syslog": 103, "open_by_handle_at": 304,
        "name_to_handle_at": 303, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320, "unshare": 272,
        "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "fcntl": 72,
        **_NEW_MOUNT_API,
    }),
    "aarch64": (0xC00000B7, {
        "keyctl": 219, "add_key": 217, "request_key": 218, "ptrace": 117,
        "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272, "memfd_create": 279,
        "shmget": 194, "msgget": 186, "flock": 32, "inotify_init1": 26,
        "inotify_add_watch": 27, "fanotify_init": 262, "bpf": 280, "perf_event_open": 241,
        "userfaultfd": 282, "syslog": 116, "open_by_handle_at": 265,
        "name_to_handle_at": 264, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "kexec_load": 104, "kexec_file_load": 294, "unshare": 97,
        "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "fcntl": 25,
        **_NEW_MOUNT_API,
    }),
}  # fmt: skip


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(machine: str | None = None, errno_value: int = errno.EPERM) -> bytes | None:
    """The filter as an array of ``struct sock_filter`` (what ``bwrap --seccomp FD`` reads),
    for ``machine`` (default: this one); None on a machine without a table."""
    machine = machine or platform.machine()
    if machine not in TABLES:
        return None
    arch, numbers = TABLES[machine]
    deny = RET_ERRNO | (errno_value & 0xFFFF)
    nrs = sorted({numbers[name] for name in DENIED if name in numbers})
    # layout: [arch check][nr load][x32 check]?[one JEQ per nr][fcntl JEQ][ALLOW][DENY]
    #         [fcntl: load arg1, JEQ F_NOTIFY -> DENY, reload nr, ALLOW]
    body = [_insn(_LD_W_ABS, _ARCH), _insn(_JEQ_K, arch, 1, 0), _insn(_RET_K, deny)]
    body.append(_insn(_LD_W_ABS, _NR))
    checks: list[tuple[int, str]] = []  # (nr, target) in order
    if machine == "x86_64":
        checks.append((X32_SYSCALL_BIT, "deny_ge"))
    checks += [(nr, "deny") for nr in nrs]
    checks.append((numbers["fcntl"], "fcntl"))
    n = len(checks)
    for i, (k, target) in enumerate(checks):
        # after this insn: the rest of the checks, then ALLOW (n - i - 1), DENY (+1), fcntl (+2)
        to_deny = n - i - 1 + 1
        to = to_deny if target in ("deny", "deny_ge") else to_deny + 1
        if to > 255:
            raise ValueError("seccomp filter too long for classic BPF jumps")
        body.append(_insn(_JGE_K if target == "deny_ge" else _JEQ_K, k, to, 0))
    body += [_insn(_RET_K, RET_ALLOW), _insn(_RET_K, deny)]
    body += [_insn(_LD_W_ABS, _ARG1_LOW), _insn(_JEQ_K, F_NOTIFY, 0, 1), _insn(_RET_K, deny)]
    body.append(_insn(_RET_K, RET_ALLOW))
    return b"".join(body)
