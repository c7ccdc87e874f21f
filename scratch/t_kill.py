import time, re
from tests.helpers.launch import run_ranks_expecting_failure
t0 = time.time()
o = run_ranks_expecting_failure("tests.distributed.sasgd_trust_worker:killed_worker", worker_timeout=60.0, timeout=180)
t1 = time.time()
died = float(re.search(r"LD-DIED-AT (\S+)", o.logs[1])[1]); det = float(re.search(r"LD-DETECTED-AT (\S+)", o.logs[0])[1])
print("start->died %.1f  died->detected %.2f  detected->end %.1f  total %.1f" % (died - t0, det - died, t1 - det, o.seconds))
print(o.logs[0][-3000:])
