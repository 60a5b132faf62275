"""Python-level guard: the inner layer of the sandbox, installed before the program runs.

The sandbox's bootstrap reads this file as text, ``exec``s it in the child interpreter and
calls ``install(violation_exit)``; importing it in the evaluator does nothing. A guard hit
prints ``sandbox: blocked ...`` and ends the program at once with ``violation_exit``.

Blocked: process creation (fork, exec*, spawn*, system, posix_spawn, subprocess,
multiprocessing, pty), ctypes, leaving the group (setsid/setpgid), signalling other
processes, changing rlimits, file mutation outside the work dir (open for writing, remove,
rename, chmod, rmtree...), chdir, and reading other processes' ``/proc`` entries.

Determined code can get around it (saved originals in closures, a freshly imported
``posix``, C extensions such as sqlite3): it only turns the common cases into a clear
``blocked`` verdict. The security boundary is the OS layer (``isolation.py``).
"""

# ruff: noqa: E401, E702, I001


def install(violation_exit: int) -> None:
    """Patch the dangerous functions of ``os``/``posix``/``io``/... in this interpreter."""
    import _frozen_importlib_external, _io, _posixsubprocess, builtins, io, os, posix
    import resource, signal, sys

    _write, _exit, _readlink, _fspath = os.write, os._exit, os.readlink, os.fspath
    _realpath, _join, _abspath = os.path.realpath, os.path.join, os.path.abspath
    work = _realpath(os.getcwd())
    pid = str(os.getpid())
    devices = ("/dev/null", "/dev/stdout", "/dev/stderr")
    wflags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def deny(what):
        _write(2, ("sandbox: blocked " + what + "\n").encode())
        _exit(violation_exit)

    def resolve(path, dir_fd=None):
        path = _fspath(path)
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        if dir_fd is not None and not path.startswith("/"):
            path = _join(_readlink(f"/proc/self/fd/{dir_fd}"), path)
        return path, _realpath(path)

    def check(what, path, write, dir_fd=None):
        if isinstance(path, int):
            return
        raw, real = resolve(path, dir_fd)
        parts = real.split("/")
        if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != pid:
            deny(what + " of another process: " + real)
        inside = real == work or real.startswith(work + "/")
        if write and not inside and _abspath(raw) not in devices:
            deny(what + " outside the work dir: " + real)

    def put(name, fn, mods=(os, posix)):
        for mod in mods:
            if hasattr(mod, name):
                setattr(mod, name, fn)

    def blocker(what):
        return lambda *a, **k: deny(what)

    def path_guard(name, argnames):
        orig = getattr(os, name)

        def guarded(*args, **kw):
            for i, arg in enumerate(argnames):
                if arg is None:
                    continue
                value = args[i] if i < len(args) else kw.get(arg)
                if value is not None:
                    check("os." + name, value, True, kw.get(arg + "_dir_fd", kw.get("dir_fd")))
            return orig(*args, **kw)

        return guarded

    def is_write(mode):
        return any(ch in str(mode) for ch in "wax+")

    orig_open = builtins.open

    def guarded_open(file, mode="r", *args, **kw):
        check("open", file, is_write(mode))
        return orig_open(file, mode, *args, **kw)

    orig_os_open = os.open

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        check("os.open", path, bool(flags & wflags), dir_fd)
        return orig_os_open(path, flags, mode, dir_fd=dir_fd)

    class GuardedFileIO(_io.FileIO):
        def __init__(self, file, mode="r", *args, **kw):
            check("FileIO", file, is_write(mode))
            super().__init__(file, mode, *args, **kw)

    orig_kill = os.kill

    def guarded_kill(target, sig):
        if str(target) != pid:
            deny("os.kill of another process")
        return orig_kill(target, sig)

    def guard_shutil(shutil):
        orig_rmtree = shutil.rmtree

        def guarded_rmtree(path, *args, **kw):
            check("shutil.rmtree", path, True)
            return orig_rmtree(path, *args, **kw)

        shutil.rmtree = guarded_rmtree

    class ShutilFinder:
        """Guards ``shutil`` when the program imports it: importing it here would pull
        in ``fnmatch`` and ``re``, a fifth of every sandboxed program's start-up."""

        @staticmethod
        def find_spec(name, path=None, target=None):
            if name != "shutil":
                return None
            spec = _frozen_importlib_external.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return None
            exec_module = spec.loader.exec_module

            def guarded_exec(module):
                exec_module(module)
                guard_shutil(module)

            spec.loader.exec_module = guarded_exec
            return spec

    blocked = (
        "fork forkpty system popen posix_spawn posix_spawnp setsid setpgid setpgrp killpg "
        "pidfd_open chroot execv execve execl execle execlp execlpe execvp execvpe spawnl "
        "spawnle spawnlp spawnlpe spawnv spawnve spawnvp spawnvpe fchdir"
    )
    for name in blocked.split():
        put(name, blocker("os." + name))
    one_path = "remove unlink rmdir mkdir chdir chmod chown lchown truncate utime mkfifo mknod"
    for name, args in [
        *[(n, ["path"]) for n in (one_path + " setxattr removexattr").split()],
        ("rename", ["src", "dst"]),
        ("replace", ["src", "dst"]),
        ("link", ["src", "dst"]),
        ("symlink", [None, "dst"]),
    ]:
        if hasattr(os, name):
            put(name, path_guard(name, args))
    put("open", guarded_os_open)
    put("kill", guarded_kill)
    put("open", guarded_open, (builtins, io, _io))
    put("FileIO", GuardedFileIO, (io, _io))
    if "shutil" in sys.modules:
        guard_shutil(sys.modules["shutil"])
    else:
        sys.meta_path.insert(0, ShutilFinder)
    put("fork_exec", blocker("subprocess"), (_posixsubprocess,))
    put("setrlimit", blocker("resource.setrlimit"), (resource,))
    put("prlimit", blocker("resource.prlimit"), (resource,))
    put("pidfd_send_signal", blocker("signal.pidfd_send_signal"), (signal,))
    sys.modules["ctypes"] = sys.modules["_ctypes"] = None
