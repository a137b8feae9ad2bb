"""What systemd's fd store does for hsmd, done by the test process.

`FDStore` binds a NOTIFY_SOCKET, keeps every fd hsmd hands it with FDSTORE=1 (by FDNAME),
and starts the next hsmd with them as LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID, as systemd
does across `systemctl restart` and an automatic restart after a crash. `forget()` drops
them, as `systemctl stop` does. The real thing is tested under systemd in
test_systemd_life.py; this makes the same kernel behaviour quick to test.
"""
import array
import fcntl
import os
import socket
import threading


class FDStore:
    def __init__(self, base):
        self.path = str(base / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.fds = {}          # name -> fd held by this process
        self.messages = []
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self):
        while self.running:
            try:
                msg, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
            except socket.timeout:
                continue
            except OSError:
                return
            fds = []
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(data[:len(data) - len(data) % a.itemsize])
                    fds.extend(a)
            text = msg.decode(errors="replace")
            fields = dict(l.split("=", 1) for l in text.splitlines() if "=" in l)
            with self.lock:
                self.messages.append(text)
                if fields.get("FDSTORE") == "1" and fds:
                    name = fields.get("FDNAME", "stored")
                    # systemd keeps every fd; hsmd names each once, so keep the newest.
                    old = self.fds.pop(name, None)
                    if old is not None:
                        os.close(old)
                    self.fds[name] = fds[0]
                    for extra in fds[1:]:
                        os.close(extra)
                else:
                    for fd in fds:
                        os.close(fd)

    def names(self):
        with self.lock:
            return sorted(self.fds)

    def launch_args(self, argv, env):
        """(argv, env, preexec_fn, pass_fds) that start `argv` the way systemd would."""
        with self.lock:
            items = sorted(self.fds.items())
        env = dict(env, NOTIFY_SOCKET=self.path)
        if not items:
            return argv, env, None, ()
        env["LISTEN_FDS"] = str(len(items))
        env["LISTEN_FDNAMES"] = ":".join(n for n, _ in items)
        fds = [fd for _, fd in items]

        def place():
            # In the child: move the stored fds to 3, 4, ... (first out of the way).
            tmp = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1000 + i) for i, fd in enumerate(fds)]
            for i, t in enumerate(tmp):
                os.dup2(t, 3 + i)
                os.close(t)

        # LISTEN_PID must be the pid of hsmd itself: sh execs it, keeping its pid.
        wrapped = ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', *argv]
        return wrapped, env, place, tuple(range(3, 3 + len(items)))

    def forget(self):
        """Closes every stored fd, as `systemctl stop` empties systemd's store."""
        with self.lock:
            for fd in self.fds.values():
                os.close(fd)
            self.fds.clear()

    def close(self):
        self.running = False
        self.thread.join(2)
        self.forget()
        self.sock.close()
