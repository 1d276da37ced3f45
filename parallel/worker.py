"""A worker process of parallel/pool.py, started as a script: registers the pack under the parent's package name
(without running its __init__, which imports every node), connects back, and serves commands."""
import sys
import types
from multiprocessing.connection import Client
from pathlib import Path

if __name__ == "__main__":
    package, root, port, authkey, rank, world, device, backend, group_port = sys.argv[1:]
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [root]
        sys.modules[package] = module
    pool = __import__(f"{package}.parallel.pool", fromlist=["serve"])
    conn = Client(("127.0.0.1", int(port)), authkey=bytes.fromhex(authkey))
    pool.send(conn, int(rank))
    pool.serve(conn, int(rank), int(world), device, backend, int(group_port))
