# End-of-DATA -> reply latency: SESSIONS threads, each sending COUNT/SESSIONS
# messages of SIZE bytes over one SMTP session, timing from the final "."
# sent to the reply read. Prints p50, p99 and max in milliseconds.
# Usage: latency.py HOST PORT SESSIONS COUNT SIZE
import socket, sys, threading, time
host, port, sessions, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
body = (b"Subject: latency\r\n\r\n" + (b"x" * 76 + b"\r\n") * (size // 78))
lat, lock, errors = [], threading.Lock(), [0]

def reply(f):
    while True:
        line = f.readline()
        if not line or line[3:4] != b"-":
            return line

def worker(n):
    s = socket.create_connection((host, port), timeout=60)
    # Without it Nagle holds the final "." until the body's last segment is
    # acknowledged (a delayed ACK: up to 40 ms), which is then measured.
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    reply(f)
    s.sendall(b"EHLO latency.test\r\n"); reply(f)
    mine = []
    for i in range(n):
        s.sendall(b"MAIL FROM:<a@src.test>\r\n"); reply(f)
        s.sendall(b"RCPT TO:<b@dest.test>\r\n"); reply(f)
        s.sendall(b"DATA\r\n"); reply(f)
        s.sendall(body)
        t0 = time.perf_counter()
        s.sendall(b".\r\n")
        r = reply(f)
        dt = time.perf_counter() - t0
        if r.startswith(b"250"):
            mine.append(dt)
        else:
            with lock:
                errors[0] += 1
    s.sendall(b"QUIT\r\n")
    s.close()
    with lock:
        lat.extend(mine)

ts = [threading.Thread(target=worker, args=(count // sessions,)) for _ in range(sessions)]
for t in ts: t.start()
for t in ts: t.join()
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
print("%d x 250 (%d refused): p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (len(lat), errors[0], q(0.50), q(0.99), lat[-1] * 1000))
