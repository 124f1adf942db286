"""bench/gpu_check.py: its dry run (the GPU check sequence on CPU at tiny sizes) passes end to end and records every
model file; a model file without sizes in the script stops it before anything runs."""

import json
import os
import re
import shutil
import sys

from conftest import ROOT, copy_repo, run


def model_files(root):
    return sorted(f[:-3] for f in os.listdir(os.path.join(root, "models")) if f.endswith(".py") and f != "__init__.py")


def test_dry_run_passes_and_records_every_model_file(tmp_path):
    p = run("bench/gpu_check.py", "--dry", "--results=res.jsonl", cwd=tmp_path, timeout=900)
    assert p.returncode == 0 and "dry run" in p.stdout
    models = model_files(ROOT)
    expected = {"flash", *(f"train_{m}" for m in models), "compile_gpt2", "ddp_gloo", "mfu_gpt2_124m",
                "mfu_llama_125m"}
    status = dict((name, s) for s, name in re.findall(r"^(PASS|FAIL|SKIP) (\S+)", p.stdout, re.M))
    assert status == {n: "SKIP" if n == "flash" else "PASS" for n in expected}, p.stdout
    assert re.search(r"^OK: \d+ passed, 0 failed, 1 skipped", p.stdout, re.M), p.stdout

    records = [json.loads(line) for line in (tmp_path / "res.jsonl").read_text().splitlines()]
    summary = [r for r in records if r.get("kind") == "gpu_check"]
    assert len(summary) == 1 and summary[0]["dry"] is True and summary[0]["torch"] and summary[0]["date"]
    assert summary[0]["device_name"].startswith("cpu")
    checks = {c["name"]: c for c in summary[0]["checks"]}
    assert set(checks) == expected
    assert all(c["ok"] is (None if n == "flash" else True) and c["seconds"] >= 0 and c["detail"]
               for n, c in checks.items())
    # The MFU checks are bench.py's own runs: their records land in the same file, with an MFU figure.
    bench = [r for r in records if "kind" not in r]
    assert sorted(r["model"] for r in bench) == ["gpt2", "llama"]
    assert all(r["train"][0]["mfu"] > 0 for r in bench)


def test_a_model_file_without_sizes_is_refused(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    (repo / "bench").mkdir()
    shutil.copy(os.path.join(ROOT, "bench", "gpu_check.py"), repo / "bench" / "gpu_check.py")
    shutil.copy(repo / "models" / "gpt2.py", repo / "models" / "mygpt.py")
    p = run([sys.executable, str(repo / "bench" / "gpu_check.py")], "--dry", "--results=res.jsonl", cwd=tmp_path,
            check=False)
    assert p.returncode != 0 and "models/mygpt.py has no sizes" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "res.jsonl").exists()  # refused before running anything
