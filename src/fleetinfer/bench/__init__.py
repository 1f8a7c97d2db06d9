"""Benchmarks: the same task set through each serving mode, measured side by side.

runner.py         modes (isolated-per-task, isolated, shared, triton), interleaved rounds
oneshot.py        one task in a fresh process, its life split into phases (isolated-per-task)
probe.py          the task under benchmark, wrapped to count its model calls
triton.py         starts triton_server.py under the PyTriton venv, or says why it cannot
measure.py        PSS and CPU of a process tree, sampled over time
payloads.py       the JSONL payloads file
report.py         per-round numbers, medians, ratios, efficiency against the limit, JSON
projection.py     capacity projection onto an instance shape (instances.py: shapes, prices)
chart.py          the PNG
"""
