import sys, collections
from tests.helpers.launch import run_ranks
for s in sys.argv[1:]:
    r = run_ranks("scratch.ss_probe:probe", strategy=s)
    pids = [x["pid"] for x in r]
    print("=====", s, "MASTER_PORT", r[0]["mp"])
    c = collections.Counter(); wild = []
    for line in r[0]["ss"].splitlines():
        for rk, p in enumerate(pids):
            if f"pid={p}," in line:
                addr = line.split()[3]; host = addr.rsplit(":",1)[0]
                c[(rk, host)] += 1
                if host in ("*", "0.0.0.0", "[::]"): wild.append((rk, addr))
    for k, v in sorted(c.items()): print("  rank%d listens on %s: %d sockets" % (k[0], k[1], v))
    for w in wild: print("  wildcard:", w)
