"""A loopback port whose connections never complete: a listening socket that
never accepts, its backlog filled, so the kernel drops further handshakes (as a
vanished pod address or a firewall would). On the port given, or any free one;
prints the port, then waits until its stdin closes. With "--on-line" after the
port it first prints "ready" and binds only when a line comes on stdin, so a
caller can take a port over the moment another process lets it go."""
import socket
import sys
import time

if len(sys.argv) > 2 and sys.argv[2] == "--on-line":
    print("ready", flush=True)
    sys.stdin.readline()

server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
# The port may still be held for a moment by the process that let it go.
deadline = time.monotonic() + 5
while True:
    try:
        server.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0))
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.005)
server.listen(0)
address = server.getsockname()
fillers = []
for _ in range(8):
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setblocking(False)
    try:
        client.connect(address)
    except (BlockingIOError, OSError):
        pass
    fillers.append(client)
print(address[1], flush=True)
sys.stdin.read()
time.sleep(0)
