"""Damaged robomimic HDF5 files through `mvp data check` (the Rust reader on the system's libhdf5),
one process per file, so that a crash of the C library shows as a signal instead of ending the
fuzzer: bytes overwritten in the first 64 KiB (superblock, object headers, B-trees) or anywhere,
or the file cut short. Counts each outcome: read (the damage hit data values; the load-time
dataset audit judges those), error (refused with a message), signal, hang (over 60 s).

    .venv/bin/python experiments/fuzz-hdf5/fuzz.py CASES SEED    (after `make run` made the file)

Run in a scratch directory: it writes f.hdf5 and keeps crash-*.hdf5 there.
"""
import os, random, subprocess, sys, collections
src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../data/robomimic-lift-50.hdf5")
data = open(src, "rb").read()
rng = random.Random(int(sys.argv[2]))
n = int(sys.argv[1])
out = collections.Counter()
examples = {}
for i in range(n):
    b = bytearray(data)
    mode = rng.random()
    if mode < 0.4:   # a few bytes in the first 64 KiB (superblock, object headers, B-trees)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(65536)] = rng.randrange(256)
    elif mode < 0.8:  # anywhere
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    else:             # cut short
        b = b[: rng.randrange(len(b))]
    open("f.hdf5", "wb").write(b)
    try:
        p = subprocess.run([os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../target/release/mvp"), "data", "check", "f.hdf5", "--env", "robomimic/lift"],
                           capture_output=True, timeout=60)
        k = "read" if p.returncode == 0 else ("error" if p.returncode > 0 else f"signal {-p.returncode}")
    except subprocess.TimeoutExpired:
        k = "hang"
    out[k] += 1
    if k not in ("read", "error") and k not in examples:
        examples[k] = i
        open(f"crash-{i}.hdf5", "wb").write(b)
print(dict(out), examples)
