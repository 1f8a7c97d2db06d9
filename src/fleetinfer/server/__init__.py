"""The node's model server: repository and sessions, transport, batcher, versions, metrics.

repository.py  config.toml parsing, version policy, sha256 checks
session.py     ONNX Runtime sessions and input validation (also used in process)
protocol.py    frame header + msgspec bodies, error codes, default socket path
shm.py         client-owned POSIX shared-memory regions, checked before use
channel.py     the client end: one socket + one region per thread, zero-copy outputs
requests.py    an InferRequest checked and turned into views of the client's region
executor.py    one loaded model version and its dynamic batcher
registry.py    loaded versions with load / unload / reload (copy on write)
metrics.py     nv_inference_* counters, /metrics and live / ready over HTTP
server.py      the Unix-socket server and its connections
kserve.py      the KServe v2 HTTP protocol, for the `triton` client mode
"""
