#!/usr/bin/env bash
# On the GPU machine (no network): install the wheels carried in .whl/ (see
# ../shared/tools/device-wheels) and build ATOM in place against the machine's torch.
# Build outputs stay in build/ so a warm machine rebuilds incrementally.
set -euo pipefail
cd "$(dirname "$0")/../.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
fi
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
python -m pip install -q --no-build-isolation --no-deps --no-index -e .
python - <<'PY'
import torch
import atom.kernels.registry as registry
import atom.kernels  # noqa: F401  (registers the backends)
print("torch", torch.__version__, "on", torch.cuda.get_device_name())
for op in ("rms_norm", "fused_qk_norm_rope_cache", "paged_attention", "fused_moe"):
    print(f"  {op}: cuda -> {registry.available(op)}")
PY
