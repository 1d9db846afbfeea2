"""Throughput, latency and peak memory of the homework classifier on this machine.

    .venv/bin/python bench/throughput.py                      # everything, ~3-5 min on 2 cores
    .venv/bin/python bench/throughput.py --variants naive,bf16,triton-grpc --batch-sizes 1,32
    .venv/bin/python bench/throughput.py --accuracy           # cost of bf16/int8 vs fp32

Variants (each measured in a fresh subprocess, so its peak RSS is its own):

- ``naive``: the baseline a first version would write: one `transformers` forward pass per
  micro-dialogue, fp32, no batching.
- ``fp32`` / ``bf16`` / ``int8``: our in-process path (`InProcessBackend` over
  `HomeworkClassifier.predict`, length-sorted batches) at each precision (`optimize.py`;
  int8 is the encoder in CTranslate2).
- ``triton-http`` / ``triton-grpc``: a real Triton (the nvidia-pytriton wheel's server) on this
  machine, through `TritonBackend`; the server's precision is ``--triton-precision``.

For every batch size B: requests of B micro-dialogues sent one after another (p50/p95 request
latency, items/s), then a "session": all ``--n`` texts in one `backend.predict` call (what the
pipeline does for one transcript; Triton gets its requests concurrently). Peak RSS is the
process's (and for Triton the server's plus its Python stub's).

Texts are the labelled micro-dialogues of `inference_server/data/corpus` (rendered with
`format_dialogue`), so lengths are realistic; without the corpus, a few written here are repeated.
Weights: the shipped ones when present, else random heads (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout
sys.path.insert(0, str(ROOT / "bench"))

from _paths import check_corpus, check_output_file, check_weights  # noqa: E402

VARIANTS = ("naive", "fp32", "bf16", "int8", "triton-http", "triton-grpc")
FALLBACK_DIALOGUES = [
    [
        ("therapist", "This week, could you write down three thoughts each evening before bed?"),
        ("client", "Yes, I can do that in my notebook."),
    ],
    [
        ("client", "I keep avoiding the grocery store."),
        ("therapist", "What if you went once this week, just for ten minutes?"),
        ("client", "Okay. Saturday morning might work."),
    ],
    [
        ("therapist", "Last time we talked about the breathing exercise. Did you practise it?"),
        ("client", "A couple of times, mostly when I was already calm."),
    ],
    [
        ("therapist", "How was the weekend with your sister?"),
        ("client", "Tense, but we got through dinner without a fight."),
    ],
]


DEFAULT_CORPUS = ROOT / "inference_server" / "data" / "corpus"


def load_texts(n: int, corpus: Path = DEFAULT_CORPUS) -> tuple[list[str], str]:
    """The model's inputs for n micro-dialogues (an even sample of the corpus, or the fallback
    repeated): one per micro-dialogue, more for a long turn read in windows (windows.py), as
    the pipeline sends them."""
    from inference_server.windows import expand

    dialogues: list[list[tuple[str, str]]] = []
    for path in sorted(corpus.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                turns = json.loads(line)["turns"]
                dialogues.append([(t["speaker"], t["text"]) for t in turns])
    if dialogues:
        step = max(1, len(dialogues) // n)
        sample = (dialogues[::step] * (n // len(dialogues[::step]) + 1))[:n]
        texts = expand(sample).texts
        return texts, (
            f"{corpus.name} ({len(dialogues)} micro-dialogues, every {step}th: {len(texts)} "
            "windows)"
        )
    base = (FALLBACK_DIALOGUES * (n // len(FALLBACK_DIALOGUES) + 1))[:n]
    return expand(base).texts, "built-in texts (no corpus found)"


def weights_dir(arg: str | None) -> tuple[Path, str]:
    from inference_server.classifier import HEADS_FILE, WEIGHTS_DIR

    if arg:
        return Path(arg), arg
    if (WEIGHTS_DIR / HEADS_FILE).is_file():
        return WEIGHTS_DIR, "shipped"
    import torch
    from safetensors.torch import save_file

    from inference_server.classifier import Heads

    torch.manual_seed(0)
    dest = Path(tempfile.mkdtemp(prefix="bench-weights-"))
    save_file(Heads(384, 128).state_dict(), str(dest / HEADS_FILE))
    return dest, "random heads (no shipped weights yet)"


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _hwm_mib(pid: int) -> float:
    """Peak RSS (VmHWM) of a process, 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


async def measure(predict: Any, texts: list[str], batch: int, items: int) -> dict[str, Any]:
    """Sequential requests of `batch` texts (latency), then one whole-session call."""
    await predict(texts[:batch])  # warm-up: allocators, thread pools, connections
    latencies = []
    start = time.perf_counter()
    for lo in range(0, items, batch):
        t0 = time.perf_counter()
        await predict(texts[lo : lo + batch])
        latencies.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    return {
        "batch": batch,
        "items": items,
        "items_per_s": items / total,
        "p50_ms": 1000 * _percentile(latencies, 0.5),
        "p95_ms": 1000 * _percentile(latencies, 0.95),
    }


async def session_seconds(predict: Any, texts: list[str], repeats: int) -> dict[str, float]:
    """Median, fastest and slowest of `repeats` whole-session calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        await predict(texts)
        times.append(time.perf_counter() - t0)
    return {
        "session_s": statistics.median(times),
        "session_min_s": min(times),
        "session_max_s": max(times),
    }


async def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    texts, _ = load_texts(args.n, args.corpus)
    wdir, _ = weights_dir(args.weights)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    out: dict[str, Any] = {"variant": args.worker, "threads": torch.get_num_threads(), "rows": []}

    def items_for(batch: int) -> int:
        # Batch 1 is slow by nature; a quarter of the session is enough for its percentiles.
        return len(texts) // 4 if batch == 1 else len(texts)

    if args.worker == "naive":
        from inference_server.classifier import HomeworkClassifier, mean_pool

        clf = HomeworkClassifier.load(wdir)

        @torch.inference_mode()
        def one(text: str) -> None:
            enc = clf.tokenizer(text, return_tensors="pt")  # type: ignore[operator]
            hidden = clf.encoder(**enc).last_hidden_state
            logits, review = clf.heads(mean_pool(hidden, enc["attention_mask"]))
            torch.softmax(logits, -1), torch.sigmoid(review)

        async def naive(batch: Sequence[str]) -> None:
            for text in batch:
                one(text)

        out["rows"].append(await measure(naive, texts, 1, items_for(1)))
        out.update(await session_seconds(naive, texts, repeats=1))
        out["rss_mib"] = _rss_mib()
        return out

    if args.worker in ("fp32", "bf16", "int8"):
        from inference_server.client import InProcessBackend
        from inference_server.optimize import load_classifier

        clf = load_classifier(wdir, precision=args.worker)
        for batch in batches:
            backend = InProcessBackend(clf, batch_size=batch)
            out["rows"].append(await measure(backend.predict, texts, batch, items_for(batch)))
        out.update(
            await session_seconds(
                InProcessBackend(clf, batch_size=args.session_batch).predict,
                texts,
                args.session_repeats,
            )
        )
        out["rss_mib"] = _rss_mib()
        return out

    from inference_server.client import Transport, TritonBackend
    from inference_server.triton_server import TritonServer, build_repository

    protocol: Transport = "http" if args.worker == "triton-http" else "grpc"
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as tmp:
        repo = build_repository(
            Path(tmp) / "repo", weights_dir=wdir, precision=args.triton_precision
        )
        with TritonServer(repo, log_file=Path(tmp) / "triton.log") as server:
            url = server.http_url if protocol == "http" else server.grpc_url
            for batch in batches:
                async with TritonBackend(url, protocol, batch_size=batch) as remote:
                    out["rows"].append(
                        await measure(remote.predict, texts, batch, items_for(batch))
                    )
            async with TritonBackend(url, protocol, batch_size=args.session_batch) as remote:
                out.update(await session_seconds(remote.predict, texts, args.session_repeats))
            assert server.pid is not None
            pids = [server.pid, *_children(server.pid)]
            out["server_rss_mib"] = sum(_hwm_mib(p) for p in pids)
    out["precision"] = args.triton_precision
    out["rss_mib"] = _rss_mib()
    return out


def run_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    """Each precision against fp32: label/review agreement and probability differences; dev F1
    when the weights are trained (shipped or --weights) and the corpus has a dev split."""
    import numpy as np

    from inference_server.classifier import WEIGHTS_DIR
    from inference_server.optimize import PRECISIONS, load_classifier

    wdir = Path(args.weights)
    wdesc = "shipped" if wdir == WEIGHTS_DIR else str(wdir)
    texts, _ = load_texts(args.n, args.corpus)
    ref = load_classifier(wdir, precision="fp32").predict(texts)
    out: dict[str, Any] = {"weights": wdesc, "texts": len(texts), "precisions": {}}
    dev: list[Any] = []
    if args.trained:
        from inference_server.data.splits import split_examples
        from inference_server.dataset import read_corpus
        from inference_server.evaluate import full_report

        corpus = ROOT / "inference_server" / "data" / "corpus"
        if corpus.is_dir():
            dev = split_examples(read_corpus(corpus))["dev"]
    dev_ref: Any = None
    for precision in PRECISIONS:  # fp32 first: the reference for the dev flips
        clf = load_classifier(wdir, precision=precision)
        pred = clf.predict(texts)
        point = clf.operating_point()
        row: dict[str, Any] = {
            "label_agreement": float(
                np.mean(np.array(pred.labels(point)) == np.array(ref.labels(point)))
            ),
            "review_agreement": float(
                np.mean(np.array(pred.reviews(point)) == np.array(ref.reviews(point)))
            ),
            "max_label_prob_diff": float(np.abs(pred.label_probs - ref.label_probs).max()),
            "max_review_prob_diff": float(np.abs(pred.review_probs - ref.review_probs).max()),
        }
        if dev:
            dev_pred = clf.predict_dialogues([ex.turns for ex in dev])
            report = full_report(
                [ex.label for ex in dev],
                dev_pred.labels(point),
                [ex.review for ex in dev],
                dev_pred.reviews(point),
            )
            dev_ref = dev_pred if dev_ref is None else dev_ref
            row["dev_size"] = len(dev)
            row["dev_mean_f1"] = report["mean_f1"]
            row["dev_review_f1"] = report["review"]["f1"]
            row["dev_label_flips"] = sum(
                a != b for a, b in zip(dev_pred.labels(point), dev_ref.labels(point), strict=True)
            )
            row["dev_review_flips"] = sum(
                a != b
                for a, b in zip(dev_pred.reviews(point), dev_ref.reviews(point), strict=True)
            )
        out["precisions"][precision] = row
    return out


def print_table(results: list[dict[str, Any]], n: int) -> None:
    naive = next((r for r in results if r["variant"] == "naive"), None)
    base = naive["rows"][0]["items_per_s"] if naive else None
    print(f"{'variant':<22}{'batch':>6}{'items/s':>10}{'x naive':>9}{'p50 ms':>9}{'p95 ms':>9}")
    for res in results:
        name = res["variant"] + (f" ({res['precision']})" if "precision" in res else "")
        for row in res["rows"]:
            speedup = f"{row['items_per_s'] / base:.1f}" if base else "-"
            print(
                f"{name:<22}{row['batch']:>6}{row['items_per_s']:>10.1f}{speedup:>9}"
                f"{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}"
            )
    header = f"session of {n}: median (min-max)"
    print(f"\n{'variant':<22}{header:>32}{'client RSS':>12}{'server RSS':>12}")
    for res in results:
        name = res["variant"] + (f" ({res['precision']})" if "precision" in res else "")
        server = f"{res['server_rss_mib']:.0f} MiB" if "server_rss_mib" in res else "-"
        spread = f"{res['session_s']:.2f} s ({res['session_min_s']:.2f}-{res['session_max_s']:.2f})"
        print(f"{name:<22}{spread:>32}{res['rss_mib']:>8.0f} MiB{server:>12}")


def main() -> None:
    from inference_server.optimize import default_precision

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument(
        "--n", type=int, default=512, help="micro-dialogues in a session (~50 minutes)"
    )
    parser.add_argument(
        "--corpus", type=Path, default=DEFAULT_CORPUS, help="folder of *.jsonl to sample from"
    )
    parser.add_argument(
        "--session-batch", type=int, default=16, help="batch size of the session run"
    )
    parser.add_argument(
        "--session-repeats", type=int, default=5, help="session runs per variant (naive: 1)"
    )
    parser.add_argument("--triton-precision", default=default_precision("cpu"))
    parser.add_argument("--weights", default=None, help="weights dir; default: shipped")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: default")
    parser.add_argument(
        "--omp-wait-policy", default="PASSIVE", help="OMP_WAIT_POLICY for all variants; '' keeps"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--accuracy", action="store_true", help="precision vs fp32 instead")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--trained", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Before any work: an unknown variant used to end the run after the ones before it.
    if unknown := [v for v in args.variants.split(",") if v not in VARIANTS]:
        parser.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    if args.weights:  # none: the shipped ones; the heads alone will do (random ones have no card)
        check_weights(parser, Path(args.weights), "--weights", card=False)
    if args.corpus != DEFAULT_CORPUS:  # the default may be absent: built-in texts stand in
        check_corpus(parser, args.corpus, "--corpus", file_ok=False)  # load_texts globs it
    check_output_file(parser, args.json, "--json")

    if args.worker:
        print(json.dumps(asyncio.run(run_worker(args))))
        return
    texts_desc = load_texts(args.n, args.corpus)[1]
    wdir, weights_desc = weights_dir(args.weights)
    args.weights = str(wdir)
    if args.accuracy:
        args.trained = not weights_desc.startswith("random")
        result = run_accuracy(args)
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return

    print(f"texts: {args.n} from {texts_desc}; weights: {weights_desc}; cpus: {os.cpu_count()}")
    print(f"OMP_WAIT_POLICY={args.omp_wait_policy or os.environ.get('OMP_WAIT_POLICY', '')}")
    results = []
    for variant in args.variants.split(","):
        command = [sys.executable, __file__, *sys.argv[1:], "--weights", str(wdir)]
        command += ["--worker", variant]
        env = dict(os.environ)
        if args.omp_wait_policy:
            # Set for every variant alike (the baseline too); see bench/README.md for why.
            env["OMP_WAIT_POLICY"] = args.omp_wait_policy
        done = subprocess.run(  # noqa: S603
            command, capture_output=True, text=True, check=False, env=env
        )
        if done.returncode != 0:
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  measured {variant}", file=sys.stderr)
    print_table(results, args.n)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
