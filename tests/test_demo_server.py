"""`kvspec demo-model --size large` served by stock `mlx_lm.server`: a real server process on loopback, one chat, stopped in `finally`."""
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from kvspec.demo import demo_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def test_large_demo_served_by_stock(tmp_path):
    "The large demo model (12 layers at hidden 768) loads in stock mlx_lm.server and answers a chat."
    model = demo_model(tmp_path / "large", "llama", size="large")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlx_lm.server", "--model", str(model), "--port", str(port), "--log-level", "WARNING"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"mlx_lm.server exited with {proc.returncode}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5): break
            except OSError:
                assert time.monotonic() < deadline, "mlx_lm.server did not come up in 90 s"
                time.sleep(0.2)
        body = dict(messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0.0)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r: status, out = r.status, json.loads(r.read())
        assert status == 200
        assert out["usage"]["prompt_tokens"] > 0 and 1 <= out["usage"]["completion_tokens"] <= 2, out["usage"]
        assert isinstance(out["choices"][0]["message"]["content"], str)
    finally:
        proc.send_signal(signal.SIGINT)
        try: proc.wait(30)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait(30)
