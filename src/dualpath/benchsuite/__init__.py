"""The benchmark suite behind `dualpath bench`: every speed, memory and quality figure in one run.

    timing      call timings → median / p99 / throughput, ratios against a baseline of the same run
    machine     what the numbers were measured on (cores, CPU, RAM, library versions, BLAS threads, load)
    tables      results as sections of rows → Markdown tables
    synthetic   clustered unit vectors and banks made from given vectors (no encoder)
    search      each index kind on real and synthetic vectors: latency and recall@10 against exact search
    memory      resident memory of an opened bank, measured in a fresh process
    stages      encode, LVM step, query tower, decision, the whole generation step against its parts
    decider     decision latency against a bare mat-vec (shared with bench/bench_decider.py)
    training    pairs/s and s/epoch of the LVM and each query tower; training memory per epoch
    quality     the docs/protocol.md protocol on the bank's held-out documents (pipeline.report.measure)
    suite       sizes (quick / full), the bank the suite runs on, and writing results.json / .md / machine.md

See docs/benchmarks.md.
"""
