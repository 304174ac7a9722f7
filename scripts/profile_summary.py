"""Summarize a ``py-spy record -f raw`` profile: each function's share of one thread's samples,
inclusive and self. The profiles in ``docs/profiles/`` were made on a server under 32
connections of the digits JSON load (``service.bench.loadgen``)::

    py-spy record -p PID -d 10 -r 300 -f raw -o server.raw --nonblocking --threads
    python scripts/profile_summary.py server.raw "MainThread" > docs/profiles/NAME.txt
"""

import collections
import sys


def _key(frame: str) -> str:
    """``function (file)`` from py-spy's ``function (path:line)``."""
    if " (" not in frame:
        return frame
    function, _, where = frame.partition(" (")
    return f"{function} ({where.split(':')[0].split('/')[-1]}"


def main(path: str, thread: str, top: int = 40) -> None:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            if thread not in frames[0]:
                continue
            samples = int(count)
            total += samples
            for key in {_key(frame) for frame in frames[1:]}:
                inclusive[key] += samples
            own[_key(frames[-1]) + ")"] += samples
    print(f"{total} samples of threads matching {thread!r}")
    print("inclusive:")
    for key, samples in inclusive.most_common(top):
        print(f"{samples / total * 100:5.1f}% {key})")
    print("self:")
    for key, samples in own.most_common(top // 2):
        print(f"{samples / total * 100:5.1f}% {key}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
