"""A background worker with no port: processes a job every couple of seconds."""

import signal
import sys
import time

running = True


def stop(signum: int, frame: object) -> None:
    global running
    running = False


signal.signal(signal.SIGTERM, stop)
job = 0
while running:
    job += 1
    print(f"processed job {job}", flush=True)
    time.sleep(2)
print("worker stopping cleanly", flush=True)
sys.exit(0)
