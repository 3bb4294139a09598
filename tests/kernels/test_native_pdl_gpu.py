"""Programmatic dependent launch (PDL) of the native kernels (csrc/gpu/pdl.cuh) changes no bit.

With PDL a kernel may start before the one before it has finished and must wait
(griddepcontrol.wait) before touching memory; a kernel that read or wrote too early would race
with its predecessor. Two decode layers chain every native kernel with Triton PDL kernels
(fused_gemv) and plain torch kernels, each consuming what the kernel right before it wrote:

    fused_add_rms_norm -> fused_gemv (qkv) -> fused_qk_norm_rope_cache -> rotary_embedding
    -> reshape_and_cache (a second cache) -> torch o-projection + residual -> rms_norm
    -> fused_gemv (gate|up) -> silu_and_mul -> fused_gemv (down)

Each run happens in a fresh process (ATOM_PDL is read once per process), with ATOM_PDL=0 and with
the default (on). In each: eager, eager with a device sync after every op (no overlap possible:
the reference), and a CUDA graph captured once and replayed with new inputs. Every result (hidden
states, residual, both KV caches) must be bit-identical within the process and across the two.

Also runnable as a script: ``python tests/kernels/test_native_pdl_gpu.py OUT.pt`` writes the
results (and the graph replay time) of one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

TOKENS, HIDDEN, HQ, HKV, HEAD, INTER = 5, 1024, 8, 2, 128, 3072
LAYERS, BLOCKS, BLOCK_SIZE, MAX_POSITION = 2, 8, 16, 512
EPS = 1e-6


def make_weights(device: str) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator(device="cpu").manual_seed(0)

    def w(*shape, scale=0.05):
        return (scale * torch.randn(*shape, generator=g)).to(device=device, dtype=torch.bfloat16)

    def norm_w(n):
        return (1 + 0.1 * torch.randn(n, generator=g)).to(device=device, dtype=torch.bfloat16)

    return [
        {
            "ln1": norm_w(HIDDEN),
            "qkv": w((HQ + 2 * HKV) * HEAD, HIDDEN),
            "q_norm": norm_w(HEAD),
            "k_norm": norm_w(HEAD),
            "o": w(HIDDEN, HQ * HEAD),
            "ln2": norm_w(HIDDEN),
            "gate_up": w(2 * INTER, HIDDEN),
            "down": w(HIDDEN, INTER),
        }  # fmt: skip
        for _ in range(LAYERS)
    ]


def make_cos_sin(device: str) -> torch.Tensor:
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, HEAD, 2, dtype=torch.float32) / HEAD))
    freqs = torch.outer(torch.arange(MAX_POSITION, dtype=torch.float32), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(device)


def make_inputs(seed: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    slots = torch.randperm(BLOCKS * BLOCK_SIZE, generator=g)[:TOKENS]
    slots[1] = -1  # padding: skipped by the cache writes
    return {
        "h": torch.randn(TOKENS, HIDDEN, generator=g).to(device, torch.bfloat16),
        "residual": torch.randn(TOKENS, HIDDEN, generator=g).to(device, torch.bfloat16),
        "positions": torch.randint(0, MAX_POSITION, (TOKENS,), generator=g).to(device),
        "slots": slots.to(device),
    }


def make_state(device: str) -> dict[str, torch.Tensor]:
    """Per layer: the fused op's (k, v) cache and reshape_and_cache's, zeroed."""
    shape = (LAYERS, BLOCKS, BLOCK_SIZE, HKV, HEAD)
    return {name: torch.zeros(shape, device=device, dtype=torch.bfloat16) for name in
            ("kc", "vc", "kc2", "vc2")}  # fmt: skip


def forward(inputs, state, weights, cos_sin, sync: bool) -> torch.Tensor:
    """Two decode layers, in place on inputs["h"], inputs["residual"] and the caches; returns the
    final hidden states. ``sync``: a device sync after every op (no kernel can overlap another)."""
    from atom.kernels import native
    from atom.kernels.triton.gemv import fused_gemv

    def step(result):
        if sync:
            torch.cuda.synchronize()
        return result

    h, residual = inputs["h"], inputs["residual"]
    positions, slots = inputs["positions"], inputs["slots"]
    for i, w in enumerate(weights):
        step(native.fused_add_rms_norm(h, residual, w["ln1"], EPS))
        qkv = step(fused_gemv(h, w["qkv"]))
        q, k, v = qkv.split([HQ * HEAD, HKV * HEAD, HKV * HEAD], dim=-1)
        q, k, v = q.view(TOKENS, HQ, HEAD), k.view(TOKENS, HKV, HEAD), v.view(TOKENS, HKV, HEAD)
        step(native.fused_qk_norm_rope_cache(
            q, k, v, w["q_norm"], w["k_norm"], EPS, positions, cos_sin, True,
            state["kc"][i], state["vc"][i], slots,
        ))  # fmt: skip
        step(native.rotary_embedding(positions, q, k, HEAD, cos_sin, False))
        step(native.reshape_and_cache(k, v, state["kc2"][i], state["vc2"][i], slots))
        attn = step(torch.mm(q.reshape(TOKENS, HQ * HEAD), w["o"].t()))  # attention stand-in
        h = step(attn + residual)
        x = step(native.rms_norm(h, w["ln2"], EPS))
        gate_up = step(fused_gemv(x, w["gate_up"]))
        act = step(native.silu_and_mul(gate_up))
        h = step(fused_gemv(act, w["down"]))
    return h


def run(inputs, state, weights, cos_sin, sync=False):
    inputs = {k: v.clone() for k, v in inputs.items()}
    state = {k: v.clone() for k, v in state.items()}
    out = forward(inputs, state, weights, cos_sin, sync)
    torch.cuda.synchronize()
    return {"out": out, "residual": inputs["residual"], **state}


def assert_same(a: dict, b: dict, what: str) -> None:
    for name in a:
        assert torch.equal(a[name].view(torch.int16), b[name].view(torch.int16)), f"{what}: {name}"


def worker(out_path: str) -> None:
    """One process: eager, synced eager and graph replays agree bit for bit; saves the results."""
    device = "cuda"
    weights, cos_sin = make_weights(device), make_cos_sin(device)
    state0 = make_state(device)
    results = {}
    for seed in (1, 2):
        inputs = make_inputs(seed, device)
        eager = run(inputs, state0, weights, cos_sin)
        assert_same(eager, run(inputs, state0, weights, cos_sin, sync=True), f"eager {seed}")
        results[f"eager{seed}"] = {k: v.cpu() for k, v in eager.items()}

    # Graph: captured on seed 1's inputs, replayed with seed 2's and then seed 1's again.
    static = make_inputs(1, device)
    state = {k: v.clone() for k, v in state0.items()}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (Triton compiles) off the capture
        scratch = {k: v.clone() for k, v in static.items()}
        forward(scratch, {k: v.clone() for k, v in state.items()}, weights, cos_sin, False)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = forward(static, state, weights, cos_sin, False)
    for seed in (2, 1):
        fresh = make_inputs(seed, device)
        for name in static:
            static[name].copy_(fresh[name])
        for name in state:
            state[name].copy_(state0[name])
        graph.replay()
        torch.cuda.synchronize()
        replayed = {"out": out, "residual": static["residual"], **state}
        replayed = {k: v.cpu() for k, v in replayed.items()}
        assert_same(replayed, results[f"eager{seed}"], f"graph replay {seed}")

    # Replay time (the state drifts, which does not matter for timing).
    for _ in range(20):
        graph.replay()
    torch.cuda.synchronize()
    start, reps = time.perf_counter(), 200
    for _ in range(reps):
        graph.replay()
    torch.cuda.synchronize()
    results["replay_us"] = (time.perf_counter() - start) / reps * 1e6
    torch.save(results, out_path)


def run_worker(tmp_path: Path, pdl: str | None) -> dict:
    env = dict(os.environ)
    env.pop("ATOM_PDL", None)
    if pdl is not None:
        env["ATOM_PDL"] = pdl
    env.pop("TRITON_INTERPRET", None)
    out = tmp_path / f"pdl_{pdl}.pt"
    proc = subprocess.run(
        [sys.executable, __file__, str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"ATOM_PDL={pdl}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return torch.load(out)


def test_pdl_chain_bit_identical(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    native = pytest.importorskip("atom.kernels.native", reason="atom._C is not built")
    if not native.GPU_BACKEND:
        pytest.skip("atom._C was built without GPU kernels")
    off, on = run_worker(tmp_path, "0"), run_worker(tmp_path, None)
    for key in ("eager1", "eager2"):
        assert_same(off[key], on[key], f"ATOM_PDL=0 vs default, {key}")
    major = torch.cuda.get_device_capability()[0]
    print(
        f"\ntwo-layer decode graph replay (sm_{major}x): ATOM_PDL=0 {off['replay_us']:.1f} us, "
        f"default {on['replay_us']:.1f} us"
    )


if __name__ == "__main__":
    worker(sys.argv[1])
