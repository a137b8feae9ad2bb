"""A TCP relay to a real server that can be made to stop answering: what a hung gateway
or a black-holed network looks like to a client (connections are accepted, and then no
byte moves either way), without stopping the server itself.

    with StallingProxy("127.0.0.1", 7480) as proxy:
        proxy.endpoint   # http://127.0.0.1:PORT
        proxy.stall()    # from now on nothing is relayed
        proxy.resume()   # relaying again, held bytes included
"""
import select
import socket
import threading


class StallingProxy:
    def __init__(self, host, port):
        self.target = (host, port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = threading.Event()
        self.sockets = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def stall(self):
        self.flowing.clear()

    def resume(self):
        self.flowing.set()

    def close(self):
        self.closed.set()
        self.flowing.set()
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                s.close()

    def _accept(self):
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client):
        while not self.flowing.wait(0.1):
            if self.closed.is_set():
                client.close()
                return
        try:
            server = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        with self.lock:
            self.sockets += [client, server]
        peer = {client: server, server: client}
        try:
            while not self.closed.is_set():
                if not self.flowing.is_set():
                    self.flowing.wait(0.1)
                    continue
                ready, _, _ = select.select([client, server], [], [], 0.1)
                for s in ready:
                    data = s.recv(1 << 16)
                    if not data:
                        return
                    peer[s].sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()
