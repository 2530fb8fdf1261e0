r"""What the Tinker protocol costs: the same step and the same sampling call, through the SDK and direct.

One process loads the default model (SmolLM2-135M-Instruct) once and serves it with uvicorn
on loopback. Two LoRA adapters of the same shape and seed train on the same batch:

- ``sdk``: the official ``tinker`` SDK (0.38.0) over HTTP -- ``forward_backward`` then
  ``optim_step`` (submitted before waiting, as the SDK recommends), then ``.result()`` on both;
  sampling through a ``SamplingClient`` of a fresh ``save_weights_and_get_sampling_client``.
- ``direct``: the same engine called in process -- ``engine.forward_backward`` then
  ``engine.optim_step``; ``engine.sample`` on the same adapter.

The two alternate round by round on the same engine (so they share its compute thread, its
warm caches and the machine's state); the figures are medians. The protocol's share is
``sdk / direct - 1`` (target: at most 20% of the step time).

    python bench/tinker_overhead.py                  # ~3 minutes on 2 vCPUs
    python bench/tinker_overhead.py --rounds 3 --batch 4   # smoke test
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8, help="sequences per training step")
    ap.add_argument("--length", type=int, default=128, help="tokens per sequence")
    ap.add_argument("--samples", type=int, default=4, help="samples per sampling call")
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args(argv)

    import tinker
    import uvicorn
    from tinker import types

    from teachloop.app import AppDeps, create_app
    from teachloop.core.sampling import SamplingParams
    from teachloop.core.settings import DEFAULT_MODEL, Settings
    from teachloop.core.tenancy import Role
    from teachloop.core.training import AdamParams, Datum, LoraSpec
    from teachloop.engine.models import ensure_default_model
    from teachloop.engine.torch_engine import TorchEngine
    from teachloop.store import ApiKeys, BlobStore, Database, Tenancy
    from teachloop.tinker.service import LORA_ALPHA

    tmp = Path(tempfile.mkdtemp(prefix="tinker-bench-"))
    cache = Path(os.environ.get("TEACHLOOP_MODEL_CACHE") or REPO / ".cache" / "models")
    settings = Settings.from_env({"TEACHLOOP_HOME": str(tmp), "TEACHLOOP_MODEL_CACHE": str(cache),
                                  "TEACHLOOP_MODEL": DEFAULT_MODEL})
    model_dir = ensure_default_model(settings)
    engine = TorchEngine(model_dir, device="cpu")
    database = Database(f"sqlite:///{tmp / 'bench.db'}")
    database.migrate()
    with database.session() as s:
        org = Tenancy(s).create_org("bench")
        key = ApiKeys(s).create_key(org.id, None, Role.MEMBER, "bench").secret
    blobs = BlobStore(tmp / "blobs")
    app_settings = Settings(home=tmp, model_cache=cache, database_url="sqlite://", blob_url=str(tmp / "blobs"),
                            model=DEFAULT_MODEL)
    app = create_app(AppDeps(app_settings, database, blobs, engine=engine))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    os.environ["TINKER_TELEMETRY"] = "0"

    vocab = engine.vocab_size
    seqs = [[(7 * i + 13 * t) % (vocab - 1) + 1 for t in range(args.length + 1)] for i in range(args.batch)]
    prompt = seqs[0][:32]
    sdk_data = [types.Datum(model_input=types.ModelInput.from_ints(s[:-1]),
                            loss_fn_inputs={"target_tokens": s[1:], "weights": [1.0] * args.length}) for s in seqs]
    direct_data = [Datum(s[:-1], s[1:], [1.0] * args.length) for s in seqs]
    adam = AdamParams(learning_rate=1e-5)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=1.0, stop=(), seed=0)
    sdk_params = types.SamplingParams(max_tokens=args.max_tokens, temperature=1.0, stop=[], seed=0)

    svc = tinker.ServiceClient(base_url=f"http://127.0.0.1:{port}", api_key=f"tml-{key}")
    tc = svc.create_lora_training_client(DEFAULT_MODEL, rank=16, seed=0).result()
    engine.create_adapter("direct", LoraSpec(rank=16, alpha=LORA_ALPHA, train_unembed=True, seed=0))

    def sdk_step() -> None:
        fb = tc.forward_backward(sdk_data, "cross_entropy")
        opt = tc.optim_step(types.AdamParams(learning_rate=adam.learning_rate))
        fb.result()
        opt.result()

    def direct_step() -> None:
        engine.forward_backward(direct_data, "cross_entropy", adapter="direct")
        engine.optim_step("direct", adam)

    sampler = tc.save_weights_and_get_sampling_client().result()

    def sdk_sample() -> None:
        sampler.sample(types.ModelInput.from_ints(prompt), args.samples, sdk_params).result()

    def direct_sample() -> None:
        engine.sample([prompt], args.samples, params, "direct")

    def timed(fn) -> float:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    for fn in (sdk_step, direct_step, sdk_sample, direct_sample):  # warm-up (first backward, oneDNN packing)
        fn()
    times: dict[str, list[float]] = {k: [] for k in ("sdk_step", "direct_step", "sdk_sample", "direct_sample")}
    for r in range(args.rounds):
        order = [("sdk_step", sdk_step), ("direct_step", direct_step)]
        order += [("sdk_sample", sdk_sample), ("direct_sample", direct_sample)]
        if r % 2:
            order = [order[1], order[0], order[3], order[2]]
        for name, fn in order:
            times[name].append(timed(fn))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()), file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {DEFAULT_MODEL}, batch {args.batch} x {args.length} tokens, LoRA rank 16, {args.rounds} rounds, "
          f"sampling {args.samples} x {args.max_tokens} tokens")
    print("| call | direct engine s | SDK over HTTP s | protocol adds |")
    print("|---|---|---|---|")
    for what in ("step", "sample"):
        d, s = med[f"direct_{what}"], med[f"sdk_{what}"]
        print(f"| {'forward_backward + optim_step' if what == 'step' else 'sample'} | {d:.3f} | {s:.3f} | "
              f"{(s / d - 1) * 100:+.1f}% ({s - d:+.3f} s) |")
    svc.close("success").result()
    server.should_exit = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
