// The error probe's GPU unit (csrc/probe/error_probe.cpp): one kernel and its launcher, compiled
// and linked like atom._C's kernels, so the probe library carries the same GPU runtime pieces.
#include "../gpu/compat.h"

namespace {

__global__ void probe_noop_kernel() {}

}  // namespace

// Not called by the probe's cases: it exists so that the library links like atom._C does.
extern "C" void atom_error_probe_launch_noop() { probe_noop_kernel<<<1, 1>>>(); }
