#!/usr/bin/env python3
"""Cloud backend throughput against the local emulators, next to the bare SDK.

For each of S3 (moto_server), GCS (gcp-storage-emulator) and Azure Blob (Azurite), in one run:
  - upload then download a set of pack-sized objects through our backend (put_file / get), and
    the same bytes through the SDK's own high-level calls (boto3 upload_fileobj / get_object,
    google blob.upload_from_file / download_as_bytes, azure upload_blob / download_blob), with
    the same number of threads; prints MiB/s and the ratio ours / bare SDK;
  - counts HTTP requests per MiB (a counting proxy in front of the emulator) for those uploads,
    and, when the backup engine exists, for a backup of a tree of small files.

    python bench/bench_cloud.py                      # 256 MiB per backend
    python bench/bench_cloud.py --size-mib 1024      # the ~1 GB run (or BENCH_CLOUD_SIZE_MIB=1024)
    python bench/bench_cloud.py --backends s3,azure --object-mib 32 --threads 4 --json out.json

Results go to bench/results/cloud.json unless --json says otherwise.

Emulators are single-process servers on the same two cores as the client, so the absolute
numbers measure the emulator as much as us; the ratio against the bare SDK in the same run is
the figure to watch (1.0 = no overhead; above 1 = faster than the SDK's defaults).
Needs `scripts/install-test-servers`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from insite_console.storage import open_storage  # noqa: E402
from tests.cloud_servers import (  # noqa: E402
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    FaultProxy,
    start_azurite,
    start_gcs_emulator,
    start_moto,
    unique_name,
)

MIB = 1024 * 1024


def objects(total_mib: int, object_mib: int):
    """Distinct incompressible objects (like encrypted packs) without holding them all."""
    base = os.urandom(object_mib * MIB)
    count = max(1, total_mib // object_mib)
    for i in range(count):
        yield f"data/{i:02x}/{i:064x}", i.to_bytes(8, "big") + base[8:]


def make_settings(kind: str, endpoint: str, bucket: str, args) -> dict:
    common = {"prefix": "bench", "concurrency": args.part_concurrency}
    if args.part_mib:
        common["part_size"] = args.part_mib * MIB
    if kind == "s3":
        return {"type": "s3", "bucket": bucket, "endpoint_url": endpoint, **common}
    if kind == "gcs":
        return {"type": "gcs", "bucket": bucket, "endpoint_url": endpoint, "project": "bench", **common}
    os.environ["INSITE_BENCH_AZURE"] = connection_string(endpoint)
    return {"type": "azure", "container": bucket, "connection_string_env": "INSITE_BENCH_AZURE", **common}


def connection_string(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )


class Bare:
    """The SDK's own high-level calls, default settings apart from the endpoint."""

    def __init__(self, kind: str, endpoint: str, bucket: str):
        self.kind, self.bucket = kind, bucket
        if kind == "s3":
            import boto3
            from botocore.config import Config

            self.client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                config=Config(s3={"addressing_style": "path"}, max_pool_connections=32),
            )
        elif kind == "gcs":
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            self.client = storage.Client(
                project="bench", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
            )
            self.gbucket = self.client.bucket(bucket)
        else:
            from azure.storage.blob import BlobServiceClient

            self.client = BlobServiceClient.from_connection_string(connection_string(endpoint)).get_container_client(
                bucket
            )

    def put(self, key: str, data: bytes) -> None:
        key = f"bare/{key}"
        if self.kind == "s3":
            self.client.upload_fileobj(io.BytesIO(data), self.bucket, key)
        elif self.kind == "gcs":
            self.gbucket.blob(key).upload_from_file(io.BytesIO(data), size=len(data))
        else:
            self.client.upload_blob(key, data, overwrite=True, max_concurrency=4)

    def get(self, key: str) -> bytes:
        key = f"bare/{key}"
        if self.kind == "s3":
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        if self.kind == "gcs":
            return self.gbucket.blob(key).download_as_bytes()
        return self.client.download_blob(key, max_concurrency=4).readall()


def timed(threads: int, fn, items) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fn, items):
            pass
    return time.perf_counter() - started


def bench_backend(kind: str, server, args) -> dict:
    bucket = unique_name("bench")
    ours = open_storage(kind, make_settings(kind, server.endpoint_url if kind != "azure" else f"http://127.0.0.1:{server.port}", bucket, args))
    ours.ensure_container(create=True)
    bare = Bare(kind, server.endpoint_url if kind != "azure" else f"http://127.0.0.1:{server.port}", bucket)
    items = list(objects(args.size_mib, args.object_mib))
    total = sum(len(data) for _key, data in items) / MIB
    result = {"backend": kind, "mib": total, "objects": len(items), "threads": args.threads}

    # A-B-B-A over two halves of the set, so a warming or filling emulator (or a neighbour's
    # load) weighs on both sides alike
    keys = [key for key, _data in items]
    half = max(1, len(items) // 2)
    halves = [items[:half], items[half:]] if len(items) > 1 else [items, []]
    up = {
        "ours": lambda batch: timed(args.threads, lambda item: ours.put_file(item[0], io.BytesIO(item[1]), len(item[1])), batch),
        "bare": lambda batch: timed(args.threads, lambda item: bare.put(*item), batch),
    }
    down = {
        "ours": lambda batch: timed(args.threads, lambda item: ours.get(item[0]), batch),
        "bare": lambda batch: timed(args.threads, lambda item: bare.get(item[0]), batch),
    }
    for phase, table in (("up", up), ("down", down)):
        result[f"ours_{phase}_s"] = result[f"bare_{phase}_s"] = 0.0
        for batch, order in zip(halves, (("bare", "ours"), ("ours", "bare"))):
            if not batch:
                continue
            for side in order:
                result[f"{side}_{phase}_s"] += table[side](batch)
    for phase in ("up", "down"):
        result[f"ours_{phase}_mibs"] = total / result[f"ours_{phase}_s"]
        result[f"bare_{phase}_mibs"] = total / result[f"bare_{phase}_s"]
        result[f"ratio_{phase}"] = result[f"ours_{phase}_mibs"] / result[f"bare_{phase}_mibs"]
    ours.delete(keys)
    if kind == "s3":
        bare.client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": f"bare/{k}"} for k in keys]})
    ours.close()

    # requests per MiB for pack uploads, counted by a proxy in front of the emulator
    proxy = FaultProxy(server.port).start()
    counted = open_storage(kind, make_settings(kind, proxy.url, bucket, args))
    sample = items[: max(1, min(len(items), 4))]
    for key, data in sample:
        counted.put_file(key, io.BytesIO(data), len(data))
    sample_mib = sum(len(d) for _k, d in sample) / MIB
    requests = len([entry for entry in proxy.log if not entry[1].startswith("/storage/v1/b/") or "/o" in entry[1]])
    result["pack_requests_per_mib"] = requests / sample_mib
    counted.delete([key for key, _ in sample])
    counted.close()
    proxy.stop()
    return result


def bench_small_files_backup(server, args, workdir: Path) -> dict:
    """Requests per MiB for a backup of many small files, through the CLI (skipped until the
    backup engine and `init` exist)."""
    try:
        import insite_console.backup  # noqa: F401
        import insite_console.cli  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"backup engine not available ({exc})"}
    tree = workdir / "tree"
    count, size = args.small_files, args.small_file_kib * 1024
    for i in range(count):
        path = tree / f"d{i % 50:02d}" / f"f{i:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size // 2).hex().encode()[:size])
    proxy = FaultProxy(server.port).start()
    bucket = unique_name("bench")
    config = workdir / "config.toml"
    config.write_text(
        f"""[catalog]
path = "state/catalog.sqlite"

[encryption]
passphrase_env = "INSITE_BENCH_PASSPHRASE"

[storage.s3]
type = "s3"
bucket = "{bucket}"
prefix = "bench"
endpoint_url = "{proxy.url}"

[source.tree]
type = "files"
paths = ["{tree}"]

[policy.tree]
source = "tree"
storage = "s3"
schedule = "0 * * * *"
type = "full"
compression = "zstd"
encryption = true
verify = false
rpo = "1h"
retention = {{ keep_last = 3 }}
"""
    )
    env = {**os.environ, "INSITE_BENCH_PASSPHRASE": "bench-passphrase", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    cli = [sys.executable, "-m", "insite_console", "-c", str(config)]
    try:
        ours = open_storage("s3", {"type": "s3", "bucket": bucket, "endpoint_url": server.endpoint_url})
        ours.ensure_container(create=True)
        ours.close()
        init = subprocess.run(cli + ["init"], env=env, capture_output=True, text=True, timeout=300)
        if init.returncode != 0:
            return {"skipped": f"init failed: {(init.stderr or init.stdout).strip()[-300:]}"}
        proxy.clear()
        started = time.perf_counter()
        run = subprocess.run(cli + ["backup", "tree", "--json"], env=env, capture_output=True, text=True, timeout=900)
        elapsed = time.perf_counter() - started
        if run.returncode != 0:
            return {"skipped": f"backup failed: {(run.stderr or run.stdout).strip()[-300:]}"}
        requests = len(proxy.log)
        source_mib = count * size / MIB
        return {
            "files": count,
            "source_mib": source_mib,
            "requests": requests,
            "requests_per_mib": requests / source_mib,
            "requests_per_1000_files": requests * 1000 / count,
            "seconds": elapsed,
        }
    finally:
        proxy.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=int(os.environ.get("BENCH_CLOUD_SIZE_MIB", 256)))
    parser.add_argument("--object-mib", type=int, default=8, help="size of one packed object (the engine packs 8 MiB; 32+ exercises multipart)")
    parser.add_argument("--part-mib", type=int, default=None, help="our part_size (default: the backend's, 16 MiB)")
    parser.add_argument("--part-concurrency", type=int, default=4, help="our per-object part concurrency")
    parser.add_argument("--threads", type=int, default=2, help="objects in flight at once (both sides)")
    parser.add_argument("--backends", default="s3,gcs,azure")
    parser.add_argument("--small-files", type=int, default=2000)
    parser.add_argument("--small-file-kib", type=int, default=4)
    parser.add_argument("--json", metavar="PATH", default=str(REPO / "bench" / "results" / "cloud.json"),
                        help="where to write the results as JSON (default: bench/results/cloud.json)")
    args = parser.parse_args(argv)

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    workdir = Path(tempfile.mkdtemp(prefix="bench-cloud-"))
    starters = {"s3": start_moto, "gcs": start_gcs_emulator, "azure": start_azurite}
    results = {"backends": [], "small_files_backup": None}
    servers = []
    try:
        for kind in [k.strip() for k in args.backends.split(",") if k.strip()]:
            server = starters[kind](workdir)
            servers.append(server)
            if kind == "gcs":
                os.environ["STORAGE_EMULATOR_HOST"] = server.endpoint_url
            print(f"{kind}: {args.size_mib} MiB in {args.object_mib} MiB objects, {args.threads} threads ...", flush=True)
            row = bench_backend(kind, server, args)
            results["backends"].append(row)
            print(
                f"  upload   ours {row['ours_up_mibs']:7.1f} MiB/s   bare SDK {row['bare_up_mibs']:7.1f} MiB/s   "
                f"ratio {row['ratio_up']:.2f}\n"
                f"  download ours {row['ours_down_mibs']:7.1f} MiB/s   bare SDK {row['bare_down_mibs']:7.1f} MiB/s   "
                f"ratio {row['ratio_down']:.2f}\n"
                f"  requests per MiB uploaded (packs): {row['pack_requests_per_mib']:.3f}",
                flush=True,
            )
        s3 = next((s for s in servers if s.kind == "s3"), None)
        if s3 is not None:
            small = bench_small_files_backup(s3, args, workdir)
            results["small_files_backup"] = small
            if "skipped" in small:
                print(f"small-files backup: skipped: {small['skipped']}")
            else:
                print(
                    f"small-files backup: {small['files']} files, {small['source_mib']:.1f} MiB -> "
                    f"{small['requests']} requests ({small['requests_per_mib']:.1f}/MiB, "
                    f"{small['requests_per_1000_files']:.1f} per 1000 files) in {small['seconds']:.1f} s"
                )
    finally:
        for server in servers:
            server.process.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results["settings"] = {k: v for k, v in vars(args).items() if k != "json"}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
